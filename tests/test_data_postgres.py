"""What only the PostgreSQL vector-store backend has, against a real server with pgvector
(``tests/data/pg_fixtures.py``; the contract both backends share is ``test_data_sqlite.py``):
attribute filters translated to SQL agree with ``Filter.matches`` on randomised cases; the HNSW
index is built once a store passes ``exact_max`` and is what answers then, with the exact scan
taking over when the index walk finds too few; another OS process sees this one's writes and the
other way round; gateways starting together on a fresh database; hostile ids, keys and query text
stay data; keyword words fold and stem alike in chunks and queries; and the data API (the official
``openai`` client) on the postgres backend, with its own URL or sharing the gateway's PostgreSQL
database, two gateways on one database seeing each other's stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import numpy as np
import pydantic
import pytest
import pytest_asyncio

from m2a.config import DataConfig, GatewayConfig
from m2a.data.filters import compile_filter
from m2a.data.stores import ChunkRecord, StoreNotFound, build_backend
from m2a.data.stores.postgres import PostgresBackend
from m2a.gateway.app import create_app
from m2a.gateway.data_api import open_backend
from m2a.store.db import open_store
from m2a.store.identity import IdentityStore
from tests.data.pg_fixtures import pg_url, pgvector_server  # noqa: F401
from tests.fake_engine import FakeEngine
from tests.live_app import live
from tests.test_data_api import ADMIN, EMBED, GW, REFUNDS, ROCKETS, TIMEOUT, make_pool, team, uploaded

ROOT = Path(__file__).resolve().parent.parent


@pytest_asyncio.fixture(loop_scope="function")
async def backend(pg_url: str) -> AsyncIterator[PostgresBackend]:  # noqa: F811
    b = build_backend("postgres", url=pg_url)
    assert isinstance(b, PostgresBackend)
    yield b
    await b.close()


def rec(i: int, vector: np.ndarray, text: str = "") -> ChunkRecord:
    return ChunkRecord(i, 0, len(text), text or f"chunk {i}", vector)


async def fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


# -- filters -------------------------------------------------------------------------------------

VALUES: list[object] = ["a", "B", "Z", "é", "f", "10", "2", "", 0, 1, 1.0, 2.5, -3, 10, 2, True, False]
KEYS = ["k1", "k2", "k3", "k4"]  # k4: no file has it


def random_filter(rng: random.Random, depth: int = 0) -> dict:
    if depth < 2 and rng.random() < 0.3:
        kind = rng.choice(["and", "or"])
        return {"type": kind, "filters": [random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    kind = rng.choice(["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"])
    key = rng.choice(KEYS)
    if kind in ("in", "nin"):
        return {"type": kind, "key": key, "value": rng.sample(VALUES, rng.randint(1, 4))}
    value = rng.choice([v for v in VALUES if not isinstance(v, bool)] if kind[0] in "gl" else VALUES)
    return {"type": kind, "key": key, "value": value}


async def test_filters_in_sql_agree_with_python(backend: PostgresBackend) -> None:
    rng = random.Random(12)
    dim = 8
    files: dict[str, dict] = {}
    for f in range(40):
        attrs = {k: rng.choice(VALUES) for k in KEYS[:3] if rng.random() < 0.8}
        files[f"file-{f:02d}"] = attrs
        await backend.add("vs", f"file-{f:02d}", [rec(0, np.ones(dim))], attrs)
    checked = nonempty = 0
    for _ in range(300):
        obj = random_filter(rng)
        flt = compile_filter(obj)
        want = {fid for fid, attrs in files.items() if flt.matches(attrs)}
        hits = await backend.search("vs", np.ones(dim), None, k=50, mode="vector", filters=obj)
        assert {h.file_id for h in hits} == want, json.dumps(obj)
        checked += 1
        nonempty += 0 < len(want) < len(files)
    assert checked == 300 and nonempty > 100  # the cases tell files apart, not all or nothing
    # The hits carry the attributes as they were written (1.0 stays a float, True a boolean).
    await backend.add("vs", "typed", [rec(0, np.ones(dim))], {"x": 1.0, "y": True, "z": 1})
    hit = (await backend.search("vs", np.ones(dim), None, filters={"type": "eq", "key": "y", "value": True}))[
        0
    ]
    assert hit.attributes == {"x": 1.0, "y": True, "z": 1} and isinstance(hit.attributes["x"], float)


# -- the HNSW index ------------------------------------------------------------------------------


def clustered(rng: np.random.Generator, n: int, dim: int, centers: np.ndarray) -> np.ndarray:
    return centers[rng.integers(0, len(centers), size=n)] + 0.1 * rng.normal(size=(n, dim))


def brute(vectors: dict[int, np.ndarray], q: np.ndarray, k: int) -> list[int]:
    qn = q / np.linalg.norm(q)
    return sorted(vectors, key=lambda c: -float(vectors[c] @ qn / np.linalg.norm(vectors[c])))[:k]


async def index_scans(url: str, at_least: int = 0) -> int:
    """The HNSW index's scans as the server counts them (it publishes its counters within seconds)."""
    for _ in range(300):
        n = await index_scans_now(url)
        if n >= at_least:
            return n
        await asyncio.sleep(0.1)
    return n


