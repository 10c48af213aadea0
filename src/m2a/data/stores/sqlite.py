"""The SQLite vector-store backend: one database file, nothing to install.

Layout: ``stores`` (the store's id, its vector dimension and a version bumped by every write),
``files`` (attributes and ``usage_bytes`` per file) and ``chunks`` (text, span and a float32 vector
BLOB, unit length). Each store has its own FTS5 table ``fts_<sid>`` over its chunks' text (external
content: the text is stored once, in ``chunks``), tokenised with ``porter unicode61``.

Vector search is an exact scan: the store's vectors sit in memory as one matrix (loaded on first
search, reloaded when the store's version changes, so a write by any process invalidates it), and a
search is one matrix-vector product plus a partial sort. Keyword search is FTS5's ``bm25()``. Hybrid
fuses both lists by reciprocal rank fusion (``search.rrf``). File filters are evaluated once per file
of the store before ranking; the matrix's rows are grouped by file, so a filter that passes few files
reads only their rows.

Blocking work runs in threads (``asyncio.to_thread``), each thread with its own connection (WAL:
readers never wait for the writer); writes are serialised. A search reads in one transaction, so
it sees a store as of one moment: a store deleted while a search runs either answers from before
the deletion or raises ``StoreNotFound``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from m2a.data.filters import Filter, validate_attributes
from m2a.data.search import (
    DEFAULT_RESULTS,
    Hit,
    SearchQuery,
    keyword_query,
    keyword_score,
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stores (
    sid INTEGER PRIMARY KEY AUTOINCREMENT,
    store_id TEXT NOT NULL UNIQUE,
    dim INTEGER,
    version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS files (
    sid INTEGER NOT NULL,
    file_id TEXT NOT NULL,
    attributes TEXT NOT NULL DEFAULT '{}',
    chunks INTEGER NOT NULL DEFAULT 0,
    usage_bytes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sid, file_id)
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sid INTEGER NOT NULL,
    file_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_file ON chunks (sid, file_id);
"""


