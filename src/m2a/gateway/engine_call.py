"""One request's call to a replica, from the connection to its release, ended exactly once.

The forwarder makes an ``EngineCall`` per request. Whatever path the answer takes (whole, streamed,
blocked by a guardrail, abandoned by the client, cut by a dying engine), the call:

- ``account``\\ s for it once: the request's metrics, and the outcome handed to the stages
  (``Outgoing.on_end``), before the client's last byte;
- ``finish``\\ es it once: the engine's response released (its connection back to the pool when
  read to the end, else closed, which makes the engine abort the request), the engine span ended,
  the router told, the replica's in-flight count taken back; then accounts, if not yet done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opentelemetry.trace import Span

from m2a.gateway.context import Outcome
from m2a.gateway.engine_http import EngineResponse
from m2a.gateway.metrics import GatewayMetrics
from m2a.gateway.usage import Usage
from m2a.router.pool import Endpoint

if TYPE_CHECKING:
    from m2a.gateway.proxy import Outgoing


@dataclass
class EngineCall:
    out: Outgoing
    metrics: GatewayMetrics
    done: Callable[[Outgoing, Endpoint], None]  # the router's bookkeeping for the replica picked
    started: float = field(default_factory=time.perf_counter)
    reasons: list[str] = field(default_factory=list)  # finish reasons seen (traced requests only)
    ep: Endpoint | None = None  # set once connected
    resp: EngineResponse | None = None
    engine_span: Span | None = None
    reported: bool = False
    released: bool = False

    def connected(self, ep: Endpoint, resp: EngineResponse, engine_span: Span | None) -> None:
        self.ep, self.resp, self.engine_span = ep, resp, engine_span

    def account(
        self,
        status: int,
        usage: Usage | None = None,
        chunks: int = 0,
        ttft: float | None = None,
        error: bool = False,
    ) -> None:
        """The request's metrics and outcome, once (a stream that failed after its 200 counts as
        the engine failure it was: 502)."""
        if self.reported:
            return
        self.reported = True
        out = self.out
        duration = time.perf_counter() - self.started
        if self.ep is not None:
            self.metrics.duration.labels(out.route, out.model).observe(duration)
        self.metrics.requests.labels(out.route, out.model, "502" if error else str(status)).inc()
        if out.on_end is not None:
            replica = self.ep.id if self.ep is not None else None
            out.on_end(Outcome(status, replica, usage, chunks, ttft, duration, self.reasons, error))

    def finish(
        self,
        status: int,
        usage: Usage | None = None,
        chunks: int = 0,
        ttft: float | None = None,
        error: bool = False,
    ) -> None:
        """Release the engine's response and the replica, once; then account."""
        if not self.released and self.ep is not None and self.resp is not None:
            self.released = True
            if self.resp.at_eof():
                self.resp.release()  # fully read: the connection goes back to the pool
            else:
                self.resp.close()  # abandoned mid-answer: closing it makes the engine abort the request
            if self.engine_span is not None:
                self.engine_span.end()
            self.done(self.out, self.ep)
            self.ep.inflight -= 1
        self.account(status, usage, chunks, ttft, error)
