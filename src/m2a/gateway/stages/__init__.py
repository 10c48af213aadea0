"""The request path as an ordered list of stages, declared here in one place.

Every request to ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` passes the
stages of ``STAGES`` in order (``gateway/pipeline.py`` runs them). A stage is a small class in its
own module, registered by name with ``@stage("name")``, with the hooks it needs:

* ``before(ctx)``: before the request goes on (raise ``GatewayError`` to refuse it); the stage
  that answers sets ``ctx.response`` (forward, last);
* ``on_chunk(ctx, data) -> data``: each piece of a streamed answer on its way to the client (it
  may hold text back, and raise ``StreamBlocked`` to end the stream there);
* ``on_stream_end(ctx) -> data``: when the engine's stream has ended, what the stage still holds;
* ``async on_answer(ctx, data) -> data``: a whole (not streamed) successful answer before the client
  gets it (raise ``GatewayError`` to answer that error instead);
* ``end(ctx)``: once, when the request has ended (``ctx.outcome`` and ``ctx.tokens`` are set), for
  every stage whose ``before`` completed, in reverse order, before the client gets the last byte.

Adding a stage is writing one module with one such class and naming it in ``STAGES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from m2a.gateway.context import RequestContext
    from m2a.gateway.pipeline import Services

# The order a request takes. Trace comes first so that a request refused at any later stage is
# still traced; end hooks run in reverse, so the trace ends last, with everything known.
STAGES: tuple[str, ...] = (
    "trace",
    "authenticate",
    "validate",
    "authorize",
    "guard_input",  # guardrails on the prompt: refuse (400 content_filter), mask, or flag
    "admit",  # quota reservation and the priority slot; settled at the end
    "ledger",  # the usage record: begun before forwarding, ended (priced) at the end
    "guard_output",  # guardrails on the answer: its hooks see the whole answer or each stream chunk
    "route",
    "forward",
)

REGISTRY: dict[str, type[Stage]] = {}


class Stage:
    """One step of the request path; override only the hooks the stage needs."""

    name: ClassVar[str] = ""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def before(self, ctx: RequestContext) -> None:
        """Before the request goes on: refuse it (raise), enrich ``ctx``, or answer it."""

    def end(self, ctx: RequestContext) -> None:
        """Once, when the request has ended (``ctx.outcome`` set): settle what ``before`` took."""

    def active(self, ctx: RequestContext) -> bool:
        """After ``before``: whether this request needs the stage's answer hooks (default yes)."""
        return True

    on_chunk: Callable[[RequestContext, bytes], bytes] | None = None  # streams: each piece relayed
    on_stream_end: Callable[[RequestContext], bytes] | None = None  # streams: what is still held
    on_answer: Callable[[RequestContext, bytes], Awaitable[bytes]] | None = None  # whole answers


def stage(name: str) -> Callable[[type[Stage]], type[Stage]]:
    """Register a stage class under ``name`` (what ``STAGES`` lists)."""

    def register(cls: type[Stage]) -> type[Stage]:
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return register


def build(names: tuple[str, ...], services: Services) -> list[Stage]:
    """The stages named, in order, each made once for the gateway's life."""
    for name in names:
        if name not in REGISTRY:
            importlib.import_module(f"m2a.gateway.stages.{name}")
    return [REGISTRY[name](services) for name in names]
