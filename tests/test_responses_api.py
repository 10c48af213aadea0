"""The Responses API (``/v1/responses``) end to end: the official ``openai`` client against a live
gateway (uvicorn on loopback) whose model is a small scripted chat engine — real HTTP all
the way, the gateway's own request path for every model call, the state in a real store (SQLite;
the chains and the scope also on PostgreSQL). Nothing asserts on wall-clock times; every wait is
bounded.

The scripted engine (``tests/scripted_engine.py``) is not a model: it answers deterministically
from the request, so a test can tell what the gateway sent it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.config import GatewayConfig, GuardrailProfile, GuardrailRule, GuardrailsConfig
from m2a.gateway import responses_api
from m2a.gateway.app import create_app
from m2a.gateway.guards import Guards
from m2a.gateway.responses_api import HostedResult, ToolContext, owner_of, stored_in
from m2a.principal import AgentRef, Principal
from m2a.router.pool import Endpoint, Pool
from m2a.store.identity import IdentityStore
from m2a.store.quotas import QuotaStore
from m2a.store.responses import MemoryResponses, Record, ResponseStore, SQLiteResponses, SQLResponses
from m2a.store.schema import StoredResponse
from tests import db_fixtures, gateway_fixtures
from tests.live_app import live
from tests.scripted_engine import ScriptedEngine

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN = "sk-resp-admin-" + "r" * 24
MODEL = "m"
TIMEOUT = 30.0
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}

store = gateway_fixtures.store  # a fresh, migrated SQLite identity store per test
database = db_fixtures.database  # for the tests that also run on PostgreSQL


# ---------------------------------------------------------------------------- the gateway
@dataclass
class GW:
    app: Any
    url: str
    http: httpx.AsyncClient
    pool: Pool

    def client(self, key: str = ADMIN) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT)

    async def post(self, body: Any, key: str = ADMIN, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"}
        if isinstance(body, (bytes, str)):
            return await self.http.post("/v1/responses", content=body, headers=headers, **kw)
        return await self.http.post("/v1/responses", json=body, headers=headers, **kw)


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[ScriptedEngine]:
    e = ScriptedEngine()
    await e.start()
    yield e
    await e.stop()


@contextlib.asynccontextmanager
async def serve(
    engine: ScriptedEngine,
    identity: IdentityStore | None = None,
    cfg: GatewayConfig | None = None,
    guards: Guards | None = None,
) -> AsyncIterator[GW]:
    pool = Pool()
    pool.add(Endpoint("m-0", MODEL, engine.url, healthy=True))
    pool.add(Endpoint("llama-0", "llama", engine.url, engine="llamacpp", healthy=True))
    app = create_app(pool, ADMIN, cfg or GatewayConfig(), identity=identity, guards=guards)
    async with (
        live(app, TIMEOUT) as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT, trust_env=False) as http,
    ):
        yield GW(app, url, http, pool)


async def team(identity: IdentityStore, name: str, keys: int = 1) -> list[str]:
    await identity.create_team(name)
    await identity.grant(name, MODEL)
    return [(await identity.create_key(name, f"{name}-key-{i}"))[0] for i in range(keys)]


@pytest_asyncio.fixture
async def gw(engine: ScriptedEngine, store: IdentityStore) -> AsyncIterator[GW]:
    async with serve(engine, store) as g:
        yield g


def events_of(text: str) -> list[dict[str, Any]]:
    """The SSE events of a Responses stream, checking each is framed as OpenAI frames them."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        event = json.loads(lines[1][6:])
        assert event["type"] == lines[0][7:]
        out.append(event)
    return out


