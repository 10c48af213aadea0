"""Governance through the gateway: quotas, stream usage, the usage ledger, priorities, the usage API.

Each test serves ``create_app(pool, ADMIN, cfg, identity=store, ledger=..., usage_store=...)`` on a
real uvicorn server on a free loopback port, over a fresh SQLite store, in front of the aiohttp fake
engine (tests/fake_engine.py), which records what reaches it and whose ``usage`` numbers the tests
set. Where a request must stay in flight, the engine holds it on its ``gate`` until the test lets go.

Quota windows are fixed buckets (a minute starts on the minute): the quota clock is pinned to the
middle of a minute, so no test straddles a bucket edge. Nothing asserts on wall-clock durations;
every wait polls with a generous bound that fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

import m2a.gateway.counters as counters_module
import m2a.gateway.quota as quota_module
from m2a.config import GatewayConfig, Price
from m2a.gateway.app import create_app
from m2a.gateway.counters import Memory
from m2a.gateway.quota import Quotas, estimate_input, window_bounds
from m2a.router.pool import Endpoint, Pool
from m2a.store.identity import IdentityStore, Principal
from m2a.store.ledger import Ledger
from m2a.store.quotas import QuotaStore
from m2a.store.schema import Usage
from tests import gateway_fixtures
from tests.fake_engine import FakeEngine
from tests.live_app import live
from tests.openai_shape import assert_openai_error

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN = "sk-governance-admin-" + "g" * 24
MODEL = "chat"
REPLICA = "chat-0"
TIMEOUT = 30.0  # per HTTP call and per wait; generous for a loaded two-core machine
BIG_USAGE = {"prompt_tokens": 20, "completion_tokens": 20, "total_tokens": 40}
T = TypeVar("T")

store = gateway_fixtures.store  # a fresh, migrated SQLite identity store per test


# ---------------------------------------------------------------------------- helpers
def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def within(aw: Awaitable[T], what: str, timeout: float = TIMEOUT) -> T:
    try:
        return await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``check`` (sync or async) until it holds, failing the test after ``timeout`` seconds."""

    async def poll() -> None:
        while True:
            ok = check()
            if not isinstance(ok, bool):
                ok = await ok
            if ok:
                return
            await asyncio.sleep(0.02)

    await within(poll(), what, timeout)


def make_pool(
    engine: FakeEngine, max_inflight: int | None = None, kind: str = "remote", metrics: bool = False
) -> Pool:
    pool = Pool()
    metrics_url = engine.url.removesuffix("/v1") + "/metrics" if metrics else None
    pool.add(
        Endpoint(
            REPLICA,
            MODEL,
            engine.url,
            engine=kind,
            takes_priority=kind == "vllm",  # as m2a's vLLM engines, started with priority scheduling
            healthy=True,
            max_inflight=max_inflight,
            metrics_url=metrics_url,
        )
    )
    return pool


@dataclass
class Gateway:
    app: Any
    client: httpx.AsyncClient
    store: IdentityStore

    async def chat(self, key: str, content: str = "Say hello.", **extra: Any) -> httpx.Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
        return await self.client.post("/v1/chat/completions", headers=auth(key), json=body)

    async def stream(self, key: str, **extra: Any) -> list[str]:
        """The ``data:`` payloads of a streamed chat."""
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True, **extra}
        async with self.client.stream("POST", "/v1/chat/completions", headers=auth(key), json=body) as resp:
            assert resp.status_code == 200, await resp.aread()
            return [ln[5:].strip() async for ln in resp.aiter_lines() if ln.startswith("data:")]

    async def admin(self, method: str, path: str, key: str = ADMIN, **kw: Any) -> httpx.Response:
        return await self.client.request(method, f"/admin/v1{path}", headers=auth(key), **kw)

    async def set_quota(self, team: str, *limits: tuple[str, str, int], key_id: int | None = None) -> None:
        body = {"limits": [{"metric": m, "window": w, "limit": n} for m, w, n in limits], "key_id": key_id}
        resp = await self.admin("PUT", f"/teams/{team}/quotas", json=body)
        assert resp.status_code == 200, resp.text

    async def counter(self, key: str, metric: str, window: str = "minute", scope: str = "team") -> int:
        """A quota counter of ``key``'s team (or of the key itself), once pending settlements ran."""
        p = await self.store.lookup(key)
        assert isinstance(p, Principal)
        subject = p.team_id if scope == "team" else p.key_id
        if metric == "concurrency":
            name = f"{scope}:{subject}:concurrency"
        else:
            name = f"{scope}:{subject}:{metric}:{window}:{window_bounds(window, quota_module.time.time())[0]}"
        await self.app.state.quotas.drain()
        return await self.app.state.quotas.counters.value(name)

    def gate_inflight(self) -> int:
        return self.app.state.gate._models[MODEL].inflight