async def index_scans_now(url: str) -> int:
    rows = await fetch(
        url, "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'm2a_vs_chunks_16_hnsw'"
    )
    return int(rows[0]["idx_scan"]) if rows else -1


async def test_the_index_is_built_past_exact_max_and_answers(pg_url: str) -> None:  # noqa: F811
    rng = np.random.default_rng(4)
    dim, per_file = 16, 50
    centers = rng.normal(size=(20, dim))
    b = build_backend("postgres", url=pg_url, exact_max=150)
    try:
        vectors: dict[str, dict[int, np.ndarray]] = {"vs_a": {}, "vs_b": {}}
        for store in ("vs_a", "vs_b"):
            for f in range(8):  # 400 chunks a store, both in one table
                vs = clustered(rng, per_file, dim, centers)
                await b.add(
                    store, f"{store}-f{f}", [rec(i, v) for i, v in enumerate(vs)], {"half": f % 2, "f": f}
                )
        await b.wait_for_index()
        assert (await fetch(pg_url, "SELECT count(*) AS n FROM m2a_vs_chunks_16"))[0]["n"] == 800
        assert b.scans["index"] == 0  # built, not used yet
        # Chunk ids by store, to compare with a brute-force scan.
        for r in await fetch(
            pg_url,
            "SELECT c.id, s.store_id, c.embedding::text AS e FROM m2a_vs_chunks_16 c "
            "JOIN m2a_vs_stores s ON s.sid = c.sid",
        ):
            vectors[r["store_id"]][r["id"]] = np.array(json.loads(r["e"]))
        found = total = 0
        for _ in range(20):
            q = clustered(rng, 1, dim, centers)[0]
            hits = await b.search("vs_a", q, None, k=10, mode="vector")
            assert len(hits) == 10 and all(h.file_id.startswith("vs_a-") for h in hits)
            found += len({h.chunk_id for h in hits} & set(brute(vectors["vs_a"], q, 10)))
            total += 10
            both = await b.search("vs_a", q, "chunk", k=10, weights=(1.0, 1.0))
            assert all(h.file_id.startswith("vs_a-") for h in both)
        assert found / total >= 0.8  # approximate, and close on clustered vectors
        assert b.scans == {"index": 40}  # the index answered, every time
        assert await index_scans(pg_url, 40) >= 40  # and the server agrees
        # A filter that passes more than exact_max chunks still goes through the index, and holds.
        flt = {"type": "eq", "key": "half", "value": 0}
        hits = await b.search("vs_a", q, None, k=20, mode="vector", filters=flt)
        assert len(hits) == 20 and {h.attributes["half"] for h in hits} == {0}
        assert all(h.file_id.startswith("vs_a-") for h in hits)
        assert b.scans == {"index": 41}
        # One that passes fewer is an exact scan: the index is not asked.
        few = {"type": "in", "key": "f", "value": [1, 2]}  # 100 chunks
        hits = await b.search("vs_b", q, None, k=10, mode="vector", filters=few)
        assert len(hits) == 10 and {h.attributes["f"] for h in hits} <= {1, 2}
        assert b.scans == {"index": 41, "exact": 1}
        assert (
            await b.search("vs_a", q, None, mode="vector", filters={"type": "eq", "key": "f", "value": 9})
            == []
        )
        assert b.scans == {"index": 41, "exact": 1}  # nothing passes: no scan at all
    finally:
        await b.close()


