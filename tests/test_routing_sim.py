"""Routing through the real gateway over HTTP, in front of real simulated replicas (``m2a.sim``).

The gateway runs in-process on uvicorn with a seeded ``Router``; the replicas are ``Simulator``
replicas on loopback ports, behind one model name with the ``simple`` tokenizer, so the router's
block hashes are the simulator's. Checked: requests sharing a long system prefix stick to the replica
that caches it (its hit counters rise) while unrelated prefixes spread; a killed replica is routed
around (a refused connection is retried on another replica, and once the replica is marked
unhealthy it is not tried at all); the route span carries every scorer's value; a replica that dies
mid-stream ends the stream with an error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from m2a.config import GatewayConfig
from m2a.gateway.app import create_app
from m2a.router.pipeline import Router
from m2a.router.pool import Endpoint, Pool
from m2a.sim import SimParams, Simulator
from tests.live_app import live

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "sk-routing-sim-admin-" + "r" * 24
MODEL = "sim-model"
TIMEOUT = 30.0  # per HTTP call and per wait; generous for a loaded two-core machine
FAST = SimParams(model=MODEL, time_scale=0.02)
WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
]


def system_prompt(tag: str, words: int = 600) -> str:
    """A long system prompt (``words`` simple-tokens and more), different for each ``tag``."""
    body = " ".join(WORDS[(i * 7 + len(tag)) % len(WORDS)] for i in range(words))
    return f"You are assistant {tag}. Follow these rules: {body}"


def chat(system: str, question: str, max_tokens: int = 8, stream: bool = False) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


@dataclass
class Gateway:
    app: Starlette
    client: httpx.AsyncClient
    pool: Pool
    sim: Simulator
    exporter: InMemorySpanExporter

    def replica(self, rid: str) -> int:
        """The simulator index of endpoint ``rid``."""
        return int(rid.rsplit("-", 1)[1])

    def hits(self) -> list[int]:
        return [r.cache.stats.hits for r in self.sim.replicas]

    async def post(self, body: dict) -> httpx.Response:
        return await self.client.post("/v1/chat/completions", json=body)

    def route_spans(self) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == "m2a.route"]

    async def upstream_errors(self) -> dict[str, float]:
        text = (await self.client.get("/metrics")).text
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if "upstream_errors" in s.name and s.name.endswith("_total"):
                    out[s.labels["replica"]] = s.value
        return out


@contextlib.asynccontextmanager
async def gateway(n: int, seed: int = 7) -> AsyncIterator[Gateway]:
    """``n`` simulated replicas behind one model, the gateway in front on a real uvicorn server."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with Simulator(n, params=FAST, seed=seed) as sim:
        pool = Pool()
        for i, (url, murl) in enumerate(zip(sim.urls, sim.metrics_urls, strict=True)):
            pool.add(Endpoint(f"sim-{i}", MODEL, url, metrics_url=murl, healthy=True, tokenizer="simple"))
        app = create_app(
            pool,
            KEY,
            GatewayConfig(),
            tracer=provider.get_tracer("test"),
            router=Router(pool, seed=seed),
        )
        async with (
            live(app, TIMEOUT) as url,
            httpx.AsyncClient(
                base_url=url, headers={"authorization": f"Bearer {KEY}"}, timeout=TIMEOUT, trust_env=False
            ) as client,
        ):
            gw = Gateway(app, client, pool, sim, exporter)
            await tokenizer_loaded(gw)
            yield gw


async def tokenizer_loaded(gw: Gateway) -> None:
    """Wait until the gateway reads prompts as tokens (loaded in the background at start): the same
    prompt twice gives the second one full prefix affinity for the replica of the first."""
    probe = chat(system_prompt("probe", 64), "ready?")
    async with asyncio.timeout(TIMEOUT):
        while True:
            gw.exporter.clear()
            for _ in range(2):
                assert (await gw.post(probe)).status_code == 200
            last = gw.route_spans()[-1].attributes or {}
            if last.get("m2a.route.score.prefix", 0.0) >= 0.99:
                break
            await asyncio.sleep(0.05)
    gw.exporter.clear()


async def test_shared_prefix_sticks_to_its_replica_and_unrelated_prefixes_spread() -> None:
    async with gateway(4) as gw:
        shared = system_prompt("shared")
        before = gw.hits()
        where = set()
        for q in range(10):  # one after the other: no load difference, affinity alone decides
            resp = await gw.post(chat(shared, f"question number {q}: why?"))
            assert resp.status_code == 200, resp.text
            where.add(resp.headers["x-m2a-replica"])
        assert len(where) == 1, f"a shared prefix went to several replicas: {where}"
        [rid] = where
        home = gw.replica(rid)
        gained = [after - b for after, b in zip(gw.hits(), before, strict=True)]
        # Nine follow-ups each find the ~600-token system prompt cached on its replica.
        assert gained[home] >= 9 * 600, gained
        assert sum(gained) == gained[home], gained  # no other replica saw this prefix

        groups: dict[str, set[str]] = {}
        for g in range(8):
            system = system_prompt(f"group-{g}")
            for q in range(2):
                resp = await gw.post(chat(system, f"follow-up {q}"))
                assert resp.status_code == 200, resp.text
                groups.setdefault(system, set()).add(resp.headers["x-m2a-replica"])
        assert all(len(r) == 1 for r in groups.values()), groups  # each group sticks too
        used = set().union(*groups.values())
        assert len(used) >= 3, f"8 unrelated prefixes on only {used}"  # seeded: spread, not piled up