@contextlib.asynccontextmanager
async def serve(
    pool: Pool,
    store: IdentityStore,
    cfg: GatewayConfig | None = None,
    ledger: Ledger | None = None,
    app_kw: dict[str, Any] | None = None,
) -> AsyncIterator[Gateway]:
    """The gateway on a real uvicorn server; leaving the block runs its shutdown (ledger included)."""
    app = create_app(
        pool, ADMIN, cfg, identity=store, ledger=ledger, usage_store=store.engine, **(app_kw or {})
    )
    async with (
        live(app, TIMEOUT) as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT, trust_env=False) as client,
    ):
        yield Gateway(app, client, store)


async def make_team(store: IdentityStore, name: str, priority: str = "standard", keys: int = 1) -> list[str]:
    """A team granted MODEL, and its keys."""
    await store.create_team(name, priority)
    await store.grant(name, MODEL)
    return [(await store.create_key(name, f"{name}-{i}"))[0] for i in range(keys)]


async def key_id(store: IdentityStore, key: str) -> int:
    p = await store.lookup(key)
    assert isinstance(p, Principal)
    return p.key_id


async def ledger_rows(store: IdentityStore) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        result = await conn.execute(select(Usage.__table__).order_by(Usage.id))
        return [dict(r) for r in result.mappings()]


def contents(engine: FakeEngine) -> list[str]:
    """The user message of each chat the engine received, in arrival order."""
    return [r.json["messages"][0]["content"] for r in engine.requests]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def mid_window_clock(monkeypatch: pytest.MonkeyPatch) -> float:
    """Pin the quota clock 30 s into the current minute: windows are fixed buckets."""
    now = time.time() // 60 * 60 + 30
    clock = types.SimpleNamespace(time=lambda: now)
    monkeypatch.setattr(quota_module, "time", clock)
    monkeypatch.setattr(counters_module, "time", clock)
    return now


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    fake = FakeEngine()
    await fake.start()
    yield fake
    await fake.stop()


@pytest_asyncio.fixture
async def gw(engine: FakeEngine, store: IdentityStore) -> AsyncIterator[Gateway]:
    async with serve(make_pool(engine), store) as gateway:
        try:
            yield gateway
        finally:
            engine.release()


@pytest.fixture
def ledger(store: IdentityStore, tmp_path: Path) -> Ledger:
    return Ledger(store.engine, tmp_path / "ledger")


# ---------------------------------------------------------------------------- 1. quotas
async def test_request_limit_answers_then_429(gw: Gateway, engine: FakeEngine, store: IdentityStore) -> None:
    [key] = await make_team(store, "team-a")
    await gw.set_quota("team-a", ("requests", "minute", 3))
    for _ in range(3):
        assert (await gw.chat(key)).status_code == 200
    for _ in range(2):
        resp = await gw.chat(key)
        err = assert_openai_error(resp, 429, "rate_limit_exceeded")
        assert err["type"] == "rate_limit_error"
        assert "3 requests per minute" in err["message"] and "team-a" in err["message"]
        assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert len(engine.requests) == 3
    assert await gw.counter(key, "requests") == 3  # refusals take nothing


async def test_token_limit_runs_out_by_the_engines_usage(
    gw: Gateway, engine: FakeEngine, store: IdentityStore
) -> None:
    [key] = await make_team(store, "team-a")
    await gw.set_quota("team-a", ("tokens", "minute", 100))
    engine.usage = BIG_USAGE  # 40 a request; the gateway's own estimate is 18 (8 prompt + max_tokens 10)
    answered = 0
    while (resp := await gw.chat(key, max_tokens=10)).status_code == 200:
        answered += 1
        assert answered < 10, "the token limit never ran out"
        await gw.app.state.quotas.drain()  # the settlement of one answer precedes the next request
    assert_openai_error(resp, 429, "rate_limit_exceeded")
    assert "100 tokens per minute" in resp.json()["error"]["message"]
    assert "retry-after" in resp.headers
    assert answered == 3  # 40 + 40 + 40; by the estimate alone five would have fit
    assert await gw.counter(key, "tokens") == 120