async def test_an_index_walk_that_finds_too_few_gives_way_to_the_exact_scan(pg_url: str) -> None:  # noqa: F811
    rng = np.random.default_rng(8)
    dim = 16
    # A store of 80 chunks in a table of 4,080: a walk that may visit 20 entries finds few of them.
    b = build_backend("postgres", url=pg_url, exact_max=50, ef_search=1, max_scan_tuples=20)
    try:
        for f in range(4):
            await b.add("big", f"big-{f}", [rec(i, v) for i, v in enumerate(rng.normal(size=(1000, dim)))])
        small = rng.normal(size=(80, dim))
        await b.add("small", "s", [rec(i, v) for i, v in enumerate(small)])
        await b.wait_for_index()
        for _ in range(5):
            q = rng.normal(size=dim)
            hits = await b.search("small", q, None, k=10, mode="vector")
            want = sorted(range(80), key=lambda i: -float(small[i] @ q / np.linalg.norm(small[i])))[:10]
            assert [h.index for h in hits] == want  # exact: the walk's few were not the answer
        assert b.scans == {"index": 5, "short": 5, "exact": 5}  # the index was tried first
        assert await index_scans(pg_url, 5) >= 5
    finally:
        await b.close()


# -- several processes ---------------------------------------------------------------------------

