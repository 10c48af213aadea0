"""The OpenAI Agents SDK (``openai-agents``), unchanged, running an agent with a function tool
against the gateway's Responses API: its ``OpenAIResponsesModel`` on an ``AsyncOpenAI`` client
pointed at a live gateway (uvicorn on loopback) whose model is the scripted chat engine of
``tests/test_responses_api.py`` (it calls the first tool offered, then answers with the tool's
result). The SDK runs the tool itself and sends the result back as a ``function_call_output`` item;
the runs below go both ways the SDK has: the whole conversation sent back each turn, and
``previous_response_id`` with the state in the gateway's store. Tracing to OpenAI is off (no
network here).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
import pytest_asyncio
from agents import Agent, ModelSettings, OpenAIResponsesModel, RunConfig, Runner, function_tool

from m2a.store.identity import IdentityStore
from tests import gateway_fixtures
from tests.scripted_engine import ScriptedEngine
from tests.test_responses_api import GW, MODEL, TIMEOUT, serve, team

pytestmark = pytest.mark.asyncio(loop_scope="session")

store = gateway_fixtures.store
RUN = RunConfig(tracing_disabled=True)
asked: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    asked.append(city)
    return f"Sunny in {city}"


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[ScriptedEngine]:
    e = ScriptedEngine()
    await e.start()
    yield e
    await e.stop()


@pytest_asyncio.fixture
async def setup(
    engine: ScriptedEngine, store: IdentityStore
) -> AsyncIterator[tuple[GW, Agent, openai.AsyncOpenAI]]:
    (key,) = await team(store, "agents")
    async with serve(engine, store) as gw:
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT)
        agent = Agent(
            name="weather",
            instructions="You answer questions about the weather with the tool.",
            tools=[get_weather],
            model=OpenAIResponsesModel(model=MODEL, openai_client=client),
            model_settings=ModelSettings(temperature=0.0),
        )
        asked.clear()
        yield gw, agent, client


async def test_an_agent_calls_its_function_tool_through_the_gateway(
    setup: tuple[GW, Agent, openai.AsyncOpenAI], engine: ScriptedEngine
) -> None:
    gw, agent, client = setup
    result = await Runner.run(agent, "What is the weather in Paris?", run_config=RUN)
    assert result.final_output == "Tool said: Sunny in Paris"
    assert asked == ["Paris"]  # the SDK ran the tool, with the arguments the model chose
    assert len(engine.requests) == 2
    first, second = engine.requests
    assert first["messages"][0] == {
        "role": "system",
        "content": "You answer questions about the weather with the tool.",
    }
    assert first["tools"][0]["function"]["name"] == "get_weather" and first["temperature"] == 0.0
    roles = [m["role"] for m in second["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    assert second["messages"][-1]["content"] == "Sunny in Paris"
    # each model call was a stored response the key can read back
    for raw in result.raw_responses:
        assert raw.response_id is not None
        stored = await client.responses.retrieve(raw.response_id)
        assert stored.status == "completed"


async def test_an_agent_streams_and_chains_with_previous_response_id(
    setup: tuple[GW, Agent, openai.AsyncOpenAI], engine: ScriptedEngine
) -> None:
    gw, agent, client = setup
    run = Runner.run_streamed(agent, "Weather in Paris?", run_config=RUN, auto_previous_response_id=True)
    kinds = [e.type async for e in run.stream_events()]
    assert run.final_output == "Tool said: Sunny in Paris" and asked == ["Paris"]
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    # the second model call continued the first from the gateway's store: only the tool's output was sent
    assert len(engine.requests) == 2
    assert [m["role"] for m in engine.requests[1]["messages"]] == ["system", "user", "assistant", "tool"]
    assert run.last_response_id is not None
    items = (await client.responses.input_items.list(run.last_response_id)).data
    assert [i.type for i in items] == ["function_call_output"]  # the rest came from the store
    follow = await Runner.run(
        agent, "And tomorrow? (no tools)", previous_response_id=run.last_response_id, run_config=RUN
    )
    assert follow.final_output == "Echo: And tomorrow? (no tools)"
    assert [m["role"] for m in engine.requests[-1]["messages"]] == [
        "system", "user", "assistant", "tool", "assistant", "user"
    ]  # fmt: skip
