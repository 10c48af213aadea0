"""Two gateway processes share one quota budget through Redis, and one PostgreSQL database.

Real processes and real HTTP: two `m2a up` (each its own port and state directory) on one
throwaway PostgreSQL database (so both see the same teams, keys and quotas) and one Redis
(``M2A_REDIS_URL``), serving a remote backend in this process. A load split across both must be
admitted as if one gateway counted it: ``requests 30/minute`` lets exactly 30 of 100 through, and a
token quota admits no more tokens than its limit plus one reservation per process.

Isolation: the gateways keep their counters under a namespace of this test's own
(``M2A_REDIS_PREFIX=m2a:q:test-<random>:``); the test deletes exactly the keys under it at the end
and flushes nothing. Without Redis or PostgreSQL the tests are skipped, unless ``CI``,
``M2A_REQUIRE_REDIS=1`` or ``M2A_REQUIRE_POSTGRES=1`` say they must run.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from m2a.gateway.quota import estimate_input
from tests.conftest import ROOT
from tests.db_fixtures import Database, database  # noqa: F401
from tests.slow_backend import SlowBackend, ask
from tests.up_proc import ADMIN_KEY, UpProc, make_team_key

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("database", ["postgres"], indirect=True)]

REDIS_URL = os.environ.get("M2A_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MODEL = "slow"
LOAD = 100
# The fixture's Redis client lives on the fixtures' (session) event loop: the tests run there too.
on_fixture_loop = pytest.mark.asyncio(loop_scope="session")


async def _redis_or_skip() -> aioredis.Redis:
    client = aioredis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        await client.aclose()
        why = f"Redis at {REDIS_URL} is unreachable: {type(exc).__name__}: {exc}"
        if os.environ.get("CI") or os.environ.get("M2A_REQUIRE_REDIS") == "1":
            pytest.fail(why + " (required under CI)", pytrace=False)
        pytest.skip(why)
    return client


@dataclass
class Pair:
    a: UpProc
    b: UpProc
    backend: SlowBackend
    redis: aioredis.Redis
    db_url: str
    prefix: str  # the gateways' counter namespace in Redis, this test's alone

    async def team(self, name: str) -> tuple[int, str]:
        """A new team (made through gateway A) with a grant and a member key: its id and the key."""
        key = await asyncio.to_thread(make_team_key, self.a.root, name, MODEL)
        conn = await asyncpg.connect(self.db_url)
        try:
            team_id = await conn.fetchval("SELECT id FROM teams WHERE name = $1", name)
        finally:
            await conn.close()
        return team_id, key

    async def set_quota(self, up: UpProc, team: str, metric: str, limit: int) -> None:
        async with httpx.AsyncClient(
            base_url=up.root, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
        ) as c:
            r = await c.put(
                f"/admin/v1/teams/{team}/quotas",
                json={"limits": [{"metric": metric, "window": "minute", "limit": limit}]},
            )
            assert r.status_code == 200, r.text
            assert [(q["metric"], q["window"], q["limit"]) for q in r.json()] == [(metric, "minute", limit)]

    async def counter_keys(self, pattern: str = "*") -> list[bytes]:
        return [k async for k in self.redis.scan_iter(match=self.prefix + pattern, count=1000)]

    async def counter(self, team_id: int, metric: str) -> int:
        """The team's window counters of ``metric`` (``team:<id>:<metric>:<window>:<start>``), summed."""
        keys = await self.counter_keys(f"team:{team_id}:{metric}:*")
        return sum(int(v or 0) for v in (await self.redis.mget(keys) if keys else []))

    async def fire(self, key: str, body: dict, n: int = LOAD) -> list[tuple[str, httpx.Response]]:
        """``n`` requests at once, every other one to each gateway: (which gateway, response)."""
        headers = {"authorization": f"Bearer {key}"}
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
        async with (
            httpx.AsyncClient(base_url=self.a.root, headers=headers, timeout=30, limits=limits) as ca,
            httpx.AsyncClient(base_url=self.b.root, headers=headers, timeout=30, limits=limits) as cb,
        ):
            pairs = [("a", ca) if i % 2 == 0 else ("b", cb) for i in range(n)]
            responses = await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _, c in pairs))
        return [(name, r) for (name, _), r in zip(pairs, responses, strict=True)]


async def _clear_of_window_edge(need_s: float) -> None:
    """Fixed minute windows: a load that straddles two of them would get two budgets."""
    left = 60 - time.time() % 60
    if left < need_s:
        await asyncio.sleep(left + 0.2)


