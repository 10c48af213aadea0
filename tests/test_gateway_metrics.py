"""`/metrics` after real requests through the gateway, parsed with the Prometheus text parser."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from m2a.gateway.metrics import BoundedLabel, GatewayMetrics
from m2a.store.identity import IdentityStore
from tests import gateway_fixtures
from tests.fake_engine import FakeEngine
from tests.test_governance import ADMIN, auth, make_pool, make_team, serve

pytestmark = pytest.mark.asyncio(loop_scope="session")

store = gateway_fixtures.store


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    fake = FakeEngine()
    await fake.start()
    yield fake
    await fake.stop()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(all_samples: dict, name: str, **labels: str) -> float:
    return all_samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_by_team_priority_and_replica(engine: FakeEngine, store: IdentityStore) -> None:
    [pay] = await make_team(store, "payments", "critical")
    [res] = await make_team(store, "research", "batch")
    engine.usage = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    async with serve(make_pool(engine), store) as gw:
        for _ in range(2):
            await gw.stream(pay)
        assert (await gw.chat(res)).status_code == 200
        engine.mode = "error"
        engine.error_status = 500
        assert (await gw.chat(res)).status_code == 500
        text = (await gw.client.get("/metrics", headers=auth(ADMIN))).text
    m = samples(text)
    assert value(m, "m2a_tokens_total", model="chat", team="payments", kind="input") == 22
    assert value(m, "m2a_tokens_total", model="chat", team="payments", kind="output") == 10
    assert value(m, "m2a_tokens_total", model="chat", team="research", kind="output") == 5
    common = {"model": "chat", "replica": "chat-0"}
    assert (
        value(m, "m2a_request_outcomes_total", **common, team="payments", priority="critical", status="ok")
        == 2
    )
    assert (
        value(m, "m2a_request_outcomes_total", **common, team="research", priority="batch", status="ok") == 1
    )
    assert (
        value(m, "m2a_request_outcomes_total", **common, team="research", priority="batch", status="error")
        == 1
    )
    ttft = {**common, "team": "payments", "priority": "critical"}
    assert value(m, "m2a_request_time_to_first_token_seconds_count", **ttft) == 2
    assert (
        value(
            m, "m2a_time_per_output_token_seconds_count", model="chat", team="payments", priority="critical"
        )
        == 2
    )
    assert value(m, "m2a_route_decisions_total", model="chat", replica="chat-0", policy="least_inflight") == 4


async def test_team_label_is_bounded() -> None:
    label = BoundedLabel(limit=3)
    assert [label(t) for t in ("a", "b", None, "c", "a", "d")] == ["a", "b", "-", "other", "a", "other"]


VLLM_PAGE = """# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} %s
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 3.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 4.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 4.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.5
"""


async def test_engine_metrics_are_re_exported_per_replica() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from m2a.router.engine_metrics import EngineMetrics

    registry = CollectorRegistry()
    pages = {"m#0": (VLLM_PAGE % 2).encode(), "m#1": (VLLM_PAGE % 7).encode(), "m#2": b"not {prometheus"}
    registry.register(EngineMetrics(pages))
    m = samples(generate_latest(registry).decode())
    for replica, waiting in (("m#0", 2), ("m#1", 7)):
        labels = {"engine": "0", "model_name": "m", "replica": replica}
        assert value(m, "vllm:num_requests_waiting", **labels) == waiting
        assert value(m, "vllm:time_to_first_token_seconds_count", **labels) == 4
        assert value(m, "vllm:time_to_first_token_seconds_bucket", **labels, le="0.1") == 3
    assert not any(dict(k[1]).get("replica") == "m#2" for k in m)  # the unparsable page is skipped


async def test_gateway_scrape_includes_the_engines_series(engine: FakeEngine, store: IdentityStore) -> None:
    engine.waiting = 3
    async with serve(make_pool(engine, metrics=True), store) as gw:
        for _ in range(200):  # the load watcher polls every 100 ms
            text = (await gw.client.get("/metrics")).text
            if 'replica="chat-0"' in text and "vllm:num_requests_waiting" in text:
                break
            await asyncio.sleep(0.05)
    m = samples(text)
    assert any(
        name == "vllm:num_requests_waiting" and dict(labels).get("replica") == "chat-0" and v == 3
        for (name, labels), v in m.items()
    )


async def test_remembered_children_count_where_prometheus_sees_them() -> None:
    """``labels`` hands back the same child for the same values; a removed series starts again
    from zero (not a remembered child that no longer reaches the exposition)."""
    m = GatewayMetrics()
    assert m.requests.labels("chat", "llama", "200") is m.requests.labels("chat", "llama", "200")
    m.requests.labels("chat", "llama", "200").inc(3)
    m.requests.labels(route="chat", model="llama", status="200").inc()  # by name: the same series
    m.replica_healthy.labels("llama", "llama-0").set(1)
    m.replica_healthy.remove("llama", "llama-0")
    m.replica_healthy.labels("llama", "llama-0").inc(5)
    m.tokens.labels("llama", "a", "input").inc(2)
    m.tokens.clear()
    m.tokens.labels("llama", "a", "input").inc(7)
    with pytest.raises(ValueError):
        m.requests.labels("chat", "llama")  # the wrong number of values is still refused
    seen = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(generate_latest(m.registry).decode())
        for s in fam.samples
    }
    assert seen[("m2a_requests_total", (("model", "llama"), ("route", "chat"), ("status", "200")))] == 4
    assert seen[("m2a_replica_healthy", (("model", "llama"), ("replica", "llama-0")))] == 5
    assert seen[("m2a_tokens_total", (("kind", "input"), ("model", "llama"), ("team", "a")))] == 7
