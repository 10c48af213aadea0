"""The data services end to end: the official ``openai`` client against a live gateway (uvicorn on a
loopback port) over a fresh SQLite store, with ingestion embedding through the gateway's own
``/v1/embeddings`` into the aiohttp fake engine in its hashed bag-of-words mode (tests/fake_engine.py:
deterministic 64-d vectors that search can tell apart; the test is about the API and ingestion, not
about embedding quality). Nothing asserts on wall-clock times; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from sqlalchemy import select

from m2a.config import DataConfig, GatewayConfig
from m2a.data.stores import ChunkRecord, build_backend
from m2a.gateway.access import ON_BEHALF_HEADER
from m2a.gateway.app import create_app
from m2a.principal import AgentRef
from m2a.router.pool import Endpoint, Pool
from m2a.store.data import DataStore
from m2a.store.identity import IdentityStore, Principal
from m2a.store.ledger import Ledger
from m2a.store.schema import Usage
from tests import gateway_fixtures
from tests.fake_engine import FakeEngine, hash_embedding
from tests.live_app import live

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN = "sk-data-admin-" + "d" * 24
EMBED = "embed"
TIMEOUT = 30.0
MAX_FILE = 64 * 1024

store = gateway_fixtures.store  # a fresh, migrated SQLite identity store per test

REFUNDS = (
    b"# Refunds\n\nCustomers may ask for a refund of an invoice within thirty days. The refund goes "
    b"back to the card that paid the invoice; finance approves refunds above one thousand euros.\n"
)
ROCKETS = (
    b"# Launch checklist\n\nThe rocket engine is fuelled with liquid oxygen and kerosene. Before the "
    b"launch the crew checks the valves, the telemetry link and the weather over the range.\n"
)


@dataclass
class GW:
    app: Any
    url: str
    http: httpx.AsyncClient

    def client(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT)

    async def idle(self) -> None:
        await asyncio.wait_for(self.app.state.data.ingestor.idle(), TIMEOUT)


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    fake = FakeEngine()
    fake.embed = "hash"
    await fake.start()
    yield fake
    await fake.stop()


def make_pool(engine: FakeEngine, kind: str = "remote") -> Pool:
    pool = Pool()
    pool.add(Endpoint("embed-0", EMBED, engine.url, task="embed", engine=kind, healthy=True))
    return pool


@contextlib.asynccontextmanager
async def serve(
    engine: FakeEngine, store: IdentityStore, home: Path, ledger: Ledger | None = None, kind: str = "remote"
) -> AsyncIterator[GW]:
    app = create_app(
        make_pool(engine, kind),
        ADMIN,
        GatewayConfig(),
        identity=store,
        ledger=ledger,
        usage_store=store.engine,
        home=home,
        data=DataConfig(embedding_model=EMBED, max_file_bytes=MAX_FILE),
    )
    async with (
        live(app, TIMEOUT) as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT, trust_env=False) as http,
    ):
        yield GW(app, url, http)


async def team(store: IdentityStore, name: str, grant: bool = True) -> str:
    await store.create_team(name)
    if grant:
        await store.grant(name, EMBED)
    return (await store.create_key(name, f"{name}-key"))[0]


@pytest_asyncio.fixture
async def gw(engine: FakeEngine, store: IdentityStore, tmp_path: Path) -> AsyncIterator[GW]:
    async with serve(engine, store, tmp_path / "data") as g:
        try:
            yield g
        finally:
            engine.release()


async def uploaded(client: openai.AsyncOpenAI, store_id: str, name: str, data: bytes, **kw: Any) -> Any:
    return await client.vector_stores.files.upload_and_poll(
        vector_store_id=store_id, file=(name, data), max_wait_seconds=TIMEOUT, **kw
    )


# ---------------------------------------------------------------------------- the main path
async def test_upload_ingest_search_and_pages(
    engine: FakeEngine, store: IdentityStore, tmp_path: Path
) -> None:
    key = await team(store, "team-a")
    ledger = Ledger(store.engine, tmp_path / "ledger")
    async with serve(engine, store, tmp_path / "data", ledger) as gw:
        c = gw.client(key)
        f = await c.files.create(file=("notes.txt", b"plain notes about nothing"), purpose="assistants")
        assert f.id.startswith("file-") and f.bytes == 25 and f.filename == "notes.txt"
        assert (await c.files.retrieve(f.id)).id == f.id
        assert await (await c.files.content(f.id)).aread() == b"plain notes about nothing"

        vs = await c.vector_stores.create(name="docs", metadata={"owner": "finance"})
        assert vs.id.startswith("vs_") and vs.file_counts.total == 0 and vs.metadata == {"owner": "finance"}
        a = await uploaded(c, vs.id, "refunds.md", REFUNDS, attributes={"kind": "policy", "year": 2024})
        b = await uploaded(c, vs.id, "rockets.md", ROCKETS, attributes={"kind": "manual", "year": 2021})
        for vf in (a, b):
            assert vf.status == "completed", vf.last_error
            assert vf.usage_bytes > 0 and vf.last_error is None
        assert a.attributes == {"kind": "policy", "year": 2024}
        assert a.chunking_strategy is not None and a.chunking_strategy.type == "static"

        got = await c.vector_stores.retrieve(vs.id)
        assert got.status == "completed"
        assert got.file_counts.completed == 2 and got.file_counts.total == 2
        assert got.usage_bytes == a.usage_bytes + b.usage_bytes  # per file, as the backend counts it
        assert got.usage_bytes == await gw.app.state.data.backend.usage_bytes(vs.id)

        res = await c.vector_stores.search(vs.id, query="refund of an invoice")
        assert res.data and res.data[0].file_id == a.id and res.data[0].filename == "refunds.md"
        assert "refund" in res.data[0].content[0].text and 0 < res.data[0].score <= 1
        assert res.data[0].attributes == {"kind": "policy", "year": 2024}
        res = await c.vector_stores.search(vs.id, query=["rocket", "launch valves"], max_num_results=1)
        assert [h.file_id for h in res.data] == [b.id]
        filt = {"type": "eq", "key": "kind", "value": "manual"}
        res = await c.vector_stores.search(vs.id, query="refund of an invoice", filters=filt)
        assert {h.file_id for h in res.data} == {b.id}  # the filter beats the better match
        cmp = {"type": "and", "filters": [{"type": "gte", "key": "year", "value": 2022}, filt]}
        assert (await c.vector_stores.search(vs.id, query="refund", filters=cmp)).data == []
        res = await c.vector_stores.search(
            vs.id, query="refund", ranking_options={"score_threshold": 1.0}, rewrite_query=True
        )
        assert all(h.score >= 1.0 for h in res.data)
        with pytest.raises(openai.BadRequestError):
            await c.vector_stores.search(vs.id, query="x", max_num_results=51)
        with pytest.raises(openai.BadRequestError):
            await c.vector_stores.search(vs.id, query="x", filters={"type": "near", "key": "k", "value": 1})

        # pages: vector store files, files and stores, forwards and backwards
        first = await c.vector_stores.files.list(vs.id, limit=1, order="asc")
        assert [x.id for x in first.data] == [a.id] and first.has_more
        nxt = await c.vector_stores.files.list(vs.id, limit=1, order="asc", after=a.id)
        assert [x.id for x in nxt.data] == [b.id] and not nxt.has_more
        back = await c.vector_stores.files.list(vs.id, limit=5, order="asc", before=b.id)
        assert [x.id for x in back.data] == [a.id]
        assert [x.id async for x in c.vector_stores.files.list(vs.id, limit=1)] == [b.id, a.id]
        done = await c.vector_stores.files.list(vs.id, filter="completed")
        assert len(done.data) == 2
        files = [x.id async for x in c.files.list(limit=2)]
        assert len(files) == 3 and files[-1] == f.id  # newest first
        raw = (await gw.http.get("/v1/files?limit=1", headers={"authorization": f"Bearer {key}"})).json()
        assert raw["object"] == "list" and raw["has_more"] and raw["first_id"] == raw["last_id"]
        vs2 = await c.vector_stores.create(name="second")
        assert [x.id async for x in c.vector_stores.list(limit=1)] == [vs2.id, vs.id]
        with pytest.raises(openai.BadRequestError):
            await c.vector_stores.list(after="vs_nope")

        content = await c.vector_stores.files.content(a.id, vector_store_id=vs.id)
        assert "thirty days" in content.data[0].text

        # attributes change, detach, delete
        upd = await c.vector_stores.files.update(a.id, vector_store_id=vs.id, attributes={"kind": "manual"})
        assert (
            upd.attributes == {"kind": "manual"} and upd.usage_bytes == a.usage_bytes - 12
        )  # 12 fewer JSON bytes
        res = await c.vector_stores.search(vs.id, query="refund of an invoice", filters=filt)
        assert a.id in {h.file_id for h in res.data}
        renamed = await c.vector_stores.update(
            vs.id, name="docs-2", expires_after={"anchor": "last_active_at", "days": 7}
        )
        assert renamed.name == "docs-2" and renamed.expires_at is not None
        deleted = await c.vector_stores.files.delete(b.id, vector_store_id=vs.id)
        assert deleted.deleted
        assert (await c.vector_stores.retrieve(vs.id)).usage_bytes == upd.usage_bytes
        assert await gw.app.state.data.backend.file_ids(vs.id) == [a.id]
        assert (await c.files.delete(a.id)).deleted  # a deleted file leaves every store
        assert (await c.vector_stores.retrieve(vs.id)).file_counts.total == 0
        assert await gw.app.state.data.backend.file_ids(vs.id) == []
        with pytest.raises(openai.NotFoundError):
            await c.files.retrieve(a.id)
        assert (await c.vector_stores.delete(vs2.id)).deleted
        with pytest.raises(openai.NotFoundError):
            await c.vector_stores.retrieve(vs2.id)

        # the admin key owns no data
        resp = await gw.http.get("/v1/vector_stores", headers={"authorization": f"Bearer {ADMIN}"})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "team_required"

    # every embedding went through the gateway, on team-a's account (ledger flushed at shutdown)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(Usage.__table__))).mappings().all()
    embeds = [r for r in rows if r["route"] == "/v1/embeddings"]
    assert len(embeds) == 8  # 2 files + 6 searches (the 2 refused ones were not embedded)
    assert {r["team"] for r in embeds} == {"team-a"} and {r["key_prefix"] for r in embeds} == {"internal"}
    words = len(REFUNDS.split()) // 2  # the engine counts one token per word: at least this many
    assert sum(r["input_tokens"] for r in embeds) > words


async def test_batches(gw: GW, store: IdentityStore) -> None:
    c = gw.client(await team(store, "team-a"))
    vs = await c.vector_stores.create(name="b")
    ids = [
        (await c.files.create(file=(f"f{i}.txt", b"word " * (i + 3)), purpose="assistants")).id
        for i in range(3)
    ]
    batch = await c.vector_stores.file_batches.create_and_poll(
        vs.id, file_ids=ids, attributes={"src": "batch"}
    )
    assert batch.status == "completed" and batch.file_counts.completed == 3 and batch.file_counts.total == 3
    listed = await c.vector_stores.file_batches.list_files(batch.id, vector_store_id=vs.id)
    assert {x.id for x in listed.data} == set(ids) and all(
        x.attributes == {"src": "batch"} for x in listed.data
    )
    with_vs = await c.vector_stores.create(name="with files", file_ids=ids[:2])
    await gw.idle()
    assert (await c.vector_stores.retrieve(with_vs.id)).file_counts.completed == 2
    cancelled = await c.vector_stores.file_batches.cancel(batch.id, vector_store_id=vs.id)
    assert cancelled.status == "cancelled"


# ---------------------------------------------------------------------------- tenancy
async def test_another_teams_objects_are_404(gw: GW, store: IdentityStore) -> None:
    a = gw.client(await team(store, "team-a"))
    b = gw.client(await team(store, "team-b"))
    vs = await a.vector_stores.create(name="secret")
    f = await uploaded(a, vs.id, "refunds.md", REFUNDS)
    mine = await b.vector_stores.create(name="mine")
    calls = [
        b.vector_stores.retrieve(vs.id),
        b.vector_stores.update(vs.id, name="x"),
        b.vector_stores.delete(vs.id),
        b.vector_stores.search(vs.id, query="refund"),
        b.vector_stores.files.list(vs.id),
        b.vector_stores.files.retrieve(f.id, vector_store_id=vs.id),
        b.files.retrieve(f.id),
        b.files.delete(f.id),
        b.vector_stores.files.create(mine.id, file_id=f.id),  # attaching another team's file
        b.vector_stores.file_batches.create(mine.id, file_ids=[f.id]),
        b.vector_stores.create(name="steal", file_ids=[f.id]),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError):
            await call
    resp = await gw.http.get(f"/v1/files/{f.id}/content", headers={"authorization": f"Bearer {b.api_key}"})
    assert resp.status_code == 404
    assert [x.id async for x in b.vector_stores.list()] == [mine.id]
    assert [x.id async for x in b.files.list()] == []
    assert (await a.vector_stores.retrieve(vs.id)).file_counts.completed == 1  # untouched


async def test_an_agent_reads_only_the_stores_its_data_scopes_name(gw: GW, store: IdentityStore) -> None:
    """An agent's principal carries its manifest's data_scopes (agents/verify.py); the data API
    lets it read and search those stores only, and change nothing. The token here is a stand-in
    (Access.tokens): the test is about the data API's rule, tests/agents/ about the real tokens."""
    key_a = await team(store, "team-a")
    a = gw.client(key_a)
    open_vs = await a.vector_stores.create(name="handbook")
    f = await uploaded(a, open_vs.id, "refunds.md", REFUNDS)
    closed_vs = await a.vector_stores.create(name="payroll")
    await uploaded(a, closed_vs.id, "rockets.md", ROCKETS)
    team_a = await store.principal(key_a)
    assert team_a is not None
    agent = replace(
        team_a, key_prefix="agent:1", agent=AgentRef("spiffe://m2a.local/team/team-a/agent/bot", 1, "bot"),
        data_scopes=frozenset({open_vs.id}),
    )  # fmt: skip
    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJib3QifQ.c2ln"  # JWT-shaped: it goes to Access.tokens

    async def verify(presented: str) -> Principal:
        assert presented == token
        return agent

    gw.app.state.access.tokens = verify
    bot = gw.client(token)
    assert (await bot.vector_stores.retrieve(open_vs.id)).id == open_vs.id
    hits = await bot.vector_stores.search(open_vs.id, query="refund of an invoice")
    assert hits.data and hits.data[0].file_id == f.id
    assert [x.id async for x in bot.vector_stores.files.list(open_vs.id)] == [f.id]
    assert (await bot.vector_stores.files.retrieve(f.id, vector_store_id=open_vs.id)).id == f.id
    assert [x.id async for x in bot.vector_stores.list()] == [open_vs.id]  # the other one is not listed
    for call in (
        bot.vector_stores.retrieve(closed_vs.id),
        bot.vector_stores.search(closed_vs.id, query="rocket"),
        bot.vector_stores.files.list(closed_vs.id),
    ):
        with pytest.raises(openai.NotFoundError):
            await call
    for call in (
        bot.vector_stores.create(name="mine"),
        bot.vector_stores.update(open_vs.id, name="x"),
        bot.vector_stores.delete(open_vs.id),
        bot.vector_stores.files.delete(f.id, vector_store_id=open_vs.id),
        bot.files.list(),
        bot.files.retrieve(f.id),
        bot.files.create(file=("x.md", b"# x\n"), purpose="assistants"),
    ):
        with pytest.raises(openai.PermissionDeniedError) as err:
            await call
        assert err.value.code == "agent_read_only"
    assert (await a.vector_stores.retrieve(open_vs.id)).file_counts.completed == 1  # untouched


