"""The Prometheus registry as OpenTelemetry metrics (what a configured collector receives)."""

from __future__ import annotations

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from m2a.telemetry.metrics_bridge import PrometheusBridge, otel_name


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict, float]]]:
    out: dict[str, list[tuple[dict, float]]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = [(dict(p.attributes), p.value) for p in metric.data.data_points]
    return out


def test_counters_gauges_and_histograms_carry_over_with_labels() -> None:
    registry = CollectorRegistry()
    tokens = Counter("m2a_tokens", "t", ["team"], registry=registry)
    waiting = Gauge("vllm:num_requests_waiting", "w", ["replica"], registry=registry)
    ttft = Histogram("m2a_ttft_seconds", "h", buckets=(0.1, 1), registry=registry)
    tokens.labels("research").inc(42)
    waiting.labels("m#0").set(3)
    ttft.observe(0.05)
    ttft.observe(0.5)
    reader = InMemoryMetricReader()
    bridge = PrometheusBridge(registry, reader)
    bridge.refresh()
    got = points(reader)
    assert got["m2a_tokens_total"] == [({"team": "research"}, 42.0)]
    assert got[otel_name("vllm:num_requests_waiting")] == [({"replica": "m#0"}, 3.0)]
    assert got["m2a_ttft_seconds_count"] == [({}, 2.0)]
    assert sorted(got["m2a_ttft_seconds_bucket"], key=lambda p: p[0]["le"]) == [
        ({"le": "+Inf"}, 2.0),
        ({"le": "0.1"}, 1.0),
        ({"le": "1.0"}, 2.0),
    ]
    tokens.labels("payments").inc(5)  # a new series of a known name: seen at the next refresh
    bridge.refresh()
    assert sorted(v for _, v in points(reader)["m2a_tokens_total"]) == [5.0, 42.0]
    bridge.shutdown()