async def test_a_killed_replica_is_routed_around() -> None:
    async with gateway(3) as gw:
        shared = system_prompt("doomed")
        first = await gw.post(chat(shared, "warm up"))
        assert first.status_code == 200
        rid = first.headers["x-m2a-replica"]
        gw.sim.kill(gw.replica(rid))
        errors_before = (await gw.upstream_errors()).get(rid, 0.0)

        # Still marked healthy: affinity sends each request to the dead replica first; the refused
        # connection is retried once on another replica, so no client sees an error.
        served = set()
        for q in range(6):
            resp = await gw.post(chat(shared, f"after the kill {q}", stream=q % 2 == 1))
            assert resp.status_code == 200, resp.text
            served.add(resp.headers["x-m2a-replica"])
            if q % 2:
                assert resp.text.rstrip().endswith("data: [DONE]"), resp.text[-200:]
        assert rid not in served
        retried = (await gw.upstream_errors()).get(rid, 0.0) - errors_before
        assert retried >= 1  # the retry path was taken

        # Once health checks take it out of the pool it is not even tried.
        gw.pool.set_healthy(rid, False)
        before = (await gw.upstream_errors()).get(rid, 0.0)
        for q in range(4):
            resp = await gw.post(chat(shared, f"unhealthy {q}"))
            assert resp.status_code == 200 and resp.headers["x-m2a-replica"] != rid
        assert (await gw.upstream_errors()).get(rid, 0.0) == before

        # Revived (empty cache) and healthy again: it takes requests again.
        await gw.sim.revive(gw.replica(rid))
        gw.pool.set_healthy(rid, True)
        back = set()
        for g in range(12):
            resp = await gw.post(chat(system_prompt(f"fresh-{g}"), "hello"))
            assert resp.status_code == 200
            back.add(resp.headers["x-m2a-replica"])
        assert rid in back


async def test_every_replica_dead_is_a_clean_503() -> None:
    async with gateway(2) as gw:
        for i in range(2):
            gw.sim.kill(i)
        resp = await gw.post(chat(system_prompt("nobody"), "anyone?"))
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "no_healthy_replica"


async def test_route_span_carries_every_scorer() -> None:
    async with gateway(3) as gw:
        body = chat(system_prompt("traced"), "same question")
        for _ in range(2):
            resp = await gw.post(body)
            assert resp.status_code == 200
        spans = gw.route_spans()
        assert len(spans) == 2
        attrs = spans[-1].attributes or {}
        assert attrs["m2a.replica"] == resp.headers["x-m2a-replica"]
        assert attrs["m2a.route.picker"] == "max_score"
        assert attrs["m2a.route.candidates"] == 3
        for scorer in ("prefix", "queue", "kv_usage", "inflight"):
            value = attrs[f"m2a.route.score.{scorer}"]
            assert 0.0 <= value <= 1.0, (scorer, value)
        assert attrs["m2a.route.score.prefix"] == pytest.approx(1.0)  # the same prompt again
        assert (spans[0].attributes or {})["m2a.route.score.prefix"] == 0.0  # nothing cached before
        totals = dict(t.split("=") for t in attrs["m2a.route.totals"])
        assert set(totals) == {"sim-0", "sim-1", "sim-2"}
        assert float(totals[attrs["m2a.replica"]]) == pytest.approx(attrs["m2a.route.score"], abs=1e-3)
        assert attrs["m2a.route.score"] == max(float(v) for v in totals.values())


async def test_a_replica_dying_mid_stream_ends_the_stream_with_an_error_event() -> None:
    async with gateway(2) as gw:
        system = system_prompt("streamer")
        first = await gw.post(chat(system, "warm"))
        rid = first.headers["x-m2a-replica"]
        gw.sim.set_fault(gw.replica(rid), die_after=1)  # dies after the next request's first token
        async with gw.client.stream(
            "POST", "/v1/chat/completions", json=chat(system, "tell me a long story", 400, stream=True)
        ) as resp:
            assert resp.status_code == 200
            assert resp.headers["x-m2a-replica"] == rid  # affinity: it went to the doomed replica
            events = [line[6:] async for line in resp.aiter_lines() if line.startswith("data: ")]
        # The replica cuts the connection right after writing its first token, so that token may or
        # may not get through (aiohttp reports the cut payload); the stream always ends in an error.
        assert events, "the stream ended without an event"
        assert "[DONE]" not in events
        *tokens, last = events
        assert all("choices" in json.loads(e) for e in tokens)
        error = json.loads(last)["error"]
        assert "mid-stream" in error["message"]
        assert not gw.sim.replicas[gw.replica(rid)].alive
        # The next request goes to the survivor.
        resp = await gw.post(chat(system, "again"))
        assert resp.status_code == 200 and resp.headers["x-m2a-replica"] != rid


async def test_sim_tokenize_gives_the_routers_tokens() -> None:
    """vLLM's /tokenize on a simulated replica (what vllm-router's cache_aware asks for) answers the
    tokens the gateway's ``simple`` tokenizer computes for the same body."""
    from m2a.protocol.tokens import load_tokenizer, prompt_tokens

    body = chat(system_prompt("tok", 40), "which tokens?")
    async with Simulator(1, params=FAST) as sim, httpx.AsyncClient(trust_env=False) as client:
        root = sim.urls[0].removesuffix("/v1")
        resp = await client.post(f"{root}/tokenize", json=body)
        assert resp.status_code == 200
        got = resp.json()
        assert got["tokens"] == prompt_tokens(load_tokenizer("simple"), body)
        assert got["count"] == len(got["tokens"]) > 40
        bad = await client.post(f"{root}/tokenize", json={"model": MODEL})
        assert bad.status_code == 400 and "error" in bad.json()
