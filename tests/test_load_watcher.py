"""The load watcher reads engines' metrics pages, and leaves alone endpoints that have none."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from m2a.router.load import LoadWatcher
from m2a.router.pool import Endpoint, Pool

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_an_endpoint_without_metrics_is_not_polled_again_at_once(unused_tcp_port: int) -> None:
    hits = {"/metrics": 0, "/ok/metrics": 0}

    async def missing(request: web.Request) -> web.Response:
        hits["/metrics"] += 1
        return web.Response(status=404)

    async def page(request: web.Request) -> web.Response:
        hits["/ok/metrics"] += 1
        return web.Response(text='vllm:num_requests_waiting{model_name="m"} 4.0\n')

    app = web.Application()
    app.router.add_get("/metrics", missing)
    app.router.add_get("/ok/metrics", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    root = f"http://127.0.0.1:{unused_tcp_port}"
    pool = Pool()
    pool.add(Endpoint("remote#0", "m", f"{root}/v1", metrics_url=f"{root}/metrics", healthy=True))
    pool.add(
        Endpoint("vllm#0", "m", f"{root}/v1", engine="vllm", metrics_url=f"{root}/ok/metrics", healthy=True)
    )
    watcher = LoadWatcher(pool, interval_s=0.01)
    watcher.start()
    try:
        for _ in range(500):
            if hits["/ok/metrics"] >= 10:
                break
            await asyncio.sleep(0.01)
    finally:
        await watcher.close()
        await runner.cleanup()
    assert hits["/ok/metrics"] >= 10 and hits["/metrics"] == 1  # asked once, then left for a minute
    assert pool.endpoints("m")[1].waiting == 4.0 and pool.endpoints("m")[0].waiting is None
