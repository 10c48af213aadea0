"""The span over one ``/v1/responses`` request: every model call and hosted tool call under it.

An agent's request is an ``invoke_agent {agent name}`` span (OpenTelemetry GenAI conventions:
``gen_ai.agent.id`` — its SPIFFE id —, ``gen_ai.agent.name``, ``gen_ai.agent.version``,
``gen_ai.conversation.id`` — the first response of its ``previous_response_id`` chain); an API
key's is ``responses {model}``. It continues the caller's ``traceparent``, and the in-process chat
requests the response makes (``Pipeline.handle``), and hosted tools (MCP ``execute_tool`` spans),
get its context as their ``traceparent``: the agent's call, each model round with its route
decision and engine span, and each tool call make one trace.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.requests import Request

from m2a.gateway.tracing import inject
from m2a.principal import Principal

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACE_HEADERS = {b"traceparent", b"tracestate"}


def start(tracer: Tracer, request: Request, principal: Principal, model: str, stream: bool) -> Span:
    agent = principal.agent
    operation = "invoke_agent" if agent is not None else "chat"
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "m2a",
        "gen_ai.request.model": model,
        "gen_ai.request.stream": stream,
        "http.request.method": "POST",
        "http.route": "/v1/responses",
        "m2a.team": principal.team or "-",
    }
    if agent is not None:
        attrs |= {
            "gen_ai.agent.id": agent.spiffe_id,
            "gen_ai.agent.name": agent.name,
            "m2a.agent.id": agent.agent_id,
        }
        if agent.version is not None:
            attrs["gen_ai.agent.version"] = str(agent.version)
        if agent.subject is not None:
            attrs["m2a.agent.on_behalf_of"] = agent.subject
    name = f"invoke_agent {agent.name}" if agent is not None else f"responses {model}"
    parent = _PROPAGATOR.extract(request.headers)
    return tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attrs)


def traced(request: Request, span: Span) -> Request:
    """The same request, its ``traceparent`` now ``span``'s: what the model calls and tools see."""
    headers = [(k, v) for k, v in request.scope["headers"] if k.lower() not in _TRACE_HEADERS]
    headers += [(k.encode(), v.encode()) for k, v in inject(span).items()]
    return Request({**request.scope, "headers": headers}, request.receive)


def identify(span: Span | None, response_id: str, conversation_id: str) -> None:
    if span is not None:
        span.set_attributes({"gen_ai.response.id": response_id, "gen_ai.conversation.id": conversation_id})


def end(
    span: Span | None, http_status: int, status: str | None = None, usage: tuple[int, int] | None = None,
    error: str | None = None,
) -> None:  # fmt: skip
    """End it with how the request ended: the HTTP status, the response's status and its usage."""
    if span is None:
        return
    attrs: dict[str, Any] = {"http.response.status_code": http_status}
    if status is not None:
        attrs["m2a.response.status"] = status
    if usage is not None:
        attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"] = usage
    span.set_attributes(attrs)
    if error is not None or http_status >= 400 or status == "failed":
        span.set_attribute("error.type", error or status or str(http_status))
        span.set_status(Status(StatusCode.ERROR))
    span.end()