async def test_key_limit_binds_that_key_only(gw: Gateway, engine: FakeEngine, store: IdentityStore) -> None:
    limited, free = await make_team(store, "team-a", keys=2)
    kid = await key_id(store, limited)
    await gw.set_quota("team-a", ("requests", "minute", 2), key_id=kid)
    assert [(await gw.chat(limited)).status_code for _ in range(3)] == [200, 200, 429]
    err = (await gw.chat(limited)).json()["error"]
    assert err["code"] == "rate_limit_exceeded" and f"key {kid}" in err["message"]
    assert [(await gw.chat(free)).status_code for _ in range(4)] == [200] * 4
    assert await gw.counter(limited, "requests", scope="key") == 2
    assert len(engine.requests) == 6


async def test_zero_quota_is_insufficient_quota(
    gw: Gateway, engine: FakeEngine, store: IdentityStore
) -> None:
    [key] = await make_team(store, "team-a")
    await gw.set_quota("team-a", ("requests", "day", 0))
    resp = await gw.chat(key)
    err = assert_openai_error(resp, 429, "insufficient_quota")
    assert "zero" in err["message"] and "retry-after" in resp.headers
    assert engine.requests == []


async def test_a_request_that_can_never_fit_is_refused_before_the_engine(
    gw: Gateway, engine: FakeEngine, store: IdentityStore
) -> None:
    [key] = await make_team(store, "team-a")
    await gw.set_quota("team-a", ("tokens", "minute", 100))
    err = assert_openai_error(await gw.chat(key, max_tokens=5000), 429, "request_too_large")
    assert err["param"] == "max_tokens" and "100 tokens per minute" in err["message"]
    assert engine.requests == []
    assert await gw.counter(key, "tokens") == 0
    assert (await gw.chat(key, max_tokens=10)).status_code == 200  # a small one still fits


async def test_completions_reserve_the_max_tokens_their_engine_obeys(
    gw: Gateway, engine: FakeEngine, store: IdentityStore
) -> None:
    """Completion engines generate up to ``max_tokens`` whatever ``max_completion_tokens`` says:
    a small ``max_completion_tokens`` must not let a large ``max_tokens`` past the quota."""
    [key] = await make_team(store, "team-a")
    await gw.set_quota("team-a", ("tokens", "hour", 100))

    async def complete(**body: Any) -> httpx.Response:
        body = {"model": MODEL, "prompt": "hi", **body}
        return await gw.client.post("/v1/completions", headers=auth(key), json=body)

    resp = await complete(max_tokens=300, max_completion_tokens=1)
    err = assert_openai_error(resp, 429, "request_too_large")
    assert err["param"] == "max_tokens"
    calls = [complete(max_tokens=300, max_completion_tokens=1) for _ in range(10)]
    assert {r.status_code for r in await within(asyncio.gather(*calls), "ten at once")} == {429}
    assert engine.requests == []
    assert (await complete(max_tokens=40, max_completion_tokens=1)).status_code == 200
    [sent] = engine.requests
    assert (sent.json["max_tokens"], sent.json["max_completion_tokens"]) == (40, 40)
    assert (await complete()).status_code == 200  # no max_tokens: OpenAI's default of 16, told
    assert engine.requests[1].json["max_tokens"] == 16


async def test_the_engine_is_told_the_cap_that_was_reserved(
    gw: Gateway, engine: FakeEngine, store: IdentityStore
) -> None:
    """No max_tokens: the reservation is capped at what the limit leaves, and that cap (per
    choice) reaches the engine as its max_tokens; the client's own cap is sent in both fields."""
    [key] = await make_team(store, "team-a")
    await gw.set_quota("team-a", ("tokens", "minute", 100))
    engine.usage = {"prompt_tokens": 8, "completion_tokens": 0, "total_tokens": 8}
    assert (await gw.chat(key)).status_code == 200  # "Say hello." is estimated at 8 prompt tokens
    assert engine.requests[-1].json["max_tokens"] == 92
    await gw.app.state.quotas.drain()  # 8 used: 92 left
    assert (await gw.chat(key, n=2)).status_code == 200
    assert engine.requests[-1].json["max_tokens"] == (92 - 8) // 2  # n sequences share what is left
    assert (await gw.chat(key, max_tokens=300, max_completion_tokens=20)).status_code == 200
    sent = engine.requests[-1].json
    assert (sent["max_tokens"], sent["max_completion_tokens"]) == (20, 20)


