"""OTLP/HTTP trace bodies (``ExportTraceServiceRequest``) to :class:`SpanRow`s, and the answers back.

Owns the wire format only: protobuf (``application/x-protobuf``) and JSON (``application/json``,
where ids are hex as OTLP's JSON mapping says; base64 ids are accepted too). Bodies arrive here
already decompressed: the receiver undoes ``Content-Encoding`` (gzip, deflate) with its size limit.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from m2a.telemetry.store import KINDS, SpanRow

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_PROTOBUF_TYPES = (PROTOBUF, "application/protobuf")
_INT64_MAX = 2**63 - 1
_KIND_NAMES = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_STATUS_NAMES = {Status.STATUS_CODE_OK: "ok", Status.STATUS_CODE_ERROR: "error"}
_HEX = frozenset("0123456789abcdefABCDEF")
assert set(_KIND_NAMES.values()) == set(KINDS)


class OtlpDecodeError(ValueError):
    """A body that is not an ExportTraceServiceRequest (HTTP 400)."""


class UnsupportedContentType(OtlpDecodeError):
    """Neither protobuf nor JSON (HTTP 415)."""


@dataclass
class Decoded:
    rows: list[SpanRow] = field(default_factory=list)
    rejected: int = 0  # spans dropped for bad ids or times
    problem: str = ""


def media_type(content_type: str) -> str:
    """``application/json; charset=utf-8`` → ``application/json``; protobuf spellings → PROTOBUF."""
    kind = content_type.split(";", 1)[0].strip().lower()
    return PROTOBUF if kind in _PROTOBUF_TYPES else kind


def decode_traces(body: bytes, content_type: str) -> list[SpanRow]:
    """The spans of one uncompressed OTLP/HTTP trace export (spans with bad ids are left out)."""
    return decode_request(body, content_type).rows


def decode_request(body: bytes, content_type: str) -> Decoded:
    """Like :func:`decode_traces`, also counting the spans it had to reject."""
    kind = media_type(content_type)
    request = ExportTraceServiceRequest()
    try:
        if kind == PROTOBUF:
            request.ParseFromString(body)
        elif kind == JSON:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise OtlpDecodeError("an OTLP JSON body is an object")
            json_format.ParseDict(_ids_to_base64(data), request, ignore_unknown_fields=True)
        else:
            raise UnsupportedContentType(f"content type {content_type!r}: use {PROTOBUF} or {JSON}")
    except OtlpDecodeError:
        raise
    except (DecodeError, json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise OtlpDecodeError(f"not an OTLP trace export: {exc}") from exc
    return _rows(request)


def encode_response(content_type: str, rejected: int = 0, problem: str = "") -> tuple[bytes, str]:
    """An ExportTraceServiceResponse in the request's encoding: ``(body, content_type)``."""
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = problem
    if media_type(content_type) == JSON:
        return json_format.MessageToJson(response, indent=None).encode(), JSON
    return response.SerializeToString(), PROTOBUF


def encode_status(content_type: str, code: int, message: str) -> tuple[bytes, str]:
    """A ``google.rpc.Status`` error body (OTLP's error shape) in the request's encoding."""
    if media_type(content_type) == JSON:
        return json.dumps({"code": code, "message": message}).encode(), JSON
    text = message.encode()
    # field 1 (code, varint), field 2 (message, length-delimited); code and length are < 2**14 here
    return bytes([0x08]) + _varint(code) + bytes([0x12]) + _varint(len(text)) + text, PROTOBUF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ids_to_base64(data: dict[str, Any]) -> dict[str, Any]:
    """OTLP JSON carries ids as hex; protobuf's JSON mapping wants base64 for bytes fields."""
    for rs in data.get("resourceSpans") or data.get("resource_spans") or []:
        if isinstance(rs, dict) and "instrumentationLibrarySpans" in rs and "scopeSpans" not in rs:
            rs["scopeSpans"] = rs.pop("instrumentationLibrarySpans")  # before OTLP 0.19
        for ss in _items(rs, "scopeSpans", "scope_spans"):
            for span in _items(ss, "spans"):
                _fix_ids(span)
                for item in _items(span, "links"):
                    _fix_ids(item)
    return data


def _items(obj: Any, *keys: str) -> list[Any]:
    if not isinstance(obj, dict):
        return []
    for key in keys:
        value = obj.get(key)
        if isinstance(value, list):
            return [v for v in value if isinstance(v, dict)]
    return []


def _fix_ids(obj: dict[str, Any]) -> None:
    for key in ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"):
        value = obj.get(key)
        if isinstance(value, str) and len(value) in (16, 32) and set(value) <= _HEX:
            obj[key] = base64.b64encode(bytes.fromhex(value)).decode()


def _rows(request: ExportTraceServiceRequest) -> Decoded:
    out = Decoded()
    for rs in request.resource_spans:
        resource = _attributes(rs.resource.attributes)
        service = str(resource.get("service.name") or "unknown_service")
        for ss in rs.scope_spans:
            for span in ss.spans:
                row = _row(span, service)
                if row is None:
                    out.rejected += 1
                else:
                    out.rows.append(row)
    if out.rejected:
        out.problem = f"{out.rejected} span(s) with an invalid trace id, span id or time"
    return out


def _row(span: Span, service: str) -> SpanRow | None:
    trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
    if len(trace_id) != 16 or not any(trace_id) or len(span_id) != 8 or not any(span_id):
        return None
    if parent and len(parent) != 8:
        return None
    if max(span.start_time_unix_nano, span.end_time_unix_nano) > _INT64_MAX:
        return None
    return SpanRow(
        trace_id=trace_id.hex(),
        span_id=span_id.hex(),
        parent_id=parent.hex() if parent and any(parent) else None,
        name=span.name,
        kind=_KIND_NAMES.get(span.kind, "internal"),
        service=service,
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        status=_STATUS_NAMES.get(span.status.code, "unset"),
        status_message=span.status.message,
        attributes=_attributes(span.attributes),
        events=[_event(e) for e in span.events],
    )


def _event(event: Span.Event) -> dict[str, Any]:
    time_ns = min(event.time_unix_nano, _INT64_MAX)
    return {"name": event.name, "time_ns": time_ns, "attributes": _attributes(event.attributes)}


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in pairs}


def any_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as a JSON-serialisable Python value (bytes become base64 text)."""
    which = value.WhichOneof("value")
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if which is None:
        return None
    return getattr(value, which)
