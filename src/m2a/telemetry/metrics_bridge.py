"""The gateway's Prometheus metrics as OTLP metrics, for a configured collector.

`/metrics` stays the source of truth. When a collector is configured, an OpenTelemetry
MeterProvider with a periodic reader observes the same registry: each Prometheus sample becomes an
observation of an instrument of the same name (``:`` becomes ``.``, which OpenTelemetry names
cannot hold), counters and histogram counts/sums/buckets as cumulative counters, the rest as
gauges, labels as attributes. ``refresh`` (called by the gateway before each export period)
reads the registry and makes instruments for sample names that appeared since.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

_COUNTING = ("counter", "histogram", "summary")


def otel_name(name: str) -> str:
    return name.replace(":", ".")


class PrometheusBridge:
    def __init__(
        self, registry: CollectorRegistry, reader: MetricReader, service: str = "m2a-gateway"
    ) -> None:
        self.registry = registry
        self.provider = MeterProvider(
            metric_readers=[reader], resource=Resource.create({"service.name": service})
        )
        self.meter = self.provider.get_meter("m2a.metrics")
        self._snapshot: dict[str, list[tuple[dict[str, str], float]]] = {}
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Read the registry once; make instruments for sample names not seen before."""
        snapshot: dict[str, list[tuple[dict[str, str], float]]] = {}
        kinds: dict[str, str] = {}
        for family in self.registry.collect():
            for s in family.samples:
                if s.name.endswith("_created"):
                    continue
                snapshot.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
                kinds[s.name] = family.type
        with self._lock:
            self._snapshot = snapshot
        for name, kind in kinds.items():
            if name not in self._known:
                self._known.add(name)
                callback = self._callback(name)
                if kind in _COUNTING:
                    self.meter.create_observable_counter(otel_name(name), callbacks=[callback])
                else:
                    self.meter.create_observable_gauge(otel_name(name), callbacks=[callback])

    def _callback(self, name: str):  # type: ignore[no-untyped-def]
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                samples = self._snapshot.get(name, [])
            return [Observation(value, labels) for labels, value in samples]

        return observe

    def shutdown(self) -> None:
        self.provider.shutdown()


async def refresh_every(bridge: PrometheusBridge, period_s: float) -> None:
    """Keep the bridge's snapshot and instruments current (off the event loop)."""
    while True:
        await asyncio.to_thread(bridge.refresh)
        await asyncio.sleep(period_s)


def otlp_bridge(registry: CollectorRegistry, traces_url: str, period_s: float = 15.0) -> PrometheusBridge:
    """A bridge exporting to the collector whose traces URL is ``traces_url`` (metrics next to it)."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    url = traces_url.removesuffix("/v1/traces") + "/v1/metrics"
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=url), export_interval_millis=period_s * 1000
    )
    bridge = PrometheusBridge(registry, reader)
    bridge.refresh()
    return bridge
