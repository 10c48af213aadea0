"""The OTLP/HTTP trace receiver on a real uvicorn server (loopback), fed by OpenTelemetry's own
OTLPSpanExporter (protobuf, gzip, deflate) and by hand-written OTLP JSON; refusals (401, 400, 413,
415) in OTLP's error shape; spans land in the embedded store intact."""

from __future__ import annotations

import base64
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request

from m2a.telemetry.exporter import span_row
from m2a.telemetry.otlp import decode_traces
from m2a.telemetry.receiver import otlp_traces_route
from m2a.telemetry.store import TraceStore

TOKEN = "Bearer sekrit"
LIMIT = 64 * 1024
PB = {"content-type": "application/x-protobuf", "authorization": TOKEN}
JS = {"content-type": "application/json", "authorization": TOKEN}


@dataclass
class Receiver:
    url: str
    store: TraceStore


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    store = TraceStore(Path(tmp_path_factory.mktemp("otlp")) / "traces.db")

    async def allow(request: Request) -> bool:
        return request.headers.get("authorization") == TOKEN

    app = Starlette(routes=[otlp_traces_route(store, allow, max_body=LIMIT)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "receiver did not start"
        time.sleep(0.02)
    yield Receiver(f"http://127.0.0.1:{sock.getsockname()[1]}/otlp/v1/traces", store)
    server.should_exit = True
    thread.join(10)
    store.close()


def make_spans(service: str = "agent-x") -> list[ReadableSpan]:
    """A root, a failing child with an event, and a grandchild, from a real SDK tracer."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    attrs = {
        "m2a.team": "research",
        "gen_ai.request.model": "llama",
        "flag": True,
        "count": 42,
        "big": 2**62,
        "ratio": 0.25,
        "words": ["a", "b"],
        "ints": [1, 2, 3],
        "floats": [0.5, 1.5],
        "bools": [True, False],
    }
    with (
        tracer.start_as_current_span("POST /v1/chat/completions", kind=SpanKind.SERVER, attributes=attrs),
        tracer.start_as_current_span("chat llama", kind=SpanKind.CLIENT) as child,
    ):
        child.add_event("first_token", {"gen_ai.token.index": 1, "text": "hi"})
        with tracer.start_as_current_span("engine queue"):
            pass
        child.set_status(Status(StatusCode.ERROR, "engine said no"))
    provider.shutdown()
    return list(memory.get_finished_spans())


def export(receiver: Receiver, spans: list[ReadableSpan], **kwargs) -> SpanExportResult:
    kwargs.setdefault("headers", {"authorization": TOKEN})
    exporter = OTLPSpanExporter(endpoint=receiver.url, timeout=10, **kwargs)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def trace_hex(spans: list[ReadableSpan]) -> str:
    return f"{spans[0].context.trace_id:032x}"


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate])
def test_real_exporter_spans_arrive_intact(receiver: Receiver, compression: Compression) -> None:
    spans = make_spans()
    assert export(receiver, spans, compression=compression) is SpanExportResult.SUCCESS
    stored = {s.span_id: s for s in receiver.store.spans(trace_hex(spans))}
    assert len(stored) == 3
    for sdk in spans:
        expected = span_row(sdk)  # what the in-process StoreExporter would have written
        assert expected is not None
        assert stored[expected.span_id] == expected
    by_name = {s.name: s for s in stored.values()}
    root, child = by_name["POST /v1/chat/completions"], by_name["chat llama"]
    grandchild = by_name["engine queue"]
    assert root.parent_id is None and root.kind == "server" and root.service == "agent-x"
    assert root.attributes["words"] == ["a", "b"] and root.attributes["big"] == 2**62
    assert root.attributes["flag"] is True and root.attributes["ratio"] == 0.25
    assert child.parent_id == root.span_id and grandchild.parent_id == child.span_id
    assert (child.kind, child.status, child.status_message) == ("client", "error", "engine said no")
    assert child.events[0]["name"] == "first_token"
    assert child.events[0]["attributes"] == {"gen_ai.token.index": 1, "text": "hi"}
    (summary,) = [t for t in receiver.store.traces(limit=100) if t.trace_id == trace_hex(spans)]
    assert (summary.status, summary.team, summary.model) == ("error", "research", "llama")


def test_answer_is_an_empty_export_response_in_the_request_encoding(receiver: Receiver) -> None:
    body = ExportTraceServiceRequest().SerializeToString()
    r = httpx.post(receiver.url, content=body, headers=PB)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    assert ExportTraceServiceResponse.FromString(r.content) == ExportTraceServiceResponse()
    r = httpx.post(receiver.url, content=b"{}", headers=JS)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {}


def kv(key: str, value: dict) -> dict:
    return {"key": key, "value": value}


def otlp_json(trace_id: str, span_id: str = "0102030405060708") -> dict:
    """An OTLP/JSON export as a vLLM or JavaScript SDK sends it: hex ids, enums as numbers."""
    attributes = [
        kv("gen_ai.usage.prompt_tokens", {"intValue": "12"}),
        kv("gen_ai.latency.e2e", {"doubleValue": 0.25}),
        kv("ok", {"boolValue": True}),
        kv("raw", {"bytesValue": base64.b64encode(b"\x00\x01").decode()}),
        kv("list", {"arrayValue": {"values": [{"stringValue": "x"}, {"intValue": 2}]}}),
        kv("map", {"kvlistValue": {"values": [kv("k", {"stringValue": "v"})]}}),
    ]
    span = {
        "traceId": trace_id,
        "spanId": span_id,
        "parentSpanId": "1112131415161718",
        "name": "llm_request",
        "kind": 3,
        "startTimeUnixNano": "1800000000000000000",
        "endTimeUnixNano": "1800000000250000000",
        "attributes": attributes,
        "events": [{"name": "queued", "timeUnixNano": "1800000000010000000"}],
        "status": {"code": 2, "message": "too long"},
    }
    resource = {"attributes": [kv("service.name", {"stringValue": "vllm"})]}
    scope = {"scope": {"name": "vllm.llm_engine"}, "spans": [span]}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [scope]}]}


@pytest.mark.parametrize("gzipped", [False, True])
def test_otlp_json_with_hex_ids(receiver: Receiver, gzipped: bool) -> None:
    trace_id = ("a1" if gzipped else "b2") * 16
    body = json.dumps(otlp_json(trace_id)).encode()
    headers = dict(JS)
    if gzipped:
        body, headers["content-encoding"] = gzip.compress(body), "gzip"
    r = httpx.post(receiver.url, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == {}
    (row,) = receiver.store.spans(trace_id)
    assert (row.span_id, row.parent_id) == ("0102030405060708", "1112131415161718")
    assert (row.service, row.kind) == ("vllm", "client")
    assert (row.start_ns, row.end_ns, row.status, row.status_message) == (
        1_800_000_000_000_000_000, 1_800_000_000_250_000_000, "error", "too long",
    )  # fmt: skip
    assert row.attributes == {
        "gen_ai.usage.prompt_tokens": 12,
        "gen_ai.latency.e2e": 0.25,
        "ok": True,
        "raw": base64.b64encode(b"\x00\x01").decode(),
        "list": ["x", 2],
        "map": {"k": "v"},
    }
    assert row.events == [{"name": "queued", "time_ns": 1_800_000_000_010_000_000, "attributes": {}}]


def test_bad_spans_are_rejected_in_a_partial_success(receiver: Receiver) -> None:
    data = otlp_json("c3" * 16)
    good = data["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    data["resourceSpans"][0]["scopeSpans"][0]["spans"].append({**good, "spanId": "abcd"})
    r = httpx.post(receiver.url, content=json.dumps(data), headers=JS)
    assert r.status_code == 200
    assert r.json()["partialSuccess"]["rejectedSpans"] == "1"
    assert len(receiver.store.spans("c3" * 16)) == 1


def status_of(r: httpx.Response) -> tuple[int, str]:
    """google.rpc.Status (code, message) from a JSON or protobuf error body."""
    if r.headers["content-type"].startswith("application/json"):
        return r.json()["code"], r.json()["message"]
    from google.rpc.status_pb2 import Status as RpcStatus

    status = RpcStatus.FromString(r.content)
    return status.code, status.message


def test_refused_when_allow_says_no(receiver: Receiver) -> None:
    spans = make_spans("intruder")
    assert export(receiver, spans, headers={"authorization": "Bearer wrong"}) is SpanExportResult.FAILURE
    assert export(receiver, spans, headers={}) is SpanExportResult.FAILURE
    assert receiver.store.spans(trace_hex(spans)) == []
    for headers in ({"content-type": "application/x-protobuf"}, {"content-type": "application/json"}):
        r = httpx.post(receiver.url, content=b"{}", headers=headers)
        assert r.status_code == 401
        assert status_of(r)[0] == 16  # UNAUTHENTICATED


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"not a protobuf at all", PB),
        (b"\xff\xff\xff\xff", PB),
        (b"{not json", JS),
        (b"[1, 2]", JS),
        (b'{"resourceSpans": 7}', JS),
        (b"\x1f\x8b garbage, not gzip", {**PB, "content-encoding": "gzip"}),
        (gzip.compress(b"x" * 100)[:-8], {**PB, "content-encoding": "gzip"}),
    ],
)
def test_bad_bodies_are_400(receiver: Receiver, body: bytes, headers: dict[str, str]) -> None:
    before = receiver.store.count()
    r = httpx.post(receiver.url, content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert status_of(r)[0] == 3  # INVALID_ARGUMENT
    assert receiver.store.count() == before


def test_too_big_is_413_as_sent_and_once_inflated(receiver: Receiver) -> None:
    spans = make_spans()
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("t").start_as_current_span("huge", attributes={"blob": "x" * (2 * LIMIT)}):
        pass
    big = list(memory.get_finished_spans())
    assert export(receiver, big) is SpanExportResult.FAILURE
    assert receiver.store.spans(trace_hex(big)) == []
    r = httpx.post(receiver.url, content=b"\0" * (LIMIT + 1), headers=PB)
    assert r.status_code == 413 and status_of(r)[0] == 8  # RESOURCE_EXHAUSTED
    bomb = gzip.compress(b"\0" * (LIMIT * 16))  # small on the wire, too big inflated
    assert len(bomb) < LIMIT
    r = httpx.post(receiver.url, content=bomb, headers={**PB, "content-encoding": "gzip"})
    assert r.status_code == 413
    assert export(receiver, spans) is SpanExportResult.SUCCESS  # the receiver is still fine


def test_unsupported_media_or_encoding_is_415(receiver: Receiver) -> None:
    text = {"content-type": "text/plain", "authorization": TOKEN}
    r = httpx.post(receiver.url, content=b"hello", headers=text)
    assert r.status_code == 415
    r = httpx.post(receiver.url, content=b"", headers={**PB, "content-encoding": "br"})
    assert r.status_code == 415


def test_decode_traces_protobuf_kvlist_bytes_and_defaults() -> None:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes(range(1, 17)), bytes(range(1, 9)), "no service"
    kv = KeyValue(key="m", value=AnyValue())
    kv.value.kvlist_value.values.add(key="b", value=AnyValue(bytes_value=b"\xff"))
    kv.value.kvlist_value.values.add(key="n", value=AnyValue())
    span.attributes.append(kv)
    bad = request.resource_spans[0].scope_spans[0].spans.add()
    bad.CopyFrom(span)
    bad.trace_id = bytes(16)  # all-zero trace id: invalid
    (row,) = decode_traces(request.SerializeToString(), "application/x-protobuf; charset=binary")
    assert (row.trace_id, row.span_id, row.parent_id) == (bytes(range(1, 17)).hex(), "0102030405060708", None)
    assert (row.service, row.kind, row.status) == ("unknown_service", "internal", "unset")
    assert row.attributes == {"m": {"b": base64.b64encode(b"\xff").decode(), "n": None}}
    as_json = json_format.MessageToJson(request)  # protobuf's own JSON: base64 ids, also accepted
    assert [r.trace_id for r in decode_traces(as_json.encode(), "application/json")] == [row.trace_id]
