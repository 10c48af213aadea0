"""An OpenTelemetry SDK span exporter that writes finished spans into the embedded trace store.

Owns the conversion of SDK ``ReadableSpan`` objects to :class:`SpanRow`, and when the store is
pruned for the process's own spans (every ``prune_every`` exports, or once ``prune_interval_s`` has
passed since the last prune). Run it under a ``BatchSpanProcessor``: the writes are synchronous.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from m2a.telemetry.store import SpanRow, TraceStore

log = logging.getLogger(__name__)
_STATUS = {StatusCode.UNSET: "unset", StatusCode.OK: "ok", StatusCode.ERROR: "error"}
_KIND = {
    SpanKind.INTERNAL: "internal",
    SpanKind.SERVER: "server",
    SpanKind.CLIENT: "client",
    SpanKind.PRODUCER: "producer",
    SpanKind.CONSUMER: "consumer",
}


def _value(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_value(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


_SCALARS = (str, int, float, bool)


def _attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    if not attributes:
        return {}
    return {key: v if type(v) in _SCALARS else _value(v) for key, v in attributes.items()}


def span_row(span: ReadableSpan) -> SpanRow | None:
    """The stored form of one finished SDK span (None for a span without a valid context)."""
    ctx = span.context
    if ctx is None or not ctx.is_valid:
        return None
    service = span.resource.attributes.get("service.name") if span.resource else None
    end = span.end_time if span.end_time is not None else span.start_time
    return SpanRow(
        trace_id=f"{ctx.trace_id:032x}",
        span_id=f"{ctx.span_id:016x}",
        parent_id=f"{span.parent.span_id:016x}" if span.parent is not None else None,
        name=span.name,
        kind=_KIND.get(span.kind, "internal"),
        service=str(service or "unknown_service"),
        start_ns=span.start_time or 0,
        end_ns=end or 0,
        status=_STATUS.get(span.status.status_code, "unset"),
        status_message=span.status.description or "",
        attributes=_attributes(span.attributes),
        events=[
            {"name": e.name, "time_ns": e.timestamp, "attributes": _attributes(e.attributes)}
            for e in span.events
        ],
    )


class StoreExporter(SpanExporter):
    """Sends SDK spans to a :class:`TraceStore` and keeps it within its bounds."""

    def __init__(
        self,
        store: TraceStore,
        prune_every: int = 100,
        prune_interval_s: float = 60.0,
        close_store: bool = False,
    ) -> None:
        self.store = store
        self.prune_every = prune_every
        self.prune_interval_s = prune_interval_s
        self._close_store = close_store
        self._shut = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shut:
            return SpanExportResult.FAILURE
        rows = [row for row in map(span_row, spans) if row is not None]
        try:
            self.store.add(rows)
            self.store.maybe_prune(self.prune_every, self.prune_interval_s)
        except sqlite3.Error as exc:
            log.warning("could not store %d span(s) in %s: %s", len(rows), self.store.path, exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # nothing is buffered here

    def shutdown(self) -> None:
        self._shut = True
        if self._close_store:
            self.store.close()