# ---------------------------------------------------------------------------- bad input
async def test_bad_files_fail_with_last_error(gw: GW, store: IdentityStore) -> None:
    c = gw.client(await team(store, "team-a"))
    vs = await c.vector_stores.create(name="bad")
    corrupt = await uploaded(c, vs.id, "broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage")
    assert corrupt.status == "failed" and corrupt.last_error is not None
    assert corrupt.last_error.code == "invalid_file" and "PDF" in corrupt.last_error.message
    png = await uploaded(c, vs.id, "image.txt", b"\x89PNG\r\n\x1a\n" + bytes(64))
    assert png.status == "failed" and png.last_error.code == "unsupported_file"
    empty = await uploaded(c, vs.id, "empty.txt", b"")
    assert empty.status == "failed" and "empty" in empty.last_error.message
    got = await c.vector_stores.retrieve(vs.id)
    assert got.file_counts.failed == 3 and got.usage_bytes == 0
    with pytest.raises(openai.APIStatusError) as exc:
        await c.files.create(file=("big.txt", b"x" * (MAX_FILE + 1)), purpose="assistants")
    assert exc.value.status_code == 413
    with pytest.raises(openai.BadRequestError):
        await c.files.create(file=("a.txt", b"abc"), purpose="nonsense")  # type: ignore[arg-type]
    small = await c.files.create(file=("a.txt", b"abc"), purpose="assistants")
    tiny = {"type": "static", "static": {"max_chunk_size_tokens": 50, "chunk_overlap_tokens": 0}}
    with pytest.raises(openai.BadRequestError):  # chunks of at least 100 tokens
        await c.vector_stores.files.create(vs.id, file_id=small.id, chunking_strategy=tiny)  # type: ignore[arg-type]


