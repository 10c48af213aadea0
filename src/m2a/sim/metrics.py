"""A replica's ``/metrics``: vLLM's metric names and labels (``model_name``, ``engine``), in
Prometheus text, from one registry per replica.

Gauges and counters are read from the scheduler and the cache when scraped; the latency histograms
(simulated seconds) use vLLM's bucket bounds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from m2a.sim.engine import Run

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)


@dataclass
class EngineState:
    """What the scraper reads, as callables (the engine and the cache are built after the metrics)."""

    running: Callable[[], int]
    waiting: Callable[[], int]
    usage: Callable[[], float]
    queries: Callable[[], int]
    hits: Callable[[], int]


class _StateCollector(Collector):
    def __init__(self, m: EngineMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m, s, labels = self.m, self.m.state, ["model_name", "engine"]
        values = [m.model, "0"]
        assert s is not None

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(values, value)
            return c

        yield gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", s.running()
        )
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", s.waiting())
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", s.usage())
        yield counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            s.queries(),
        )
        yield counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", s.hits()
        )
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", m.prompt_tokens)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", m.generation_tokens)
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*labels, "finished_reason"],
        )
        for reason, n in sorted(m.success.items()):
            success.add_metric([*values, reason], n)
        yield success
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=list(m.cache_info) + ["engine"],
        )
        info.add_metric([*m.cache_info.values(), "0"], 1.0)
        yield info


class EngineMetrics:
    def __init__(self, model: str, block_size: int, num_gpu_blocks: int) -> None:
        self.model = model
        self.registry = CollectorRegistry(auto_describe=False)
        self.state: EngineState | None = None
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success: dict[str, int] = {}
        self.cache_info: dict[str, str] = {
            "block_size": str(block_size),
            "num_gpu_blocks": str(num_gpu_blocks),
            "kv_cache_size_tokens": str(block_size * num_gpu_blocks),
            "enable_prefix_caching": "True",
            "cache_dtype": "auto",
        }
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            ["model_name", "engine"],
            registry=self.registry,
            buckets=TTFT_BUCKETS,
        )
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            ["model_name", "engine"],
            registry=self.registry,
            buckets=E2E_BUCKETS,
        )
        self.ttft: Any = self._ttft.labels(model, "0")
        self.e2e: Any = self._e2e.labels(model, "0")
        self.registry.register(_StateCollector(self))

    def finished(self, run: Run, e2e_s: float) -> None:
        self.prompt_tokens += len(run.prompt)
        self.generation_tokens += run.completion_tokens
        self.success[run.finish_reason] = self.success.get(run.finish_reason, 0) + 1
        self.e2e.observe(e2e_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
