"""Forward a validated request to an engine over pooled HTTP; stream answers through unbuffered.

A request whose connection fails before the engine answered (refused, reset, a stale keep-alive)
is tried once more on another replica (nothing reached the client yet); a replica that refuses
connections leaves the pool at once, until its health says otherwise. When the client goes away,
the engine request is closed, which makes vLLM abort it.

What the engine receives is the client's body with the gateway's own fields: the output cap that
admission reserved (``max_tokens``), the caller's team priority where the engine schedules by
priority, never the client's own ``priority``, and a request for stream usage.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from opentelemetry.trace import Span, SpanKind, Tracer
from starlette.requests import Request
from starlette.responses import Response

from m2a.gateway import tracing
from m2a.gateway.context import Outcome, StreamBlocked
from m2a.gateway.engine_call import EngineCall
from m2a.gateway.engine_http import (
    AnswerTooLarge,
    ConnectFailed,
    ConnectTimeout,
    Disconnected,
    EngineHTTPError,
    EngineResponse,
)
from m2a.gateway.errors import GatewayError, normalize_upstream_error
from m2a.gateway.metrics import GatewayMetrics
from m2a.gateway.upstream import ClientWatch, Stream, Upstream
from m2a.gateway.usage import StreamTap, finish_reasons, from_body
from m2a.router.pipeline import Decision, Router
from m2a.router.plugins import RouteRequest
from m2a.router.pool import Endpoint, Pool

log = logging.getLogger("m2a.gateway.proxy")

PASS_HEADERS = ("traceparent", "tracestate", "baggage")
# Failures before the engine sent a response: the connection was refused or reset (an engine that
# died), timed out connecting, or was a stale keep-alive the engine had closed. Whatever the engine
# did with the request, the client got nothing yet: another replica may take it.
RETRYABLE = (ConnectFailed, ConnectTimeout, Disconnected)
EJECT_S = 2.0  # a replica refusing connections stays out of the pool this long (or until healthy)
# Fields only the gateway sets or no client needs: a client's own `priority` would jump the engine's
# queue past other teams; vLLM's `request_id` could collide with another request's, and its
# `kv_transfer_params` would have the engine pull or push KV blocks from hosts the client names.
GATEWAY_FIELDS = ("priority", "request_id", "kv_transfer_params")
T = TypeVar("T")


@dataclass
class Outgoing:
    """One validated request on its way to an engine."""

    route: str  # the gateway path, for metrics
    model: str
    engine_path: str  # the path under the engine's /v1
    body: bytes  # the client's bytes, forwarded unchanged where possible
    payload: dict[str, Any]  # the same, parsed
    stream: bool
    request_id: str
    priority: int | None = None  # the caller's scheduling priority (lower first), for engines that take it
    max_tokens: int | None = None  # the output cap per choice admission reserved; None: the client's
    count_usage: bool = False  # ask a stream for its usage even if the client did not
    on_end: Callable[[Outcome], None] | None = None  # called once, before the client's last byte
    # Each piece of a streamed answer before it is sent, with the content chunks relayed so far
    # (it may raise StreamBlocked); when the engine's stream ends, what the hooks still hold.
    on_chunk: Callable[[bytes, int], bytes] | None = None
    on_stream_end: Callable[[], bytes] | None = None
    on_answer: Callable[[bytes], Awaitable[bytes]] | None = None  # a whole answer (may raise GatewayError)
    span: Span | None = None  # the request's server span, when tracing
    route_req: RouteRequest | None = None  # for the routing pipeline (models with several replicas)
    _bodies: dict[bool, bytes] = field(default_factory=dict, repr=False)

    @property
    def strip_usage(self) -> bool:
        """The usage chunk is ours, not the client's: they did not ask for it."""
        opts = self.payload.get("stream_options")
        return self.count_usage and not (isinstance(opts, dict) and opts.get("include_usage"))

    def body_for(self, ep: Endpoint) -> bytes:
        """What ``ep`` receives: the client's body, the gateway's own fields set (module docstring)."""
        takes = ep.takes_priority
        if takes not in self._bodies:
            extra: dict[str, Any] = {}
            if self.priority is not None and takes:
                extra["priority"] = self.priority
            if self.max_tokens is not None:  # only where the client's own differ (no needless rewrite)
                if self.payload.get("max_tokens") != self.max_tokens:
                    extra["max_tokens"] = self.max_tokens
                if self.payload.get("max_completion_tokens") not in (None, self.max_tokens):
                    extra["max_completion_tokens"] = self.max_tokens
            if self.stream and self.strip_usage:
                extra["stream_options"] = {
                    **(self.payload.get("stream_options") or {}),
                    "include_usage": True,
                }
            drop = [f for f in GATEWAY_FIELDS if f in self.payload and f not in extra]
            if extra or drop:
                body = {k: v for k, v in self.payload.items() if k not in drop}
                self._bodies[takes] = json.dumps({**body, **extra}).encode()
            else:
                self._bodies[takes] = self.body
        return self._bodies[takes]


