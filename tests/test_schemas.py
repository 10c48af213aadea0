"""Tests for m2a.gateway.schemas: OpenAI request-body validation."""

from __future__ import annotations

import copy

import pytest

from m2a.gateway.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    RequestError,
    validate_chat,
    validate_completion,
    validate_embedding,
)

USER = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def chat(**kw: object) -> dict[str, object]:
    return {"model": "m", "messages": copy.deepcopy(USER), **kw}


RICH_CHAT = {
    "model": "llama-3.1-8b",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}], "name": "dev"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "file", "file": {"file_id": "file-1", "filename": "a.pdf"}},
            ],
            "name": "alice",
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Sunny."}, {"type": "refusal", "refusal": ""}],
        },
        {"role": "function", "name": "legacy", "content": None},
        {"role": "user", "content": "thanks"},
    ],
    "temperature": 0.7,
    "top_p": 1,
    "n": 2,
    "stream": True,
    "stream_options": {"include_usage": True, "continuous_usage_stats": False},
    "stop": ["\n", "END"],
    "max_tokens": None,
    "max_completion_tokens": 256,
    "presence_penalty": -2,
    "frequency_penalty": 1.5,
    "logit_bias": {"50256": -100, "11": 3.5},
    "logprobs": True,
    "top_logprobs": 5,
    "user": "u-1",
    "seed": 42,
    "tools": TOOLS,
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": {"type": "object"}, "strict": True},
    },
    "reasoning_effort": "low",
    "service_tier": "auto",
    "metadata": {"team": "infra"},
    "modalities": ["text"],
    "store": False,
    "top_k": 40,  # vLLM extensions pass through
    "min_p": 0.05,
    "repetition_penalty": 1.1,
}


# ---------------------------------------------------------------- valid bodies
def test_chat_minimal() -> None:
    req = validate_chat(chat())
    assert isinstance(req, ChatCompletionRequest)
    assert req.model == "m"
    assert req.stream is False
    assert req.stream_options is None


def test_chat_rich() -> None:
    body = copy.deepcopy(RICH_CHAT)
    req = validate_chat(body)
    assert req.stream is True
    assert req.stream_options == {"include_usage": True, "continuous_usage_stats": False}
    assert req.model_extra == {"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1}
    assert body == RICH_CHAT  # validation never touches the body that gets forwarded


@pytest.mark.parametrize(
    "extra",
    [
        {"stream": None},
        {"tool_choice": "none"},
        {"tools": TOOLS, "tool_choice": "required"},
        {"stop": "###"},
        {"response_format": {"type": "json_object"}},
        {"response_format": {"type": "text"}},
        {"reasoning_effort": "none"},
        {"temperature": 0, "top_p": 0.0},
        {"priority": 3, "chat_template_kwargs": {"enable_thinking": False}},
    ],
)
def test_chat_valid_variants(extra: dict[str, object]) -> None:
    assert validate_chat(chat(**extra)).model == "m"


def test_completion_valid() -> None:
    req = validate_completion({"model": "m", "prompt": "Once"})
    assert isinstance(req, CompletionRequest)
    assert req.stream is False and req.stream_options is None
    rich = {
        "model": "m",
        "prompt": ["a", "b"],
        "max_tokens": 0,
        "temperature": 1.0,
        "n": 1,
        "best_of": 2,
        "stream": True,
        "stream_options": {"include_usage": False},
        "stop": "\n",
        "logprobs": 5,
        "echo": True,
        "suffix": "end",
        "logit_bias": {"1": 1},
        "seed": -1,
        "top_k": 5,
    }
    req = validate_completion(rich)
    assert req.stream is True and req.stream_options == {"include_usage": False}
    for prompt in ([1, 2, 3], [[1, 2], [3]], ""):
        validate_completion({"model": "m", "prompt": prompt})


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "input": "hello"},
        {"model": "m", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 256, "user": "u"},
        {"model": "m", "input": [1, 2, 3], "encoding_format": "float"},
        {"model": "m", "input": [[1, 2], [3]], "truncate_prompt_tokens": 10},
    ],
)
def test_embedding_valid(body: dict[str, object]) -> None:
    req = validate_embedding(body)
    assert isinstance(req, EmbeddingRequest)
    assert req.model == "m" and req.stream is False