# ---------------------------------------------------------------------------- create, retrieve, delete
async def test_create_retrieve_input_items_and_delete(gw: GW, engine: ScriptedEngine) -> None:
    c = gw.client()
    r = await c.responses.create(
        model=MODEL,
        instructions="Answer briefly.",
        input=[
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "Hello"}, {"type": "input_text", "text": "there"}],
            }
        ],
        metadata={"ticket": "42"},
        temperature=0.5,
        user="someone",
    )
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.output_text == "Echo: Hello\nthere" and r.model == MODEL
    msg = r.output[0]
    assert msg.type == "message" and msg.id.startswith("msg_") and msg.role == "assistant"
    assert msg.content[0].type == "output_text" and msg.content[0].annotations == []
    assert (
        r.usage is not None
        and r.usage.input_tokens == 6
        and r.usage.total_tokens == 6 + r.usage.output_tokens
    )
    assert (
        r.usage.input_tokens_details.cached_tokens == 2
        and r.usage.output_tokens_details.reasoning_tokens == 0
    )
    assert r.metadata == {"ticket": "42"} and r.instructions == "Answer briefly." and r.store is True
    assert r.temperature == 0.5 and r.previous_response_id is None and r.error is None
    # what the engine got: the instructions as a system message first, the parts as one text
    sent = engine.last
    assert sent["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hello\nthere"},
    ]
    assert sent["temperature"] == 0.5 and sent["user"] == "someone"
    assert "metadata" not in sent and "store" not in sent and "instructions" not in sent

    got = await c.responses.retrieve(r.id)
    assert got.model_dump() == r.model_dump()

    r2 = await c.responses.create(
        model=MODEL,
        input=[
            {"role": "developer", "content": "Be terse."},
            {"type": "message", "role": "user", "content": "one"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "two"}]},
            {"role": "user", "content": "three"},
        ],
    )
    assert engine.last["messages"][0] == {"role": "system", "content": "Be terse."}  # developer → system
    page = await c.responses.input_items.list(r2.id)  # newest first, as OpenAI lists them
    assert [i.role for i in page.data] == ["user", "assistant", "user", "developer"]
    assert all(i.id.startswith("msg_") for i in page.data) and page.has_more is False
    first = await c.responses.input_items.list(r2.id, order="asc", limit=2)
    assert [i.role for i in first.data] == ["developer", "user"] and first.has_more
    rest = await c.responses.input_items.list(r2.id, order="asc", limit=2, after=first.data[-1].id)
    assert [i.role for i in rest.data] == ["assistant", "user"] and not rest.has_more
    before = await gw.http.get(
        f"/v1/responses/{r2.id}/input_items",
        params={"order": "asc", "before": rest.data[-1].id, "limit": 1},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert [i["role"] for i in before.json()["data"]] == ["assistant"] and before.json()["has_more"]

    await c.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError) as info:
        await c.responses.retrieve(r.id)
    assert info.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        await c.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        await c.responses.input_items.list(r.id)


async def test_a_chain_of_three_turns_sends_the_whole_conversation(database: db_fixtures.Database) -> None:
    engine = ScriptedEngine()
    await engine.start()
    try:
        identity = IdentityStore(await database.open())
        (key,) = await team(identity, "chain")
        async with serve(engine, identity) as gw:
            c = gw.client(key)
            r1 = await c.responses.create(model=MODEL, input="first", instructions="Old instructions.")
            r2 = await c.responses.create(previous_response_id=r1.id, input="second", model=MODEL)
            r3 = await c.responses.create(
                previous_response_id=r2.id, input="third", instructions="New instructions."
            )  # the model is the previous response's when not given
            assert r3.output_text == "Echo: third" and r3.previous_response_id == r2.id and r3.model == MODEL
            assert engine.last["messages"] == [
                {"role": "system", "content": "New instructions."},  # the old ones are not carried over
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "Echo: first"},
                {"role": "user", "content": "second"},
                {"role": "assistant", "content": "Echo: second"},
                {"role": "user", "content": "third"},
            ]
            # a branch from the first turn sees only the first turn
            await c.responses.create(previous_response_id=r1.id, input="other", model=MODEL)
            assert [m["content"] for m in engine.last["messages"]] == ["first", "Echo: first", "other"]
            # each response lists only its own input
            assert [i.content[0].text for i in (await c.responses.input_items.list(r3.id)).data] == ["third"]
    finally:
        await engine.stop()


# ---------------------------------------------------------------------------- streaming
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def collapsed(types: list[str]) -> list[str]:
    return [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]


async def test_streaming_events_in_order_then_continued(gw: GW, engine: ScriptedEngine) -> None:
    c = gw.client()
    stream = await c.responses.create(model=MODEL, input="stream me please", stream=True)
    events = [e async for e in stream]
    types = [e.type for e in events]
    assert collapsed(types) == TEXT_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 3 and "".join(deltas) == "Echo: stream me please"
    created, done = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == [] and created.id == done.id
    assert done.status == "completed" and done.output_text == "Echo: stream me please"
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert item_ids == {done.output[0].id}
    text_done = next(e for e in events if e.type == "response.output_text.done")
    assert text_done.text == "Echo: stream me please"
    assert done.usage is not None and done.usage.input_tokens == 3 and done.usage.output_tokens > 3
    assert engine.last["stream"] is True and engine.last["stream_options"] == {"include_usage": True}

    # stored before its last event: retrievable and continuable at once
    assert (await c.responses.retrieve(done.id)).output_text == done.output_text
    stream = await c.responses.create(
        model=MODEL, input="and again", previous_response_id=done.id, stream=True
    )
    last = [e async for e in stream][-1]
    assert last.type == "response.completed" and last.response.output_text == "Echo: and again"
    assert [m["content"] for m in engine.last["messages"]] == [
        "stream me please",
        "Echo: stream me please",
        "and again",
    ]

    # the openai client's own stream helper assembles the same response from the events
    async with c.responses.stream(model=MODEL, input="helper") as helper:
        async for _ in helper:
            pass
        final = await helper.get_final_response()
    assert final.output_text == "Echo: helper" and final.status == "completed"