def _why(exc: BaseException) -> str:
    """What a client is told of a failed engine call: the error's kind, never the engine's address;
    the gateway's own size bound in its words."""
    return str(exc) if isinstance(exc, AnswerTooLarge) else type(exc).__name__


class Forwarder:
    def __init__(
        self,
        pool: Pool,
        upstream: Upstream,
        metrics: GatewayMetrics,
        tracer: Tracer | None = None,
        router: Router | None = None,
    ) -> None:
        self.pool = pool
        self.router = router
        self.upstream = upstream
        self.metrics = metrics
        self.tracer = tracer

    def _headers(
        self, request: Request, ep: Endpoint, request_id: str, span: Span | None = None
    ) -> dict[str, str]:
        headers = {"content-type": "application/json", "x-request-id": request_id}
        if span is not None:  # the engine's span becomes a child of our engine-call span
            headers.update(tracing.inject(span))
        else:
            for name in PASS_HEADERS:
                value = request.headers.get(name)
                if value:
                    headers[name] = value
        if ep.api_key:
            headers["authorization"] = f"Bearer {ep.api_key}"
        return headers

    def _pick(self, out: Outgoing, tried: set[str]) -> tuple[Endpoint | None, Decision | None]:
        """The replica for this attempt: the routing pipeline's choice (every model, one replica or
        many), or the least busy one for a forwarder made without a router."""
        if self.router is not None and out.route_req is not None:
            decision = self.router.pick(out.route_req, exclude=frozenset(tried))
            return (decision.endpoint if decision else None), decision
        return self.pool.pick(out.model, exclude=frozenset(tried)), None

    def _done(self, out: Outgoing, ep: Endpoint) -> None:
        if self.router is not None and out.route_req is not None:
            self.router.done(out.route_req, ep)

    def _spans(
        self, out: Outgoing, ep: Endpoint, attempt: int, tried: set[str], decision: Decision | None
    ) -> Span | None:
        """Record the routing decision; the engine-call span (None when not tracing)."""
        if self.tracer is None or out.span is None or not out.span.is_recording():
            return None
        attrs: dict[str, Any] = {
            "m2a.route.attempt": attempt,
            "m2a.route.excluded": sorted(tried),
            "m2a.replica": ep.id,
            "m2a.replica.inflight": ep.inflight,
        }
        if decision is not None:
            attrs.update(decision.attributes())
        else:
            attrs["m2a.route.policy"] = "least_inflight"
            attrs["m2a.route.candidates"] = sum(e.healthy for e in self.pool.endpoints(out.model))
        tracing.child(self.tracer, out.span, "m2a.route", **attrs).end()
        return tracing.child(
            self.tracer,
            out.span,
            f"engine {ep.id}",
            SpanKind.CLIENT,
            **{"m2a.replica": ep.id, "m2a.engine": ep.engine, "url.full": ep.base_url + out.engine_path},
        )

    async def _connect(
        self, request: Request, out: Outgoing
    ) -> tuple[Endpoint, EngineResponse, Span | None]:
        model = out.model
        client = self.upstream.client
        assert client is not None
        tried: set[str] = set()
        last_error = ""
        for attempt in range(2):
            ep, decision = self._pick(out, tried)
            if ep is None:
                break
            policy = decision.picker if decision is not None else "least_inflight"
            self.metrics.route_decisions.labels(model, ep.id, policy).inc()
            span = self._spans(out, ep, attempt, tried, decision)
            ep.inflight += 1
            try:
                resp = await client.post(
                    ep.base_url + out.engine_path,
                    out.body_for(ep),
                    self._headers(request, ep, out.request_id, span or out.span),
                )
                if span is not None:
                    span.set_attribute("http.response.status_code", resp.status)
                return ep, resp, span
            except BaseException as exc:
                self._done(out, ep)
                if span is not None:
                    tracing.fail(span, 502, type(exc).__name__, str(exc))
                    span.end()
                if not isinstance(exc, RETRYABLE):
                    ep.inflight -= 1
                    if isinstance(exc, (EngineHTTPError, TimeoutError)):  # it may have: no second try
                        self.metrics.upstream_errors.labels(model, ep.id).inc()
                        timed_out = isinstance(exc, TimeoutError)
                        raise GatewayError(
                            504 if timed_out else 502,
                            f"The engine serving '{model}' "
                            + ("did not answer in time." if timed_out else f"failed: {type(exc).__name__}."),
                            code="engine_timeout" if timed_out else "engine_error",
                        ) from exc
                    raise
                # The engine sent nothing back: another replica may take it.
                ep.inflight -= 1
                tried.add(ep.id)
                last_error = f"{type(exc).__name__}: {exc}"
                self.metrics.upstream_errors.labels(model, ep.id).inc()
                if isinstance(exc, ConnectFailed) and self.pool.eject(ep.id, EJECT_S):
                    log.warning("replica %s refuses connections (%s): out of the pool", ep.id, last_error)
        if last_error:  # the detail (the engine's address) is for the operator, not the client
            log.warning("no replica of %s could take request %s: %s", model, out.request_id, last_error)
        raise GatewayError(
            503,
            f"No healthy replica of model '{model}' is available right now. Try again shortly.",
            code="no_healthy_replica",
            headers={"Retry-After": "5"},
        )

    async def forward(self, request: Request, out: Outgoing) -> Response:
        model, stream, request_id = out.model, out.stream, out.request_id
        call = EngineCall(out, self.metrics, self._done)
        started, reasons = call.started, call.reasons
        watch = ClientWatch(request.receive)  # one watcher for both waits of a whole answer
        try:
            connected = await watch.wait(self._connect(request, out))
        except GatewayError as exc:
            watch.close()
            call.account(exc.status)
            raise
        except BaseException:
            watch.close()
            call.account(499)
            raise
        if connected is None:  # the client left before the engine answered: the engine call is cancelled
            watch.close()
            self.metrics.cancelled.labels(model).inc()
            call.account(499)
            return Response(status_code=499)
        ep, resp, engine_span = connected
        call.connected(ep, resp, engine_span)
        account, finish = call.account, call.finish

        headers = {"x-request-id": request_id, "x-m2a-replica": ep.id}
        if not stream or resp.status != 200:
            traced = out.span is not None and out.span.is_recording()  # finish reasons: for the trace
            try:
                return await self._whole(
                    watch, resp, model, headers, finish, reasons if traced else None, out.on_answer
                )
            finally:
                watch.close()
        watch.close()  # the stream's response watches the client from here
        tap = StreamTap(out.strip_usage)

        async def chunks() -> AsyncIterator[bytes]:
            ttft: float | None = None
            status = 200
            stopped = flushed = False  # a hook ended the stream; the hooks' held text was sent
            try:
                async for chunk in resp.iter_any():
                    if ttft is None:
                        ttft = time.perf_counter() - started
                        self.metrics.ttft.labels(model).observe(ttft)
                    data, end = tap.feed(chunk)
                    if data and out.on_chunk is not None:
                        data = out.on_chunk(data, tap.chunks)
                    if data:
                        yield data
                    if end is not None:  # account for the request before the client sees the end
                        if out.on_stream_end is not None:
                            flushed = True
                            held = out.on_stream_end()
                            if held:
                                yield held
                        reasons.extend(tap.finish_reasons)
                        account(200, tap.usage, tap.chunks, ttft)
                        yield end
                if out.on_stream_end is not None and not flushed:
                    flushed = True
                    held = out.on_stream_end()
                    if held:
                        yield held
                rest = tap.rest()
                if rest:
                    yield rest
            except StreamBlocked as blocked:  # a guardrail ended it: the engine's request is aborted
                stopped = True
                reasons.extend([*tap.finish_reasons, "content_filter"])
                account(200, tap.usage, tap.chunks, ttft)
                yield blocked.tail
            except (EngineHTTPError, TimeoutError) as exc:
                status = 502  # the engine went away, not the client (who got 200 and an error event)
                self.metrics.upstream_errors.labels(model, ep.id).inc()
                err = GatewayError(502, f"the engine stopped mid-stream: {_why(exc)}")
                finish(200, tap.usage, tap.chunks, ttft, error=True)
                yield f"data: {json.dumps(err.body())}\n\n".encode()
            finally:
                if status == 200 and not stopped and not resp.at_eof():
                    self.metrics.cancelled.labels(model).inc()
                    status = 499
                finish(status, tap.usage, tap.chunks, ttft)

        return Stream(
            chunks(),
            cleanup=lambda: finish(499, tap.usage, tap.chunks),
            status_code=200,
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _whole(
        self,
        watch: ClientWatch,
        resp: EngineResponse,
        model: str,
        headers: dict[str, str],
        finish: Callable[..., None],
        reasons: list[str] | None = None,
        on_answer: Callable[[bytes], Awaitable[bytes]] | None = None,
    ) -> Response:
        """Read a whole answer, abandoning the engine call if the client disconnects first."""
        try:
            data = await watch.wait(resp.read())
        except (EngineHTTPError, TimeoutError) as exc:
            finish(502)
            raise GatewayError(502, f"the engine failed to answer: {_why(exc)}") from exc
        if data is None:
            self.metrics.cancelled.labels(model).inc()
            finish(499)
            return Response(status_code=499)
        status = resp.status
        if reasons is not None and status == 200:
            reasons.extend(finish_reasons(data))
        if on_answer is not None and status == 200:
            try:
                data = await on_answer(data)
            except GatewayError as exc:  # a guardrail refused the answer: the engine's work is billed
                finish(exc.status, from_body(data))
                return Response(
                    json.dumps(exc.body()),
                    status_code=exc.status,
                    media_type="application/json",
                    headers=headers,
                )
        finish(status, from_body(data) if status == 200 else None)
        if status >= 400:
            try:
                payload: object = json.loads(data)
            except (ValueError, RecursionError):
                payload = data.decode(errors="replace")
            return Response(
                json.dumps(normalize_upstream_error(status, payload)),
                status_code=status,
                media_type="application/json",
                headers=headers,
            )
        return Response(data, status_code=status, media_type=resp.content_type, headers=headers)
