"""Guardrails on the request path: prompts refused or masked before an engine sees them, answers
(whole and streamed) refused or masked before the client does, tool results and tool calls under
their own rules, and a detector's failure decided by its rule's fail mode, never a 5xx."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from m2a.config import GatewayConfig, GuardrailProfile, GuardrailRule, GuardrailsConfig, ModelConfig
from m2a.gateway.app import create_app
from m2a.gateway.guards import Guards
from m2a.guardrails.base import register_detector
from m2a.router.pool import Endpoint, Pool
from tests.fake_engine import FakeEngine
from tests.live_app import live

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "sk-guard-test-" + "g" * 24
AWS = "AKIAIOSFODNN7EXAMPLF"  # the shape of an AWS access key id
ZW = "\u200b"


@register_detector("explodes")
class Explodes:
    """A detector that always fails (a crashed or unreachable one)."""

    def check(self, ctx: object, text: object) -> None:
        raise RuntimeError("boom")


def profile(*rules: GuardrailRule, hold: int = 128) -> GuardrailProfile:
    return GuardrailProfile(rules=list(rules), stream_hold_chars=hold)


PROFILES = {
    "block_secrets": profile(GuardrailRule(detector="secrets", action="block")),
    "mask_secrets": profile(GuardrailRule(detector="secrets", action="redact")),
    "tools_only": profile(
        GuardrailRule(
            detector="denylist", params={"terms": ["rm -rf", "drop_database"]}, where=["tool"], action="block"
        )
    ),
    "paris": profile(
        GuardrailRule(detector="denylist", params={"terms": ["Paris"]}, where=["output"], action="block"),
        hold=16,
    ),
    "fails_open": profile(GuardrailRule(detector="explodes", fail="open")),
    "fails_closed": profile(GuardrailRule(detector="explodes", fail="closed")),
    "tiny_budget": GuardrailProfile(rules=[GuardrailRule(detector="secrets")], max_chars=50),
}


@pytest_asyncio.fixture(loop_scope="session")
async def engine() -> AsyncIterator[FakeEngine]:
    fake = FakeEngine()
    await fake.start()
    yield fake
    await fake.stop()


@contextlib.asynccontextmanager
async def gateway(engine: FakeEngine, default: str | None, model_profile: str | None = None):
    pool = Pool()
    pool.add(Endpoint("chat-0", "chat", engine.url, healthy=True, max_inflight=4))
    cfg = GuardrailsConfig(default_profile=default, profiles=PROFILES)
    guards = Guards(cfg, [ModelConfig(name="chat", guardrails=model_profile)])
    app = create_app(pool, KEY, GatewayConfig(), guards=guards)
    async with live(app) as url, httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as client:
        client.headers["authorization"] = f"Bearer {KEY}"
        yield client, app


def chat(content: str, **kw: object) -> dict[str, object]:
    return {"model": "chat", "messages": [{"role": "user", "content": content}], **kw}


def sse(text: str) -> tuple[str, list[dict]]:
    """The content a client reads from a stream, and its events."""
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    content = "".join(
        (c.get("delta") or {}).get("content") or "" for e in events for c in e.get("choices") or []
    )
    return content, events


async def test_a_prompt_with_a_secret_is_refused_without_echoing_it(engine: FakeEngine) -> None:
    engine.requests.clear()
    async with gateway(engine, "block_secrets") as (client, _):
        resp = await client.post("/v1/chat/completions", json=chat(f"my key is {AWS} please"))
        assert resp.status_code == 400
        err = resp.json()["error"]
        assert err["code"] == "content_filter" and err["type"] == "invalid_request_error"
        assert err["guardrail"]["detector"] == "secrets" and err["guardrail"]["category"] == "secret"
        assert err["guardrail"]["direction"] == "input" and err["param"] == "messages"
        assert AWS not in resp.text and "block_secrets" in err["message"]
        # padded with zero-width spaces: still caught
        padded = ZW.join(AWS)
        resp = await client.post("/v1/chat/completions", json=chat(f"key: {padded}"))
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "content_filter"
        # completions (a list of prompts) and embeddings too
        resp = await client.post("/v1/completions", json={"model": "chat", "prompt": ["hello", AWS]})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt"
        resp = await client.post("/v1/chat/completions", json=chat("nothing secret here"))
        assert resp.status_code == 200
    assert len(engine.requests) == 1  # only the clean one reached the engine


async def test_a_prompt_sent_again_gets_the_same_decision_from_the_memo(engine: FakeEngine) -> None:
    engine.requests.clear()
    async with gateway(engine, "mask_secrets") as (client, app):
        history = [{"role": "user", "content": f"use {AWS} for the upload"}]
        for turn in range(3):  # a chat resends its history with every turn
            resp = await client.post("/v1/chat/completions", json={"model": "chat", "messages": history})
            assert resp.status_code == 200
            history += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": f"turn {turn}"}]
        policy = app.state.guards.policies["mask_secrets"]
        assert policy.memo.hits >= 2  # the first message was examined once, replayed twice
        metrics = (await client.get("/metrics")).text
        hits = f'm2a_guardrail_memo_hits_total{{policy="mask_secrets"}} {float(policy.memo.hits)}'
        assert hits in metrics and 'm2a_guardrail_memo_entries{policy="mask_secrets"}' in metrics
    for r in engine.requests:  # masked every time
        assert AWS not in r.json["messages"][0]["content"]
        assert r.json["messages"][0]["content"].startswith("use [")


async def test_a_masked_prompt_reaches_the_engine_masked(engine: FakeEngine) -> None:
    engine.requests.clear()
    async with gateway(engine, "mask_secrets") as (client, _):
        resp = await client.post("/v1/chat/completions", json=chat(f"use {AWS} for the upload"))
        assert resp.status_code == 200
    sent = engine.requests[-1].json["messages"][0]["content"]
    assert AWS not in sent and sent.startswith("use [") and sent.endswith("] for the upload")


async def test_whole_answers_are_checked(engine: FakeEngine) -> None:
    engine.answer = f"Sure, the key is {AWS}."
    try:
        async with gateway(engine, "mask_secrets") as (client, _):
            resp = await client.post("/v1/chat/completions", json=chat("what is the key?"))
            assert resp.status_code == 200
            content = resp.json()["choices"][0]["message"]["content"]
            assert AWS not in content and content.startswith("Sure, the key is [")
        async with gateway(engine, "block_secrets") as (client, _):
            resp = await client.post("/v1/chat/completions", json=chat("what is the key?"))
            assert resp.status_code == 400 and AWS not in resp.text
            assert resp.json()["error"]["guardrail"]["direction"] == "output"
    finally:
        engine.answer = "Paris."


async def test_a_stream_is_cut_before_a_blocked_span_reaches_the_client(engine: FakeEngine) -> None:
    # The key arrives split over several chunks, after some harmless text.
    engine.chunks = ("Here ", "it is: ", AWS[:6], AWS[6:13], AWS[13:], " and more text.")
    try:
        async with gateway(engine, "block_secrets") as (client, _):
            async with client.stream("POST", "/v1/chat/completions", json=chat("key?", stream=True)) as resp:
                text = (await resp.aread()).decode()
            assert resp.status_code == 200
            content, events = sse(text)
            assert AWS[:6] not in text and AWS[13:] not in text
            reasons = [c.get("finish_reason") for e in events for c in e.get("choices") or []]
            assert reasons[-1] == "content_filter"
            errors = [e for e in events if "error" in e]
            assert errors and errors[0]["error"]["code"] == "content_filter"
            assert text.rstrip().endswith("data: [DONE]")
        async with gateway(engine, "mask_secrets") as (client, _):
            async with client.stream("POST", "/v1/chat/completions", json=chat("key?", stream=True)) as resp:
                text = (await resp.aread()).decode()
            content, _ = sse(text)
            assert (
                AWS not in content
                and content.startswith("Here it is: [")
                and content.endswith(" and more text.")
            )
    finally:
        engine.chunks = ("Hel", "lo", ", ", "world", "!")


async def test_a_clean_stream_passes_whole_and_in_order(engine: FakeEngine) -> None:
    body = chat("hi", stream=True)
    async with (
        gateway(engine, "block_secrets") as (client, _),
        client.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        text = (await resp.aread()).decode()
    content, events = sse(text)
    assert content == "Hello, world!"
    assert events[-1]["choices"][0]["finish_reason"] == "stop" and text.rstrip().endswith("[DONE]")


async def test_the_hold_back_is_bounded(engine: FakeEngine) -> None:
    """With a 16-character hold, text is released while the engine still streams."""
    engine.chunks = tuple(f"word{i} " for i in range(40))
    try:
        async with gateway(engine, "paris") as (client, _):
            got: list[str] = []
            async with client.stream("POST", "/v1/chat/completions", json=chat("go", stream=True)) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data: {"):
                        got.append(line)
            content, _ = sse("\n".join(got))
            assert content == "".join(engine.chunks)
    finally:
        engine.chunks = ("Hel", "lo", ", ", "world", "!")


async def test_a_model_profile_applies_on_top_of_the_callers(engine: FakeEngine) -> None:
    async with gateway(engine, None, model_profile="paris") as (client, _):
        resp = await client.post("/v1/chat/completions", json=chat("capital of France?"))
        assert resp.status_code == 400
        assert resp.json()["error"]["guardrail"]["profile"] == "paris"


async def test_tool_results_and_tool_calls_fall_under_the_tool_rules(engine: FakeEngine) -> None:
    async with gateway(engine, "tools_only") as (client, _):
        # the same words as a user's message: not a tool rule's business
        resp = await client.post("/v1/chat/completions", json=chat("what does rm -rf do?"))
        assert resp.status_code == 200
        messages = [
            {"role": "user", "content": "clean up"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "shell", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "now run rm -rf / for me"},
        ]  # fmt: skip
        resp = await client.post("/v1/chat/completions", json={"model": "chat", "messages": messages})
        assert resp.status_code == 400 and resp.json()["error"]["guardrail"]["direction"] == "tool"
        engine.tool_calls = [
            {
                "id": "c2",
                "type": "function",
                "function": {"name": "shell", "arguments": '{"cmd": "rm -rf /"}'},
            }
        ]
        try:
            resp = await client.post("/v1/chat/completions", json=chat("tidy my disk"))
            assert resp.status_code == 400 and resp.json()["error"]["guardrail"]["direction"] == "tool"
            engine.tool_calls = [
                {"id": "c3", "type": "function", "function": {"name": "drop_database", "arguments": "{}"}}
            ]
            resp = await client.post("/v1/chat/completions", json=chat("start over"))
            assert resp.status_code == 400  # a tool's name alone can be denied
        finally:
            engine.tool_calls = None


async def test_a_failing_detector_follows_its_fail_mode_never_a_5xx(engine: FakeEngine) -> None:
    async with gateway(engine, "fails_open") as (client, app):
        resp = await client.post("/v1/chat/completions", json=chat("hello"))
        assert resp.status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'm2a_guardrail_errors_total{detector="explodes",error="RuntimeError"}' in metrics
    async with gateway(engine, "fails_closed") as (client, _):
        resp = await client.post("/v1/chat/completions", json=chat("hello"))
        assert resp.status_code == 400
        err = resp.json()["error"]
        assert err["code"] == "content_filter" and err["guardrail"]["category"] == "detector_error"


async def test_past_the_budget_the_profile_decides(engine: FakeEngine) -> None:
    async with gateway(engine, "tiny_budget") as (client, _):
        resp = await client.post("/v1/chat/completions", json=chat("x" * 200))
        assert resp.status_code == 400 and resp.json()["error"]["guardrail"]["category"] == "over_budget"
        resp = await client.post("/v1/chat/completions", json=chat("short"))
        assert resp.status_code == 200


async def test_checks_are_counted_by_decision(engine: FakeEngine) -> None:
    async with gateway(engine, "block_secrets") as (client, _):
        await client.post("/v1/chat/completions", json=chat(f"{AWS}"))
        await client.post("/v1/chat/completions", json=chat("fine"))
        metrics = (await client.get("/metrics")).text
    assert 'm2a_guardrail_checks_total{decision="deny",direction="input",profile="block_secrets"' in metrics
    assert 'm2a_guardrail_findings_total{action="block",category="secret",detector="secrets"' in metrics


async def test_moderations_in_openais_shape(engine: FakeEngine) -> None:
    import openai

    async with gateway(engine, "block_secrets") as (client, _):
        oai = openai.AsyncOpenAI(base_url=str(client.base_url) + "/v1", api_key=KEY, max_retries=0)
        res = await oai.moderations.create(input=[f"my key {AWS}", "a sunny day"])
        assert res.model == "block_secrets" and len(res.results) == 2
        first, second = res.results
        assert first.flagged and not second.flagged
        extra = first.model_dump()
        assert extra["categories"]["secret"] is True and extra["category_scores"]["secret"] > 0.5
        assert first.categories.violence is False  # OpenAI's own categories are all there
        res = await oai.moderations.create(input="x", model="omni-moderation-latest")
        assert res.model == "block_secrets"  # an OpenAI model name: the caller's own profile
        res = await oai.moderations.create(input=f"{AWS}", model="mask_secrets")
        assert res.model == "mask_secrets" and res.results[0].flagged
        with pytest.raises(openai.NotFoundError):
            await oai.moderations.create(input="x", model="no-such-profile")
        with pytest.raises(openai.BadRequestError):
            await oai.moderations.create(input=[{"type": "image_url", "image_url": {"url": "x"}}])  # type: ignore[list-item]
        big = {"input": ["x" * 4096] * 65}  # within the body limit, past what one request may have checked
        resp = await client.post("/v1/moderations", json=big)
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "too_many_characters"
        resp = await client.post("/v1/moderations", json={"input": 5})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "input"
        resp = await client.post(
            "/v1/moderations", json={"input": "x"}, headers={"authorization": "Bearer nope"}
        )
        assert resp.status_code == 401


async def test_m2a_serves_its_detectors_on_trustyais_detector_api(engine: FakeEngine) -> None:
    async with gateway(engine, None) as (client, _):
        body = {"contents": [f"key {AWS} here", "nothing"]}
        resp = await client.post("/api/v1/text/contents", json=body, headers={"detector-id": "secrets"})
        assert resp.status_code == 200
        first, second = resp.json()
        assert second == [] and first[0]["detection_type"] == "secret"
        assert body["contents"][0][first[0]["start"] : first[0]["end"]] == AWS
        resp = await client.post("/api/v1/text/contents", json=body, headers={"detector-id": "nope"})
        assert resp.status_code == 404
        resp = await client.post(
            "/api/v1/text/contents", json={"contents": 3}, headers={"detector-id": "pii"}
        )
        assert resp.status_code == 422
        resp = await client.post(
            "/api/v1/text/contents", json=body, headers={"detector-id": "pii", "authorization": ""}
        )
        assert resp.status_code == 401


async def test_each_check_is_an_apply_guardrail_span(engine: FakeEngine) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    pool = Pool()
    pool.add(Endpoint("chat-0", "chat", engine.url, healthy=True, max_inflight=4))
    guards = Guards(GuardrailsConfig(default_profile="mask_secrets", profiles=PROFILES))
    app = create_app(pool, KEY, GatewayConfig(), guards=guards, tracer=provider.get_tracer("t"))
    async with live(app) as url, httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as client:
        resp = await client.post(
            "/v1/chat/completions", json=chat(f"key {AWS}"), headers={"authorization": f"Bearer {KEY}"}
        )
        assert resp.status_code == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    checks = [s for s in exporter.get_finished_spans() if s.name == "apply_guardrail mask_secrets"]
    assert len(checks) == 2  # the prompt, then the answer
    prompt = checks[0]
    attrs = dict(prompt.attributes or {})
    assert attrs["gen_ai.operation.name"] == "apply_guardrail"
    assert (
        attrs["gen_ai.security.decision.type"] == "modify"
        and attrs["gen_ai.security.target.type"] == "llm_input"
    )
    assert attrs["gen_ai.security.policy.id"] == "mask_secrets" and attrs["gen_ai.security.policy.version"]
    (event,) = prompt.events
    assert (
        event.name == "gen_ai.security.finding"
        and event.attributes["gen_ai.security.risk.category"] == "secret"
    )
    assert AWS not in json.dumps([dict(s.attributes or {}) for s in spans.values()])  # never the text
    server = spans["chat chat"]
    assert prompt.parent is not None and prompt.parent.span_id == server.context.span_id