async def test_a_client_that_leaves_mid_stream_aborts_the_engine_and_the_response_is_cancelled(
    gw: GW, engine: ScriptedEngine
) -> None:
    engine.gate = asyncio.Event()
    headers = {"authorization": f"Bearer {ADMIN}"}
    body = {"model": MODEL, "input": "a long answer that will be cut", "stream": True}
    rid = None
    async with gw.http.stream("POST", "/v1/responses", json=body, headers=headers) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event["type"] == "response.created":
                    rid = event["response"]["id"]
                if event["type"] == "response.output_text.delta":
                    break  # and leave: the connection closes with the block
    assert rid is not None
    await asyncio.wait_for(engine.cancelled.wait(), TIMEOUT)  # the engine's request was aborted
    got = None
    for _ in range(300):  # bounded: the gateway stores it as it notices
        r = await gw.http.get(f"/v1/responses/{rid}", headers=headers)
        if r.status_code == 200 and r.json()["status"] != "in_progress":
            got = r.json()
            break
        await asyncio.sleep(0.05)
    assert got is not None and got["status"] == "cancelled"
    assert got["output"][0]["content"][0]["text"] == "Echo"  # what was generated before the cut
    assert all(ep.inflight == 0 for ep in gw.pool.all())


async def test_cancel_stops_a_stream_in_progress(gw: GW, engine: ScriptedEngine) -> None:
    engine.gate = asyncio.Event()
    headers = {"authorization": f"Bearer {ADMIN}"}
    body = {"model": MODEL, "input": "a long answer that will be cancelled", "stream": True}
    events: list[dict[str, Any]] = []
    async with gw.http.stream("POST", "/v1/responses", json=body, headers=headers) as resp:
        lines = resp.aiter_lines()
        async for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if events[-1]["type"] == "response.output_text.delta":
                    break
        rid = events[0]["response"]["id"]
        live = await gw.http.get(f"/v1/responses/{rid}", headers=headers)
        assert live.json()["status"] == "in_progress"  # visible while streaming
        other = await gw.http.post(f"/v1/responses/{rid}/cancel", headers={"authorization": "Bearer nope"})
        assert other.status_code == 401
        cancel = gw.http.post(f"/v1/responses/{rid}/cancel", headers=headers)
        cancelling = asyncio.ensure_future(cancel)
        await asyncio.sleep(0)
        engine.gate.set()  # the next piece makes the stream notice
        cancelled = await asyncio.wait_for(cancelling, TIMEOUT)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        async for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["type"] == "response.failed" and events[-1]["response"]["status"] == "cancelled"
    assert (await gw.http.get(f"/v1/responses/{rid}", headers=headers)).json()["status"] == "cancelled"
    ended = await gw.http.post(f"/v1/responses/{rid}/cancel", headers=headers)
    assert ended.status_code == 400 and ended.json()["error"]["code"] == "response_not_cancellable"