async def test_without_token_limits_the_body_is_left_alone(
    gw: Gateway, engine: FakeEngine, store: IdentityStore
) -> None:
    [key] = await make_team(store, "team-a")
    await gw.set_quota("team-a", ("requests", "minute", 100))
    assert (await gw.chat(key)).status_code == 200
    assert "max_tokens" not in engine.requests[-1].json  # the engine's own default stands


async def test_concurrency_limit(gw: Gateway, engine: FakeEngine, store: IdentityStore) -> None:
    [key] = await make_team(store, "team-a")
    await gw.set_quota("team-a", ("concurrency", "-", 1))
    engine.gate = asyncio.Event()  # the engine holds every answer until released
    first = asyncio.create_task(gw.chat(key))
    await within(engine.started.wait(), "the first request to reach the engine")
    resp = await gw.chat(key)
    err = assert_openai_error(resp, 429, "rate_limit_exceeded")
    assert "1 concurrent requests" in err["message"] and resp.headers["retry-after"] == "1"
    assert len(engine.requests) == 1
    engine.release()
    assert (await within(first, "the first answer")).status_code == 200
    assert await gw.counter(key, "concurrency") == 0
    assert (await gw.chat(key)).status_code == 200
    assert await gw.counter(key, "concurrency") == 0


async def test_quota_changes_take_effect_without_a_restart(gw: Gateway, store: IdentityStore) -> None:
    [key] = await make_team(store, "team-a")
    assert (await gw.chat(key)).status_code == 200  # the key (without limits) is cached now

    async def status(code: int) -> bool:
        return (await gw.chat(key)).status_code == code

    await gw.set_quota("team-a", ("requests", "minute", 0))  # through the admin API
    await eventually(lambda: status(429), "a zero quota set through the admin API", timeout=2.0)
    assert_openai_error(await gw.chat(key), 429, "insufficient_quota")
    assert (await gw.admin("DELETE", "/teams/team-a/quotas")).status_code == 204
    await eventually(lambda: status(200), "a quota cleared through the admin API", timeout=2.0)

    await QuotaStore(store.engine).set("team-a", [("requests", "hour", 0)])  # by another process
    await eventually(lambda: status(429), "a quota set by another process (revision poll)", timeout=5.0)


async def test_a_refusal_by_one_limit_takes_nothing_from_the_others(
    gw: Gateway, engine: FakeEngine, store: IdentityStore
) -> None:
    [key] = await make_team(store, "team-a")
    await gw.set_quota("team-a", ("requests", "minute", 100), ("tokens", "minute", 50))
    engine.usage = BIG_USAGE
    assert (await gw.chat(key, max_tokens=10)).status_code == 200
    await gw.app.state.quotas.drain()
    assert_openai_error(await gw.chat(key, max_tokens=10), 429, "rate_limit_exceeded")  # 40 + 18 > 50
    assert await gw.counter(key, "requests") == 1
    assert await gw.counter(key, "tokens") == 40


# ---------------------------------------------------------------------------- 2. stream usage
async def test_stream_usage_is_counted_but_not_shown_unless_asked(
    gw: Gateway, engine: FakeEngine, store: IdentityStore
) -> None:
    [key] = await make_team(store, "team-a")
    await gw.set_quota("team-a", ("tokens", "minute", 10_000))
    engine.usage = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    data = await gw.stream(key)
    assert engine.requests[-1].json["stream_options"] == {"include_usage": True}
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all("usage" not in c and c["choices"] for c in chunks), chunks
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "".join(engine.chunks)
    assert await gw.counter(key, "tokens") == 16  # the engine's numbers, not the estimate


async def test_stream_usage_reaches_a_client_that_asked(
    gw: Gateway, engine: FakeEngine, store: IdentityStore
) -> None:
    [key] = await make_team(store, "team-a")
    await gw.set_quota("team-a", ("tokens", "minute", 10_000))
    engine.usage = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    data = await gw.stream(key, stream_options={"include_usage": True})
    assert engine.requests[-1].json["stream_options"] == {"include_usage": True}
    assert data[-1] == "[DONE]"
    last = json.loads(data[-2])
    assert last["choices"] == [] and last["usage"] == engine.usage
    assert await gw.counter(key, "tokens") == 16


