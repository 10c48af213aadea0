"""One trace per gateway request: span names, parent links and GenAI attributes, over real HTTP.

The gateway runs on a real uvicorn server in front of the fake engine, with an in-memory span
exporter; the trace must continue the client's ``traceparent``, hand the engine a ``traceparent``
whose parent is the gateway's engine-call span, and keep prompt text out unless asked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import SpanKind, StatusCode

from m2a.store.identity import IdentityStore
from m2a.telemetry.sampling import RateLimited, sampler, start_root
from tests import gateway_fixtures
from tests.fake_engine import FakeEngine
from tests.openai_shape import assert_openai_error
from tests.test_governance import make_pool, make_team, serve

pytestmark = pytest.mark.asyncio(loop_scope="session")

store = gateway_fixtures.store
SECRET = "my card number is 4111 1111 1111 1111"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = "b7ad6b7169203331"


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    fake = FakeEngine()
    await fake.start()
    yield fake
    await fake.stop()


def traced(record_content: bool = False) -> tuple[InMemorySpanExporter, dict]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter, {"tracer": provider.get_tracer("test"), "record_content": record_content}


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


async def test_one_connected_trace_per_request(engine: FakeEngine, store: IdentityStore) -> None:
    [key] = await make_team(store, "payments", "critical")
    exporter, kw = traced()
    async with serve(make_pool(engine), store, app_kw=kw) as gw:
        headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"}
        resp = await gw.client.post(
            "/v1/chat/completions",
            headers={**headers, "authorization": f"Bearer {key}"},
            json={"model": "chat", "messages": [{"role": "user", "content": SECRET}], "max_tokens": 7},
        )
        assert resp.status_code == 200
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"chat chat", "m2a.admission", "m2a.route", "engine chat-0"}
    root = spans["chat chat"]
    assert root.kind == SpanKind.SERVER
    assert format(root.context.trace_id, "032x") == CLIENT_TRACE  # the client's trace continues
    assert root.parent is not None and format(root.parent.span_id, "016x") == CLIENT_PARENT
    for name in ("m2a.admission", "m2a.route", "engine chat-0"):
        assert spans[name].parent is not None and spans[name].parent.span_id == root.context.span_id, name
        assert spans[name].context.trace_id == root.context.trace_id
    assert spans["engine chat-0"].kind == SpanKind.CLIENT
    attrs = root.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "chat"
    assert attrs["gen_ai.request.max_tokens"] == 7
    assert attrs["gen_ai.usage.input_tokens"] == engine.usage["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == engine.usage["completion_tokens"]
    assert list(attrs["gen_ai.response.finish_reasons"]) == ["stop"]
    assert attrs["m2a.team"] == "payments" and attrs["m2a.priority"] == "critical"
    assert attrs["m2a.replica"] == "chat-0" and attrs["http.response.status_code"] == 200
    assert spans["m2a.route"].attributes["m2a.replica"] == "chat-0"
    assert spans["m2a.admission"].attributes["m2a.admission.result"] == "admitted"
    # The engine was told to continue our engine-call span, in the same trace.
    sent = engine.requests[-1].headers["traceparent"]
    engine_span = spans["engine chat-0"].context
    assert sent == f"00-{CLIENT_TRACE}-{format(engine_span.span_id, '016x')}-01"
    # No prompt text anywhere by default.
    for span in exporter.get_finished_spans():
        assert SECRET not in str(dict(span.attributes or {})), span.name
        assert all(SECRET not in str(e.attributes) for e in span.events)


async def test_streams_carry_usage_and_finish_reasons(engine: FakeEngine, store: IdentityStore) -> None:
    [key] = await make_team(store, "research", "batch")
    exporter, kw = traced()
    async with serve(make_pool(engine), store, app_kw=kw) as gw:
        await gw.stream(key)
    root = by_name(exporter.get_finished_spans())["chat chat"]
    assert root.attributes["gen_ai.request.stream"] is True
    assert root.attributes["gen_ai.usage.output_tokens"] == engine.usage["completion_tokens"]
    assert list(root.attributes["gen_ai.response.finish_reasons"]) == ["stop"]
    assert root.attributes["gen_ai.response.time_to_first_chunk"] > 0


async def test_content_is_recorded_only_when_asked(engine: FakeEngine, store: IdentityStore) -> None:
    [key] = await make_team(store, "research")
    exporter, kw = traced(record_content=True)
    async with serve(make_pool(engine), store, app_kw=kw) as gw:
        assert (await gw.chat(key, SECRET)).status_code == 200
    root = by_name(exporter.get_finished_spans())["chat chat"]
    assert SECRET in root.attributes["gen_ai.input.messages"]


async def test_refusals_end_the_trace_with_an_error(engine: FakeEngine, store: IdentityStore) -> None:
    [key] = await make_team(store, "research")
    exporter, kw = traced()
    async with serve(make_pool(engine), store, app_kw=kw) as gw:
        await gw.set_quota("research", ("requests", "minute", 0))
        assert_openai_error(await gw.chat(key), 429, "insufficient_quota")
        assert_openai_error(await gw.chat("sk-wrong"), 401, "invalid_api_key")
    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.kind == SpanKind.SERVER]
    assert len(roots) == 2 and all(s.status.status_code == StatusCode.ERROR for s in roots)
    assert sorted(s.attributes["error.type"] for s in roots) == ["insufficient_quota", "invalid_api_key"]
    assert by_name(spans)["m2a.admission"].attributes["m2a.admission.result"] == "insufficient_quota"
    assert not engine.requests


async def test_under_load_only_some_traces_are_recorded_but_all_propagate(
    engine: FakeEngine, store: IdentityStore
) -> None:
    """The rate limit records the first trace, not the next ones; a caller's sampled parent always."""
    [key] = await make_team(store, "research")
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler(per_second=0.001))  # a bucket of one, refilled slowly
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with serve(make_pool(engine), store, app_kw={"tracer": provider.get_tracer("t")}) as gw:
        for _ in range(3):
            assert (await gw.chat(key)).status_code == 200
        sampled = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01", "authorization": f"Bearer {key}"}
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        assert (await gw.client.post("/v1/chat/completions", headers=sampled, json=body)).status_code == 200
    roots = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(roots) == 2  # the first one, and the one the caller asked for
    assert format(roots[1].context.trace_id, "032x") == CLIENT_TRACE
    sampled_bits = [int(r.headers["traceparent"].rsplit("-", 1)[1], 16) & 1 for r in engine.requests]
    assert sampled_bits == [1, 0, 0, 1]  # every engine call got a context, sampled or not
    unrecorded = {r.headers["traceparent"].split("-")[1] for r in engine.requests[1:3]}
    assert len(unrecorded) == 2  # each request its own trace id, even unrecorded


