"""Which requests get a recorded trace: all of them at low load, at most ``per_second`` under load.

A token bucket decides for traces that start at m2a; a caller's sampled ``traceparent`` is always
honoured (ParentBased), so a team debugging its agent sees every one of its requests. Requests not
recorded still carry a trace context on to the engine, at almost no cost. This keeps tracing's
price bounded: a 4-span trace costs about 100 µs of Python, which at thousands of requests a
second would be a third of a small gateway's CPU (bench/README.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
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
        if self.per_second <= 0 or self._take():
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)
        return SamplingResult(Decision.DROP, None, trace_state)

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


def sampler(per_second: float) -> Sampler:
    return ParentBased(root=RateLimited(per_second))
