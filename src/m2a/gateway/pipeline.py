"""Run a request through the stages of ``gateway/stages`` (``STAGES``), and what they share.

``Services`` holds what the stages use and that lives as long as the gateway: the pool, access,
quotas, the priority gate, the ledger, metrics, the tracer, routing and the forwarder. ``Pipeline``
makes the request's context, runs each stage's ``before`` in order until one answers, and makes
sure the end hooks run once however the request ends: answered, refused by a stage, or abandoned
by its client while held.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from opentelemetry.trace import Tracer
from starlette.requests import Request
from starlette.responses import Response

from m2a.config import GatewayConfig
from m2a.gateway.access import Access
from m2a.gateway.context import RequestContext, refused
from m2a.gateway.errors import GatewayError
from m2a.gateway.guards import Guards
from m2a.gateway.metrics import GatewayMetrics
from m2a.gateway.priority import PriorityGate
from m2a.gateway.proxy import Forwarder
from m2a.gateway.quota import Quotas
from m2a.gateway.routing import RouteRequests
from m2a.gateway.stages import STAGES, Stage, build
from m2a.router.pool import Pool
from m2a.store.ledger import Ledger


class ClientGone(Exception):
    """The client disconnected before anything reached an engine (while held for a slot)."""


@dataclass
class Services:
    cfg: GatewayConfig
    pool: Pool
    access: Access
    quotas: Quotas
    gate: PriorityGate | None
    ledger: Ledger | None
    metrics: GatewayMetrics
    tracer: Tracer | None
    record_content: bool
    routing: RouteRequests
    forwarder: Forwarder
    guards: Guards | None = None


class Pipeline:
    def __init__(self, services: Services, names: tuple[str, ...] = STAGES) -> None:
        self.services = services
        self.stages: list[Stage] = build(names, services)

    async def handle(self, request: Request, route: str, engine_path: str, task: str) -> Response:
        ctx = RequestContext(request, route, engine_path, task, str(uuid.uuid4()))
        try:
            for st in self.stages:
                await st.before(ctx)
                ctx.stages.append(st)
                if (st.on_chunk or st.on_stream_end or st.on_answer) is not None and st.active(ctx):
                    if st.on_chunk is not None:
                        ctx.chunk_hooks.append(st.on_chunk)
                    if st.on_stream_end is not None:
                        ctx.stream_end_hooks.append(st.on_stream_end)
                    if st.on_answer is not None:
                        ctx.answer_hooks.append(st.on_answer)
                if ctx.response is not None:
                    # Hand the response over and drop it from the context: a streamed answer refers
                    # back to the context, and the cycle would wait for the garbage collector.
                    response, ctx.response = ctx.response, None
                    return response
        except ClientGone:  # left while held: nothing reached an engine
            ctx.finish(refused(499, "client_disconnected", "left while held"))
            return Response(status_code=499)
        except GatewayError as exc:
            ctx.finish(refused(exc.status, exc.code, exc.message))
            raise
        except BaseException as exc:
            ctx.finish(refused(500, type(exc).__name__, str(exc)))
            raise
        raise RuntimeError(f"no stage answered {route}: the last of {STAGES} must")