async def test_ungranted_model_and_quota_fail_the_file(gw: GW, store: IdentityStore) -> None:
    c = gw.client(await team(store, "team-n", grant=False))
    vs = await c.vector_stores.create(name="n")
    vf = await uploaded(c, vs.id, "refunds.md", REFUNDS)
    assert vf.status == "failed" and vf.last_error.code == "server_error"
    assert "granted" in vf.last_error.message and EMBED in vf.last_error.message

    q = gw.client(await team(store, "team-q"))
    resp = await gw.http.put(
        "/admin/v1/teams/team-q/quotas",
        headers={"authorization": f"Bearer {ADMIN}"},
        json={"limits": [{"metric": "tokens", "window": "day", "limit": 5}]},
    )
    assert resp.status_code == 200, resp.text
    vs = await q.vector_stores.create(name="q")
    vf = await uploaded(q, vs.id, "refunds.md", REFUNDS)
    assert (
        vf.status == "failed"
        and "quota" in vf.last_error.message
        and "5 tokens per day" in vf.last_error.message
    )
    with pytest.raises(openai.RateLimitError):
        await q.vector_stores.search(vs.id, query="refund of an invoice and more words than five")


# ---------------------------------------------------------------------------- ingestion's edges
async def test_delete_during_ingestion(gw: GW, engine: FakeEngine, store: IdentityStore) -> None:
    c = gw.client(await team(store, "team-a"))
    backend = gw.app.state.data.backend
    for what in ("file", "store"):
        engine.gate = asyncio.Event()
        engine.started.clear()
        vs = await c.vector_stores.create(name=what)
        f = await c.files.create(file=("refunds.md", REFUNDS), purpose="assistants")
        vf = await c.vector_stores.files.create(vs.id, file_id=f.id)
        assert vf.status == "in_progress"
        await asyncio.wait_for(engine.started.wait(), TIMEOUT)  # its embeddings are at the engine
        assert (await c.vector_stores.retrieve(vs.id)).status == "in_progress"
        if what == "file":
            await c.vector_stores.files.delete(f.id, vector_store_id=vs.id)
        else:
            await c.vector_stores.delete(vs.id)
        engine.release()
        await gw.idle()
        with pytest.raises(openai.NotFoundError):
            await c.vector_stores.files.retrieve(f.id, vector_store_id=vs.id)
        if what == "file":
            assert await backend.file_ids(vs.id) == []
            got = await c.vector_stores.retrieve(vs.id)
            assert got.usage_bytes == 0 and got.file_counts.total == 0 and got.status == "completed"
        else:
            assert not await backend.has_store(vs.id)
    engine.gate = None