def _assert_refused(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "rate_limit_exceeded", error
    assert 1 <= int(r.headers["retry-after"]) <= 60, r.headers


@pytest.fixture
async def pair(database: Database, tmp_path: Path) -> AsyncIterator[Pair]:  # noqa: F811
    assert database.url is not None
    redis = await _redis_or_skip()
    backend = SlowBackend().start()
    prefix = f"m2a:q:test-{secrets.token_hex(8)}:"
    env = {"M2A_DATABASE_URL": database.url, "M2A_REDIS_URL": REDIS_URL, "M2A_REDIS_PREFIX": prefix}
    models = [{"name": MODEL, "engine": "remote", "url": backend.url}]
    a, b = UpProc(tmp_path / "gw-a", models, env), UpProc(tmp_path / "gw-b", models, env)
    made = Pair(a, b, backend, redis, database.url, prefix)
    try:
        assert not await made.counter_keys()
        a.start()
        b.start()  # at once, on a database neither has migrated yet
        await asyncio.gather(asyncio.to_thread(a.wait_ready), asyncio.to_thread(b.wait_ready))
        yield made
    finally:
        a.close()
        b.close()
        backend.stop()
        try:
            keys = await made.counter_keys()
            if keys:
                await redis.delete(*keys)
        finally:
            await redis.aclose()


@on_fixture_loop
async def test_requests_quota_is_one_budget_across_two_gateways(pair: Pair) -> None:
    team_id, key = await pair.team("shared-requests")
    await pair.set_quota(pair.b, "shared-requests", "requests", 30)  # set through the other gateway
    body = {"model": MODEL, "messages": [{"role": "user", "content": ask(2)}]}
    seen_before = pair.backend.count()
    await _clear_of_window_edge(15)

    results = await pair.fire(key, body)

    ok = [r for _, r in results if r.status_code == 200]
    refused = [r for _, r in results if r.status_code != 200]
    assert len(ok) == 30, sorted({(name, r.status_code) for name, r in results})
    assert len(refused) == LOAD - 30
    for r in refused:
        _assert_refused(r)
    assert pair.backend.count() - seen_before == 30  # a refused request never reaches the engine
    assert await pair.counter(team_id, "requests") == 30


@on_fixture_loop
async def test_token_quota_admits_no_more_than_its_limit_across_two_gateways(pair: Pair) -> None:
    team_id, key = await pair.team("shared-tokens")
    max_tokens = 20
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": ask(max_tokens, 0.02)}],  # 0.4 s: they overlap
        "max_tokens": max_tokens,
    }
    reservation = estimate_input(body) + max_tokens  # what admission holds per request
    limit = 10 * reservation
    await pair.set_quota(pair.a, "shared-tokens", "tokens", limit)
    seen_before = pair.backend.count()
    await _clear_of_window_edge(15)

    results = await pair.fire(key, body)

    ok = [r for _, r in results if r.status_code == 200]
    for _, r in results:
        if r.status_code != 200:
            _assert_refused(r)
    used = sum(r.json()["usage"]["total_tokens"] for r in ok)
    assert all(r.json()["usage"]["completion_tokens"] == max_tokens for r in ok)
    # Both processes draw on one counter: at most one reservation of slack per process, where
    # two in-process counters would have let twice the limit through.
    assert used <= limit + 2 * reservation, (used, limit, reservation, len(ok))
    assert len(ok) >= math.floor(limit / reservation), (len(ok), limit, reservation)
    assert len(ok) < LOAD
    assert pair.backend.count() - seen_before == len(ok)
    # Each process settles its requests on the shared counter: it ends at the tokens really used.
    deadline = time.monotonic() + 5
    while (counted := await pair.counter(team_id, "tokens")) != used and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert counted == used, (counted, used)


_MIGRATE = """
import asyncio, sys, time
from pathlib import Path
from m2a.store.db import open_store

async def main() -> None:
    engine = await open_store(sys.argv[1], Path(sys.argv[3]))
    await engine.dispose()

time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # every process migrates at the same moment
asyncio.run(main())
"""


def test_gateways_starting_together_on_a_fresh_database_all_migrate(database: Database) -> None:  # noqa: F811
    """Several processes migrating one fresh PostgreSQL database at once: every one succeeds."""
    assert database.url is not None
    start_at = time.time() + 3  # after every interpreter has imported m2a
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE, database.url, str(start_at), str(database.home)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for _ in range(4)
    ]
    try:
        outputs = [p.communicate(timeout=60)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    failed = [out[-1500:] for p, out in zip(procs, outputs, strict=True) if p.returncode != 0]
    assert not failed, failed
