"""The pool's passive health: a replica the gateway could not reach leaves at once, and comes back
as its health says (a later health report ends the ejection early)."""

from __future__ import annotations

import asyncio

import pytest

from m2a.router.pool import Endpoint, Pool

pytestmark = pytest.mark.asyncio(loop_scope="session")


def pool_of(*ids: str) -> Pool:
    pool = Pool()
    for i in ids:
        pool.add(Endpoint(i, "m", f"http://127.0.0.1:9/{i}/v1", healthy=True))
    return pool


async def test_an_ejected_replica_returns_as_its_health_says() -> None:
    pool = pool_of("a", "b")
    assert pool.eject("a", 0.05) is True
    assert [e.id for e in pool.endpoints("m") if e.healthy] == ["b"]
    assert pool.pick("m").id == "b"  # type: ignore[union-attr]
    assert pool.eject("a", 0.05) is False  # already out
    await asyncio.sleep(0.2)
    assert pool.endpoints("m")[0].healthy  # its health never said otherwise


async def test_an_ejected_replica_that_health_checks_took_out_stays_out() -> None:
    pool = pool_of("a")
    pool.eject("a", 0.05)
    pool.set_healthy("a", False)
    await asyncio.sleep(0.2)
    assert not pool.endpoints("m")[0].healthy


async def test_a_health_report_ends_an_ejection() -> None:
    pool = pool_of("a")
    pool.eject("a", 3600)
    pool.set_healthy("a", True)  # the supervisor saw it come back
    assert pool.endpoints("m")[0].healthy
    assert pool.eject("nobody", 1) is False
