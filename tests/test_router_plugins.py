"""Routing plugins, one table per plugin: filters, scorers, pickers, the KV block index, the registry."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from m2a.config import RouterConfig, ScorerConfig
from m2a.protocol.kv_events import Cleared, Removed, Stored
from m2a.protocol.tokens import block_hashes
from m2a.router.kvindex import KVBlockIndex, PrecisePrefixScorer
from m2a.router.pipeline import Router
from m2a.router.plugins import NEUTRAL, RouteRequest, UnknownPlugin, build, known, register_scorer
from m2a.router.pool import Endpoint, Pool
from m2a.router.prefix import BlockLRU, PrefixScorer
from m2a.router.scorers import InflightScorer, SessionScorer


def ep(rid: str, **kw: Any) -> Endpoint:
    kw.setdefault("healthy", True)
    return Endpoint(id=rid, model="m", base_url=f"http://{rid}/v1", **kw)


def req(tokens: list[int] | None = None, **kw: Any) -> RouteRequest:
    hashes = block_hashes(tokens, 4) if tokens else []
    return RouteRequest(model="m", prompt_tokens=tokens, block_hashes=hashes, block_size=4, **kw)


def approx(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in d.items()}


# --- filters ---------------------------------------------------------------------------------------

FILTER_CASES = [
    # (filter, endpoints, kept ids)
    ("healthy", [ep("a"), ep("b", healthy=False)], ["a"]),
    ("healthy", [ep("a", healthy=False)], []),
    ("not_overloaded", [ep("a", waiting=100.0), ep("b", waiting=1.0)], ["b"]),
    ("not_overloaded", [ep("a", kv_usage=0.99), ep("b", kv_usage=0.5)], ["b"]),
    ("not_overloaded", [ep("a", inflight=4, max_inflight=4), ep("b", inflight=3, max_inflight=4)], ["b"]),
    ("not_overloaded", [ep("a", inflight=400), ep("b")], ["a", "b"]),  # no max_inflight: no limit
    ("not_overloaded", [ep("a", waiting=None, kv_usage=None), ep("b", waiting=0.0)], ["a", "b"]),
    ("not_overloaded", [ep("a", waiting=100.0), ep("b", kv_usage=1.0)], ["a", "b"]),  # all: keep all
]


@pytest.mark.parametrize(("name", "eps", "kept"), FILTER_CASES)
def test_filters(name: str, eps: list[Endpoint], kept: list[str]) -> None:
    assert [e.id for e in build("filter", name).filter(req(), eps)] == kept


# --- load scorers ----------------------------------------------------------------------------------

SCORER_CASES = [
    # (scorer, params, endpoints, expected scores)
    (
        "queue",
        {},
        [ep("a", waiting=0.0), ep("b", waiting=1.0), ep("c", waiting=3.0)],
        {"a": 1.0, "b": 0.5, "c": 0.25},
    ),
    ("queue", {}, [ep("a", waiting=10.0), ep("b", waiting=11.0)], {"a": 1.0, "b": 0.9167}),
    ("queue", {}, [ep("a", waiting=0.0), ep("b")], {"a": 1.0, "b": NEUTRAL}),  # unknown: neutral
    ("queue", {}, [ep("a", waiting=3.0), ep("b", waiting=4.0), ep("c")], {"a": 0.25, "b": 0.2, "c": NEUTRAL}),
    ("queue", {"floor": 4.0}, [ep("a", waiting=0.0), ep("b", waiting=4.0)], {"a": 1.0, "b": 0.5}),
    (
        "kv_usage",
        {},
        [ep("a", kv_usage=0.25), ep("b", kv_usage=1.0), ep("c")],
        {"a": 0.75, "b": 0.0, "c": NEUTRAL},
    ),
    ("kv_usage", {}, [ep("a", kv_usage=1.5)], {"a": 0.0}),  # clamped
    ("inflight", {}, [ep("a", inflight=0), ep("b", inflight=1)], {"a": 1.0, "b": 0.75}),
    ("inflight", {"request_share": 1.0}, [ep("a", inflight=1), ep("b", inflight=3)], {"a": 1.0, "b": 0.5}),
    ("session", {}, [ep("a"), ep("b")], {"a": NEUTRAL, "b": NEUTRAL}),  # no session
    ("prefix", {"block_size": 4}, [ep("a"), ep("b")], {"a": NEUTRAL, "b": NEUTRAL}),  # no tokens
    ("precise_prefix", {}, [ep("a"), ep("b")], None),  # no KV events: abstains
]


@pytest.mark.parametrize(("name", "params", "eps", "expected"), SCORER_CASES)
def test_scorers_without_history(
    name: str, params: dict[str, Any], eps: list[Endpoint], expected: dict[str, float] | None
) -> None:
    got = build("scorer", name, params).score(req(), eps)
    assert (got if got is None else approx(got)) == expected


INFLIGHT_TOKEN_CASES = [
    # (picks as (replica, est_tokens), finished picks, expected token-only scores for a, b)
    ([("a", 744)], [], {"a": 0.256, "b": 1.0}),  # (0 + 256) / (744 + 256)
    ([("a", 744), ("b", 744)], [], {"a": 1.0, "b": 1.0}),
    ([("a", 744)], [("a", 744)], {"a": 1.0, "b": 1.0}),  # done gives the tokens back
    ([("a", 100), ("b", 1100)], [("a", 100)], {"a": 1.0, "b": 0.1888}),
]


@pytest.mark.parametrize(("picks", "done", "expected"), INFLIGHT_TOKEN_CASES)
def test_inflight_tokens(picks: list[tuple[str, int]], done: list[tuple[str, int]], expected: dict) -> None:
    eps = {"a": ep("a"), "b": ep("b")}
    s = InflightScorer(request_share=0.0)
    for rid, n in picks:
        s.on_pick(req(est_tokens=n), eps[rid])
    for rid, n in done:
        s.on_done(req(est_tokens=n), eps[rid])
    assert approx(s.score(req(), list(eps.values()))) == expected


SESSION_CASES = [
    # (history of (session, replica), request session, candidates' loads, expected)
    ([("s1", "a")], "s1", {"a": 0, "b": 0}, {"a": 1.0, "b": 0.0}),
    ([("s1", "a"), ("s1", "b")], "s1", {"a": 0, "b": 0}, {"a": 0.0, "b": 1.0}),  # last one wins
    ([("s1", "a")], "s2", {"a": 0, "b": 0}, {"a": NEUTRAL, "b": NEUTRAL}),  # new session
    ([("s1", "c")], "s1", {"a": 0, "b": 0}, {"a": NEUTRAL, "b": NEUTRAL}),  # its replica is gone
    ([("s1", "a")], "s1", {"a": 20, "b": 1}, {"a": 0.0, "b": 0.0}),  # hot replica: affinity dropped
    ([("s1", "a"), ("s2", "b"), ("s3", "b")], "s1", {"a": 0, "b": 0}, {"a": NEUTRAL, "b": NEUTRAL}),
]


@pytest.mark.parametrize(("history", "session", "loads", "expected"), SESSION_CASES)
def test_session(history: list[tuple[str, str]], session: str, loads: dict[str, int], expected: dict) -> None:
    eps = {rid: ep(rid, inflight=n) for rid, n in loads.items()}
    s = SessionScorer(max_sessions=2)  # the last case: s1 evicted by s2, s3
    for sess, rid in history:
        s.on_pick(req(session=sess), eps.get(rid) or ep(rid))
    assert s.score(req(session=session), list(eps.values())) == expected


# --- approximate prefix ----------------------------------------------------------------------------

A = list(range(100, 132))  # 8 blocks of 4 tokens
B = list(range(500, 532))
PREFIX_CASES = [
    # (prompts sent to a, prompts sent to b, request, loads, params, expected)
    ([A], [], A, {}, {}, {"a": 1.0, "b": 0.0}),
    ([A[:16]], [A[:8]], A, {}, {}, {"a": 0.5, "b": 0.25}),  # longest prefix / all blocks
    ([A[:16] + B[:16]], [], A, {}, {}, {"a": 0.5, "b": 0.0}),  # divergence after 4 blocks
    ([B], [A[:30]], A, {}, {}, {"a": 0.0, "b": 0.875}),  # a partial block is not held
    ([A], [], A, {"a": 10, "b": 0}, {}, {"a": 0.0, "b": 0.0}),  # hot: 10 > 0 * 2 + 4
    ([A], [], A, {"a": 4, "b": 0}, {}, {"a": 1.0, "b": 0.0}),  # at the limit: kept
    ([A], [], A, {"a": 10, "b": 3}, {}, {"a": 1.0, "b": 0.0}),  # 10 <= 3 * 2 + 4
    ([A], [], A, {"a": 10, "b": 0}, {"hot_factor": 0.5}, {"a": 0.5, "b": 0.0}),
    ([A], [], A, {"a": 10, "b": 0}, {"slack": 16}, {"a": 1.0, "b": 0.0}),
    ([A, B], [], A, {}, {"capacity_blocks": 8}, {"a": 0.0, "b": 0.0}),  # A evicted by B
    ([A, B], [], A, {}, {"capacity_blocks": 12}, {"a": 0.5, "b": 0.0}),  # A's first 4 blocks left
    ([A, B], [], A, {}, {"kv_cache_tokens": 48}, {"a": 0.5, "b": 0.0}),  # 48 tokens = 12 blocks
]


@pytest.mark.parametrize(("on_a", "on_b", "prompt", "loads", "params", "expected"), PREFIX_CASES)
def test_prefix(
    on_a: list[list[int]], on_b: list[list[int]], prompt: list[int], loads: dict, params: dict, expected: dict
) -> None:
    a, b = ep("a", inflight=loads.get("a", 0)), ep("b", inflight=loads.get("b", 0))
    s = PrefixScorer(block_size=4, **params)
    for replica, prompts in ((a, on_a), (b, on_b)):
        for p in prompts:
            s.on_pick(req(p), replica)
    assert approx(s.score(req(prompt), [a, b])) == expected


GUARD_CASES = [
    # (a's in-flight requests, a's engine queue, queued_only, a's affinity kept)
    (0, 30.0, True, False),  # the engine queues: hot by its queue alone
    (10, 0.0, True, True),  # busier than b but not queueing: a miss elsewhere would cost more
    (10, 0.0, False, False),  # without queued_only, in-flight requests alone make it hot
    (10, 2.0, True, False),
    (10, None, True, False),  # no metrics from the engine: in-flight requests decide
]


@pytest.mark.parametrize(("inflight", "waiting", "queued_only", "kept"), GUARD_CASES)
def test_prefix_guard_and_the_engine_queue(
    inflight: int, waiting: float | None, queued_only: bool, kept: bool
) -> None:
    """Both prefix scorers: replica a holds the prompt, b holds nothing and is idle."""
    a, b = ep("a", inflight=inflight, waiting=waiting), ep("b", waiting=0.0)
    approximate = PrefixScorer(block_size=4, queued_only=queued_only)
    approximate.on_pick(req(A), a)
    index = KVBlockIndex()
    index.apply("a", [Stored(list(range(8)), None, A, 4)])
    index.apply("b", [])
    precise = PrecisePrefixScorer(index=index, queued_only=queued_only)
    for scorer in (approximate, precise):
        assert scorer.score(req(A), [a, b]) == {"a": 1.0 if kept else 0.0, "b": 0.0}


@pytest.mark.parametrize("seed", range(5))
def test_block_lru_stays_parent_closed(seed: int) -> None:
    """Under random inserts and evictions, binary-search matching equals a linear scan."""
    rng = random.Random(seed)
    stems = [[rng.randrange(1000) for _ in range(40)] for _ in range(6)]
    lru = BlockLRU(capacity=25)
    for _ in range(200):
        stem = rng.choice(stems)
        lru.insert_chain(block_hashes(stem[: rng.randrange(4, 41)], 4))
        probe = block_hashes(rng.choice(stems), 4)
        linear = next((i for i, h in enumerate(probe) if h not in lru.blocks), len(probe))
        assert lru.match(probe) == linear
        assert len(lru.blocks) <= 25


def test_prefix_set_capacity_and_clear() -> None:
    s, a = PrefixScorer(block_size=4), ep("a")
    s.on_pick(req(A), a)
    s.set_capacity("a", 2)
    assert s.score(req(A), [a]) == {"a": 0.25}
    s.clear("a")
    assert s.score(req(A), [a]) == {"a": 0.0}


# --- precise prefix from KV events -----------------------------------------------------------------

T = list(range(100, 116))  # a prompt of four 4-token blocks
E = [901, 902, 903, 904]  # the engine's own hashes of those blocks (any function: the index re-keys)


def st(hashes: list[int], parent: int | None, tokens: list[int], **kw: Any) -> Stored:
    return Stored(hashes, parent, tokens, 4, **kw)


KV_CASES = [
    # (events as (replica, event), request tokens, expected scores for a and b)
    ([("a", st(E, None, T)), ("b", Cleared())], T, {"a": 1.0, "b": 0.0}),
    (
        [("a", st(E[:2], None, T[:8])), ("a", st(E[2:], 902, T[8:])), ("b", Cleared())],
        T,
        {"a": 1.0, "b": 0.0},
    ),
    ([("a", st(E, None, T)), ("a", Removed([903])), ("b", Cleared())], T, {"a": 0.5, "b": 0.0}),
    ([("a", st(E, None, T)), ("b", st([555], None, T[:4]))], T, {"a": 1.0, "b": 0.25}),
    ([("a", st(E, None, T)), ("b", st(E, None, T)), ("a", Cleared())], T, {"a": 0.0, "b": 1.0}),
    ([("a", st(E, None, T))], T, {"a": 1.0, "b": NEUTRAL}),  # b sends no events: unknown
    ([("a", st(E, None, T)), ("b", Cleared())], [7] + T[1:], {"a": 0.0, "b": 0.0}),  # other first block
    ([("a", st(E, None, T)), ("b", Cleared())], T[:3], {"a": NEUTRAL, "b": NEUTRAL}),  # under one block
    ([("a", st(E[2:], 902, T[8:])), ("b", Cleared())], T, {"a": 0.0, "b": 0.0}),  # parent never seen
    ([("a", st(E, None, T, keyed=False)), ("b", Cleared())], T, {"a": 0.0, "b": 0.0}),  # LoRA blocks
    (
        [("a", st(E, None, T)), ("a", st(E, None, T)), ("a", Removed(E[3:])), ("b", Cleared())],
        T,
        {"a": 0.75, "b": 0.0},
    ),  # announced twice, removed once
]


@pytest.mark.parametrize(("events", "tokens", "expected"), KV_CASES)
def test_precise_prefix(events: list[tuple[str, Any]], tokens: list[int], expected: dict) -> None:
    index = KVBlockIndex()
    for replica, event in events:
        index.apply(replica, [event])
    s = PrecisePrefixScorer(index=index)
    assert s.score(req(tokens), [ep("a"), ep("b")]) == expected
    if isinstance(events[-1][1], Cleared):
        assert index.blocks(events[-1][0]) == 0


def test_precise_prefix_matches_the_routers_own_hashes() -> None:
    """The index holds exactly the hashes the router computes from the same tokens."""
    index = KVBlockIndex()
    index.apply("a", [st(E, None, T)])
    assert set(index.by_block) == set(block_hashes(T, 4))
    assert index.block_size == {"a": 4}


def test_precise_prefix_counts_running_requests_until_done() -> None:
    """Blocks of a request still in prefill count for its replica; ``done`` takes them back."""
    index = KVBlockIndex()
    index.apply("a", [])
    index.apply("b", [])
    s = PrecisePrefixScorer(index=index, block_size=4)
    a, b, r = ep("a"), ep("b"), req(T)
    s.on_pick(r, b)
    assert s.score(req(T), [a, b]) == {"a": 0.0, "b": 1.0}
    s.on_done(r, b)
    assert s.score(req(T), [a, b]) == {"a": 0.0, "b": 0.0}
    assert s.running == {}


def test_abstaining_scorer_leaves_the_weighted_mean() -> None:
    """A scorer returning None is left out: the other scorers decide alone, at full weight."""
    pool = Pool()
    for rid, inflight in (("a", 0), ("b", 3)):
        pool.add(ep(rid, inflight=inflight))
    cfg = RouterConfig(
        scorers=[ScorerConfig(name="precise_prefix", weight=9), ScorerConfig(name="inflight", weight=1)]
    )
    router = Router(pool, default=cfg)
    decision = router.pick(router.request("m", {"messages": []}, T))
    assert decision is not None and decision.endpoint.id == "a"
    assert set(decision.scores) == {"inflight"}
    assert decision.total["a"] == 1.0


# --- pickers ---------------------------------------------------------------------------------------

PICKER_CASES = [
    # (picker, scores, ids that may be picked, ids that must be picked at least once in 400 seeded picks)
    ("max_score", [0.2, 0.9, 0.5], {"r1"}, {"r1"}),
    ("max_score", [0.9, 0.9, 0.5], {"r0", "r1"}, {"r0", "r1"}),  # ties broken at random
    ("weighted_random", [0.0, 1.0, 3.0], {"r1", "r2"}, {"r1", "r2"}),
    ("weighted_random", [0.0, 0.0], {"r0", "r1"}, {"r0", "r1"}),  # all zero: uniform
    ("power_of_two", [0.1, 0.9], {"r1"}, {"r1"}),
    ("power_of_two", [0.1, 0.5, 0.9], {"r1", "r2"}, {"r1", "r2"}),  # the worst never wins a pair
    ("power_of_two", [0.3], {"r0"}, {"r0"}),
]


@pytest.mark.parametrize(("name", "scores", "allowed", "seen"), PICKER_CASES)
def test_pickers(name: str, scores: list[float], allowed: set[str], seen: set[str]) -> None:
    picker, rng = build("picker", name), random.Random(3)
    scored = [(ep(f"r{i}"), s) for i, s in enumerate(scores)]
    got = Counter(picker.pick(scored, rng).id for _ in range(400))
    assert set(got) <= allowed and seen <= set(got)


def test_weighted_random_is_proportional() -> None:
    picker, rng = build("picker", "weighted_random"), random.Random(5)
    scored = [(ep("a"), 1.0), (ep("b"), 3.0)]
    got = Counter(picker.pick(scored, rng).id for _ in range(4000))
    assert 0.70 < got["b"] / 4000 < 0.80


def test_round_robin_takes_turns_whatever_the_scores() -> None:
    picker, rng = build("picker", "round_robin"), random.Random(1)
    scored = [(ep("a"), 0.0), (ep("b"), 1.0), (ep("c"), 0.5)]
    assert [picker.pick(scored, rng).id for _ in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]
    assert picker.pick(scored[:1], rng).id == "a"  # one candidate left (the others filtered out)


def test_seeded_pickers_repeat() -> None:
    scored = [(ep(f"r{i}"), 0.5) for i in range(8)]
    for name in ("max_score", "weighted_random", "power_of_two"):
        runs = [
            [build("picker", name).pick(scored, rng).id for _ in range(50)]
            for rng in (random.Random(9), random.Random(9))
        ]
        assert runs[0] == runs[1]


# --- registry and request --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["filter", "scorer", "picker"])
def test_unknown_plugin_lists_known_names(kind: str) -> None:
    with pytest.raises(UnknownPlugin) as err:
        build(kind, "nope")
    assert "nope" in str(err.value)
    for name in known(kind):
        assert name in str(err.value)


def test_registry_contents_and_bad_params() -> None:
    assert known("filter") == ["healthy", "not_overloaded"]
    assert {"prefix", "precise_prefix", "queue", "kv_usage", "inflight", "session"} <= set(known("scorer"))
    assert known("picker") == ["max_score", "power_of_two", "round_robin", "weighted_random"]
    with pytest.raises(ValueError, match="bad params for scorer 'queue'"):
        build("scorer", "queue", {"flor": 2})


def test_register_a_new_scorer() -> None:
    @register_scorer("test_constant")
    class Constant:
        def __init__(self, value: float = 0.3) -> None:
            self.value = value

        def score(self, req: RouteRequest, eps: list[Endpoint]) -> dict[str, float]:
            return {e.id: self.value for e in eps}

    assert build("scorer", "test_constant", {"value": 0.7}).score(req(), [ep("a")]) == {"a": 0.7}


def test_request_hashes_at_another_block_size() -> None:
    r = req(A)
    assert r.hashes(4) is r.block_hashes and len(r.hashes(4)) == 8
    assert r.hashes(8) == block_hashes(A, 8) and len(r.hashes(8)) == 4
    assert RouteRequest(model="m").hashes(16) == []
