"""Which requests get a recorded trace: all of them at low load, at most ``per_second`` under load.

A token bucket decides for traces that start at m2a; a caller's sampled ``traceparent`` is always
honoured (ParentBased), so a team debugging its agent sees every one of its requests. Requests not
recorded still carry a trace context on to the engine, at almost no cost. This keeps tracing's
price bounded: a 4-span trace costs about 100 µs of Python, which at thousands of requests a
second would be a third of a small gateway's CPU (bench/README.md).

``start_root`` is the cheap way in for a request without a caller's trace context: it asks the
bucket first and, when the answer is no, makes the unrecorded span itself (fresh ids, not sampled)
without passing through the SDK's span machinery; when it is yes, the SDK starts the span and the
sampler does not take a second token.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags, Tracer
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes


class RateLimited(Sampler):
    """Record up to ``per_second`` new traces a second (bursts up to ``burst``); 0 means no limit."""

    def __init__(self, per_second: float, burst: float | None = None) -> None:
        self.per_second = per_second
        self.burst = burst if burst is not None else max(1.0, per_second)
        self._tokens = self.burst
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if _ADMITTED.get() or self.admit():
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)
        return SamplingResult(Decision.DROP, None, trace_state)

    def admit(self) -> bool:
        """Whether a new trace may be recorded now (takes a token)."""
        return self.per_second <= 0 or self._take()

    def _take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.per_second)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def get_description(self) -> str:
        return f"RateLimited{{{self.per_second}/s}}"


# Set while ``start_root`` has the SDK start a span the bucket already admitted.
_ADMITTED: ContextVar[bool] = ContextVar("m2a_trace_admitted", default=False)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


class RequestSampler(ParentBased):
    """ParentBased over a ``RateLimited`` bucket, which it names (``limiter``) for ``start_root``."""

    def __init__(self, limiter: RateLimited) -> None:
        super().__init__(root=limiter)
        self.limiter = limiter


def sampler(per_second: float) -> Sampler:
    return RequestSampler(RateLimited(per_second))


def start_root(
    tracer: Tracer, name: str, kind: SpanKind, attributes: Mapping[str, Any] | None = None
) -> Span:
    """A span that starts a new trace, under the bucket of the tracer's ``RequestSampler``: not
    admitted, an unrecorded span with fresh ids (what the SDK would make, for a fraction of its
    cost); admitted, the SDK's recorded span. A tracer without one starts its span as usual."""
    limiter = getattr(getattr(tracer, "sampler", None), "limiter", None)
    if limiter is None:
        return tracer.start_span(name, context=Context(), kind=kind, attributes=attributes)
    if not limiter.admit():
        ctx = SpanContext(random.getrandbits(128), random.getrandbits(64), False, _NOT_SAMPLED)
        return NonRecordingSpan(ctx)
    token = _ADMITTED.set(True)
    try:  # an empty context: a root span, whatever span the calling code has open
        return tracer.start_span(name, context=Context(), kind=kind, attributes=attributes)
    finally:
        _ADMITTED.reset(token)