# ---------------------------------------------------------------------------- 3. the ledger
async def test_ledger_has_one_row_per_request_that_reached_an_engine(
    engine: FakeEngine, store: IdentityStore, ledger: Ledger, tmp_path: Path
) -> None:
    [key] = await make_team(store, "team-a")
    kid = await key_id(store, key)
    async with serve(make_pool(engine), store, ledger=ledger) as gw:
        await gw.set_quota("team-a", ("requests", "minute", 3))
        bad = await gw.client.post("/v1/chat/completions", headers=auth(key), json={"model": MODEL})
        assert_openai_error(bad, 400)
        engine.usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
        assert (await gw.chat(key)).status_code == 200
        engine.usage = {"prompt_tokens": 13, "completion_tokens": 6, "total_tokens": 19}
        assert (await gw.stream(key))[-1] == "[DONE]"
        engine.mode, engine.error_status = "error", 500
        assert (await gw.chat(key)).status_code == 500
        assert_openai_error(await gw.chat(key), 429, "rate_limit_exceeded")
    rows = await ledger_rows(store)
    assert [(r["stream"], r["status"], r["http_status"]) for r in rows] == [
        (False, "ok", 200),
        (True, "ok", 200),
        (False, "error", 500),
    ]
    for r in rows:
        assert (r["team"], r["key_id"], r["model"], r["replica"], r["priority"]) == (
            "team-a",
            kid,
            MODEL,
            REPLICA,
            "standard",
        )
        assert r["route"] == "/v1/chat/completions" and r["finished_at"] is not None
    assert [(r["input_tokens"], r["output_tokens"]) for r in rows[:2]] == [(12, 3), (13, 6)]
    assert rows[0]["ttft_ms"] is None and rows[1]["ttft_ms"] is not None
    assert list((tmp_path / "ledger").glob("journal-*")) == []


async def test_a_stream_the_engine_cut_off_bills_what_was_relayed(
    engine: FakeEngine, store: IdentityStore, ledger: Ledger
) -> None:
    """The client got 200 and content, then an error event: the record says so (HTTP 200, status
    error) and counts the relayed content as output, priced at the model's price."""
    [key] = await make_team(store, "team-a")
    price = Price(input_per_1m=1.0, output_per_1m=2.0)
    quotas = Quotas(Memory(), {MODEL: price})
    async with serve(make_pool(engine), store, ledger=ledger, app_kw={"quotas": quotas}) as gw:
        engine.mode, engine.gate = "die_mid_stream", asyncio.Event()  # dies once the client has a chunk
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
        events = []
        async with gw.client.stream("POST", "/v1/chat/completions", headers=auth(key), json=body) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    events.append(line[5:].strip())
                    engine.release()
        assert json.loads(events[0])["choices"][0]["delta"]["content"] == engine.chunks[0]
        assert "error" in json.loads(events[-1])
    [row] = await ledger_rows(store)
    assert (row["status"], row["http_status"], row["output_tokens"]) == ("error", 200, 1)
    assert row["input_tokens"] == estimate_input(body) > 0
    assert row["cost"] == pytest.approx(price.cost(row["input_tokens"], 1))


async def test_ledger_marks_a_client_that_left_mid_stream_as_cancelled(
    engine: FakeEngine, store: IdentityStore, ledger: Ledger, tmp_path: Path
) -> None:
    [key] = await make_team(store, "team-a")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    async with serve(make_pool(engine), store, ledger=ledger) as gw:
        engine.gate = asyncio.Event()  # the engine stalls after its first chunk
        async with gw.client.stream("POST", "/v1/chat/completions", headers=auth(key), json=body) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    break  # leaving the block closes the connection mid-stream
        await within(engine.cancelled.wait(), "the engine to see its request cancelled")
        await eventually(lambda: ledger.in_flight == 0, "the ledger to end the record")
        engine.release()
    [row] = await ledger_rows(store)
    assert (row["status"], row["http_status"], row["team"], row["stream"]) == (
        "cancelled",
        499,
        "team-a",
        True,
    )
    assert row["replica"] == REPLICA and row["ttft_ms"] is not None
    assert list((tmp_path / "ledger").glob("journal-*")) == []


