"""Quota counters: one table of cases run against ``Memory`` and against ``RedisCounters``.

The Redis variant uses the server at ``M2A_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``)
with a fresh key prefix per test, and deletes its keys afterwards. If the server cannot be reached
the Redis variant is skipped, except under CI (``CI`` set, or ``M2A_REQUIRE_REDIS=1``), where its
absence fails (as tests/db_fixtures.py does for PostgreSQL).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest

from m2a.gateway import counters as counters_mod
from m2a.gateway.counters import Charge, Counters, Memory, RedisCounters

pytestmark = pytest.mark.asyncio(loop_scope="session")

REDIS_URL = os.environ.get("M2A_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BACKENDS = ["memory", "redis"]
FAR = 86400.0  # seconds until a window of the table ends: well after the test


@dataclass
class Backend:
    name: str
    prefix: str
    clients: list[Any] = field(default_factory=list)

    def new(self) -> Counters:
        """A further client on the same counters (for Memory: the same object)."""
        if self.name == "memory":
            if not self.clients:
                self.clients.append(Memory())
            return self.clients[0]
        client = RedisCounters(REDIS_URL, prefix=self.prefix)
        self.clients.append(client)
        return client


async def _redis_reachable() -> None:
    import redis.asyncio as redis

    client = redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        await client.ping()
    except (OSError, redis.RedisError) as exc:
        why = f"Redis at {REDIS_URL} is unreachable: {type(exc).__name__}: {exc}"
        if os.environ.get("CI") or os.environ.get("M2A_REQUIRE_REDIS"):
            pytest.fail(why + " (required under CI)", pytrace=False)
        pytest.skip(why)
    finally:
        await client.aclose()


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "redis":
        await _redis_reachable()
    b = Backend(request.param, f"m2a-test:{uuid4().hex}:")
    try:
        yield b
    finally:
        if b.name == "redis" and b.clients:
            r = b.clients[0].redis
            keys = [k async for k in r.scan_iter(match=b.prefix + "*")]
            if keys:
                await r.delete(*keys)
        for c in b.clients:
            await c.close()


@pytest.fixture
def counters(backend: Backend) -> Counters:
    return backend.new()


# -- the table -----------------------------------------------------------------------------------


def w(key: str, limit: int, amount: int) -> Callable[[float], Charge]:
    """A window charge whose window ends FAR from now."""
    return lambda now: Charge(key, limit, amount, now + FAR)


def c(key: str, limit: int) -> Callable[[float], Charge]:
    """A concurrency charge whose slot turns stale FAR from now."""
    return lambda now: Charge(key, limit, 1, now + FAR, concurrency=True)


@dataclass(frozen=True)
class Reserve:
    charges: list[Callable[[float], Charge]]
    token: str
    expect: int | None


@dataclass(frozen=True)
class Settle:
    charges: list[Callable[[float], Charge]]
    deltas: list[int]
    token: str


@dataclass(frozen=True)
class Value:
    key: str
    expect: int


CASES: dict[str, list[Reserve | Settle | Value]] = {
    "fits": [Reserve([w("a", 100, 30)], "t1", None), Value("a", 30), Value("untouched", 0)],
    "first charge refused": [
        Reserve([w("a", 100, 101), w("b", 100, 1)], "t1", 0),
        Value("a", 0),
        Value("b", 0),
    ],
    "second charge refused, first not taken": [
        Reserve([w("a", 100, 60), w("b", 100, 50)], "t1", None),
        Reserve([w("a", 100, 30), w("b", 100, 60)], "t2", 1),
        Value("a", 60),
        Value("b", 50),
    ],
    "limit exactly reached": [
        Reserve([w("a", 100, 40)], "t1", None),
        Reserve([w("a", 100, 40)], "t2", None),
        Reserve([w("a", 100, 20)], "t3", None),
        Value("a", 100),
        Reserve([w("a", 100, 1)], "t4", 0),
        Value("a", 100),
    ],
    "zero limit refuses any amount": [Reserve([w("a", 0, 1)], "t1", 0), Value("a", 0)],
    "settle adds what was used beyond the estimate": [
        Reserve([w("a", 1000, 100)], "t1", None),
        Settle([w("a", 1000, 100)], [50], "t1"),
        Value("a", 150),
        Settle([w("a", 1000, 100)], [900], "t1"),
        Value("a", 1050),  # over the limit: the engine used more than reserved
        Reserve([w("a", 1000, 1)], "t2", 0),
    ],
    "settle gives back, never below zero": [
        Reserve([w("a", 1000, 100)], "t1", None),
        Settle([w("a", 1000, 100)], [-40], "t1"),
        Value("a", 60),
        Settle([w("a", 1000, 100)], [-500], "t1"),
        Value("a", 0),
        Reserve([w("a", 1000, 1000)], "t2", None),
        Value("a", 1000),
    ],
    "settle of a counter that does not exist creates none": [
        Settle([w("gone", 1000, 100)], [500], "t1"),
        Value("gone", 0),
        Reserve([w("gone", 100, 100)], "t2", None),
    ],
    "zero delta leaves the counter": [
        Reserve([w("a", 1000, 100)], "t1", None),
        Settle([w("a", 1000, 100)], [0], "t1"),
        Value("a", 100),
    ],
    "concurrency slots fill and free on settle": [
        Reserve([c("c", 2)], "t1", None),
        Reserve([c("c", 2)], "t2", None),
        Value("c", 2),
        Reserve([c("c", 2)], "t3", 0),
        Value("c", 2),
        Settle([c("c", 2)], [0], "t1"),
        Value("c", 1),
        Reserve([c("c", 2)], "t3", None),
        Value("c", 2),
        Settle([c("c", 2)], [0], "unknown-token"),  # frees nothing
        Value("c", 2),
    ],
    "concurrency zero": [Reserve([c("c", 0)], "t1", 0), Value("c", 0)],
    "full concurrency refuses and takes no tokens": [
        Reserve([c("c", 1)], "t1", None),
        Reserve([w("a", 100, 100), c("c", 1)], "t2", 1),
        Value("a", 0),
        Value("c", 1),
    ],
    "window and concurrency settled together": [
        Reserve([w("a", 1000, 100), c("c", 1), w("b", 10, 1)], "t1", None),
        Value("a", 100),
        Value("b", 1),
        Value("c", 1),
        Settle([w("a", 1000, 100), c("c", 1), w("b", 10, 1)], [-70, 0, 0], "t1"),
        Value("a", 30),
        Value("b", 1),
        Value("c", 0),
        Reserve([w("a", 1000, 100), c("c", 1), w("b", 10, 1)], "t2", None),
    ],
}


@pytest.mark.parametrize("steps", CASES.values(), ids=CASES.keys())
async def test_table(counters: Counters, steps: list[Reserve | Settle | Value]) -> None:
    now = time.time()
    for i, step in enumerate(steps):
        if isinstance(step, Reserve):
            got = await counters.reserve([f(now) for f in step.charges], step.token)
            assert got == step.expect, f"step {i}: {step}"
        elif isinstance(step, Settle):
            await counters.settle([f(now) for f in step.charges], step.deltas, step.token)
        else:
            assert await counters.value(step.key) == step.expect, f"step {i}: {step}"


# -- time ----------------------------------------------------------------------------------------


async def test_expired_window_starts_from_zero(counters: Counters) -> None:
    expires = time.time() + 0.5
    assert await counters.reserve([Charge("a", 100, 100, expires)], "t1") is None
    assert await counters.reserve([Charge("a", 100, 1, expires)], "t2") == 0
    # Redis expires the key at the whole second after `expires` (EXPIREAT ceil + 1): wait past it.
    await asyncio.sleep(max(0.0, math.ceil(expires) + 1.2 - time.time()))
    assert await counters.value("a") == 0
    await counters.settle([Charge("a", 100, 100, expires)], [50], "t1")  # too late: the window is gone
    assert await counters.value("a") == 0
    later = time.time() + FAR
    assert await counters.reserve([Charge("a", 100, 100, later)], "t3") is None
    assert await counters.value("a") == 100


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset


async def test_stale_concurrency_slots_free_themselves(
    counters: Counters, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(counters_mod, "time", SimpleNamespace(time=clock.time))
    now = clock.time()
    assert await counters.reserve([Charge("c", 2, 1, now + 100, True)], "dead-1") is None
    assert await counters.reserve([Charge("c", 2, 1, now + 300, True)], "alive") is None
    assert await counters.reserve([Charge("c", 2, 1, now + 300, True)], "new") == 0
    clock.offset = 200  # the first slot is stale now, the second is not
    assert await counters.value("c") == 1
    now = clock.time()
    assert await counters.reserve([Charge("c", 2, 1, now + 100, True)], "new") is None
    assert await counters.reserve([Charge("c", 2, 1, now + 100, True)], "more") == 0
    assert await counters.value("c") == 2
    clock.offset = 1000  # every slot is stale
    assert await counters.value("c") == 0
    assert await counters.reserve([Charge("c", 2, 1, clock.time() + 100, True)], "x") is None
    assert await counters.value("c") == 1


# -- atomicity -----------------------------------------------------------------------------------


async def test_concurrent_reserves_admit_exactly_the_limit(backend: Backend) -> None:
    clients = [backend.new(), backend.new()]  # Redis: two separate clients on the same counters
    expires = time.time() + FAR

    async def one(i: int) -> int | None:
        return await clients[i % 2].reserve([Charge("a", 1000, 10, expires)], f"t{i}")

    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert results.count(None) == 100
    assert results.count(0) == 100
    assert await clients[0].value("a") == 1000
    assert await clients[1].value("a") == 1000


async def test_concurrent_reserves_of_two_counters_stay_all_or_nothing(backend: Backend) -> None:
    clients = [backend.new(), backend.new()]
    expires = time.time() + FAR

    async def one(i: int) -> int | None:
        # "team" fits 100 of them, "key" only 30: every admitted request takes both, none takes one
        charges = [Charge("team", 1000, 10, expires), Charge("key", 300, 10, expires)]
        return await clients[i % 2].reserve(charges, f"t{i}")

    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert results.count(None) == 30
    assert results.count(1) == 170
    assert await clients[0].value("team") == 300
    assert await clients[0].value("key") == 300


async def test_concurrent_slots_admit_exactly_the_limit(backend: Backend) -> None:
    clients = [backend.new(), backend.new()]
    expires = time.time() + FAR

    async def one(i: int) -> int | None:
        return await clients[i % 2].reserve([Charge("c", 8, 1, expires, True)], f"t{i}")

    results = await asyncio.gather(*(one(i) for i in range(100)))
    assert results.count(None) == 8
    assert await clients[1].value("c") == 8
    admitted = [f"t{i}" for i, r in enumerate(results) if r is None]
    await asyncio.gather(
        *(clients[i % 2].settle([Charge("c", 8, 1, expires, True)], [0], t) for i, t in enumerate(admitted))
    )
    assert await clients[0].value("c") == 0
