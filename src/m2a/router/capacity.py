"""Capacity planning: how many replicas a workload needs to meet a time-to-first-token target.

Each trial starts ``n`` simulated replicas (``m2a.sim``, with the latency model of a real
engine when its parameters were fitted: ``m2a sim --fit``), routes a synthetic workload over them with
m2a's router in this process (the configured pipeline, the replicas' KV events and metrics), and
measures TTFT at the client. The search doubles ``n`` until a trial meets the target, then bisects
between the last miss and the first hit. A trial meets the target when the p90 TTFT is at most
``target_p90_s`` and no request errs; requests still waiting when the trial ends count with their wait
so far, so an overloaded pool (a growing queue) misses.

Workload (``Workload``): Poisson arrivals at ``rate`` requests/s for ``duration_s`` simulated seconds;
``groups`` groups of users, each group sharing a system prompt of ``shared_tokens`` tokens, each
request adding ``unique_tokens`` of its own and asking for ``output_tokens``; arrivals and prompts are
drawn from ``random.Random(seed)``, and the router breaks ties with the same seed.

Times are simulated seconds, and a trial runs on a simulated clock (``SimulatedTimeLoop``, in a
thread of its own): whenever nothing is ready to run and no KV event is on its way, the clock jumps
to the next timer. So a trial takes only the CPU time its work needs, and its answer depends on the
workload, the latency model and the seed alone, not on how fast or how busy this machine is: the
same arguments give the same answer. ``SimParams.time_scale`` does not matter here.
"""

from __future__ import annotations

import asyncio
import math
import random
import selectors
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from m2a.config import RouterConfig
from m2a.protocol.tokens import load_tokenizer, prompt_tokens
from m2a.router.kvevents import KVEventSubscriber
from m2a.router.load import LoadWatcher
from m2a.router.pipeline import Router
from m2a.router.pool import Endpoint, Pool
from m2a.sim import SimParams, Simulator
from m2a.sim.tokenize import WORDS

T = TypeVar("T")
SETTLE_S = 2.0  # wall seconds to wait for a message on its way before the clock moves on without it
CONNECT_S = 10.0  # wall seconds for the router's KV-event subscriptions to reach every replica


