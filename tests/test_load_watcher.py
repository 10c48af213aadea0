"""The load watcher reads engines' metrics pages, and leaves alone endpoints that have none."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from m2a.protocol.tokens import block_hashes
from m2a.router.load import LoadWatcher, parse_cache_tokens
from m2a.router.plugins import RouteRequest
from m2a.router.pool import Endpoint, Pool
from m2a.router.prefix import PrefixScorer


@pytest.mark.asyncio(loop_scope="session")
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


CACHE_INFO_CASES = [
    # vLLM 0.32's line (labels from CacheConfig), the simulator's, and pages without a usable one
    (
        b'vllm:cache_config_info{block_size="128",cache_dtype="auto",engine="0",num_cpu_blocks="None",'
        b'num_gpu_blocks="22",prefix_caching_hash_algo="sha256"} 1.0\n',
        2816,
    ),
    (
        b'vllm:cache_config_info{block_size="16",kv_cache_size_tokens="24576",num_gpu_blocks="1536"} 1\n',
        24576,
    ),
    (b'vllm:cache_config_info{kv_cache_size_tokens="4096"} 1\n', 4096),
    (b'vllm:cache_config_info{block_size="16",num_gpu_blocks="None"} 1\n', None),
    (b"vllm:num_requests_waiting 3\n", None),
]


@pytest.mark.parametrize(("page", "tokens"), CACHE_INFO_CASES)
def test_cache_size_from_cache_config_info(page: bytes, tokens: int | None) -> None:
    assert parse_cache_tokens(b"# HELP x\n" + page) == tokens


def test_prefix_lru_takes_the_engines_cache_size() -> None:
    """Once the watcher has read a replica's KV-cache size, the approximate prefix scorer's LRU for
    that replica holds as many blocks as the engine does, not the default 8192."""
    s = PrefixScorer(block_size=16)
    a = Endpoint("a", "m", "http://a/v1", healthy=True, kv_cache_tokens=2816)
    b = Endpoint("b", "m", "http://b/v1", healthy=True)
    tokens = list(range(16 * 300))
    for ep in (a, b):
        s.on_pick(RouteRequest("m", tokens, block_hashes(tokens, 16)), ep)
    assert s.lrus["a"].capacity == 176 and len(s.lrus["a"].blocks) == 176
    assert s.lrus["b"].capacity == 8192 and len(s.lrus["b"].blocks) == 300
