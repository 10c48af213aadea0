"""What one routing decision costs, measured inside the process (issue 4's target: p99 < 0.5 ms).

16 replicas of one model with engine metrics set, the default pipeline (healthy, not_overloaded;
prefix ×2, precise_prefix ×2, queue, kv_usage, inflight; max_score), every replica's prefix LRU
filled to its capacity (8192 blocks of 16 tokens), and requests of 2,048 tokens already tokenized:
groups sharing a 1,024-token system prefix, each with its own question. With ``--kv-events`` (the
default) every replica also reports 8192 blocks of 16 tokens through KV events, each group's prefix
on one of them: precise_prefix then decides and the approximate scorer steps back, as in production
with vLLM engines. It times, per request:

- ``pick``: ``Router.pick`` (filters, scorers, picker, the on_pick hooks that update the index) with
  the block hashes already computed;
- ``request+pick``: ``Router.request`` (hashing 128 blocks, session, token estimate) then ``pick``;
- ``done``: ``Router.done``;
- ``events``: re-keying one BlockStored event of 8 blocks into the KV index (the subscriber's cost).

    .venv/bin/python bench/router_decision.py [--replicas 16] [--tokens 2048] [--n 5000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from m2a.config import RouterConfig
from m2a.protocol.kv_events import Stored
from m2a.router.pipeline import Router
from m2a.router.pool import Endpoint, Pool
from m2a.router.prefix import PrefixScorer


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def line(name: str, xs_ns: list[float]) -> str:
    us = [x / 1000 for x in xs_ns]
    return (
        f"{name:14s} p50 {pct(us, 0.5):7.1f} µs   p99 {pct(us, 0.99):7.1f} µs   "
        f"max {max(us):7.1f} µs   mean {statistics.fmean(us):7.1f} µs"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--groups", type=int, default=64, help="distinct shared system prefixes")
    ap.add_argument("--n", type=int, default=5000, help="timed decisions")
    ap.add_argument("--no-kv-events", dest="kv_events", action="store_false", help="approximate prefix only")
    args = ap.parse_args()
    rng = random.Random(7)

    pool = Pool()
    for i in range(args.replicas):
        pool.add(
            Endpoint(
                id=f"r{i}",
                model="m",
                base_url="http://x/v1",
                healthy=True,
                max_inflight=256,
                waiting=float(rng.randrange(4)),
                kv_usage=rng.random() * 0.8,
            )
        )
    router = Router(pool, default=RouterConfig(), seed=1)
    prefix = router.pipeline("m").scorers[0][2]
    assert isinstance(prefix, PrefixScorer)

    # Fill every replica's LRU to capacity with unrelated prompts.
    for ep in pool.endpoints("m"):
        lru = prefix._lru(ep.id)
        while len(lru.blocks) < lru.capacity:
            lru.insert_chain([rng.getrandbits(64) for _ in range(128)])
    full = sum(len(prefix.lrus[e.id].blocks) for e in pool.endpoints("m"))

    half = args.tokens // 2
    systems = [[rng.randrange(50_000) for _ in range(half)] for _ in range(args.groups)]
    events_ns: list[float] = []
    if args.kv_events:  # every replica reports a full cache; each group's prefix lives on one replica
        index = router.kv_index

        def store(rid: str, tokens: list[int]) -> None:
            ev = Stored([rng.getrandbits(64) for _ in range(len(tokens) // 16)], None, tokens, 16)
            t0 = time.perf_counter_ns()
            index.apply(rid, [ev])
            events_ns.append(time.perf_counter_ns() - t0)

        for g, system in enumerate(systems):
            store(f"r{g % args.replicas}", system)
        for ep in pool.endpoints("m"):
            while index.blocks(ep.id) < 8192:
                store(ep.id, [rng.randrange(50_000) for _ in range(128)])

    def prompt() -> list[int]:
        return rng.choice(systems) + [rng.randrange(50_000) for _ in range(args.tokens - half)]

    for _ in range(500):  # warm up: the groups' prefixes settle on replicas
        req = router.request("m", {"max_tokens": 128}, prompt())
        d = router.pick(req)
        assert d is not None
        router.done(req, d.endpoint)

    reqs = [router.request("m", {"max_tokens": 128, "user": f"u{i % 100}"}, prompt()) for i in range(args.n)]
    prompts = [prompt() for _ in range(args.n)]
    picks, both, dones = [], [], []
    clock = time.perf_counter_ns
    for req, toks in zip(reqs, prompts, strict=True):
        t0 = clock()
        d = router.pick(req)
        t1 = clock()
        assert d is not None
        router.done(req, d.endpoint)
        t2 = clock()
        req2 = router.request("m", {"max_tokens": 128}, toks)
        d2 = router.pick(req2)
        t3 = clock()
        assert d2 is not None
        router.done(req2, d2.endpoint)
        picks.append(t1 - t0)
        dones.append(t2 - t1)
        both.append(t3 - t2)

    print(
        f"{args.replicas} replicas, prefix index {full} blocks in all "
        f"({prefix.capacity} per replica, block {prefix.block_size} tokens), "
        f"{args.tokens}-token prompts, {args.n} decisions"
    )
    print(line("pick", picks))
    print(line("request+pick", both))
    print(line("done", dones))
    if events_ns:
        print(f"KV index: {len(router.kv_index.by_block)} blocks over {args.replicas} replicas")
        print(line("events", events_ns[args.groups :]))


if __name__ == "__main__":
    main()