# ---------------------------------------------------------------------------- 4. priorities
async def test_critical_requests_overtake_queued_batch_ones(engine: FakeEngine, store: IdentityStore) -> None:
    [batch] = await make_team(store, "bulk", "batch")
    [critical] = await make_team(store, "ops", "critical")
    engine.gate = asyncio.Event()
    async with serve(make_pool(engine, max_inflight=2, kind="vllm"), store) as gw:
        gate = gw.app.state.gate
        running = [asyncio.create_task(gw.chat(batch, f"batch-{i}")) for i in (1, 2)]
        await eventually(lambda: len(engine.requests) == 2, "two batch requests to fill the replica")
        queued = [asyncio.create_task(gw.chat(batch, f"batch-{i}")) for i in (3, 4)]
        await eventually(lambda: gate.waiting(MODEL) == 2, "two batch requests to queue")
        queued += [asyncio.create_task(gw.chat(critical, f"critical-{i}")) for i in (1, 2)]
        await eventually(lambda: gate.waiting(MODEL) == 4, "two critical requests to queue")
        assert len(engine.requests) == 2  # nothing jumped the queue onto the full replica
        engine.release()
        for resp in await within(asyncio.gather(*running, *queued), "every answer"):
            assert resp.status_code == 200, resp.text
        order = contents(engine)
        assert sorted(order[:2]) == ["batch-1", "batch-2"]
        assert sorted(order[2:4]) == ["critical-1", "critical-2"]
        assert order[4:] == ["batch-3", "batch-4"]
        assert {r.json["messages"][0]["content"][:5]: r.json["priority"] for r in engine.requests} == {
            "batch": 200,
            "criti": 0,
        }  # vLLM schedules by the team's order too
        assert gw.gate_inflight() == 0 and gate.waiting(MODEL) == 0


async def test_batch_leaves_headroom_while_critical_is_active(
    engine: FakeEngine, store: IdentityStore
) -> None:
    [batch] = await make_team(store, "bulk", "batch")
    [critical] = await make_team(store, "ops", "critical")
    async with serve(make_pool(engine, max_inflight=2), store) as gw:
        assert (await gw.chat(critical, "critical-0")).status_code == 200  # critical is active now
        engine.gate = asyncio.Event()
        calls = [asyncio.create_task(gw.chat(batch, f"batch-{i}")) for i in (1, 2)]
        await eventually(lambda: gw.app.state.gate.waiting(MODEL) == 1, "batch to stop at half the capacity")
        calls.append(asyncio.create_task(gw.chat(critical, "critical-1")))
        await eventually(lambda: len(engine.requests) == 3, "critical to use the headroom at once")
        first, admitted, third = contents(engine)  # which batch request won the race is not fixed
        assert (first, third) == ("critical-0", "critical-1") and admitted in ("batch-1", "batch-2")
        engine.release()
        for resp in await within(asyncio.gather(*calls), "every answer"):
            assert resp.status_code == 200
        held = {"batch-1", "batch-2"} - {admitted}
        assert contents(engine)[3:] == list(held) and gw.gate_inflight() == 0


async def test_a_waiter_past_its_deadline_gets_503(
    engine: FakeEngine, store: IdentityStore, ledger: Ledger
) -> None:
    [key] = await make_team(store, "bulk", "batch")
    cfg = GatewayConfig(priority_deadline_s={"batch": 0.2})
    engine.gate = asyncio.Event()
    async with serve(make_pool(engine, max_inflight=1), store, cfg, ledger) as gw:
        await gw.set_quota("bulk", ("requests", "minute", 10))
        first = asyncio.create_task(gw.chat(key))
        await within(engine.started.wait(), "the first request to reach the engine")
        resp = await gw.chat(key)
        err = assert_openai_error(resp, 503, "model_overloaded")
        assert "saturated" in err["message"] and int(resp.headers["retry-after"]) >= 1
        assert len(engine.requests) == 1
        engine.release()
        assert (await within(first, "the first answer")).status_code == 200
        assert gw.gate_inflight() == 0 and gw.app.state.gate.waiting(MODEL) == 0
        assert await gw.counter(key, "requests") == 1  # the shed request was never served
        assert (await gw.chat(key)).status_code == 200  # no slot leaked
    rows = await ledger_rows(store)
    assert [(r["status"], r["priority"]) for r in rows] == [("ok", "batch")] * 2  # none for the shed one