async def test_internal_token_needs_its_header_and_vice_versa(gw: GW, store: IdentityStore) -> None:
    key = await team(store, "team-a")
    p = await store.lookup(key)
    assert isinstance(p, Principal) and p.team_id is not None
    token = gw.app.state.access.internal_token
    body = {"model": EMBED, "input": "hello world"}

    async def post(bearer: str, on_behalf: str | None) -> httpx.Response:
        headers = {"authorization": f"Bearer {bearer}"}
        if on_behalf is not None:
            headers[ON_BEHALF_HEADER] = on_behalf
        return await gw.http.post("/v1/embeddings", json=body, headers=headers)

    assert (await post(token, None)).status_code == 401
    assert (await post(key, str(p.team_id))).status_code == 401
    assert (await post(ADMIN, str(p.team_id))).status_code == 401
    assert (await post(token + "x", str(p.team_id))).status_code == 401
    assert (await post(token, "99999")).status_code == 401
    assert (await post(token, "team-a")).status_code == 401  # an id, not a name
    ok = await post(token, str(p.team_id))
    assert ok.status_code == 200 and ok.json()["data"][0]["embedding"] == hash_embedding("hello world")[0]
    assert (await post(key, None)).status_code == 200
    internal = await store.team_principal(p.team_id)
    assert internal is not None and internal.key_id == 0 and internal.key_prefix == "internal"
    assert internal.models == p.models and internal.team == "team-a" and internal.limits == p.limits


