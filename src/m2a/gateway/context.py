"""One request on its way through the gateway: the context every stage reads and writes.

A ``RequestContext`` is made per request by the pipeline (``gateway/pipeline.py``) and passed to
each stage in turn: authenticate sets the principal, validate the body and the validated request,
admit the quota ticket, route the routing view, forward the response. When the request ends (the
answer sent, or refused on the way) ``finish`` records the ``Outcome`` and the tokens it counts,
then runs the end hooks of the stages it passed, once, in reverse order.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span
from starlette.requests import Request
from starlette.responses import Response

from m2a.gateway.quota import Ticket, estimate_input
from m2a.gateway.usage import Usage
from m2a.principal import Principal
from m2a.router.plugins import RouteRequest

if TYPE_CHECKING:
    from m2a.gateway.stages import Stage
    from m2a.gateway.stream_rail import StreamRail
    from m2a.guardrails.policy import Policy, Verdict

log = logging.getLogger("m2a.gateway")


@dataclass
class Outcome:
    """How a request ended, for the ledger, the quota settlement, metrics and the trace."""

    status: int  # HTTP status the client got (499: the client left)
    replica: str | None  # None: it never reached an engine
    usage: Usage | None  # the engine's own numbers, when it sent them
    chunks: int  # streamed content events, the fallback count of output tokens
    ttft_s: float | None
    duration_s: float
    finish_reasons: list[str] = field(default_factory=list)
    error: bool = False  # it failed after the status was sent (an engine that died mid-stream)
    code: str | None = None  # why it was refused before an engine (an error code), for the trace
    message: str = ""

    blocked: bool = False  # a guardrail stopped the answer

    @property
    def state(self) -> str:
        """ok, error, cancelled (the client left) or blocked, as the ledger and metrics name it."""
        if self.blocked:
            return "blocked"
        if self.error:
            return "error"
        return "ok" if self.status < 400 else "cancelled" if self.status == 499 else "error"


class StreamBlocked(Exception):
    """Raised by a chunk hook: the stream ends here, with ``tail`` (the last events) sent instead."""

    def __init__(self, tail: bytes) -> None:
        super().__init__("stream blocked")
        self.tail = tail


def refused(status: int, code: str | None, message: str) -> Outcome:
    """The outcome of a request refused (or abandoned) before it reached an engine."""
    return Outcome(status, None, None, 0, None, 0.0, code=code, message=message)


@dataclass
class RequestContext:
    request: Request
    route: str  # the gateway path: /v1/chat/completions, /v1/completions, /v1/embeddings
    engine_path: str  # the same under an engine's /v1
    task: str  # what the model must serve: chat or embed
    request_id: str  # a UUID: some engines (llama-cpp-python) reject any other x-request-id
    span: Span | None = None  # the request's server span, when tracing
    principal: Principal | None = None
    body: bytes = b""  # the client's bytes
    payload: dict[str, Any] = field(default_factory=dict)  # the same, parsed
    req: Any = None  # the validated request (schemas)
    ticket: Ticket | None = None  # what admission reserved (None: no limits)
    priority: int | None = None  # the scheduling priority engines that take one get
    route_req: RouteRequest | None = None  # the routing pipeline's view (multi-replica models)
    response: Response | None = None  # set by the stage that answers (forward)
    outcome: Outcome | None = None
    tokens: tuple[int, int, int] = (0, 0, 0)  # input, output, cached: what the request is billed
    stages: list[Stage] = field(default_factory=list)  # the stages passed, in order
    chunk_hooks: list[Callable[[RequestContext, bytes], bytes]] = field(default_factory=list)
    stream_end_hooks: list[Callable[[RequestContext], bytes]] = field(default_factory=list)
    answer_hooks: list[Callable[[RequestContext, bytes], Awaitable[bytes]]] = field(default_factory=list)
    relayed: int = 0  # content chunks relayed to the client so far (streams)
    policies: list[Policy] = field(default_factory=list)  # the guardrail policies it passes
    verdicts: list[Verdict] = field(default_factory=list)  # every guardrail check's, in order
    blocked: Verdict | None = None  # the check that stopped it (the ledger says "blocked")
    guard_answer: bool = False  # a whole answer passes the output guardrails
    rail: StreamRail | None = None  # a streamed one passes them through this

    @property
    def model(self) -> str:
        return self.req.model if self.req is not None else ""

    @property
    def stream(self) -> bool:
        return bool(self.req is not None and self.req.stream)

    @functools.cached_property
    def input_estimate(self) -> int:
        """The prompt's tokens as estimated from its text: once per request, for every stage."""
        return estimate_input(self.payload)

    @property
    def max_tokens(self) -> int | None:
        """The output cap per choice that admission reserved, for the engine."""
        return self.ticket.max_tokens if self.ticket is not None else None

    def on_chunk(self, data: bytes) -> bytes:
        """A piece of a streamed answer on its way to the client, through the stages' chunk hooks."""
        for hook in self.chunk_hooks:
            data = hook(self, data)
        return data

    def on_stream_end(self) -> bytes:
        """The engine's stream ended: what the stages still hold, through the later stages' hooks."""
        out = b""
        for flush in self.stream_end_hooks:
            out += flush(self)
        return out

    async def on_answer(self, data: bytes) -> bytes:
        """A whole answer on its way to the client, through the stages' answer hooks."""
        for hook in self.answer_hooks:
            data = await hook(self, data)
        return data

    def finish(self, outcome: Outcome) -> None:
        """Record how the request ended, once, and run the end hooks of the stages it passed."""
        if self.outcome is not None:
            return
        if self.blocked is not None:
            outcome.blocked = True
        self.outcome = outcome
        self.tokens = counted(outcome, self)
        for stage in reversed(self.stages):
            try:
                stage.end(self)
            except Exception:  # one stage's failure must not keep the others from settling
                log.exception("stage %s failed to end request %s", stage.name, self.request_id)


def counted(o: Outcome, ctx: RequestContext) -> tuple[int, int, int]:
    """Tokens to bill: the engine's usage; else, where an engine worked on it, the prompt estimate
    and every content chunk relayed to the client; else none."""
    if o.usage is not None:
        return o.usage.input_tokens, o.usage.output_tokens, o.usage.cached_tokens
    if o.replica is not None and (o.status == 200 or o.status == 499 or o.chunks):
        return ctx.input_estimate, o.chunks, 0
    return 0, 0, 0