class _SimulatedSelector(selectors.DefaultSelector):
    """The loop's selector: I/O that is ready now, else (once nothing is on its way) a clock jump."""

    def __init__(self, loop: SimulatedTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self._loop.check_interrupt()
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        # Loopback TCP between coroutines of this thread is readable as soon as it is written, but
        # ZMQ hands messages over in its own I/O threads: wait for those, in wall time.
        deadline = time.monotonic() + self._loop.settle_s
        while not self._loop.settled():
            ready = super().select(0.001)
            if ready:
                return ready
            if time.monotonic() > deadline:
                break
        if timeout is None:  # no timer at all: only I/O can wake the loop
            return super().select(None)
        self._loop.now += timeout
        return []


class SimulatedTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a simulated clock that starts at 0 and moves only when the loop would sleep.

    ``settled`` says whether every message sent through another thread (ZMQ) has arrived; until it
    does, the clock waits for it up to ``settle_s`` wall seconds. Once ``interrupt`` is set (from
    another thread), the main task is cancelled.
    """

    def __init__(self, interrupt: threading.Event | None = None) -> None:
        self.now = 0.0
        self.settle_s = SETTLE_S
        self.settled: Callable[[], bool] = lambda: True
        self.interrupt = interrupt
        self.main: asyncio.Task[Any] | None = None
        super().__init__(_SimulatedSelector(self))

    def time(self) -> float:
        return self.now

    def check_interrupt(self) -> None:
        if self.interrupt is not None and self.interrupt.is_set() and self.main is not None:
            self.interrupt = None
            self.main.cancel()


def run_simulated(main: Callable[[], Coroutine[Any, Any, T]], interrupt: threading.Event | None = None) -> T:
    """Run ``main()`` to completion on a fresh ``SimulatedTimeLoop`` in this thread; setting
    ``interrupt`` cancels it (``CancelledError``)."""
    loop = SimulatedTimeLoop(interrupt)
    try:
        loop.main = loop.create_task(main())
        return loop.run_until_complete(loop.main)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


@dataclass(frozen=True)
class Workload:
    rate: float  # requests per simulated second
    duration_s: float = 60.0
    groups: int = 8
    shared_tokens: int = 1000
    unique_tokens: int = 100
    output_tokens: int = 64
    seed: int = 0

    def requests(self) -> list[tuple[float, dict]]:
        """(arrival in simulated seconds, chat request body), the same for every trial."""
        rng = random.Random(self.seed)

        def words(n: int) -> str:
            return " ".join(rng.choice(WORDS) for _ in range(n))

        systems = [f"group {g} " + words(self.shared_tokens) for g in range(self.groups)]
        out, at = [], rng.expovariate(self.rate)
        while at < self.duration_s:
            body = {
                "model": "sim-model",
                "messages": [
                    {"role": "system", "content": systems[rng.randrange(self.groups)]},
                    {"role": "user", "content": words(self.unique_tokens)},
                ],
                "max_tokens": self.output_tokens,
                "stream": True,
            }
            out.append((at, body))
            at += rng.expovariate(self.rate)
        return out


@dataclass
class Trial:
    replicas: int
    requests: int
    errors: int
    waiting: int  # no first token when the trial ended
    p50_s: float
    p90_s: float
    hit_rate: float
    meets: bool


@dataclass
class _Rec:
    start: float
    ttft: float | None = None
    error: bool = False


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return math.nan
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def trial(
    n: int,
    work: Workload,
    params: SimParams,
    router: RouterConfig,
    target_p90_s: float,
    drain_s: float = 10.0,
) -> Trial:
    """Route ``work`` over ``n`` simulated replicas; TTFT in simulated seconds.

    Runs on a ``SimulatedTimeLoop`` in a worker thread, so the caller's loop keeps running; when
    the caller is cancelled (Ctrl-C), so is the trial."""
    interrupt = threading.Event()
    try:
        return await asyncio.to_thread(
            run_simulated, lambda: _trial(n, work, params, router, target_p90_s, drain_s), interrupt
        )
    finally:
        interrupt.set()


async def _connect_events(sim: Simulator, events: KVEventSubscriber, ids: list[str]) -> None:
    """Wait until each replica's KV events reach the subscriber (a ZMQ PUB socket drops what it
    sends before a subscriber has joined): clear each replica's (empty) cache, which sends an
    ``AllBlocksCleared`` event, until one arrives from every replica."""
    loop = asyncio.get_running_loop()
    if not isinstance(loop, SimulatedTimeLoop):
        raise RuntimeError("capacity trials run on a SimulatedTimeLoop (run_simulated)")
    deadline = time.monotonic() + CONNECT_S
    loop.settle_s = 0.02
    try:
        while not all(events.stats[rid].last_seq is not None for rid in ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the simulated replicas' KV events did not arrive within {CONNECT_S:g} s")
            for rid, rep in zip(ids, sim.replicas, strict=True):
                if events.stats[rid].last_seq is None:
                    rep.cache.clear()
            await asyncio.sleep(0.001)
    finally:
        loop.settle_s = SETTLE_S


async def _trial(
    n: int, work: Workload, params: SimParams, router: RouterConfig, target_p90_s: float, drain_s: float
) -> Trial:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, SimulatedTimeLoop)
    tok = load_tokenizer("simple")
    planned = work.requests()
    # One simulated second per second of the loop's clock: the load watcher polls every 0.1 s, as a
    # gateway does.
    sim_params = params.with_(model="sim-model", time_scale=1.0)
    async with Simulator(n, sim_params, kv_events=True, seed=work.seed) as sim:
        pool = Pool()
        for i, (url, murl, kv) in enumerate(zip(sim.urls, sim.metrics_urls, sim.kv_endpoints, strict=True)):
            pool.add(Endpoint(f"sim-{i}", "sim-model", url, metrics_url=murl, healthy=True, kv_events=kv))
        r = Router(pool, default=router, seed=work.seed)
        ids = [e.id for e in pool.all()]
        events = KVEventSubscriber(r.kv_index, {e.id: e.kv_events for e in pool.all() if e.kv_events})
        publishers = [(events.stats[rid], rep.publisher) for rid, rep in zip(ids, sim.replicas, strict=True)]

        def settled() -> bool:  # every batch each replica published has reached the router
            return all(p is None or st.last_seq == p.published - 1 for st, p in publishers)

        load = LoadWatcher(pool, interval_s=0.1)
        events.start()
        loop.settled = settled
        recs: list[_Rec] = []

        async def one(body: dict, session: aiohttp.ClientSession) -> None:
            rec = _Rec(loop.time())
            recs.append(rec)
            req = r.request("sim-model", body, prompt_tokens(tok, body))
            decision = r.pick(req)
            if decision is None:
                rec.error = True
                return
            ep = decision.endpoint
            ep.inflight += 1
            try:
                async with session.post(f"{ep.base_url}/chat/completions", json=body) as resp:
                    if resp.status != 200:
                        rec.error = True
                        return
                    async for line in resp.content:
                        if rec.ttft is None and line.startswith(b"data: ") and b'"content"' in line:
                            rec.ttft = loop.time() - rec.start
            except aiohttp.ClientError:
                rec.error = True
            finally:
                ep.inflight -= 1
                r.done(req, ep)

        try:
            await _connect_events(sim, events, ids)
            load.start()
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
            )
            async with session:
                t0 = loop.time()
                tasks: list[asyncio.Task[None]] = []
                try:
                    for at, body in planned:
                        await asyncio.sleep(max(0.0, t0 + at - loop.time()))
                        tasks.append(asyncio.create_task(one(body, session)))
                    await asyncio.wait(tasks, timeout=drain_s)
                    end = loop.time()
                finally:  # requests still waiting at the end (or all of them, when interrupted)
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            loop.settled = lambda: True  # what is still on its way at the end no longer matters
            await load.close()
            await events.close()
        hits = sum(rep.cache.stats.hits for rep in sim.replicas)
        asked = sum(rep.cache.stats.queries for rep in sim.replicas)
    errors = sum(x.error for x in recs)
    waits = [x.ttft if x.ttft is not None else end - x.start for x in recs if not x.error]
    p90 = _pct(waits, 0.9)
    return Trial(
        replicas=n,
        requests=len(planned),
        errors=errors,
        waiting=sum(x.ttft is None and not x.error for x in recs),
        p50_s=_pct(waits, 0.5),
        p90_s=p90,
        hit_rate=hits / asked if asked else math.nan,
        meets=errors == 0 and p90 <= target_p90_s,
    )


async def plan_replicas(
    work: Workload,
    params: SimParams,
    target_p90_s: float,
    router: RouterConfig | None = None,
    max_replicas: int = 64,
    progress: Callable[[Trial], None] | None = None,
) -> tuple[int | None, list[Trial]]:
    """The fewest replicas meeting the target (None: not even ``max_replicas``), and every trial run."""
    cfg = router or RouterConfig()
    trials: dict[int, Trial] = {}

    async def run(n: int) -> Trial:
        t = trials.get(n)
        if t is None:
            t = trials[n] = await trial(n, work, params, cfg, target_p90_s)
            if progress is not None:
                progress(t)
        return t

    miss, n = 0, 1
    while not (await run(n)).meets:
        if n >= max_replicas:
            return None, sorted(trials.values(), key=lambda t: t.replicas)
        miss, n = n, min(n * 2, max_replicas)
    hit = n
    while hit - miss > 1:
        mid = (hit + miss) // 2
        if (await run(mid)).meets:
            hit = mid
        else:
            miss = mid
    return hit, sorted(trials.values(), key=lambda t: t.replicas)