async def test_a_client_that_leaves_while_held_gives_everything_back(
    engine: FakeEngine, store: IdentityStore, ledger: Ledger
) -> None:
    [key] = await make_team(store, "bulk", "batch")
    engine.gate = asyncio.Event()
    async with serve(make_pool(engine, max_inflight=1), store, None, ledger) as gw:
        await gw.set_quota("bulk", ("requests", "minute", 10), ("tokens", "minute", 100_000))
        gate = gw.app.state.gate
        first = asyncio.create_task(gw.chat(key, "first", max_tokens=10))
        await within(engine.started.wait(), "the first request to reach the engine")
        held = asyncio.create_task(gw.chat(key, "held", max_tokens=10))
        await eventually(lambda: gate.waiting(MODEL) == 1, "the second request to be held")
        held.cancel()  # the client hangs up while its request waits for a slot
        with contextlib.suppress(asyncio.CancelledError):
            await held
        await eventually(lambda: gate.waiting(MODEL) == 0, "the gate to notice the client left")
        engine.release()
        assert (await within(first, "the first answer")).status_code == 200
        assert gw.gate_inflight() == 0
        assert await gw.counter(key, "requests") == 1  # the one that left was never served
        assert contents(engine) == ["first"]
    rows = await ledger_rows(store)
    assert [r["status"] for r in rows] == ["ok"]  # no record for a request that never reached an engine


async def test_a_full_queue_sheds_the_lowest_priority(engine: FakeEngine, store: IdentityStore) -> None:
    [batch] = await make_team(store, "bulk", "batch")
    [critical] = await make_team(store, "ops", "critical")
    engine.gate = asyncio.Event()
    async with serve(make_pool(engine, max_inflight=1), store, GatewayConfig(max_waiting=1)) as gw:
        gate = gw.app.state.gate
        first = asyncio.create_task(gw.chat(batch, "batch-1"))
        await within(engine.started.wait(), "the first request to reach the engine")
        waiting = asyncio.create_task(gw.chat(batch, "batch-2"))
        await eventually(lambda: gate.waiting(MODEL) == 1, "a batch request to queue")
        assert_openai_error(await gw.chat(batch, "batch-3"), 503, "model_overloaded")  # no room for equals
        urgent = asyncio.create_task(gw.chat(critical, "critical-1"))
        err = assert_openai_error(await within(waiting, "the queued batch request"), 503, "model_overloaded")
        assert "higher priority" in err["message"]
        engine.release()
        assert (await within(first, "the first answer")).status_code == 200
        assert (await within(urgent, "the critical answer")).status_code == 200
        assert contents(engine) == ["batch-1", "critical-1"]
        assert gw.gate_inflight() == 0 and gate.waiting(MODEL) == 0


async def test_an_engine_reporting_a_queue_counts_as_full(engine: FakeEngine, store: IdentityStore) -> None:
    [key] = await make_team(store, "team-a")
    engine.waiting = 3.0  # vllm:num_requests_waiting
    engine.gate = asyncio.Event()
    pool = make_pool(engine, max_inflight=4, metrics=True)
    async with serve(pool, store) as gw:
        await eventually(lambda: pool.endpoints(MODEL)[0].waiting == 3.0, "the gateway to read the metrics")
        first = asyncio.create_task(gw.chat(key, "one"))
        await within(engine.started.wait(), "the first request to reach the engine")
        second = asyncio.create_task(gw.chat(key, "two"))
        await eventually(lambda: gw.app.state.gate.waiting(MODEL) == 1, "the second request to be held")
        engine.waiting = 0.0  # the engine's queue drained: the held request goes on
        await eventually(lambda: len(engine.requests) == 2, "the held request to reach the engine")
        assert not first.done()
        engine.release()
        for resp in await within(asyncio.gather(first, second), "both answers"):
            assert resp.status_code == 200


async def test_without_priorities_nothing_is_held_or_marked(engine: FakeEngine, store: IdentityStore) -> None:
    [key] = await make_team(store, "bulk", "batch")
    engine.gate = asyncio.Event()
    pool = make_pool(engine, max_inflight=1, kind="vllm")
    async with serve(pool, store, GatewayConfig(priorities=False)) as gw:
        assert gw.app.state.gate is None
        calls = [asyncio.create_task(gw.chat(key, f"batch-{i}")) for i in range(3)]
        await eventually(lambda: len(engine.requests) == 3, "every request to reach the engine at once")
        engine.release()
        for resp in await within(asyncio.gather(*calls), "every answer"):
            assert resp.status_code == 200
    assert all("priority" not in r.json for r in engine.requests)


