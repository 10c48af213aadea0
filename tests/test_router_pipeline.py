"""The routing pipeline composed from config: weights, prefix stickiness, the pile-up guard, retries,
sessions. Deterministic: seeded routers, no clocks."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from m2a.config import RouterConfig, ScorerConfig
from m2a.router.filters import Healthy
from m2a.router.pickers import PowerOfTwo
from m2a.router.pipeline import Router
from m2a.router.plugins import UnknownPlugin
from m2a.router.pool import Endpoint, Pool
from m2a.router.prefix import PrefixScorer
from m2a.router.scorers import InflightScorer, QueueScorer


def make_pool(n: int = 4, model: str = "m", **kw: Any) -> Pool:
    pool = Pool()
    for i in range(n):
        pool.add(Endpoint(id=f"{model}-{i}", model=model, base_url=f"http://r{i}/v1", healthy=True, **kw))
    return pool


def prompt(group: int, question: int) -> list[int]:
    """A 256-token system prefix shared by the group, then a 64-token question."""
    system = [1000 * group + t for t in range(256)]
    return system + [10**6 + 100 * question + t for t in range(64)]


def cfg(scorers: list[tuple[str, float, dict]], filters: list[str] | None = None, picker: str = "max_score"):
    return RouterConfig(
        filters=["healthy"] if filters is None else filters,
        scorers=[ScorerConfig(name=n, weight=w, params=p) for n, w, p in scorers],
        picker=picker,
    )


def test_composition_from_config() -> None:
    pool = make_pool(2, "a")
    for e in make_pool(2, "b").all():
        pool.add(e)
    own = cfg([("queue", 1.0, {"floor": 2.0}), ("inflight", 0.0, {})], picker="power_of_two")
    router = Router(pool, {"a": own}, default=RouterConfig(), seed=1)
    pa, pb = router.pipeline("a"), router.pipeline("b")
    assert [type(f) for f in pa.filters] == [Healthy]
    assert isinstance(pa.picker, PowerOfTwo) and pa.picker_name == "power_of_two"
    assert [n for n, _, _ in pa.scorers] == ["queue", "inflight"]
    assert isinstance(pa.scorers[0][2], QueueScorer) and pa.scorers[0][2].floor == 2.0
    assert [n for n, _, _ in pa.active] == ["queue"]  # weight 0: not run
    assert [n for n, _, _ in pb.scorers] == ["prefix", "precise_prefix", "queue", "kv_usage", "inflight"]
    assert [n for n, w, _ in pb.scorers if w == 2.0] == ["prefix", "precise_prefix"]
    assert pb.scorers[0][2].defer_to_events
    d = router.pick(router.request("a"))
    assert d is not None and set(d.scores) == {"queue"} and d.picker == "power_of_two"
    assert router.scorers("prefix") == [pb.scorers[0][2]]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            RouterConfig(filters=["healthy", "fast"]),
            "unknown filter 'fast'; known filters: healthy, not_overloaded",
        ),
        (RouterConfig(scorers=[ScorerConfig(name="lora")]), "unknown scorer 'lora'; known scorers: "),
        (RouterConfig(picker="best"), "unknown picker 'best'; known pickers: max_score, power_of_two"),
    ],
)
def test_unknown_names_fail_at_start(config: RouterConfig, message: str) -> None:
    with pytest.raises(UnknownPlugin, match=message):
        Router(make_pool(), default=config)
    with pytest.raises(UnknownPlugin, match=message):
        Router(make_pool(), {"m": config})


@pytest.mark.parametrize(
    ("w_queue", "w_kv", "winner", "total0"),
    [
        (3.0, 1.0, "m-0", (3 * 1.0 + 1 * 0.1) / 4),  # the short queue wins
        (1.0, 3.0, "m-1", (1 * 1.0 + 3 * 0.1) / 4),  # the empty KV cache wins
        (0.0, 1.0, "m-1", 0.1),
    ],
)
def test_weights(w_queue: float, w_kv: float, winner: str, total0: float) -> None:
    pool = make_pool(2)
    a, b = pool.endpoints("m")
    a.waiting, a.kv_usage = 0.0, 0.9
    b.waiting, b.kv_usage = 9.0, 0.0
    router = Router(pool, default=cfg([("queue", w_queue, {}), ("kv_usage", w_kv, {})]), seed=0)
    d = router.pick(router.request("m"))
    assert d is not None and d.endpoint.id == winner
    assert d.total["m-0"] == pytest.approx(total0)
    attrs = d.attributes()
    assert attrs["m2a.replica"] == winner and attrs["m2a.route.picker"] == "max_score"
    assert "m2a.route.score.kv_usage" in attrs and attrs["m2a.route.candidates"] == 2


def test_shared_prefix_sticks_to_the_warm_replica() -> None:
    pool = make_pool(4)
    router = Router(pool, default=RouterConfig(), seed=2)
    where: dict[int, Counter[str]] = {g: Counter() for g in range(6)}
    for q in range(30):
        for g in range(6):
            req = router.request("m", {"max_tokens": 32}, prompt(g, q))
            d = router.pick(req)
            assert d is not None
            where[g][d.endpoint.id] += 1
            router.done(req, d.endpoint)  # one at a time: no load builds up
    assert all(len(c) == 1 for c in where.values()), where
    first = router.request("m", {}, prompt(0, 99))
    d = router.pick(first)
    assert d is not None and d.scores["prefix"][d.endpoint.id] == pytest.approx(256 // 16 / (320 // 16))


def run_hot_prefix(config: RouterConfig, n: int = 40) -> Counter[str]:
    """n concurrent requests of one prefix, none finishing; the gateway counts them in flight."""
    pool = make_pool(4)
    router = Router(pool, default=config, seed=3)
    got: Counter[str] = Counter()
    for q in range(n):
        d = router.pick(router.request("m", {"max_tokens": 32}, prompt(7, q)))
        assert d is not None
        d.endpoint.inflight += 1
        got[d.endpoint.id] += 1
    return got


def test_hot_prefix_spreads_once_its_replica_is_overloaded() -> None:
    unguarded = RouterConfig(
        scorers=[ScorerConfig(name="prefix", weight=2.0, params={"slack": 1e9}), *RouterConfig().scorers[1:]]
    )
    piled = run_hot_prefix(unguarded)
    assert len(piled) == 1  # the failure mode: affinity alone keeps everything on one replica
    spread = run_hot_prefix(RouterConfig())
    assert len(spread) == 4, spread
    loads = sorted(spread.values())
    assert loads[-1] <= 2 * loads[0] + 5  # max_load_ratio 2, slack 4: no replica far above the rest


def test_engine_queue_moves_a_hot_prefix() -> None:
    pool = make_pool(2)
    router = Router(pool, default=RouterConfig(), seed=4)
    d = router.pick(router.request("m", {}, prompt(1, 0)))
    assert d is not None
    warm = d.endpoint
    d = router.pick(router.request("m", {}, prompt(1, 1)))
    assert d is not None and d.endpoint is warm
    warm.waiting = 30.0  # the engine reports a long queue (requests from other gateways)
    d = router.pick(router.request("m", {}, prompt(1, 2)))
    assert d is not None and d.endpoint is not warm
    assert d.scores["prefix"][warm.id] == 0.0


def test_exclude_for_retries() -> None:
    pool = make_pool(3)
    router = Router(pool, default=RouterConfig(), seed=5)
    req = router.request("m", {}, prompt(2, 0))
    d = router.pick(req)
    assert d is not None
    warm = d.endpoint.id
    router.done(req, d.endpoint)
    req = router.request("m", {}, prompt(2, 1))
    retry = router.pick(req, exclude=frozenset({warm}))
    assert retry is not None and retry.endpoint.id != warm and warm not in retry.total
    assert router.pick(req, exclude=frozenset(e.id for e in pool.all())) is None


def test_unhealthy_and_overloaded() -> None:
    pool = make_pool(3, max_inflight=2)
    eps = pool.endpoints("m")
    eps[0].healthy = False
    eps[1].inflight = 2
    router = Router(pool, default=RouterConfig(), seed=6)
    for q in range(5):
        d = router.pick(router.request("m", {}, prompt(3, q)))
        assert d is not None and d.endpoint is eps[2]
    eps[2].healthy = False  # only an overloaded replica is left: better than none
    d = router.pick(router.request("m"))
    assert d is not None and d.endpoint is eps[1]
    eps[1].healthy = False
    assert router.pick(router.request("m")) is None
    assert router.pick(router.request("other")) is None  # a model with no replicas


def test_session_affinity() -> None:
    config = RouterConfig(
        scorers=[ScorerConfig(name="session"), ScorerConfig(name="inflight", weight=0.5)],
        session_header="x-conversation",
    )
    router = Router(make_pool(4), default=config, seed=7)
    homes: dict[str, str] = {}
    for _turn in range(5):
        for s in ("alice", "bob", "carol"):
            by_header = router.request("m", {"messages": []}, None, {"x-conversation": s})
            by_user = router.request("m", {"user": s})
            assert by_header.session == by_user.session == s
            for req in (by_header, by_user):
                d = router.pick(req)
                assert d is not None
                assert homes.setdefault(s, d.endpoint.id) == d.endpoint.id
                router.done(req, d.endpoint)
    assert router.request("m", {}, None, {"x-session-id": "x"}).session is None  # not the header set


def test_done_releases_inflight_tokens() -> None:
    router = Router(make_pool(2), default=RouterConfig(), seed=8)
    inflight = router.scorers("inflight")[0]
    assert isinstance(inflight, InflightScorer)
    req = router.request("m", {"max_tokens": 100}, list(range(50)))
    assert req.est_tokens == 150
    d = router.pick(req)
    assert d is not None and inflight.tokens[d.endpoint.id] == 150
    router.done(req, d.endpoint)
    assert inflight.tokens[d.endpoint.id] == 0


def test_request_estimates() -> None:
    router = Router(make_pool(1), default=RouterConfig(), seed=9)
    assert router.request("m", {"input": "x"}, [1, 2, 3]).est_tokens == 3  # embeddings: no output
    assert router.request("m", {"max_completion_tokens": 7}, [1]).est_tokens == 8
    assert router.request("m", {}, [1]).est_tokens == 257
    req = router.request("m", {}, list(range(40)))
    assert len(req.block_hashes) == 2 and req.block_size == 16
    prefix = router.scorers("prefix")[0]
    assert isinstance(prefix, PrefixScorer)


def test_block_size_follows_the_prefix_scorer() -> None:
    config = RouterConfig(scorers=[ScorerConfig(name="prefix", params={"block_size": 8})])
    router = Router(make_pool(1), default=config)
    assert len(router.request("m", {}, list(range(40))).block_hashes) == 5


def test_no_scorers_is_random_among_candidates() -> None:
    router = Router(make_pool(4), default=cfg([]), seed=10)
    got = Counter()
    for _ in range(200):
        d = router.pick(router.request("m"))
        assert d is not None and set(d.total.values()) == {0.5}
        got[d.endpoint.id] += 1
    assert len(got) == 4


def test_same_seed_same_decisions() -> None:
    def decisions(seed: int) -> list[str]:
        router = Router(make_pool(4), default=cfg([], picker="weighted_random"), seed=seed)
        return [router.pick(router.request("m")).endpoint.id for _ in range(50)]  # type: ignore[union-attr]

    assert decisions(11) == decisions(11)
    assert decisions(11) != decisions(12)