async def test_restart_requeues_what_a_killed_gateway_left(
    engine: FakeEngine, store: IdentityStore, tmp_path: Path
) -> None:
    key = await team(store, "team-a")
    home = tmp_path / "data"
    async with serve(engine, store, home) as gw:
        c = gw.client(key)
        vs = await c.vector_stores.create(name="r")
        f = await c.files.create(file=("refunds.md", REFUNDS), purpose="assistants")
    # A gateway killed mid-job: the row says in_progress and the backend holds a stale half.
    p = await store.lookup(key)
    assert isinstance(p, Principal) and p.team_id is not None
    rows = DataStore(store.engine)
    strategy = {"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}
    await rows.attach(p.team_id, vs.id, f.id, {"k": "v"}, strategy)
    backend = build_backend("sqlite", path=home / "vectors.db")
    stale, _ = hash_embedding("zebra stale half")
    await backend.add(vs.id, f.id, [ChunkRecord(0, 0, 16, "zebra stale half", stale)])
    await backend.close()
    async with serve(engine, store, home) as gw:
        c = gw.client(key)
        # polling (a data request) teaches the restarted service its own address: the job goes on
        vf = await c.vector_stores.files.poll(f.id, vector_store_id=vs.id, max_wait_seconds=TIMEOUT)
        assert vf.status == "completed" and vf.attributes == {"k": "v"}
        res = await c.vector_stores.search(vs.id, query="zebra stale half refund")
        assert res.data and all("zebra" not in h.content[0].text for h in res.data)
        assert all("refund" in h.content[0].text.lower() for h in res.data)
        got = await c.vector_stores.retrieve(vs.id)
        assert got.usage_bytes == vf.usage_bytes > 0
    leftovers = await DataStore(store.engine).in_progress()
    assert leftovers == []
    assert json.loads(json.dumps(got.model_dump()))["file_counts"]["completed"] == 1


# ---------------------------------------------------------------------------- the CLI
async def test_cli_ingest_stores_search(gw: GW, store: IdentityStore, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from m2a.cli import app as cli

    key = await team(store, "team-a")
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "refunds.md").write_bytes(REFUNDS)
    (docs / "sub" / "rockets.md").write_bytes(ROCKETS)
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 nothing else")
    env = {"M2A_HOME": str(tmp_path / "cli-home"), "M2A_API_KEY": key}
    base = ["--url", gw.url + "/v1"]

    def m2a(*args: str) -> Any:
        return CliRunner().invoke(cli, list(args), env=env)

    done = await asyncio.to_thread(
        m2a, "data", "ingest", str(docs), "--store", "handbook", "--attr", "v=2", *base
    )
    assert done.exit_code == 0, done.output
    assert done.output.count("completed") == 2 and "handbook" in done.output
    bad = await asyncio.to_thread(
        m2a, "data", "ingest", str(tmp_path / "broken.pdf"), "-s", "handbook", *base
    )
    assert bad.exit_code == 1 and "failed" in bad.output and "PDF" in bad.output
    listed = await asyncio.to_thread(m2a, "data", "stores", "--json", *base)
    [vs] = json.loads(listed.output)  # the second ingest found the store by its name
    assert (
        vs["name"] == "handbook" and vs["file_counts"]["completed"] == 2 and vs["file_counts"]["failed"] == 1
    )
    found = await asyncio.to_thread(
        m2a, "data", "search", "handbook", "rocket launch valves", "--json", *base
    )
    hits = json.loads(found.output)["data"]
    assert hits[0]["filename"] == "rockets.md" and hits[0]["attributes"] == {"v": 2}
    flt = json.dumps({"type": "eq", "key": "v", "value": 3})
    none = await asyncio.to_thread(m2a, "data", "search", "handbook", "rocket", "--filter", flt, *base)
    assert none.exit_code == 0 and "no results" in none.output
    env.pop("M2A_API_KEY")
    assert (await asyncio.to_thread(m2a, "data", "stores", *base)).exit_code == 2


async def test_vllm_truncates_long_chunks_instead_of_refusing(
    engine: FakeEngine, store: IdentityStore, tmp_path: Path
) -> None:
    key = await team(store, "team-a")
    for kind, extra in (("vllm", {"truncate_prompt_tokens": -1}), ("remote", {})):
        engine.requests.clear()
        async with serve(engine, store, tmp_path / kind, kind=kind) as gw:
            c = gw.client(key)
            vs = await c.vector_stores.create(name=kind)
            assert (await uploaded(c, vs.id, "refunds.md", REFUNDS)).status == "completed"
        [req] = [r for r in engine.requests if r.path == "/v1/embeddings"]
        assert {k: v for k, v in req.json.items() if k == "truncate_prompt_tokens"} == extra


# ---------------------------------------------------------------------------- storage quota, expiry
def _admin() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN}"}


