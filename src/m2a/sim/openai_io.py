"""OpenAI request parsing and response shapes for the simulator (as vLLM's server writes them)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from m2a.sim.engine import Run
from m2a.sim.params import SimParams
from m2a.sim.tokenize import prompt_ids

_json = msgspec.json.Encoder()


class ApiError(Exception):
    """An error answered in OpenAI's shape with its HTTP status."""

    TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> bytes:
        kind = self.TYPES.get(self.status, "Error")
        return _json.encode(
            {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}
        )


@dataclass
class Call:
    """A parsed chat or completions request."""

    chat: bool
    model: str
    run: Run
    stream: bool
    include_usage: bool
    id: str
    created: int


def parse(body: bytes, chat: bool, params: SimParams) -> Call:
    try:
        payload = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"invalid JSON body: {exc}") from exc
    if not isinstance(payload, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = payload.get("model") or params.model
    if model != params.model:
        raise ApiError(404, f"The model `{model}` does not exist.", "model")
    if chat and not isinstance(payload.get("messages"), list):
        raise ApiError(400, "`messages` must be a list of messages", "messages")
    if not chat and "prompt" not in payload:
        raise ApiError(400, "`prompt` is required", "prompt")
    prompt = prompt_ids({"messages": payload["messages"]} if chat else {"prompt": payload["prompt"]})
    if not prompt:
        raise ApiError(400, "the prompt is empty", "messages" if chat else "prompt")
    use_mct = chat and payload.get("max_completion_tokens") is not None
    key = "max_completion_tokens" if use_mct else "max_tokens"
    max_tokens = payload.get(key)
    room = params.max_model_len - len(prompt)
    if max_tokens is None:
        max_tokens, finish = min(params.default_max_tokens, room), "stop"
    else:
        finish = "length"
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ApiError(400, f"`{key}` must be a positive integer", key)
    if max_tokens > room or room < 1:
        raise ApiError(
            400,
            f"This model's maximum context length is {params.max_model_len} tokens; the "
            f"request has {len(prompt)} prompt tokens and asks for {max_tokens} more.",
            key,
        )
    if -(-(len(prompt) + 1) // params.block_size) > params.capacity_blocks:
        raise ApiError(400, f"the prompt ({len(prompt)} tokens) does not fit in the KV cache", "messages")
    priority = payload.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ApiError(400, "`priority` must be an integer", "priority")
    opts = payload.get("stream_options") or {}
    run = Run(prompt=prompt, max_tokens=max_tokens, priority=priority, finish_reason=finish)
    prefix = "chatcmpl-" if chat else "cmpl-"
    return Call(
        chat,
        model,
        run,
        bool(payload.get("stream")),
        bool(opts.get("include_usage")),
        prefix + uuid.uuid4().hex,
        int(time.time()),
    )


def usage(run: Run) -> dict[str, Any]:
    return {
        "prompt_tokens": len(run.prompt),
        "completion_tokens": run.completion_tokens,
        "total_tokens": len(run.prompt) + run.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": run.cached_tokens},
    }


def _envelope(call: Call, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
    obj = ("chat.completion.chunk" if chunk else "chat.completion") if call.chat else "text_completion"
    return {"id": call.id, "object": obj, "created": call.created, "model": call.model, "choices": choices}


def chunk(call: Call, text: str | None, finish: str | None = None, first: bool = False) -> bytes:
    """One SSE event with a piece of text (or only a finish reason)."""
    if call.chat:
        delta: dict[str, Any] = {} if text is None else {"content": text}
        if first:
            delta["role"] = "assistant"
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    return b"data: " + _json.encode(_envelope(call, [choice], True)) + b"\n\n"


def usage_chunk(call: Call) -> bytes:
    body = _envelope(call, [], True)
    body["usage"] = usage(call.run)
    return b"data: " + _json.encode(body) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def full(call: Call, text: str) -> bytes:
    """The whole answer of a request that did not stream."""
    if call.chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": call.run.finish_reason,
        }
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": call.run.finish_reason}
    body = _envelope(call, [choice], False)
    body["usage"] = usage(call.run)
    return _json.encode(body)