# ---------------------------------------------------------------------------- function tools
async def test_a_function_tool_round_trip(gw: GW, engine: ScriptedEngine) -> None:
    c = gw.client()
    r = await c.responses.create(model=MODEL, input="What is the weather?", tools=[WEATHER])
    (call,) = r.output
    assert call.type == "function_call" and call.name == "get_weather" and call.id.startswith("fc_")
    assert call.call_id == "call_0" and json.loads(call.arguments) == {"city": "Paris"}
    assert r.status == "completed" and r.output_text == ""
    assert engine.last["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": WEATHER["parameters"],
                "strict": True,
            },
        }
    ]
    # the client runs it and sends the result back
    r2 = await c.responses.create(
        model=MODEL,
        previous_response_id=r.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 22 C"}],
        tools=[WEATHER],
    )
    assert r2.output_text == "Tool said: Sunny, 22 C"
    assert engine.last["messages"][-2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "Sunny, 22 C"},
    ]
    items = (await c.responses.input_items.list(r2.id)).data
    assert items[0].type == "function_call_output" and items[0].call_id == "call_0"

    # the same without stored state: the client sends the whole conversation back (the Agents SDK way)
    r3 = await c.responses.create(
        model=MODEL,
        store=False,
        input=[
            {"role": "user", "content": "What is the weather?"},
            call.model_dump(exclude_none=True),
            {
                "type": "function_call_output",
                "call_id": call.call_id,
                "output": [{"type": "input_text", "text": "Rain"}],
            },
        ],
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
    )
    assert r3.output_text == "Tool said: Rain"
    assert engine.last["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert engine.last["parallel_tool_calls"] is False
    assert [m["role"] for m in engine.last["messages"]] == ["user", "assistant", "tool"]


async def test_a_streamed_function_call(gw: GW, engine: ScriptedEngine) -> None:
    c = gw.client()
    stream = await c.responses.create(model=MODEL, input="weather?", tools=[WEATHER], stream=True)
    events = [e async for e in stream]
    assert collapsed([e.type for e in events]) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = next(e for e in events if e.type == "response.output_item.added").item
    assert added.type == "function_call" and added.name == "get_weather" and added.status == "in_progress"
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(deltas) == {"city": "Paris"} and done.arguments == deltas
    final = events[-1].response
    assert final.output[0].type == "function_call" and final.output[0].arguments == deltas
    assert final.output[0].id == added.id == done.item_id
    r2 = await c.responses.create(
        model=MODEL,
        previous_response_id=final.id,
        input=[{"type": "function_call_output", "call_id": final.output[0].call_id, "output": "Windy"}],
        stream=True,
    )
    assert [e async for e in r2][-1].response.output_text == "Tool said: Windy"


async def test_text_format_json_schema_and_other_options_are_passed_on(
    gw: GW, engine: ScriptedEngine
) -> None:
    c = gw.client()
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    r = await c.responses.create(
        model=MODEL,
        input="Answer in JSON.",
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
        top_p=0.9,
        max_output_tokens=50,
        reasoning={"effort": "low"},
        truncation="disabled",
        include=["message.output_text.logprobs"],
    )
    assert json.loads(r.output_text) == {"answer": "ok"}
    assert r.text.format.type == "json_schema" and r.max_output_tokens == 50 and r.top_p == 0.9
    sent = engine.last
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    assert sent["top_p"] == 0.9 and sent["max_tokens"] == 50
    assert "reasoning" not in sent and "truncation" not in sent and "include" not in sent
    await c.responses.create(model=MODEL, input="JSON please", text={"format": {"type": "json_object"}})
    assert engine.last["response_format"] == {"type": "json_object"}


async def test_max_output_tokens_reached_is_incomplete(gw: GW) -> None:
    c = gw.client()
    r = await c.responses.create(model=MODEL, input="a long story", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens" and r.output[0].status == "incomplete"
    stream = await c.responses.create(model=MODEL, input="a long story", max_output_tokens=3, stream=True)
    last = [e async for e in stream][-1]
    assert (
        last.type == "response.incomplete" and last.response.incomplete_details.reason == "max_output_tokens"
    )


# ---------------------------------------------------------------------------- bad input
BAD_BODIES: list[tuple[Any, int, str | None]] = [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"input": "hi"}, 400, "model"),
    ({"model": MODEL}, 400, "input"),
    ({"model": MODEL, "input": []}, 400, "input"),
    ({"model": MODEL, "input": "hi", "temperature": 3}, 400, "temperature"),
    ({"model": MODEL, "input": "hi", "temperature": "hot"}, 400, "temperature"),
    ({"model": MODEL, "input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"model": MODEL, "input": "hi", "stream": "yes"}, 400, "stream"),
    ({"model": MODEL, "input": "hi", "metadata": {"k": 1}}, 400, "metadata.k"),
    ({"model": MODEL, "input": 5}, 400, "input"),
    ({"model": MODEL, "input": [5]}, 400, "input.0"),
    ({"model": MODEL, "input": [{"role": "robot", "content": "x"}]}, 400, "input.0.role"),
    ({"model": MODEL, "input": [{"role": "user", "content": 7}]}, 400, "input.0.content"),
    (
        {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
        400,
        "input.0.content.0.type",
    ),
    (
        {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_text"}]}]},
        400,
        "input.0.content.0.text",
    ),
    (
        {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
        400,
        "input.0.content.0.type",
    ),
    (
        {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
        400,
        "input.0.content.0",
    ),
    ({"model": MODEL, "input": [{"type": "item_reference", "id": "msg_1"}]}, 400, "input.0.type"),
    (
        {"model": MODEL, "input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}]},
        400,
        "input.0.call_id",
    ),
    (
        {"model": MODEL, "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
        400,
        "input.0.call_id",
    ),
    ({"model": MODEL, "input": "hi", "tools": [{"type": "web_search"}]}, 400, "tools.0.type"),
    (
        {"model": MODEL, "input": "hi", "tools": [{"type": "function", "name": "bad name!"}]},
        400,
        "tools.0.name",
    ),
    ({"model": MODEL, "input": "hi", "tools": [WEATHER, WEATHER]}, 400, "tools.1.name"),
    ({"model": MODEL, "input": "hi", "tool_choice": "required"}, 400, "tool_choice"),
    (
        {"model": MODEL, "input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "x"}},
        400,
        "tool_choice.name",
    ),
    (
        {"model": MODEL, "input": "hi", "tools": [WEATHER], "tool_choice": {"type": "file_search"}},
        400,
        "tool_choice.type",
    ),
    ({"model": MODEL, "input": "hi", "text": {"format": {"type": "yaml"}}}, 400, "text.format.type"),
    ({"model": MODEL, "input": "hi", "background": True}, 400, "background"),
    ({"model": MODEL, "input": "hi", "conversation": "conv_1"}, 400, "conversation"),
    ({"model": MODEL, "input": "hi", "previous_response_id": "resp_nope"}, 404, "previous_response_id"),
    ({"model": "no-such-model", "input": "hi"}, 404, "model"),
    ({"model": MODEL, "input": "hi", "max_output_tokens": 10**6}, 400, "max_output_tokens"),
    (
        {
            "model": "llama",
            "input": [
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}],
                }
            ],
        },
        400,
        "input.0.content.0",
    ),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD_BODIES)
async def test_bad_bodies_get_openai_errors_never_a_5xx(
    gw: GW, engine: ScriptedEngine, body: Any, status: int, param: str | None
) -> None:
    gw.pool.endpoints(MODEL)[0].max_output_tokens = 4096  # the engine's limit, for the max_output_tokens case
    resp = await gw.post(body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param, err
    assert not engine.requests  # nothing reached the engine


async def test_an_image_goes_to_a_model_that_may_take_one_and_a_body_too_large_is_413(
    engine: ScriptedEngine, store: IdentityStore
) -> None:
    async with serve(engine, store, GatewayConfig(max_body_bytes=4096)) as gw:
        image = {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"}
        ok = await gw.post(
            {
                "model": MODEL,
                "input": [{"role": "user", "content": [{"type": "input_text", "text": "what?"}, image]}],
            }
        )
        assert ok.status_code == 200, ok.text
        assert engine.last["messages"][0]["content"] == [
            {"type": "text", "text": "what?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        ]
        big = await gw.post({"model": MODEL, "input": "x" * 5000})
        assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
        # a chain that grows past the limit is refused by name, not sent
        r = (await gw.post({"model": MODEL, "input": "y" * 800})).json()
        r = (await gw.post({"model": MODEL, "input": "z" * 800, "previous_response_id": r["id"]})).json()
        sent = len(engine.requests)
        long = await gw.post({"model": MODEL, "input": "w" * 800, "previous_response_id": r["id"]})
        assert long.status_code == 400 and long.json()["error"]["code"] == "conversation_too_long"
        assert long.json()["error"]["param"] == "previous_response_id" and len(engine.requests) == sent


# ---------------------------------------------------------------------------- scope
async def test_only_the_key_that_made_a_response_sees_it(database: db_fixtures.Database) -> None:
    engine = ScriptedEngine()
    await engine.start()
    try:
        identity = IdentityStore(await database.open())
        a1, a2 = await team(identity, "team-a", keys=2)
        (b,) = await team(identity, "team-b")
        async with serve(engine, identity) as gw:
            r = await gw.client(a1).responses.create(model=MODEL, input="secret plans")
            for other in (a2, b, ADMIN):
                c = gw.client(other)
                with pytest.raises(openai.NotFoundError) as info:
                    await c.responses.retrieve(r.id)
                assert info.value.code == "response_not_found" and "secret" not in str(info.value.body)
                with pytest.raises(openai.NotFoundError):
                    await c.responses.input_items.list(r.id)
                with pytest.raises(openai.NotFoundError):
                    await c.responses.delete(r.id)
                with pytest.raises(openai.NotFoundError) as info:
                    await c.responses.create(model=MODEL, input="and?", previous_response_id=r.id)
                assert info.value.code == "previous_response_not_found"
                assert info.value.param == "previous_response_id"
                cancel = await gw.http.post(
                    f"/v1/responses/{r.id}/cancel", headers={"authorization": f"Bearer {other}"}
                )
                assert cancel.status_code == 404
            # still there for its owner, untouched by the others' deletes
            assert (await gw.client(a1).responses.retrieve(r.id)).output_text == "Echo: secret plans"
            missing = await gw.http.get("/v1/responses/resp_nope", headers={"authorization": f"Bearer {a1}"})
            assert missing.status_code == 404
            unauth = await gw.http.get(f"/v1/responses/{r.id}")
            assert unauth.status_code == 401 and unauth.json()["error"]["code"] == "missing_api_key"
    finally:
        await engine.stop()


def agent_principal(base: Principal, agent_id: int, subject: str | None) -> Principal:
    ref = AgentRef(f"spiffe://m2a/team/team-a/agent/a{agent_id}", agent_id, f"a{agent_id}", 1, 1, subject)
    return Principal(
        base.key_id, "agent", base.team, "member", base.priority, base.priority_order, base.models,
        None, base.team_id, base.limits, base.guardrails, ref,
    )  # fmt: skip


async def test_an_agents_response_is_its_own_for_the_same_subject(
    engine: ScriptedEngine, store: IdentityStore
) -> None:
    (key,) = await team(store, "team-a")
    member = await store.lookup(key)
    assert isinstance(member, Principal)
    # agent tokens, as the agents layer's verifier resolves them (another helper's): a stand-in here
    tokens = {
        "eyJ.agent1-alice.x": agent_principal(member, 1, "alice"),
        "eyJ.agent1-bob.x": agent_principal(member, 1, "bob"),
        "eyJ.agent2-alice.x": agent_principal(member, 2, "alice"),
        "eyJ.agent1-alone.x": agent_principal(member, 1, None),
    }

    async def verify(token: str) -> Principal:
        return tokens[token]

    async with serve(engine, store) as gw:
        gw.app.state.access.tokens = verify
        r = await gw.client("eyJ.agent1-alice.x").responses.create(model=MODEL, input="for alice")
        assert (await gw.client("eyJ.agent1-alice.x").responses.retrieve(r.id)).id == r.id
        for other in ("eyJ.agent1-bob.x", "eyJ.agent2-alice.x", "eyJ.agent1-alone.x", key):
            with pytest.raises(openai.NotFoundError):
                await gw.client(other).responses.retrieve(r.id)
        cont = await gw.client("eyJ.agent1-alice.x").responses.create(
            model=MODEL, input="more", previous_response_id=r.id
        )
        assert cont.output_text == "Echo: more"
    owners = {owner_of(p) for p in tokens.values()} | {owner_of(member)}
    assert len(owners) == 5


# ---------------------------------------------------------------------------- store and retention
async def test_store_false_is_not_retrievable(gw: GW, engine: ScriptedEngine) -> None:
    c = gw.client()
    r = await c.responses.create(model=MODEL, input="ephemeral", store=False)
    assert r.store is False and r.output_text == "Echo: ephemeral"
    with pytest.raises(openai.NotFoundError):
        await c.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError) as info:
        await c.responses.create(model=MODEL, input="again", previous_response_id=r.id)
    assert info.value.code == "previous_response_not_found"
    stream = await c.responses.create(model=MODEL, input="ephemeral", store=False, stream=True)
    rid = [e async for e in stream][-1].response.id
    with pytest.raises(openai.NotFoundError):
        await c.responses.retrieve(rid)


async def test_retention_expires_and_prunes(engine: ScriptedEngine, store: IdentityStore) -> None:
    async with serve(engine, store, GatewayConfig(responses_retention_hours=2.5)) as gw:
        c = gw.client()
        r = await c.responses.create(model=MODEL, input="remember me")
        kept = await c.responses.create(model=MODEL, input="and me")
        db: AsyncEngine = store.engine
        async with db.begin() as conn:
            row = (await conn.execute(select(StoredResponse).where(StoredResponse.id == r.id))).one()
            assert row.expires_at - row.created_at == timedelta(hours=2.5)
            assert (
                row.team_id is None and row.key_id == 0 and row.model == MODEL and row.status == "completed"
            )
            past = datetime.now(UTC) - timedelta(seconds=1)
            await conn.execute(
                update(StoredResponse).where(StoredResponse.id == r.id).values(expires_at=past)
            )
        with pytest.raises(openai.NotFoundError):  # past its time: gone, before any pruning
            await c.responses.retrieve(r.id)
        with pytest.raises(openai.NotFoundError):
            await c.responses.create(model=MODEL, input="x", previous_response_id=r.id)
        assert await gw.app.state.responses.store.prune() == 1
        async with db.begin() as conn:
            ids = (await conn.execute(select(StoredResponse.id))).scalars().all()
        assert r.id not in ids and kept.id in ids


async def test_the_store_on_sqlite_and_postgresql(database: db_fixtures.Database) -> None:
    engine = await database.open()
    await _store_contract(SQLResponses(engine))
    if engine.dialect.name == "sqlite":  # the gateway's fast path on SQLite: the same table, the same rules
        fast = stored_in(engine)
        assert isinstance(fast, SQLiteResponses)
        try:
            await _store_contract(fast)
            # Either path reads what the other wrote (times stored alike, so expiry compares alike).
            t = datetime.now(UTC)
            both = Record(
                "resp_x", "o", 1, 2, None, MODEL, "completed", None, t, t + timedelta(hours=1),
                {"id": "resp_x"}, [], [], conversation_id="resp_0",
            )  # fmt: skip
            await fast.put(both)
            got = await SQLResponses(engine).get("resp_x", "o", "body")
            assert got is not None and got.created_at == t and got.conversation == "resp_0"
            await SQLResponses(engine).put(replace(both, id="resp_y", conversation_id=None))
            got = await fast.get("resp_y", "o")
            assert got is not None and got.created_at == t and got.conversation == "resp_y"
        finally:
            await fast.close()


async def _store_contract(s: ResponseStore) -> None:
    t = datetime.now(UTC)

    def rec(rid: str, owner: str, expires: datetime) -> Record:
        return Record(
            rid, owner, 1, 2, None, MODEL, "completed", None, t, expires,
            {"id": rid, "é": "ü"}, [{"id": "msg_1"}], [{"role": "user", "content": "hi"}],
        )  # fmt: skip

    await s.put(rec("resp_a", "o1", t + timedelta(hours=1)))
    for i in range(5):
        await s.put(rec(f"resp_old{i}", "o1", t - timedelta(seconds=1)))
    got = await s.get("resp_a", "o1", "body", "history")
    assert got is not None and got.body == {"id": "resp_a", "é": "ü"} and got.input_items is None
    assert got.history == [{"role": "user", "content": "hi"}] and got.created_at == t
    assert await s.get("resp_a", "o2") is None and await s.get("resp_old0", "o1") is None
    assert await s.prune(batch=2) == 5
    assert not await s.delete("resp_a", "o2") and await s.delete("resp_a", "o1")
    assert await s.get("resp_a", "o1") is None


async def test_without_a_database_responses_live_in_bounded_memory(engine: ScriptedEngine) -> None:
    async with serve(engine) as gw:
        assert isinstance(gw.app.state.responses.store, MemoryResponses)
        c = gw.client()
        r = await c.responses.create(model=MODEL, input="in memory")
        r2 = await c.responses.create(model=MODEL, input="next", previous_response_id=r.id)
        assert r2.output_text == "Echo: next" and (await c.responses.retrieve(r.id)).id == r.id
    mem = MemoryResponses(max_items=2, max_bytes=10_000)
    t = datetime.now(UTC)
    for i in range(3):
        await mem.put(
            Record(
                f"r{i}", "o", None, 0, None, MODEL, "completed", None, t, t + timedelta(hours=1), {}, [], []
            )
        )
    assert await mem.get("r0", "o") is None and await mem.get("r2", "o") is not None
    await mem.put(
        Record(
            "big",
            "o",
            None,
            0,
            None,
            MODEL,
            "completed",
            None,
            t,
            t + timedelta(hours=1),
            {"x": "y" * 20_000},
            [],
            [],
        )
    )
    assert await mem.get("big", "o") is None  # larger than the whole budget: not kept


# ---------------------------------------------------------------------------- the request path's refusals
async def test_quota_refusals_come_back_in_openai_shape(engine: ScriptedEngine, store: IdentityStore) -> None:
    (key,) = await team(store, "team-q")
    await QuotaStore(store.engine).set("team-q", [("requests", "minute", 1)])
    async with serve(engine, store) as gw:
        c = gw.client(key)
        await c.responses.create(model=MODEL, input="one")
        sent = len(engine.requests)
        with pytest.raises(openai.RateLimitError) as info:
            await c.responses.create(model=MODEL, input="two")
        assert info.value.code == "rate_limit_exceeded" and info.value.type == "rate_limit_error"
        assert int(info.value.response.headers["retry-after"]) >= 1
        streamed = await gw.post({"model": MODEL, "input": "three", "stream": True}, key)
        assert streamed.status_code == 429 and streamed.json()["error"]["code"] == "rate_limit_exceeded"
        assert len(engine.requests) == sent


GUARDS = {
    "no_pineapple": GuardrailProfile(
        rules=[GuardrailRule(detector="denylist", params={"terms": ["pineapple"]}, where=["input"])]
    ),
    "no_paris": GuardrailProfile(
        rules=[GuardrailRule(detector="denylist", params={"terms": ["Paris"]}, where=["output", "tool"])],
        stream_hold_chars=16,
    ),
}


async def test_guardrail_refusals_come_back_in_openai_shape(engine: ScriptedEngine) -> None:
    guards = Guards(GuardrailsConfig(default_profile="no_pineapple", profiles=GUARDS))
    async with serve(engine, guards=guards) as gw:
        c = gw.client()
        with pytest.raises(openai.BadRequestError) as info:
            await c.responses.create(model=MODEL, input=[{"role": "user", "content": "I love pineapple"}])
        assert info.value.code == "content_filter" and info.value.param == "input"
        assert info.value.body["guardrail"]["profile"] == "no_pineapple"
        assert not engine.requests
        ok = await c.responses.create(model=MODEL, input="I love apples")
        assert ok.output_text == "Echo: I love apples"


async def test_an_answer_a_guardrail_stops_is_refused_whole_and_incomplete_streamed(
    engine: ScriptedEngine,
) -> None:
    guards = Guards(GuardrailsConfig(default_profile="no_paris", profiles=GUARDS))
    async with serve(engine, guards=guards) as gw:
        c = gw.client()
        with pytest.raises(openai.BadRequestError) as info:
            await c.responses.create(model=MODEL, input="I love Paris in the spring")
        assert info.value.code == "content_filter"
        stream = await c.responses.create(model=MODEL, input="I love Paris in the spring", stream=True)
        events = [e async for e in stream]
        last = events[-1]
        assert (
            last.type == "response.incomplete" and last.response.incomplete_details.reason == "content_filter"
        )
        assert "Paris" not in "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert [e.sequence_number for e in events] == list(range(len(events)))
        stored = await c.responses.retrieve(last.response.id)
        assert stored.status == "incomplete"


# ---------------------------------------------------------------------------- hosted tools (the seam)
@dataclass
class Clock:
    """A hosted tool for the test: the model may ask it the time; it runs in the gateway."""

    functions: list[dict[str, Any]]
    calls: list[str] = field(default_factory=list)

    def owns(self, name: str) -> bool:
        return name == "clock_now"

    def items(self) -> list[dict[str, Any]]:
        return [{"type": "clock_list", "id": "clkl_1", "tools": ["clock_now"]}]

    async def call(self, call_id: str, name: str, arguments: str) -> HostedResult:
        self.calls.append(arguments)
        return HostedResult({"type": "clock_call", "id": f"clk_{call_id}", "output": "12:00"}, "12:00")


@pytest.fixture
def clock() -> Any:
    made: list[Clock] = []

    async def factory(spec: dict[str, Any], ctx: ToolContext) -> Clock:
        assert ctx.principal.is_admin and ctx.index == 0
        fn = {"type": "function", "function": {"name": "clock_now", "parameters": {"type": "object"}}}
        made.append(Clock([fn]))
        return made[-1]

    responses_api.register_hosted_tool("clock", factory)
    yield made
    responses_api.HOSTED_TOOLS.pop("clock")


async def test_a_hosted_tool_runs_in_the_gateway_and_the_model_is_called_again(
    gw: GW, engine: ScriptedEngine, clock: list[Clock]
) -> None:
    c = gw.client()
    r = await c.responses.create(model=MODEL, input="What time is it?", tools=[{"type": "clock"}])
    assert [o.type for o in r.output] == ["clock_list", "clock_call", "message"]
    assert r.output_text == "Tool said: 12:00" and clock[0].calls == ['{"city": "Paris"}']
    assert len(engine.requests) == 2 and engine.last["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_0",
        "content": "12:00",
    }
    assert r.usage is not None and r.usage.input_tokens == 3 + 9  # both model calls counted
    stream = await c.responses.create(model=MODEL, input="And now?", tools=[{"type": "clock"}], stream=True)
    events = [e async for e in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert added == ["clock_list", "clock_call", "message"]  # the function call is the tool's
    assert events[-1].type == "response.completed"
    assert [o.type for o in events[-1].response.output] == ["clock_list", "clock_call", "message"]


async def test_an_engine_that_dies_mid_stream_fails_the_response(store: IdentityStore) -> None:
    from tests.fake_engine import FakeEngine  # its die_mid_stream mode: one chunk, then the connection drops

    fake = FakeEngine()
    fake.mode = "die_mid_stream"
    await fake.start()
    try:
        pool = Pool()
        pool.add(Endpoint("m-0", MODEL, fake.url, healthy=True))
        app = create_app(pool, ADMIN, GatewayConfig(), identity=store)
        async with live(app, TIMEOUT) as url:
            c = openai.AsyncOpenAI(base_url=url + "/v1", api_key=ADMIN, max_retries=0, timeout=TIMEOUT)
            stream = await c.responses.create(model=MODEL, input="hi", stream=True)
            events = [e async for e in stream]
            assert [e.sequence_number for e in events] == list(range(len(events)))
            assert [e.type for e in events[-2:]] == ["error", "response.failed"]
            failed = events[-1].response
            assert (
                failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
            )
            assert (await c.responses.retrieve(failed.id)).status == "failed"
            assert all(ep.inflight == 0 for ep in pool.all())
    finally:
        await fake.stop()


async def test_a_stream_without_usage_gets_the_gateways_estimate(gw: GW, engine: ScriptedEngine) -> None:
    engine.stream_usage = False
    stream = await gw.client().responses.create(model=MODEL, input="count me", stream=True)
    events = [e async for e in stream]
    usage = events[-1].response.usage
    deltas = sum(e.type == "response.output_text.delta" for e in events)
    assert usage is not None and usage.input_tokens > 0
    assert usage.output_tokens == deltas + 2  # every chat event with choices: the role chunk and the last too