CHILD = """
import asyncio, json, sys
import numpy as np
from m2a.data.stores import ChunkRecord, build_backend

async def main(url, what):
    b = build_backend("postgres", url=url)
    try:
        if what == "add":
            v = np.zeros(8); v[1] = 1.0
            r = ChunkRecord(0, 0, 20, "written by the child", v)
            await b.add("shared", "from-child", [r], {"by": "child"})
            print(json.dumps({"ok": True}))
        else:
            v = np.zeros(8); v[0] = 1.0
            hits = await b.search("shared", v, "parent", k=10)
            print(json.dumps(sorted({h.file_id for h in hits})))
    finally:
        await b.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def child(url: str, what: str) -> object:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, url, what], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


async def test_another_process_sees_the_writes(backend: PostgresBackend, pg_url: str) -> None:  # noqa: F811
    v = np.zeros(8)
    v[0] = 1.0
    await backend.add("shared", "from-parent", [rec(0, v, "written by the parent")])
    assert await asyncio.to_thread(child, pg_url, "search") == ["from-parent"]
    assert await asyncio.to_thread(child, pg_url, "add") == {"ok": True}
    hits = await backend.search("shared", v, None, k=10, mode="vector")
    assert {h.file_id for h in hits} == {"from-parent", "from-child"}
    assert await backend.file_ids("shared") == ["from-child", "from-parent"]
    await backend.delete_file("shared", "from-parent")
    assert await asyncio.to_thread(child, pg_url, "search") == ["from-child"]
    await backend.delete_store("shared")
    with pytest.raises(StoreNotFound):
        await backend.search("shared", v, None)


async def test_gateways_starting_together_share_one_schema(pg_url: str) -> None:  # noqa: F811
    # Four instances on a fresh database: their first calls create the tables and the same new
    # dimension's table at once, and write to one store and to their own.
    backends = [build_backend("postgres", url=pg_url) for _ in range(4)]
    try:

        async def work(i: int) -> None:
            b = backends[i]
            for j in range(3):
                v = np.random.default_rng(i * 10 + j).normal(size=24)
                await b.add("common", f"p{i}-f{j}", [rec(0, v, f"process {i} file {j}")], {"p": i})
                await b.add(f"own-{i}", f"f{j}", [rec(0, v)])

        await asyncio.gather(*(work(i) for i in range(4)))
        for b in backends:
            assert len(await b.file_ids("common")) == 12
            hits = await b.search("common", np.ones(24), None, k=50, mode="vector")
            assert len(hits) == 12
        rows = await fetch(pg_url, "SELECT store_id, chunks FROM m2a_vs_stores ORDER BY store_id")
        assert [(r["store_id"], r["chunks"]) for r in rows] == [("common", 12)] + [
            (f"own-{i}", 3) for i in range(4)
        ]
    finally:
        for b in backends:
            await b.close()


# -- hostile input, words ------------------------------------------------------------------------


async def test_hostile_ids_keys_and_text_stay_data(backend: PostgresBackend, pg_url: str) -> None:  # noqa: F811
    store = "vs'; DROP TABLE m2a_vs_stores; --"
    file_id = 'f"); DELETE FROM m2a_vs_files; --'
    key = "k' OR '1'='1"
    await backend.add(store, file_id, [rec(0, np.ones(8), "bolt washer")], {key: "x' OR 1=1 --"})
    await backend.add("other", "secret", [rec(0, np.ones(8), "bolt washer")], {"k": "v"})
    for flt in [
        {"type": "eq", "key": key, "value": "x' OR 1=1 --"},
        {"type": "gt", "key": "k')::numeric > 0 OR ('", "value": 1},
        {"type": "in", "key": key, "value": ["'; SELECT pg_sleep(10); --", "x' OR 1=1 --"]},
    ]:
        hits = await backend.search(store, np.ones(8), "bolt", filters=flt)
        assert {h.file_id for h in hits} <= {file_id}
    assert [h.file_id for h in await backend.search(store, np.ones(8), "bolt")] == [file_id]
    for text in ["bolt & !washer", "bolt:* | washer", "'bolt' <-> 'washer'", "(((", "\\", "bolt\x00washer"]:
        await backend.search(store, np.ones(8), text, mode="hybrid", weights=(1.0, 1.0))
        await backend.search(store, None, text, mode="keyword")
    tables = {
        r["tablename"]
        for r in await fetch(pg_url, "SELECT tablename FROM pg_tables WHERE tablename LIKE 'm2a_vs_%'")
    }
    assert tables == {"m2a_vs_stores", "m2a_vs_files", "m2a_vs_chunks_8"}
    assert await backend.file_ids("other") == ["secret"]
    # A chunk's NUL (PostgreSQL text has none) is stored as U+FFFD, not refused.
    await backend.add("nul", "f", [rec(0, np.ones(8), "a\x00b")])
    assert [h.text for h in await backend.search("nul", np.ones(8), None, mode="vector")] == ["a\ufffdb"]


async def test_keyword_words_fold_and_stem_alike(backend: PostgresBackend) -> None:
    texts = [
        "Café crème brûlée is served after lunch",
        "The pumps were replaced by the maintenance team",
        "Set sync.batch_size to 500 for large imports",
        "Part XK-4471-B ships in boxes of ten",
    ]
    await backend.add("vs", "f", [rec(i, np.ones(8), t) for i, t in enumerate(texts)])
    for query, want in [
        ("cafe", 0),
        ("CAFÉ CRÈME", 0),
        ("pump replacement", 1),
        ("sync.batch_size", 2),
        ("batch_size", 2),
        ("xk-4471-b", 3),
        ("XK 4471 B", 3),
    ]:
        hits = await backend.search("vs", None, query, mode="keyword")
        assert hits and hits[0].index == want, query
        assert 0.0 < hits[0].score < 1.0
    assert await backend.search("vs", None, "XK-4471-C", mode="keyword") == []  # the phrase, not its parts
    assert await backend.search("vs", None, "the of and", mode="keyword") == []  # only common words


# -- configuration and the data API ------------------------------------------------------------


def test_data_config_postgres() -> None:
    assert DataConfig(backend="postgres", postgres_url="postgresql://u@h/db").postgres_url
    with pytest.raises(pydantic.ValidationError, match="postgresql:// URL"):
        DataConfig(backend="postgres", postgres_url="mysql://u@h/db")
    with pytest.raises(pydantic.ValidationError):
        DataConfig(backend="faiss")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="postgresql:// URL"):
        build_backend("postgres", url="sqlite:///x.db")


async def test_postgres_backend_needs_a_url_or_a_postgres_database(tmp_path: Path) -> None:
    db = await open_store(None, tmp_path / "home")  # SQLite
    try:
        with pytest.raises(ValueError, match="needs data.postgres_url"):
            open_backend(DataConfig(backend="postgres"), tmp_path, IdentityStore(db))
    finally:
        await db.dispose()


@pytest_asyncio.fixture(loop_scope="function")
async def engine() -> AsyncIterator[FakeEngine]:
    fake = FakeEngine()
    fake.embed = "hash"
    await fake.start()
    yield fake
    await fake.stop()


@contextlib.asynccontextmanager
async def gateway(
    engine: FakeEngine, identity: IdentityStore, home: Path, data: DataConfig
) -> AsyncIterator[GW]:
    import httpx

    app = create_app(
        make_pool(engine),
        ADMIN,
        GatewayConfig(),
        identity=identity,
        usage_store=identity.engine,
        home=home,
        data=data,
    )
    async with (
        live(app, TIMEOUT) as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT, trust_env=False) as http,
    ):
        yield GW(app, url, http)


async def test_data_api_on_postgres(engine: FakeEngine, pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    db = await open_store(None, tmp_path / "home")  # the identity store on SQLite, vectors on PostgreSQL
    identity = IdentityStore(db)
    try:
        key = await team(identity, "team-a")
        other = await team(identity, "team-b")
        data = DataConfig(embedding_model=EMBED, backend="postgres", postgres_url=pg_url)
        async with gateway(engine, identity, tmp_path / "data", data) as gw:
            assert isinstance(gw.app.state.data.backend, PostgresBackend)
            c = gw.client(key)
            vs = await c.vector_stores.create(name="docs")
            a = await uploaded(c, vs.id, "refunds.md", REFUNDS, attributes={"kind": "policy", "year": 2024})
            b = await uploaded(c, vs.id, "rockets.md", ROCKETS, attributes={"kind": "manual", "year": 2021})
            assert a.status == b.status == "completed"
            got = await c.vector_stores.retrieve(vs.id)
            assert (
                got.usage_bytes
                == a.usage_bytes + b.usage_bytes
                == await gw.app.state.data.backend.usage_bytes(vs.id)
            )
            res = await c.vector_stores.search(vs.id, query="refund of an invoice")
            assert res.data[0].file_id == a.id and res.data[0].attributes == {"kind": "policy", "year": 2024}
            filt = {"type": "eq", "key": "kind", "value": "manual"}
            res = await c.vector_stores.search(vs.id, query="refund of an invoice", filters=filt)
            assert {h.file_id for h in res.data} == {b.id}
            import openai

            with pytest.raises(openai.NotFoundError):
                await gw.client(other).vector_stores.search(vs.id, query="refund")
            await c.vector_stores.files.delete(file_id=a.id, vector_store_id=vs.id)
            res = await c.vector_stores.search(vs.id, query="refund of an invoice")
            assert {h.file_id for h in res.data} == {b.id}
        rows = await fetch(pg_url, "SELECT store_id, chunks FROM m2a_vs_stores")
        assert [r["store_id"] for r in rows] == [vs.id]
    finally:
        await db.dispose()


async def test_two_gateways_on_one_postgres_database(engine: FakeEngine, pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    # The identity store and the vectors in the same PostgreSQL database (no postgres_url: the
    # gateway's own), two gateways on it: a store made and filled through one is searched through
    # the other.
    db1 = await open_store(pg_url, tmp_path / "h1")
    db2 = await open_store(pg_url, tmp_path / "h2")
    try:
        id1, id2 = IdentityStore(db1), IdentityStore(db2)
        key = await team(id1, "team-a")
        data = DataConfig(embedding_model=EMBED, backend="postgres")
        async with (
            gateway(engine, id1, tmp_path / "d1", data) as g1,
            gateway(engine, id2, tmp_path / "d2", data) as g2,
        ):
            vs = await g1.client(key).vector_stores.create(name="shared")
            f = await uploaded(g1.client(key), vs.id, "refunds.md", REFUNDS)
            assert f.status == "completed"
            res = await g2.client(key).vector_stores.search(vs.id, query="refund of an invoice")
            assert [h.file_id for h in res.data] == [f.id]
        tables = {r["tablename"] for r in await fetch(pg_url, "SELECT tablename FROM pg_tables")}
        assert {"teams", "vector_stores", "m2a_vs_stores", "m2a_vs_chunks_64"} <= tables
    finally:
        await db1.dispose()
        await db2.dispose()