# ---------------------------------------------------------------------------- 5. the usage API
async def test_usage_endpoint_shows_each_team_its_own(
    engine: FakeEngine, store: IdentityStore, ledger: Ledger
) -> None:
    [key_a] = await make_team(store, "team-a")
    [key_b] = await make_team(store, "team-b")
    async with serve(make_pool(engine), store, ledger=ledger) as gw:
        for key in (key_a, key_a, key_b, ADMIN):
            assert (await gw.chat(key)).status_code == 200

        async def totals(key: str = ADMIN, **params: str) -> dict[str | None, tuple[int, int]]:
            resp = await gw.admin("GET", "/usage", key=key, params=params)
            assert resp.status_code == 200, resp.text
            return {r["group"]: (r["requests"], r["input_tokens"]) for r in resp.json()}

        expected = {"team-a": (2, 14), "team-b": (1, 7), None: (1, 7)}  # 7 prompt tokens a request

        async def recorded() -> bool:
            return await totals() == expected

        await eventually(recorded, "the ledger's records to reach the usage table")
        assert await totals(key_a) == {"team-a": (2, 14)}
        assert await totals(key_a, team="team-a") == {"team-a": (2, 14)}
        assert await totals(key_b, by="model") == {MODEL: (1, 7)}
        assert_openai_error(await gw.admin("GET", "/usage", key=key_a, params={"team": "team-b"}), 403)
        assert await totals(team="team-b") == {"team-b": (1, 7)}

        limits = {"limits": [{"metric": "requests", "window": "day", "limit": 1}]}
        for method, path, kw in (
            ("GET", "/quotas", {}),
            ("PUT", "/teams/team-a/quotas", {"json": limits}),
            ("DELETE", "/teams/team-a/quotas", {}),
        ):
            assert_openai_error(await gw.admin(method, path, key=key_a, **kw), 403, "admin_only")
        assert (await gw.admin("GET", "/quotas")).json() == []


async def test_guardrail_refusals_are_ledger_rows_marked_blocked(
    engine: FakeEngine, store: IdentityStore, ledger: Ledger
) -> None:
    from m2a.config import GuardrailsConfig
    from m2a.gateway.guards import Guards

    [key] = await make_team(store, "team-a")
    engine.answer = "the key is AKIAIOSFODNN7EXAMPLF"
    guards = Guards(GuardrailsConfig(default_profile="strict"))
    try:
        async with serve(make_pool(engine), store, ledger=ledger, app_kw={"guards": guards}) as gw:
            prompt = await gw.chat(key, "my key: AKIAIOSFODNN7EXAMPLF")  # refused before the engine
            assert prompt.status_code == 400 and prompt.json()["error"]["code"] == "content_filter"
            answer = await gw.chat(key, "what is the key?")  # the engine answered; the answer is refused
            assert answer.status_code == 400 and answer.json()["error"]["guardrail"]["direction"] == "output"
            await eventually(lambda: ledger.in_flight == 0, "the ledger to end the records")
    finally:
        engine.answer = "Paris."
    rows = await ledger_rows(store)
    assert [(r["status"], r["http_status"]) for r in rows] == [("blocked", 400), ("blocked", 400)]
    assert rows[0]["replica"] is None and rows[0]["output_tokens"] == 0  # nothing reached an engine
    assert rows[1]["replica"] == REPLICA and rows[1]["output_tokens"] == 2  # the engine's work is billed
    assert all(r["team"] == "team-a" for r in rows)


async def test_max_tokens_past_the_models_limit_is_refused(engine: FakeEngine, store: IdentityStore) -> None:
    [key] = await make_team(store, "team-a")
    pool = make_pool(engine)
    pool.endpoints(MODEL)[0].max_output_tokens = 100
    async with serve(pool, store) as gw:
        engine.requests.clear()
        resp = await gw.chat(key, max_tokens=101)
        assert_openai_error(resp, 400)
        assert (
            resp.json()["error"]["code"] == "max_tokens_too_large"
            and resp.json()["error"]["param"] == "max_tokens"
        )
        resp = await gw.chat(key, max_tokens=5, max_completion_tokens=32_768)
        assert resp.json()["error"]["param"] == "max_completion_tokens"
        assert engine.requests == []
        assert (await gw.chat(key, max_tokens=100)).status_code == 200
        assert (await gw.chat(key)).status_code == 200  # no cap asked: the engine's own limit
