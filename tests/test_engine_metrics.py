"""The engines' own metrics re-exported with a ``replica`` label: two "replicas" are real aiohttp
servers answering a vLLM-style ``/metrics`` page, a third is a port where nothing listens; the load
watcher polls them over HTTP and ``EngineMetrics`` renders what it fetched, which is parsed back
with the Prometheus text parser.

The page is built from vLLM's own metric names, help texts and label sets (``vllm/v1/metrics/
loggers.py``: per-engine labels ``engine`` and ``model_name``; ``cache_config_info`` is a gauge set
to 1 whose labels are the cache config, without ``model_name``), plus the process series every
prometheus_client page carries.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from m2a.router.engine_metrics import EngineMetrics
from m2a.router.load import LoadWatcher
from m2a.router.pool import Endpoint, Pool

pytestmark = pytest.mark.asyncio(loop_scope="session")

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


def vllm_page(model: str, running: int, waiting: int, kv: float, queries: int, ttfts: list[float]) -> str:
    lab = f'engine="0",model_name="{model}"'
    lines = [
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.",
        "# TYPE process_cpu_seconds_total counter",
        "process_cpu_seconds_total 83.41",
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{lab}}} {running}.0",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{lab}}} {waiting}.0",
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{{{lab}}} {kv}",
        "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.",
        "# TYPE vllm:prefix_cache_queries_total counter",
        f"vllm:prefix_cache_queries_total{{{lab}}} {queries}.0",
        "# HELP vllm:prefix_cache_queries_created Prefix cache queries, in terms of number of queried"
        " tokens.",
        "# TYPE vllm:prefix_cache_queries_created gauge",
        f"vllm:prefix_cache_queries_created{{{lab}}} 1.7644908e+09",
        "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
        "# TYPE vllm:time_to_first_token_seconds histogram",
    ]
    for le in [*TTFT_BUCKETS, float("inf")]:
        n = sum(1 for t in ttfts if t <= le)
        bound = "+Inf" if le == float("inf") else le
        lines.append(f'vllm:time_to_first_token_seconds_bucket{{{lab},le="{bound}"}} {n}.0')
    lines += [
        f"vllm:time_to_first_token_seconds_count{{{lab}}} {len(ttfts)}.0",
        f"vllm:time_to_first_token_seconds_sum{{{lab}}} {sum(ttfts)}",
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
        "# TYPE vllm:cache_config_info gauge",
        'vllm:cache_config_info{block_size="128",cache_dtype="auto",enable_prefix_caching="True",'
        'engine="0",gpu_memory_utilization="0.9",kv_cache_memory_bytes="1073741824",'
        'num_cpu_blocks="None",num_gpu_blocks="227",prefix_caching_hash_algo="sha256"} 1.0',
    ]
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest_asyncio.fixture
async def replicas() -> AsyncIterator[Pool]:
    """Pool of smol#0 and smol#1 (two real servers with different numbers) and smol#2 (no server)."""
    pages = {
        "smol#0": vllm_page("smol", 3, 1, 0.25, 4096, [0.03, 0.2, 0.7]),
        "smol#1": vllm_page("smol", 0, 5, 0.5, 128, [0.009]),
    }
    runners, pool = [], Pool()
    for replica, page in pages.items():

        async def metrics(_request: web.Request, page: str = page) -> web.Response:
            return web.Response(text=page, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        pool.add(
            Endpoint(
                replica, "smol", f"http://127.0.0.1:{port}/v1", metrics_url=f"http://127.0.0.1:{port}/metrics"
            )
        )
    dead = free_port()
    pool.add(
        Endpoint(
            "smol#2", "smol", f"http://127.0.0.1:{dead}/v1", metrics_url=f"http://127.0.0.1:{dead}/metrics"
        )
    )
    for ep in pool.all():
        ep.healthy = True
    yield pool
    for runner in runners:
        await runner.cleanup()


async def scraped(pool: Pool) -> str:
    """The re-exported page once the watcher has fetched both live replicas over HTTP."""
    watcher = LoadWatcher(pool, interval_s=0.02)
    watcher.start()
    try:
        for _ in range(500):
            if {"smol#0", "smol#1"} <= watcher.pages.keys():
                break
            await asyncio.sleep(0.02)
        registry = CollectorRegistry()
        registry.register(EngineMetrics(watcher.pages, {e.id: e.model for e in pool.all()}))
        return generate_latest(registry).decode()
    finally:
        await watcher.close()


async def test_two_replicas_side_by_side(replicas: Pool) -> None:
    text = await scraped(replicas)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    m = {(s.name, frozenset(s.labels.items())): s.value for f in families.values() for s in f.samples}

    def at(name: str, replica: str, **extra: str) -> float:
        return m[
            (name, frozenset({"engine": "0", "model_name": "smol", "replica": replica, **extra}.items()))
        ]

    assert (at("vllm:num_requests_running", "smol#0"), at("vllm:num_requests_running", "smol#1")) == (3, 0)
    assert (at("vllm:num_requests_waiting", "smol#0"), at("vllm:num_requests_waiting", "smol#1")) == (1, 5)
    assert at("vllm:kv_cache_usage_perc", "smol#1") == 0.5
    assert at("vllm:prefix_cache_queries_total", "smol#0") == 4096
    assert families["vllm:prefix_cache_queries"].type == "counter"
    assert families["vllm:time_to_first_token_seconds"].type == "histogram"
    assert at("vllm:time_to_first_token_seconds_bucket", "smol#0", le="0.25") == 2
    assert at("vllm:time_to_first_token_seconds_bucket", "smol#0", le="+Inf") == 3
    assert at("vllm:time_to_first_token_seconds_bucket", "smol#1", le="0.01") == 1
    assert at("vllm:time_to_first_token_seconds_count", "smol#1") == 1
    # cache_config_info has no model_name of its own: it gets the replica's model, its labels kept
    [info] = [s for s in families["vllm:cache_config_info"].samples if s.labels["replica"] == "smol#1"]
    assert info.labels["model_name"] == "smol" and info.labels["block_size"] == "128" and info.value == 1
    assert m[("process_cpu_seconds_total", frozenset({"model_name": "smol", "replica": "smol#0"}.items()))]
    # every sample names its replica; the dead one is absent; HELP and TYPE once per family
    assert {s.labels["replica"] for f in families.values() for s in f.samples} == {"smol#0", "smol#1"}
    for name in ("vllm:num_requests_waiting", "vllm:time_to_first_token_seconds", "vllm:cache_config_info"):
        assert text.count(f"# TYPE {name} ") == 1 and text.count(f"# HELP {name} ") == 1


async def test_conflicting_types_and_an_engines_own_replica_label() -> None:
    a = '# TYPE q gauge\nq{replica="inner"} 1\n'
    b = "# TYPE q_total counter\nq_total 2\n"  # family "q" again, now a counter
    registry = CollectorRegistry()
    registry.register(EngineMetrics({"x#0": a.encode(), "x#1": b.encode()}))
    [family] = text_string_to_metric_families(generate_latest(registry).decode())
    assert family.type == "gauge"
    assert [s.labels for s in family.samples] == [{"exported_replica": "inner", "replica": "x#0"}]