async def _storage_quota(gw: GW, team_name: str, limit: int, **extra: Any) -> httpx.Response:
    body = {"limits": [{"metric": "storage_bytes", "limit": limit}], **extra}
    return await gw.http.put(f"/admin/v1/teams/{team_name}/quotas", headers=_admin(), json=body)


async def test_storage_quota_holds_the_teams_usage_bytes(
    gw: GW, engine: FakeEngine, store: IdentityStore
) -> None:
    """A team's ``storage_bytes`` quota: a file that would pass it fails (before its chunks are
    embedded, so no tokens are spent on it), attaching to a full team is 429, the quota's use is what
    the team's stores hold, and requests' admission ignores it."""
    key = await team(store, "team-s")
    c = gw.client(key)
    vs = await c.vector_stores.create(name="s")
    first = await uploaded(c, vs.id, "refunds.md", REFUNDS)
    assert first.status == "completed" and first.usage_bytes > 0

    # Room for 10 more bytes: the next file's text alone does not fit.
    limit = first.usage_bytes + 10
    resp = await _storage_quota(gw, "team-s", limit)
    assert resp.status_code == 200, resp.text
    embeds = sum(r.path.endswith("/embeddings") for r in engine.requests)
    second = await uploaded(c, vs.id, "rockets.md", ROCKETS)
    assert second.status == "failed" and second.last_error.code == "insufficient_quota"
    assert f"quota of {limit}" in second.last_error.message
    assert sum(r.path.endswith("/embeddings") for r in engine.requests) == embeds  # nothing embedded
    res = await c.vector_stores.search(vs.id, query="rocket engine liquid oxygen")
    assert all("rocket" not in h.content[0].text.lower() for h in res.data)

    # The quota's use is what the stores hold; a team key sees it too.
    usage = await gw.http.get("/admin/v1/quotas/usage", params={"team": "team-s"}, headers=_admin())
    [row] = [q for q in usage.json() if q["metric"] == "storage_bytes"]
    assert row["used"] == first.usage_bytes and row["window"] == "-" and row["resets_at"] is None

    # Full: attaching is refused at once.
    resp = await _storage_quota(gw, "team-s", first.usage_bytes)
    assert resp.status_code == 200
    f = await c.files.create(file=("rockets.md", ROCKETS), purpose="assistants")
    with pytest.raises(openai.RateLimitError) as err:
        await c.vector_stores.files.create(vector_store_id=vs.id, file_id=f.id)
    assert err.value.code == "insufficient_quota" and "storage_bytes" in err.value.message
    with pytest.raises(openai.RateLimitError):
        await c.vector_stores.file_batches.create(vector_store_id=vs.id, file_ids=[f.id])
    with pytest.raises(openai.RateLimitError):
        await c.vector_stores.create(name="more", file_ids=[f.id])
    # Not a request limit: embeddings (and searches) go on.
    assert (await c.embeddings.create(model=EMBED, input="still served")).data
    # Deleting the file frees the room.
    await c.files.delete(first.id)
    vf = await uploaded(c, vs.id, "rockets.md", ROCKETS)
    assert vf.status == "completed"


