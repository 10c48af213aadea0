"""The gateway's ASGI app: OpenAI routes, probes and metrics, every error in OpenAI's shape."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from opentelemetry.trace import Tracer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from m2a.config import DataConfig, GatewayConfig, GuardrailsConfig
from m2a.gateway.access import Access
from m2a.gateway.auth import bearer_token
from m2a.gateway.counters import Memory
from m2a.gateway.errors import GatewayError, error_response
from m2a.gateway.extensions import ExtensionFactory, Host
from m2a.gateway.guard_api import GuardAPI
from m2a.gateway.guards import Guards, MemoCollector
from m2a.gateway.metrics import GatewayMetrics
from m2a.gateway.pipeline import Pipeline, Services
from m2a.gateway.priority import PriorityGate
from m2a.gateway.proxy import Forwarder
from m2a.gateway.quota import Quotas
from m2a.gateway.responses_api import ResponsesAPI
from m2a.gateway.routing import RouteRequests, RoutingMetrics
from m2a.gateway.stages import STAGES
from m2a.gateway.upstream import Upstream
from m2a.guardrails.judge import close_sessions as close_detector_sessions
from m2a.principal import Principal
from m2a.router.engine_metrics import EngineMetrics
from m2a.router.load import LoadWatcher
from m2a.router.pipeline import Router
from m2a.router.pool import Pool
from m2a.store.guardrails import GuardrailStore
from m2a.store.identity import IdentityStore
from m2a.store.ledger import Ledger
from m2a.telemetry.metrics_bridge import otlp_bridge, refresh_every
from m2a.telemetry.relay import Relay
from m2a.telemetry.store import TraceStore

log = logging.getLogger("m2a.gateway")

ROUTES: dict[str, tuple[str, str]] = {
    # route path: (engine path, task the model must have); each passes the stages of gateway/stages
    "/v1/chat/completions": ("/chat/completions", "chat"),
    "/v1/completions": ("/completions", "chat"),
    "/v1/embeddings": ("/embeddings", "embed"),
}


def internal_error() -> Response:
    """What a client gets for the gateway's own bug: a 500 in OpenAI's shape, the detail logged only."""
    return error_response(
        500, "The gateway hit an internal error; it has been logged.", code="internal_error"
    )


class GatewayApp(Starlette):
    """Starlette, with the OpenAI routes of ``ROUTES`` taken straight to the request pipeline.

    A POST to one of them skips the routing table and the exception middleware layers (the hot
    path, once per request); its errors get the same OpenAI-shaped answers those layers give.
    Everything else (other methods, other paths) passes through Starlette as usual.
    """

    fast: dict[str, Callable[[Request], Awaitable[Response]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.fast.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None or scope["method"] != "POST":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        request = Request(scope, receive, send)
        try:
            response = await handler(request)
        except GatewayError as exc:
            response = exc.response()
        except Exception:
            log.exception("unexpected error on %s", scope["path"])
            response = internal_error()
        await response(scope, receive, send)


def create_app(
    pool: Pool,
    key: str,
    cfg: GatewayConfig | None = None,
    replica_status: Callable[[], list[dict[str, object]]] | None = None,
    identity: IdentityStore | None = None,
    *,
    quotas: Quotas | None = None,
    ledger: Ledger | None = None,
    usage_store: AsyncEngine | None = None,
    tracer: Tracer | None = None,
    record_content: bool = False,
    trace_store: TraceStore | None = None,
    ingest_token: str | None = None,
    relay: Relay | None = None,
    router: Router | None = None,
    device_metrics: bool = False,
    metrics_collector: str | None = None,
    stages: tuple[str, ...] = STAGES,
    guards: Guards | None = None,
    data: DataConfig | None = None,
    home: Path | None = None,
    self_url: str | None = None,
    extensions: Sequence[ExtensionFactory] = (),
) -> GatewayApp:
    """The gateway for the models in ``pool``, for callers with the admin ``key`` or a team key.

    ``replica_status`` (from whoever runs the engines) adds per-replica detail to ``/readyz``;
    ``identity`` holds teams, keys and grants (without it only the admin key works) and adds the
    admin API under ``/admin``. ``quotas`` counts against team and key limits (in process by
    default), ``ledger`` records every request, ``usage_store`` answers the admin usage queries,
    ``tracer`` gives every request a trace (text on spans only with ``record_content``);
    ``trace_store`` receives spans over OTLP at ``/otlp/v1/traces`` from callers that present the
    admin key or ``ingest_token`` (the engines m2a starts), and ``relay`` passes those on to an
    external collector. ``router`` picks among a model's replicas (default: the standard pipeline).
    ``metrics_collector`` (an OTLP traces URL) also gets the /metrics numbers as OTLP metrics.
    ``stages`` names the request path's stages in order (default: ``gateway.stages.STAGES``).
    ``guards`` holds the guardrail profiles (default: the built-in ones and those made through the
    admin API where ``identity`` is given, none applied unless attached to a team, key or model).
    ``home`` (with ``identity``) serves the data services, ``/v1/files`` and ``/v1/vector_stores``
    (``data`` configures them; files and vectors live under ``home``); ``self_url`` is this gateway's
    own URL, which their embeddings call (learned from the first data request when not given).
    ``extensions`` are what higher layers add (``gateway/extensions.py``): the agents layer's token
    endpoint, registry API and token verifier.
    """
    cfg = cfg or GatewayConfig()
    access = Access(key, identity)
    metrics = GatewayMetrics()
    if device_metrics:  # GPU (NVML, amd-smi, xpu-smi) and host readings on /metrics
        from m2a.metal.prometheus import DeviceCollector

        metrics.registry.register(DeviceCollector())
    upstream = Upstream(cfg.connect_timeout_s, cfg.upstream_timeout_s, cfg.max_answer_bytes)
    router = router or Router(pool)
    forwarder = Forwarder(pool, upstream, metrics, tracer, router)
    routing = RouteRequests(pool, router)

    quotas = quotas or Quotas(Memory(), {}, cfg.reserve_output_tokens)
    gate = PriorityGate(pool, cfg) if cfg.priorities else None
    load = LoadWatcher(pool)
    # The engines' own series, per replica (model_name added where an engine leaves it out).
    metrics.registry.register(EngineMetrics(load.pages, {e.id: e.model for e in pool.all()}))
    metrics.registry.register(RoutingMetrics(routing))
    created = int(time.time())

    def model_card(name: str) -> dict[str, object]:
        eps = pool.endpoints(name)
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "m2a",
            "m2a": {
                "task": pool.task(name),
                "replicas": len(eps),
                "healthy_replicas": sum(e.healthy for e in eps),
            },
        }

    def visible(principal: Principal) -> list[str]:
        return [m for m in pool.models() if principal.may_use(m)]

    if guards is None:  # no profile for callers without one (`m2a up` passes the configured default)
        store = GuardrailStore(identity.engine) if identity is not None else None
        guards = Guards(GuardrailsConfig(default_profile=None), store=store)
    access.on_change.append(guards.reload)
    metrics.registry.register(MemoCollector(guards))
    services = Services(
        cfg, pool, access, quotas, gate, ledger, metrics, tracer, record_content, routing, forwarder, guards
    )
    pipeline = Pipeline(services, stages)
    host = Host(
        cfg, pool, access, pipeline, guards, metrics, quotas, identity, ledger, tracer,
        identity.engine if identity is not None else None, home,
    )  # fmt: skip
    responses = ResponsesAPI(host)  # /v1/responses: state in identity's database, else in memory
    extended = [make(host) for make in extensions]
    data_service = None
    if identity is not None and home is not None:
        from m2a.gateway import file_search_tool
        from m2a.gateway.data_api import DataAPI, DataService

        data_service = DataService(data or DataConfig(), home, identity, access, self_url, pool)
        file_search_tool.register()  # /v1/responses' file_search tool, over these vector stores

    def openai_route(path: str) -> Callable[[Request], Awaitable[Response]]:
        engine_path, task = ROUTES[path]

        async def handler(request: Request) -> Response:
            return await pipeline.handle(request, path, engine_path, task)

        return handler

    async def list_models(request: Request) -> Response:
        principal = await access.principal(request)
        return JSONResponse({"object": "list", "data": [model_card(m) for m in visible(principal)]})

    async def get_model(request: Request) -> Response:
        principal = await access.principal(request)
        name = request.path_params["model"]
        if pool.task(name) is None or not principal.may_use(name):
            raise GatewayError(
                404, f"The model '{name}' does not exist.", param="model", code="model_not_found"
            )
        return JSONResponse(model_card(name))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        """Ready or not per model for anyone (probes); each replica's detail for admin keys only."""
        models = {m: any(e.healthy for e in pool.endpoints(m)) for m in pool.models()}
        ready = bool(models) and all(models.values())
        body: dict[str, object] = {"ready": ready, "models": models}
        if replica_status is not None and await access.is_admin(request):
            body["replicas"] = replica_status()
        return JSONResponse(body, status_code=200 if ready else 503)

    async def prometheus(request: Request) -> Response:
        if cfg.metrics_need_key and not await access.is_admin(request):
            raise GatewayError(401, "/metrics needs the admin key here (gateway.metrics_need_key).")
        inflight: dict[str, int] = dict.fromkeys(pool.models(), 0)
        for ep in pool.all():  # one in-flight count, per replica (Endpoint.inflight): summed here
            metrics.replica_healthy.labels(ep.model, ep.id).set(1 if ep.healthy else 0)
            inflight[ep.model] += ep.inflight
        for model, n in inflight.items():
            metrics.inflight.labels(model).set(n)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return exc.response()

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return error_response(404, f"Unknown path {request.url.path}.", code="unknown_url")
        if exc.status_code == 405:
            return error_response(405, f"Method {request.method} is not allowed on {request.url.path}.")
        return error_response(exc.status_code, str(exc.detail))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return internal_error()

    @asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        await upstream.open()
        await access.start()
        await guards.reload()
        if ledger is not None:
            await ledger.start()
        load.start()
        routing.start()
        bridge = otlp_bridge(metrics.registry, metrics_collector) if metrics_collector else None
        refreshing = asyncio.create_task(refresh_every(bridge, 10.0)) if bridge is not None else None
        waker = asyncio.create_task(gate.run()) if gate is not None else None
        if data_service is not None:
            await data_service.start()
        await responses.start()
        for ext in extended:
            await ext.start()
        try:
            yield
        finally:
            for ext in reversed(extended):
                try:
                    await ext.close()
                except Exception:  # one extension's failure must not keep the gateway from stopping
                    log.exception("extension %s failed to close", type(ext).__name__)
            await responses.close()
            if data_service is not None:
                await data_service.close()
            await routing.close()
            if refreshing is not None and bridge is not None:
                refreshing.cancel()
                await asyncio.to_thread(bridge.shutdown)  # a last export
            if waker is not None:
                waker.cancel()
            await load.close()
            await access.close()
            await upstream.close()
            await close_detector_sessions()  # the sessions of detectors that call out (a judge)
            await quotas.close()
            if ledger is not None:
                await ledger.close()
            if relay is not None:
                await relay.close()

    openai_handlers = {p: openai_route(p) for p in ROUTES}  # Starlette's routes and the direct path
    routes = [Route(p, handler, methods=["POST"]) for p, handler in openai_handlers.items()]
    guard_api = GuardAPI(access, guards, cfg.max_body_bytes)
    routes += [
        Route("/v1/moderations", guard_api.moderations, methods=["POST"]),
        Route("/api/v1/text/contents", guard_api.contents, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        *responses.routes(),
    ]
    if data_service is not None:
        routes += DataAPI(access, data_service, cfg.max_body_bytes).routes()
    if trace_store is not None:
        from m2a.telemetry.receiver import otlp_traces_route

        accepted = [t.encode() for t in (key, ingest_token) if t]

        async def may_send_traces(request: Request) -> bool:
            token = bearer_token(request)
            return token is not None and any(hmac.compare_digest(token.encode(), a) for a in accepted)

        routes.append(otlp_traces_route(trace_store, may_send_traces, relay=relay))
    for ext in extended:  # before the admin mount: an extension may serve paths under /admin/v1
        routes += ext.routes()
    if identity is not None:
        from m2a.gateway.admin import create_admin_api  # FastAPI loads only where teams exist
        from m2a.gateway.admin_overview import Overview

        admin_api = create_admin_api(
            identity,
            access,
            usage_store,
            quotas.prices,
            served=pool.models,
            docs=cfg.admin_docs,
            guards=guards,
            traces=trace_store,
            counters=quotas.counters,
            overview=Overview(pool, load.pages, replica_status),
        )
        routes.append(Mount("/admin", app=admin_api))
    app = GatewayApp(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            GatewayError: on_gateway_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
    )
    app.fast = openai_handlers
    app.state.metrics = metrics
    app.state.pool = pool
    app.state.access = access
    app.state.quotas = quotas
    app.state.gate = gate
    app.state.guards = guards
    app.state.data = data_service
    app.state.extensions = extended
    app.state.responses = responses
    return app
