"""The gateway's spans, named and attributed by the OpenTelemetry GenAI semantic conventions.

One request, one trace (continuing the client's W3C ``traceparent``): a server span
``{operation} {model}`` over the whole request; ``m2a.admission`` (quota and priority wait) and
``m2a.route`` (which replica, and why) under it; a client span for the engine call, whose context
goes to the engine as ``traceparent`` so the engine's own span (vLLM's) joins the same trace.
Prompt and completion text go on the span only when the admin turns ``record_content`` on.
"""

from __future__ import annotations

import json
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.requests import Request

from m2a.principal import Principal
from m2a.telemetry.sampling import start_root

OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}
_PROPAGATOR = TraceContextTextMapPropagator()
_REQUEST_ATTRS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "n": "gen_ai.request.choice_count",
}


def start_request(tracer: Tracer, request: Request, route: str) -> Span:
    """The request's server span, continuing the caller's trace if it sent one."""
    operation = OPERATIONS.get(route, "chat")
    attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "m2a",
        "http.request.method": "POST",
        "http.route": route,
    }
    if "traceparent" not in request.headers:  # most requests: a new trace, if the bucket admits it
        return start_root(tracer, operation, SpanKind.SERVER, attributes)
    parent = _PROPAGATOR.extract(request.headers)
    return tracer.start_span(operation, context=parent, kind=SpanKind.SERVER, attributes=attributes)


def describe_request(
    span: Span, model: str, payload: dict[str, Any], principal: Principal, record_content: bool
) -> None:
    span.update_name(f"{span.attributes.get('gen_ai.operation.name', 'chat')} {model}")  # type: ignore[union-attr]
    attrs: dict[str, Any] = {
        "gen_ai.request.model": model,
        "gen_ai.request.stream": bool(payload.get("stream")),
        "m2a.team": principal.team or "-",
        "m2a.key_prefix": principal.key_prefix,
        "m2a.priority": principal.priority,
    }
    if principal.agent is not None:  # an agent's token: who, in GenAI's terms
        attrs["gen_ai.agent.id"] = principal.agent.spiffe_id
        attrs["gen_ai.agent.name"] = principal.agent.name
        if principal.agent.version is not None:
            attrs["gen_ai.agent.version"] = str(principal.agent.version)
    for field, name in _REQUEST_ATTRS.items():
        value = payload.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            attrs[name] = value
    stop = payload.get("stop")
    if stop:
        attrs["gen_ai.request.stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if record_content:
        content = payload.get("messages", payload.get("prompt", payload.get("input")))
        attrs["gen_ai.input.messages"] = json.dumps(content)[:65536]
    span.set_attributes(attrs)


def child(tracer: Tracer, parent: Span, name: str, kind: SpanKind = SpanKind.INTERNAL, **attrs: Any) -> Span:
    return tracer.start_span(name, context=trace.set_span_in_context(parent), kind=kind, attributes=attrs)


def inject(span: Span) -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) headers that make ``span`` the engine span's parent."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return {}
    # W3C Trace Context, version 00 (what the propagator writes), without building a Context.
    carrier = {"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}
    if ctx.trace_state:
        carrier["tracestate"] = ctx.trace_state.to_header()
    return carrier


def fail(span: Span, status: int, code: str | None, message: str) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 400:
        span.set_attribute("error.type", code or str(status))
        span.set_status(Status(StatusCode.ERROR, message[:200]))


def finish(
    span: Span,
    status: int,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int,
    finish_reasons: list[str],
    ttft_s: float | None,
    replica: str | None,
) -> None:
    if not span.is_recording():
        span.end()
        return
    attrs: dict[str, Any] = {
        "http.response.status_code": status,
        "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.output_tokens": output_tokens,
    }
    if cached_tokens:
        attrs["gen_ai.usage.cache_read.input_tokens"] = cached_tokens
    if finish_reasons:
        attrs["gen_ai.response.finish_reasons"] = finish_reasons
    if ttft_s is not None:
        attrs["gen_ai.response.time_to_first_chunk"] = ttft_s
    if replica:
        attrs["m2a.replica"] = replica
    span.set_attributes(attrs)
    if status == 499:
        span.set_attribute("error.type", "client_disconnected")
    elif status >= 400:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))
    span.end()