async def test_rate_limited_sampler_refills() -> None:
    limited = RateLimited(per_second=1000, burst=2)
    decisions = [limited.should_sample(None, 1, "x").decision for _ in range(3)]
    assert decisions == [Decision.RECORD_AND_SAMPLE, Decision.RECORD_AND_SAMPLE, Decision.DROP]
    limited._last -= 0.01  # ten milliseconds later: ten tokens, capped at the burst of two
    assert limited.should_sample(None, 1, "x").decision == Decision.RECORD_AND_SAMPLE
    assert RateLimited(0).should_sample(None, 1, "x").decision == Decision.RECORD_AND_SAMPLE  # no limit


async def test_start_root_takes_one_token_and_always_starts_a_new_trace() -> None:
    """Admitted: one recorded root span per token (the sampler takes no second one), a root even
    inside another span; refused: an unrecorded span with fresh ids of its own."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler(per_second=0.001))  # a bucket of one
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    outer = trace.NonRecordingSpan(trace.SpanContext(0xABC, 0x12, False, trace.TraceFlags(1)))
    with trace.use_span(outer):
        first = start_root(tracer, "chat", SpanKind.SERVER, {"a": 1})
        second = start_root(tracer, "chat", SpanKind.SERVER)
    assert first.is_recording() and not second.is_recording()
    first.end()
    [span] = exporter.get_finished_spans()
    assert span.parent is None and span.context.trace_id != 0xABC and span.attributes["a"] == 1
    ctx = second.get_span_context()
    assert ctx.is_valid and not ctx.trace_flags.sampled and ctx.trace_id not in (0xABC, span.context.trace_id)
