"""The request path as stages: a stage added by name sees every hook, in order, once; a stage
that fails at the end does not keep the others from settling (the priority slot, the ledger)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from m2a.config import GatewayConfig
from m2a.gateway.app import create_app
from m2a.gateway.context import RequestContext
from m2a.gateway.stages import STAGES, Stage, stage
from m2a.router.pool import Endpoint, Pool
from tests import gateway_fixtures
from tests.fake_engine import FakeEngine
from tests.live_app import live

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "sk-stages-test-" + "s" * 24
SEEN: list[str] = []


@stage("probe")
class Probe(Stage):
    """Records each hook it gets (a stand-in for a guardrail stage)."""

    async def before(self, ctx: RequestContext) -> None:
        SEEN.append(f"before {ctx.model} {ctx.principal is not None}")

    def on_chunk(self, ctx: RequestContext, data: bytes) -> bytes:  # type: ignore[override]
        SEEN.append("chunk")
        return data.replace(b"world", b"WORLD")  # a stage may rewrite what the client gets

    def end(self, ctx: RequestContext) -> None:
        assert ctx.outcome is not None
        SEEN.append(f"end {ctx.outcome.status} {ctx.outcome.replica}")


@stage("broken_end")
class BrokenEnd(Stage):
    def end(self, ctx: RequestContext) -> None:
        raise RuntimeError("a stage that fails while settling")


@contextlib.asynccontextmanager
async def gateway(
    engine: FakeEngine, stages: tuple[str, ...]
) -> AsyncIterator[tuple[httpx.AsyncClient, object]]:
    pool = Pool()
    pool.add(Endpoint("chat-0", "chat", engine.url, healthy=True, max_inflight=4))
    app = create_app(pool, KEY, GatewayConfig(), stages=stages)
    async with live(app) as url, httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as client:
        client.headers["authorization"] = f"Bearer {KEY}"
        yield client, app


engine = gateway_fixtures.engine  # the shared fake engine


def with_stage(name: str, after: str) -> tuple[str, ...]:
    at = STAGES.index(after) + 1
    return (*STAGES[:at], name, *STAGES[at:])


async def test_a_stage_named_in_the_list_gets_every_hook(engine: FakeEngine) -> None:
    SEEN.clear()
    async with gateway(engine, with_stage("probe", "authorize")) as (client, _app):
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            text = (await resp.aread()).decode()
        assert resp.status_code == 200 and "WORLD" in text and "world" not in text
        assert SEEN[0] == "before chat True" and "chunk" in SEEN and SEEN[-1] == "end 200 chat-0"
        assert SEEN.count("end 200 chat-0") == 1
        SEEN.clear()
        resp = await client.post("/v1/chat/completions", json={"model": "nope", "messages": []})
        assert resp.status_code == 400 and SEEN == []  # refused by validate: before probe's turn
        unknown = {"model": "nope", "messages": [{"role": "user", "content": "x"}]}
        resp = await client.post("/v1/chat/completions", json=unknown)
        assert resp.status_code == 404 and SEEN == []  # refused by authorize, before probe


async def test_a_stage_failing_at_the_end_does_not_leak_the_others(engine: FakeEngine) -> None:
    async with gateway(engine, with_stage("broken_end", "validate")) as (client, app):
        for _ in range(6):  # more than the replica's 4 slots: a leaked slot would hold the 5th
            body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
            assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        assert app.state.gate.inflight("chat") == 0  # type: ignore[attr-defined]