# ---------------------------------------------------------------- invalid bodies
@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(messages=[*USER, {"role": "bot", "content": "x"}]), "messages.1.role"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages.0.role"),
        (chat(temperature=3), "temperature"),
        (chat(temperature="hot"), "temperature"),
        (chat(temperature=True), "temperature"),
        (chat(max_tokens="5"), "max_tokens"),
        (chat(max_tokens=True), "max_tokens"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(max_tokens=5.0), "max_tokens"),
        (chat(stream="yes"), "stream"),
        (chat(stream=1), "stream"),
        (chat(messages=[]), "messages"),
        ({"messages": USER}, "model"),
        ({"model": "", "messages": USER}, "model"),
        ({"model": 5, "messages": USER}, "model"),
        ({"model": "m"}, "messages"),
        (chat(tool_choice="auto"), "tool_choice"),
        (chat(tool_choice={"type": "function", "function": {"name": "f"}}), "tool_choice"),
        (chat(tools=TOOLS, tool_choice="sometimes"), "tool_choice"),
        (
            chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": 5}}),
            "tool_choice.function.name",
        ),
        (chat(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools.0.function.name"),
        (chat(tools=[{"type": "function", "function": {"name": "x" * 65}}]), "tools.0.function.name"),
        (chat(tools=[{"type": "code", "function": {"name": "f"}}]), "tools.0.type"),
        (chat(tools=[]), "tools"),
        (chat(top_logprobs=2), "top_logprobs"),
        (chat(logprobs=True, top_logprobs=21), "top_logprobs"),
        (chat(top_p=1.5), "top_p"),
        (chat(n=0), "n"),
        (chat(n=129), "n"),
        (chat(presence_penalty=-2.5), "presence_penalty"),
        (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
        (chat(stop=["a", 5]), "stop.1"),
        (chat(logit_bias={"1": 101}), "logit_bias.1"),
        (chat(stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
        (chat(response_format={"type": "xml"}), "response_format.type"),
        (
            chat(response_format={"type": "json_schema", "json_schema": {}}),
            "response_format.json_schema.name",
        ),
        (chat(reasoning_effort="max"), "reasoning_effort"),
        (chat(metadata={"k": 1}), "metadata.k"),
        (chat(modalities=["video"]), "modalities.0"),
        (chat(seed="1"), "seed"),
        (chat(user=5), "user"),
        (chat(messages=["hi"]), "messages.0"),
        (chat(messages=[{"role": "user", "content": 5}]), "messages.0.content"),
        (chat(messages=[{"role": "user", "content": "x", "name": 5}]), "messages.0.name"),
        (chat(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages.0.content.0.text"),
        (
            chat(messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}]),
            "messages.0.content.0.text",
        ),
        (chat(messages=[{"role": "user", "content": [{"type": "video_url"}]}]), "messages.0.content.0.type"),
        (
            chat(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "u", "detail": "x"}}],
                    }
                ]
            ),
            "messages.0.content.0.image_url.detail",
        ),
        (
            chat(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "ogg"}}],
                    }
                ]
            ),
            "messages.0.content.0.input_audio.format",
        ),
        (
            chat(messages=[{"role": "system", "content": [{"type": "image_url"}]}]),
            "messages.0.content.0.type",
        ),
        (chat(messages=[{"role": "assistant"}]), "messages.0.content"),
        (
            chat(
                messages=[
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f"}}],
                    }
                ]
            ),
            "messages.0.tool_calls.0.function.arguments",
        ),
        (chat(messages=[{"role": "tool", "content": "x"}]), "messages.0.tool_call_id"),
        (chat(messages=[{"role": "function", "content": "x"}]), "messages.0.name"),
    ],
)
def test_chat_invalid(body: dict[str, object], param: str) -> None:
    with pytest.raises(RequestError) as info:
        validate_chat(body)
    assert info.value.param == param
    assert info.value.message.startswith(f"{param}: ")


def test_error_messages() -> None:
    with pytest.raises(RequestError) as info:
        validate_chat(chat(messages=[*USER, {"role": "bot", "content": "x"}]))
    assert info.value.message == (
        "messages.1.role: Input should be 'system', 'developer', 'user', 'assistant', 'tool' or 'function'"
    )
    with pytest.raises(RequestError) as info:
        validate_chat({"model": "m"})
    assert info.value.message == "messages: Field required"


@pytest.mark.parametrize("validate", [validate_chat, validate_completion, validate_embedding])
@pytest.mark.parametrize("body", [[], "x", None, 3, [{"model": "m"}]])
def test_non_object_body(validate: object, body: object) -> None:
    with pytest.raises(RequestError) as info:
        validate(body)  # type: ignore[operator]
    assert info.value.param is None
    assert info.value.message == "request body must be a JSON object"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "prompt"),
        ({"prompt": "x"}, "model"),
        ({"model": "m", "prompt": []}, "prompt"),
        ({"model": "m", "prompt": 5}, "prompt"),
        ({"model": "m", "prompt": [[1], []]}, "prompt.1"),
        ({"model": "m", "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"model": "m", "prompt": "x", "max_tokens": "5"}, "max_tokens"),
        ({"model": "m", "prompt": "x", "logprobs": 6}, "logprobs"),
        ({"model": "m", "prompt": "x", "logprobs": True}, "logprobs"),
        ({"model": "m", "prompt": "x", "echo": "no"}, "echo"),
        ({"model": "m", "prompt": "x", "best_of": 0}, "best_of"),
        ({"model": "m", "prompt": "x", "stream": "true"}, "stream"),
        ({"model": "m", "prompt": "x", "temperature": 2.5}, "temperature"),
    ],
)
def test_completion_invalid(body: dict[str, object], param: str) -> None:
    with pytest.raises(RequestError) as info:
        validate_completion(body)
    assert info.value.param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "input"),
        ({"input": "x"}, "model"),
        ({"model": "m", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "m", "input": ""}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": ["a", ""]}, "input.1"),
        ({"model": "m", "input": ["a"] * 2049}, "input"),
        ({"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "m", "input": "x", "dimensions": "8"}, "dimensions"),
        ({"model": "m", "input": 5}, "input"),
    ],
)
def test_embedding_invalid(body: dict[str, object], param: str) -> None:
    with pytest.raises(RequestError) as info:
        validate_embedding(body)
    assert info.value.param == param
