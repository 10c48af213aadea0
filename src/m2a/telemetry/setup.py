"""The process's OpenTelemetry tracing: one tracer provider, spans to the embedded trace store and,
when a collector is configured (``telemetry.otlp_endpoint`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``),
to that collector over OTLP/HTTP too.
"""

from __future__ import annotations

import os
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from m2a import __version__
from m2a.config import TelemetryConfig
from m2a.telemetry.sampling import sampler


def collector_endpoint(cfg: TelemetryConfig, environ: dict[str, str] | None = None) -> str | None:
    """The OTLP/HTTP traces URL of an external collector, if one is configured."""
    env = os.environ if environ is None else environ
    if cfg.otlp_endpoint:
        base = cfg.otlp_endpoint
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]  # a full URL, by the spec
    elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        base = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    else:
        return None
    return base if base.rstrip("/").endswith("/v1/traces") else base.rstrip("/") + "/v1/traces"


class Tracing:
    """A tracer provider with its exporters; ``tracer`` is what the gateway uses."""

    def __init__(
        self,
        cfg: TelemetryConfig,
        store_exporter: SpanExporter | None = None,
        service: str = "m2a-gateway",
        extra: list[SpanExporter] | None = None,
    ) -> None:
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service, "service.version": __version__}),
            sampler=sampler(cfg.traces_per_second),
        )
        exporters = list(extra or [])
        if store_exporter is not None:
            exporters.append(store_exporter)
        url = collector_endpoint(cfg)
        if url:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter(endpoint=url))
        for exporter in exporters:
            self.provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=8192))
        self.tracer = self.provider.get_tracer("m2a.gateway", __version__)

    def install(self) -> None:
        """Make this the process's global provider (for code that asks OpenTelemetry directly)."""
        trace.set_tracer_provider(self.provider)

    def flush(self) -> None:
        self.provider.force_flush()

    def shutdown(self) -> None:
        self.provider.shutdown()


def store_path(home: Path) -> Path:
    return home / "traces.db"