@dataclass(frozen=True, slots=True)
class _Matrix:
    """A store's vectors as of one version, one row per chunk (in the order SQLite gave them)."""

    version: int
    ids: np.ndarray  # int64 (n,): each row's chunk id
    vectors: np.ndarray  # float32 (n, dim), column-major
    file_of: np.ndarray  # int32 (n,): index into files
    files: tuple[str, ...]
    attributes: tuple[dict[str, Any], ...]
    order: np.ndarray  # int64 (n,): rows by ascending chunk id, to find a chunk's row
    sorted_ids: np.ndarray  # ids[order]
    starts: np.ndarray  # int64 (files + 1,): rows are grouped by file, file i's are starts[i]:starts[i + 1]

    def rows_of(self, chunk_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows of ``chunk_ids`` and whether each is in this snapshot."""
        n = self.ids.shape[0]
        if n == 0:
            return np.zeros(len(chunk_ids), dtype=np.int64), np.zeros(len(chunk_ids), dtype=bool)
        k = np.minimum(np.searchsorted(self.sorted_ids, chunk_ids), n - 1)
        return self.order[k], self.sorted_ids[k] == chunk_ids

    def passing(self, flt: Filter | None) -> np.ndarray | None:
        """Which files pass the filter (``None``: all), evaluated once per file."""
        if flt is None:
            return None
        return np.fromiter((flt.matches(a) for a in self.attributes), dtype=bool, count=len(self.files))

    def ranges(self, files_ok: np.ndarray) -> list[tuple[int, int]]:
        """The row ranges of the passing files, adjacent ones merged."""
        allowed = np.flatnonzero(files_ok)
        if allowed.size == 0:
            return []
        cuts = np.flatnonzero(np.diff(allowed) != 1) + 1
        firsts = np.concatenate(([allowed[0]], allowed[cuts]))
        lasts = np.concatenate((allowed[cuts - 1], [allowed[-1]]))
        return [(int(self.starts[a]), int(self.starts[b + 1])) for a, b in zip(firsts, lasts, strict=True)]


def _fts(sid: int) -> str:
    return f"fts_{int(sid)}"


@register_backend("sqlite")
class SQLiteBackend(VectorBackend):
    """Vector stores in one SQLite file (``path``; ``":memory:"`` is not supported: threads share it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) == ":memory:":
            raise ValueError("the sqlite vector store backend needs a file path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._write = threading.Lock()
        self._cache: dict[int, _Matrix] = {}
        self._cache_lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}
        self._closed = False
        conn = self._conn()
        conn.executescript(_SCHEMA)

    # -- connections ----------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise RuntimeError("the vector store backend is closed")
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    async def close(self) -> None:
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._cache.clear()

    # -- writes ---------------------------------------------------------------------------------

    def _write_txn(self) -> _WriteTxn:
        return _WriteTxn(self)

    def _sid(self, conn: sqlite3.Connection, store_id: str) -> tuple[int, int | None, int] | None:
        row = conn.execute("SELECT sid, dim, version FROM stores WHERE store_id = ?", (store_id,)).fetchone()
        return (row[0], row[1], row[2]) if row else None

    def _ensure_store(self, conn: sqlite3.Connection, store_id: str) -> tuple[int, int | None]:
        found = self._sid(conn, store_id)
        if found:
            return found[0], found[1]
        cur = conn.execute("INSERT INTO stores (store_id) VALUES (?)", (store_id,))
        sid = int(cur.lastrowid or 0)
        conn.execute(
            f"CREATE VIRTUAL TABLE {_fts(sid)} USING fts5(text, content='chunks', content_rowid='id', "
            "tokenize='porter unicode61 remove_diacritics 2')"
        )
        return sid, None

    def _bump(self, conn: sqlite3.Connection, sid: int) -> None:
        conn.execute("UPDATE stores SET version = version + 1 WHERE sid = ?", (sid,))
        with self._cache_lock:
            self._cache.pop(sid, None)

    def _drop_file(self, conn: sqlite3.Connection, sid: int, file_id: str) -> bool:
        gone = conn.execute("DELETE FROM files WHERE sid = ? AND file_id = ?", (sid, file_id)).rowcount
        conn.execute(
            f"INSERT INTO {_fts(sid)} ({_fts(sid)}, rowid, text) "
            "SELECT 'delete', id, text FROM chunks WHERE sid = ? AND file_id = ?",
            (sid, file_id),
        )
        conn.execute("DELETE FROM chunks WHERE sid = ? AND file_id = ?", (sid, file_id))
        return gone > 0

    def _create_sync(self, store_id: str) -> None:
        with self._write_txn() as conn:
            self._ensure_store(conn, store_id)

    def _add_sync(
        self, store_id: str, file_id: str, chunks: Sequence[ChunkRecord], attributes: dict[str, Any]
    ) -> int:
        vectors = [unit(c.vector) for c in chunks]
        dims = {v.shape[0] for v in vectors}
        if len(dims) > 1:
            raise DimensionMismatch(f"the chunks' vectors have different dimensions: {sorted(dims)}")
        with self._write_txn() as conn:
            sid, dim = self._ensure_store(conn, store_id)
            if dims:
                (new_dim,) = dims
                if dim is None:
                    conn.execute("UPDATE stores SET dim = ? WHERE sid = ?", (new_dim, sid))
                elif dim != new_dim:
                    raise DimensionMismatch(
                        f"the store's vectors have {dim} dimensions, these have {new_dim}"
                    )
            self._drop_file(conn, sid, file_id)
            conn.executemany(
                "INSERT INTO chunks (sid, file_id, idx, start, end, text, vector) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (sid, file_id, c.index, c.start, c.end, c.text, v.tobytes())
                    for c, v in zip(chunks, vectors, strict=True)
                ],
            )
            conn.execute(
                f"INSERT INTO {_fts(sid)} (rowid, text) "
                "SELECT id, text FROM chunks WHERE sid = ? AND file_id = ?",
                (sid, file_id),
            )
            usage = sum(record_bytes(c.text, v.shape[0]) for c, v in zip(chunks, vectors, strict=True))
            usage += attributes_bytes(attributes)
            conn.execute(
                "INSERT INTO files (sid, file_id, attributes, chunks, usage_bytes) VALUES (?, ?, ?, ?, ?)",
                (sid, file_id, json.dumps(attributes), len(chunks), usage),
            )
            self._bump(conn, sid)
            return usage

    def _set_attributes_sync(self, store_id: str, file_id: str, attributes: dict[str, Any]) -> bool:
        with self._write_txn() as conn:
            found = self._sid(conn, store_id)
            if not found:
                raise StoreNotFound(store_id)
            sid = found[0]
            row = conn.execute(
                "SELECT attributes, usage_bytes FROM files WHERE sid = ? AND file_id = ?", (sid, file_id)
            ).fetchone()
            if row is None:
                return False
            usage = row[1] - attributes_bytes(json.loads(row[0])) + attributes_bytes(attributes)
            conn.execute(
                "UPDATE files SET attributes = ?, usage_bytes = ? WHERE sid = ? AND file_id = ?",
                (json.dumps(attributes), usage, sid, file_id),
            )
            self._bump(conn, sid)
            return True

    def _delete_file_sync(self, store_id: str, file_id: str) -> bool:
        with self._write_txn() as conn:
            found = self._sid(conn, store_id)
            if not found:
                raise StoreNotFound(store_id)
            gone = self._drop_file(conn, found[0], file_id)
            if gone:
                self._bump(conn, found[0])
            return gone

    def _delete_store_sync(self, store_id: str) -> bool:
        with self._write_txn() as conn:
            found = self._sid(conn, store_id)
            if not found:
                return False
            sid = found[0]
            conn.execute("DELETE FROM stores WHERE sid = ?", (sid,))
            conn.execute(f"DROP TABLE IF EXISTS {_fts(sid)}")
            conn.execute("DELETE FROM chunks WHERE sid = ?", (sid,))
            conn.execute("DELETE FROM files WHERE sid = ?", (sid,))
            with self._cache_lock:
                self._cache.pop(sid, None)
                self._loading.pop(sid, None)
            return True

    # -- reads ----------------------------------------------------------------------------------

    def _matrix(self, conn: sqlite3.Connection, sid: int, version: int, dim: int | None) -> _Matrix:
        """The store's vectors at ``version`` (inside the caller's read transaction)."""
        with self._cache_lock:
            mat = self._cache.get(sid)
            if mat is not None and mat.version == version:
                return mat
            lock = self._loading.setdefault(sid, threading.Lock())
        with lock:  # one thread loads, the others wait for it
            with self._cache_lock:
                mat = self._cache.get(sid)
            if mat is not None and mat.version == version:
                return mat
            files: list[str] = []
            attrs: list[dict[str, Any]] = []
            index: dict[str, int] = {}
            for file_id, attributes in conn.execute(
                "SELECT file_id, attributes FROM files WHERE sid = ? ORDER BY file_id", (sid,)
            ):
                index[file_id] = len(files)
                files.append(file_id)
                attrs.append(json.loads(attributes))
            rows = conn.execute(  # in the index's order: grouped by file
                "SELECT id, file_id, vector FROM chunks WHERE sid = ? ORDER BY file_id", (sid,)
            ).fetchall()
            n, d = len(rows), dim or 0
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
            file_of = np.fromiter((index[r[1]] for r in rows), dtype=np.int32, count=n)
            # Column-major: BLAS's matrix-vector product reads it about twice as fast here. Copied
            # in blocks of rows, which is faster than one transposing copy.
            vectors = np.empty((n, d), dtype=np.float32, order="F")
            for i in range(0, n, 4096):
                block = rows[i : i + 4096]
                vectors[i : i + len(block)] = np.frombuffer(
                    b"".join(r[2] for r in block), dtype=np.float32
                ).reshape(len(block), d)
            del rows
            order = np.argsort(ids, kind="stable")
            starts = np.searchsorted(file_of, np.arange(len(files) + 1)).astype(np.int64)
            mat = _Matrix(
                version, ids, vectors, file_of, tuple(files), tuple(attrs), order, ids[order], starts
            )
            with self._cache_lock:
                current = self._cache.get(sid)
                if current is None or current.version < version:
                    self._cache[sid] = mat
            return mat

    def _vector_ranking(self, mat: _Matrix, q: SearchQuery, ok: np.ndarray | None) -> list[tuple[int, float]]:
        """(row, cosine) of the best ``q.depth`` rows of the files that pass (``ok``), best first."""
        n = mat.vectors.shape[0]
        if n == 0:
            return []
        assert q.vector is not None
        if q.vector.shape[0] != mat.vectors.shape[1]:
            raise DimensionMismatch(
                f"the query vector has {q.vector.shape[0]} dimensions, "
                f"the store's vectors {mat.vectors.shape[1]}"
            )
        rows: np.ndarray | None = None  # which row each score is of (None: all rows, in order)
        if ok is None:
            scores = mat.vectors @ q.vector
        else:
            ranges = mat.ranges(ok)
            if not ranges:
                return []
            if len(ranges) <= 256 and sum(b - a for a, b in ranges) < n // 2:
                # Few runs of passing files: read only their rows.
                scores = np.concatenate([mat.vectors[a:b] @ q.vector for a, b in ranges])
                rows = np.concatenate([np.arange(a, b) for a, b in ranges])
            else:
                scores = np.where(ok[mat.file_of], mat.vectors @ q.vector, -np.inf)
        depth = min(q.depth, scores.shape[0])
        if depth == 0:
            return []
        top = np.argpartition(-scores, depth - 1)[:depth] if depth < scores.shape[0] else np.arange(depth)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [
            (int(r if rows is None else rows[r]), float(scores[r])) for r in top if np.isfinite(scores[r])
        ]

    def _keyword_ranking(
        self, conn: sqlite3.Connection, sid: int, mat: _Matrix, q: SearchQuery, ok: np.ndarray | None
    ) -> list[tuple[int, float]]:
        """(row, bm25) of the best ``q.depth`` rows that match the query's words, best first."""
        expr = keyword_query(q.text)
        if expr is None or mat.ids.shape[0] == 0:
            return []
        table = _fts(sid)
        sql = f"SELECT rowid, bm25({table}) AS s FROM {table} WHERE {table} MATCH ? ORDER BY s LIMIT ?"
        n = mat.ids.shape[0]
        if ok is None:
            limit = q.depth
        else:
            passing = int(np.diff(mat.starts)[ok].sum())
            if passing == 0:
                return []
            # Enough ranked matches that about twice ``depth`` of them pass the filter; more if not.
            limit = min(n, q.depth * 2 * n // passing + 16)
        while True:
            rows = conn.execute(sql, (expr, limit)).fetchall()
            if not rows:
                return []
            rowids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            pos, keep = mat.rows_of(rowids)  # keep: always, within one read transaction
            if ok is not None:
                keep &= ok[mat.file_of[pos]]
            out = [(int(p), float(r[1])) for r, p, k in zip(rows, pos, keep, strict=True) if k][: q.depth]
            if len(out) >= q.depth or len(rows) < limit or limit >= n:
                return out
            limit = min(n, limit * 4)

    def _search_sync(self, store_id: str, q: SearchQuery) -> list[Hit]:
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            found = self._sid(conn, store_id)
            if not found:
                raise StoreNotFound(store_id)
            sid, dim, version = found
            mat = self._matrix(conn, sid, version, dim)
            ok = mat.passing(q.filter)
            vec = self._vector_ranking(mat, q, ok) if q.mode in ("hybrid", "vector") else []
            use_kw = q.mode == "keyword" or (q.mode == "hybrid" and q.text is not None and q.weights[1] > 0)
            kw = self._keyword_ranking(conn, sid, mat, q, ok) if use_kw else []
            if q.mode == "vector":
                ranked = [(r, vector_score(s)) for r, s in vec]
            elif q.mode == "keyword":
                ranked = [(r, keyword_score(s)) for r, s in kw]
            else:
                lists = [[r for r, _ in vec]]
                weights = [q.weights[0]]
                if use_kw:
                    lists.append([r for r, _ in kw])
                    weights.append(q.weights[1])
                ranked = rrf(lists, weights)
            ranked = [(r, s) for r, s in ranked if s >= q.score_threshold][: q.k]
            if not ranked:
                return []
            ids = [int(mat.ids[r]) for r, _ in ranked]
            marks = ",".join("?" * len(ids))
            # By primary key (``sid = ?`` in SQL would make SQLite scan the store's index instead).
            rows = {
                row[0]: row
                for row in conn.execute(
                    f"SELECT id, file_id, idx, start, end, text, sid FROM chunks WHERE id IN ({marks})", ids
                )
                if row[6] == sid
            }
            hits = []
            for (r, score), cid in zip(ranked, ids, strict=True):
                row = rows.get(cid)
                if row is None:
                    continue
                hits.append(
                    Hit(
                        file_id=row[1],
                        index=row[2],
                        start=row[3],
                        end=row[4],
                        text=row[5],
                        score=score,
                        attributes=dict(mat.attributes[mat.file_of[r]]),
                        chunk_id=cid,
                    )
                )
            return hits
        except sqlite3.OperationalError as exc:
            # The store's tables went away between our reads (a delete from this process whose
            # snapshot we did not share): the store is gone, as far as this search is concerned.
            if "no such table" in str(exc):
                raise StoreNotFound(store_id) from exc
            raise
        finally:
            conn.execute("COMMIT")

    def _usage_sync(self, store_id: str) -> int:
        conn = self._conn()
        found = self._sid(conn, store_id)
        if not found:
            raise StoreNotFound(store_id)
        row = conn.execute(
            "SELECT COALESCE(SUM(usage_bytes), 0) FROM files WHERE sid = ?", (found[0],)
        ).fetchone()
        return int(row[0])

    def _file_ids_sync(self, store_id: str) -> list[str]:
        conn = self._conn()
        found = self._sid(conn, store_id)
        if not found:
            raise StoreNotFound(store_id)
        return [
            r[0]
            for r in conn.execute("SELECT file_id FROM files WHERE sid = ? ORDER BY file_id", (found[0],))
        ]

    def _has_sync(self, store_id: str) -> bool:
        return self._sid(self._conn(), store_id) is not None

    # -- the async API --------------------------------------------------------------------------

    async def create_store(self, store_id: str) -> None:
        await asyncio.to_thread(self._create_sync, store_id)

    async def has_store(self, store_id: str) -> bool:
        return await asyncio.to_thread(self._has_sync, store_id)

    async def add(
        self,
        store_id: str,
        file_id: str,
        chunks: Sequence[ChunkRecord],
        attributes: Mapping[str, Any] | None = None,
    ) -> int:
        attrs = validate_attributes(dict(attributes) if attributes is not None else None)
        return await asyncio.to_thread(self._add_sync, store_id, file_id, list(chunks), attrs)

    async def set_attributes(self, store_id: str, file_id: str, attributes: Mapping[str, Any]) -> bool:
        attrs = validate_attributes(dict(attributes))
        return await asyncio.to_thread(self._set_attributes_sync, store_id, file_id, attrs)

    async def delete_file(self, store_id: str, file_id: str) -> bool:
        return await asyncio.to_thread(self._delete_file_sync, store_id, file_id)

    async def delete_store(self, store_id: str) -> bool:
        return await asyncio.to_thread(self._delete_store_sync, store_id)

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
        return await asyncio.to_thread(self._search_sync, store_id, q)

    async def usage_bytes(self, store_id: str) -> int:
        return await asyncio.to_thread(self._usage_sync, store_id)

    async def file_ids(self, store_id: str) -> list[str]:
        return await asyncio.to_thread(self._file_ids_sync, store_id)


class _WriteTxn:
    """``with`` a serialised ``BEGIN IMMEDIATE`` transaction: committed on success, else rolled back."""

    def __init__(self, backend: SQLiteBackend) -> None:
        self.backend = backend
        self.conn: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection:
        self.backend._write.acquire()
        try:
            self.conn = self.backend._conn()
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.backend._write.release()
            raise
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self.conn is not None
        try:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.backend._write.release()
