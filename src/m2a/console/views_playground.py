"""The Playground: chat with any model the signed-in principal may use, the answer streamed.

The page lists the chat models ``/v1/models`` shows the principal. ``playground.js`` keeps the
conversation in the page and posts it (with the session's CSRF token, like every form) to
``/console/playground/send``, which calls ``/v1/chat/completions`` through ``ApiClient`` as the
session's principal and relays the stream to the browser as JSON lines — the bearer never reaches
the browser, and the gateway applies the principal's grants, quotas and guardrails as it would to
curl. Each line is one event:

- ``{"type": "delta", "text": "..."}`` — a piece of the answer;
- ``{"type": "done", "finish_reason": ..., "ttft_ms": ..., "tokens_per_s": ..., "latency_ms": ...,
  "usage": {...}, "model": ...}`` — measured here, from the call to the gateway (in process): the
  time to the first piece of text, and the output tokens after the first per second until the last;
- ``{"type": "error", "message": "...", "status": N | "code": ...}`` — the API's refusal (an HTTP
  status before anything streamed; an error event mid-stream, a guardrail's say), then nothing more.

Without JavaScript the same form posts as a plain form: the answer comes back whole (not streamed)
in the re-rendered page, with its latency and tokens per second.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from m2a.console.api import ApiError, error_of
from m2a.console.pages import Ctx, action, page

CHAT = "/v1/chat/completions"
ROLES = ("system", "user", "assistant")
MAX_MESSAGES = 200
MAX_CHARS = 200_000  # all messages together
NDJSON = "application/x-ndjson"


class BadConversation(ValueError):
    """The posted conversation is not one the playground sends."""


def conversation(raw: str, system: str = "", message: str = "") -> list[dict[str, str]]:
    """The messages to send: the page's history (JSON, earlier turns), a system prompt first when
    given, and the new user ``message`` last when given. Raises ``BadConversation``."""
    try:
        history = json.loads(raw) if raw else []
    except ValueError:
        raise BadConversation("The conversation is not valid JSON.") from None
    if not isinstance(history, list) or len(history) > MAX_MESSAGES:
        raise BadConversation(f"The conversation must be a list of at most {MAX_MESSAGES} messages.")
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for m in history:
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise BadConversation("Each message needs a role (system, user, assistant) and text content.")
        if m["role"] == "system" and system:
            continue  # the form's system prompt replaces the history's
        messages.append({"role": m["role"], "content": m["content"]})
    if message:
        messages.append({"role": "user", "content": message})
    if not any(m["role"] == "user" for m in messages):
        raise BadConversation("Type a message first.")
    if sum(len(m["content"]) for m in messages) > MAX_CHARS:
        raise BadConversation(f"The conversation is longer than {MAX_CHARS:,} characters.")
    return messages


def request_body(model: str, messages: list[dict[str, str]], max_tokens: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if max_tokens.isdigit() and 0 < int(max_tokens) <= 1_000_000:
        body["max_tokens"] = int(max_tokens)
    return body


def rate(tokens: int | None, seconds: float) -> float | None:
    """Output tokens per second over ``seconds`` (None when it can't be told)."""
    return tokens / seconds if tokens is not None and tokens > 0 and seconds > 0 else None


async def chat_models(ctx: Ctx) -> list[str]:
    """The chat models the principal may use, as ``/v1/models`` shows them to it."""
    assert ctx.api is not None
    found = await ctx.api.get("/v1/models")
    return [
        m["id"]
        for m in found.get("data", [])
        if isinstance(m, dict) and (m.get("m2a") or {}).get("task", "chat") in ("chat", None)
    ]


@page("playground", "/playground", "Playground", "playground.html", order=60)
async def playground(ctx: Ctx) -> dict[str, Any]:
    models = await chat_models(ctx)
    wanted = ctx.query("model")
    return {"models": models, "model": wanted if wanted in models else (models[0] if models else None)}


@action("playground.send", "/playground/send", template="playground.html")
async def send(ctx: Ctx) -> Response:
    streamed = NDJSON in ctx.request.headers.get("accept", "")
    model = ctx.field("model")
    try:
        messages = conversation(ctx.field("messages"), ctx.field("system"), ctx.field("message"))
    except BadConversation as exc:
        if streamed:
            return JSONResponse({"type": "error", "status": 400, "message": str(exc)}, status_code=400)
        return await _page(ctx, model, [], error=str(exc))
    if not model:
        return await _page(ctx, model, messages, error="Choose a model.")
    body = request_body(model, messages, ctx.field("max_tokens"), streamed)
    return await _stream(ctx, body) if streamed else await _whole(ctx, model, messages, body)


async def _page(
    ctx: Ctx, model: str, messages: list[dict[str, str]], status: int = 200, **values: Any
) -> Response:
    try:
        models = await chat_models(ctx)
    except ApiError:
        models = []
    shown = [m for m in messages if m["role"] != "system"]
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    return ctx.render(
        status=status, models=models, model=model, messages=shown, system=system,
        history=json.dumps(shown), **values,
    )  # fmt: skip


async def _whole(ctx: Ctx, model: str, messages: list[dict[str, str]], body: dict[str, Any]) -> Response:
    """The form posted without JavaScript: one call, the whole answer in the page."""
    assert ctx.api is not None
    started = time.perf_counter()
    try:
        answer = await ctx.api.post(CHAT, json=body)
    except ApiError as exc:
        return await _page(ctx, model, messages, status=exc.status, error=exc.message)
    seconds = time.perf_counter() - started
    choice = (answer.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""
    usage = answer.get("usage") or {}
    stats = {
        "latency_ms": seconds * 1000,
        "tokens_per_s": rate(usage.get("completion_tokens"), seconds),
        "usage": usage,
        "finish_reason": choice.get("finish_reason"),
    }
    return await _page(ctx, model, [*messages, {"role": "assistant", "content": text}], stats=stats)


async def sse_chunks(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream's ``data:`` lines, up to ``[DONE]``."""
    async for raw in lines:
        if not raw.startswith("data:"):
            continue
        data = raw[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if isinstance(chunk, dict):
            yield chunk


def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


async def _stream(ctx: Ctx, body: dict[str, Any]) -> Response:
    """The gateway's chat stream as JSON lines (module docstring), relayed as it comes."""
    assert ctx.api is not None
    stack = contextlib.AsyncExitStack()
    started = time.perf_counter()
    resp = await stack.enter_async_context(ctx.api.stream("POST", CHAT, json=body))
    if resp.status_code >= 400:
        await resp.aread()
        await stack.aclose()
        err = error_of(resp)
        return JSONResponse(
            {"type": "error", "status": err.status, "message": err.message}, status_code=err.status
        )

    async def events() -> AsyncIterator[bytes]:
        first: float | None = None
        usage: dict[str, Any] = {}
        finish, model, pieces = None, body["model"], 0
        try:
            async for chunk in sse_chunks(resp.aiter_lines()):
                if "error" in chunk:  # the gateway's in-stream error (a guardrail, an engine failure)
                    err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": chunk["error"]}
                    yield _line(
                        {"type": "error", "code": err.get("code"), "message": str(err.get("message"))}
                    )
                    return
                model = chunk.get("model") or model
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        first = first or time.perf_counter()
                        pieces += 1
                        yield _line({"type": "delta", "text": text})
            end = time.perf_counter()
            tokens = usage.get("completion_tokens") or pieces
            yield _line({
                "type": "done", "finish_reason": finish, "model": model, "usage": usage,
                "ttft_ms": (first - started) * 1000 if first is not None else None,
                "tokens_per_s": rate(tokens - 1, end - first) if first is not None else None,
                "latency_ms": (end - started) * 1000,
            })  # fmt: skip
        finally:
            await stack.aclose()

    return StreamingResponse(events(), media_type=NDJSON, headers={"X-Accel-Buffering": "no"})