async def test_storage_quota_is_a_teams_windowless_limit(gw: GW, store: IdentityStore) -> None:
    await team(store, "team-w")
    key_id = (await store.list_keys())[-1].id
    for limit, code in (
        ({"metric": "storage_bytes", "window": "day", "limit": 10}, "storage_bytes has no window"),
        ({"metric": "storage_bytes", "limit": -1}, None),
    ):
        resp = await gw.http.put("/admin/v1/teams/team-w/quotas", headers=_admin(), json={"limits": [limit]})
        assert resp.status_code == 400, resp.text
        if code:
            assert code in resp.json()["error"]["message"]
    resp = await _storage_quota(gw, "team-w", 10, key_id=key_id)
    assert resp.status_code == 400 and "team's limit" in resp.json()["error"]["message"]


async def _age(store: IdentityStore, store_id: str, days: float) -> None:
    """Move the store's last activity ``days`` back (as if nobody had used it since)."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from m2a.store.schema import VectorStoreRow

    async with store.engine.begin() as conn:
        await conn.execute(
            update(VectorStoreRow)
            .where(VectorStoreRow.id == store_id)
            .values(last_active_at=datetime.now(UTC) - timedelta(days=days))
        )


async def test_an_expired_store_is_refused_and_its_chunks_dropped(gw: GW, store: IdentityStore) -> None:
    c = gw.client(await team(store, "team-e"))
    vs = await c.vector_stores.create(name="e", expires_after={"anchor": "last_active_at", "days": 1})
    keep = await c.vector_stores.create(name="keep", expires_after={"anchor": "last_active_at", "days": 7})
    vf = await uploaded(c, vs.id, "refunds.md", REFUNDS)
    await uploaded(c, keep.id, "refunds.md", REFUNDS)
    assert vf.status == "completed"
    assert (await c.vector_stores.search(vs.id, query="refund of an invoice")).data
    await _age(store, vs.id, 1.5)
    await _age(store, keep.id, 1.5)

    got = await c.vector_stores.retrieve(vs.id)
    assert got.status == "expired" and got.expires_at is not None
    assert got.expires_at == got.last_active_at + 86400
    assert (await c.vector_stores.retrieve(keep.id)).status == "completed"
    f = await c.files.create(file=("rockets.md", ROCKETS), purpose="assistants")
    for call in (
        c.vector_stores.search(vs.id, query="refund of an invoice"),
        c.vector_stores.files.create(vector_store_id=vs.id, file_id=f.id),
        c.vector_stores.file_batches.create(vector_store_id=vs.id, file_ids=[f.id]),
        c.vector_stores.update(vs.id, expires_after={"anchor": "last_active_at", "days": 30}),
    ):
        with pytest.raises(openai.BadRequestError) as err:
            await call
        assert err.value.code == "vector_store_expired" and vs.id in err.value.message
    renamed = await c.vector_stores.update(vs.id, name="old")  # name and metadata may still change
    assert renamed.name == "old" and renamed.status == "expired"

    # The sweep marks it for good and drops its chunks; the other store keeps its own.
    await gw.app.state.data.ingestor.sweep()
    got = await c.vector_stores.retrieve(vs.id)
    assert got.status == "expired" and got.usage_bytes == 0
    backend = gw.app.state.data.backend
    assert await backend.search(keep.id, None, "refund", 5, mode="keyword")
    from m2a.data.stores.base import StoreNotFound

    with pytest.raises(StoreNotFound):
        await backend.search(vs.id, None, "refund", 5, mode="keyword")
    assert await gw.app.state.data.ingestor.sweep() == 0  # marked once
    # Deleting it works as for any store.
    assert (await c.vector_stores.delete(vs.id)).deleted
