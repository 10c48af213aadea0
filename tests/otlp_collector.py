"""A test OTLP/HTTP collector: real protobuf over HTTP on loopback, decoded with opentelemetry-proto.

It stands in for Jaeger or Tempo in end-to-end tests: m2a is configured to send traces here, and
tests read back the spans it received (decoded independently of m2a's own OTLP code).
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    kind: int
    attributes: dict[str, Any] = field(default_factory=dict)


class Collector:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1/traces"
        self.spans: list[Span] = []
        self.metric_names: set[str] = set()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        got = []
        for rs in export.resource_spans:
            service = next((_value(a.value) for a in rs.resource.attributes if a.key == "service.name"), "?")
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    got.append(
                        Span(
                            sp.trace_id.hex(),
                            sp.span_id.hex(),
                            sp.parent_span_id.hex() or None,
                            sp.name,
                            str(service),
                            sp.kind,
                            {a.key: _value(a.value) for a in sp.attributes},
                        )
                    )
        with self._lock:
            self.spans += got
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportMetricsServiceRequest()
        export.ParseFromString(body)
        names = {m.name for rm in export.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        with self._lock:
            self.metric_names |= names
        return web.Response(
            body=ExportMetricsServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
