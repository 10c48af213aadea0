"""`/metrics` after real requests through the gateway, parsed with the Prometheus text parser."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from m2a.gateway.metrics import BoundedLabel
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
