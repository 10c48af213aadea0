"""A scripted chat engine for tests of what the gateway sends engines and makes of their answers
(the Responses API, hosted tools): aiohttp on a loopback port, OpenAI's chat completions shape,
streamed the way vLLM streams (a role chunk, pieces of four characters, tool call deltas with the
name first, a usage chunk when asked, ``[DONE]``).

It is not a model: it answers deterministically from the request (``decide``). It calls the first
tool offered when the last message is the user's (unless that says "no tools"), answers "Tool
said: <result>" after a tool message, "Echo: <text>" otherwise, a JSON object when a response
format is asked for, and stops with ``length`` past a small ``max_tokens``. A test that needs
other choices overrides ``decide``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.conftest import free_port


def message_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


@dataclass
class ScriptedEngine:
    """A chat engine that answers from the request (module docstring); records every request."""

    port: int = field(default_factory=free_port)
    requests: list[dict[str, Any]] = field(default_factory=list)
    gate: asyncio.Event | None = None  # a stream waits here after its first piece
    stream_usage: bool = True  # a stream sends its usage when asked (llama.cpp's does not)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)  # a handler saw its client go
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]

    def decide(self, body: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]], str]:
        """(content, tool calls, finish reason) for a request."""
        messages = body["messages"]
        last = messages[-1]
        tools = body.get("tools") or []
        if tools and last["role"] == "user" and "no tools" not in message_text(last["content"]):
            name = tools[0]["function"]["name"]
            call = {
                "id": f"call_{len(self.requests) - 1}",  # this request's number
                "type": "function",
                "function": {"name": name, "arguments": json.dumps({"city": "Paris"})},
            }
            return None, [call], "tool_calls"
        if body.get("response_format"):
            content = json.dumps({"answer": "ok"})
        elif last["role"] == "tool":
            content = f"Tool said: {message_text(last['content'])}"
        else:
            content = f"Echo: {message_text(last['content'])}"
        cap = body.get("max_tokens")
        if isinstance(cap, int) and cap < 5:
            return content[:cap], [], "length"
        return content, [], "stop"

    def usage(self, body: dict[str, Any], pieces: int) -> dict[str, Any]:
        prompt = 3 * len(body["messages"])
        return {
            "prompt_tokens": prompt,
            "completion_tokens": pieces,
            "total_tokens": prompt + pieces,
            "prompt_tokens_details": {"cached_tokens": 2},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        content, calls, finish = self.decide(body)
        try:
            if not body.get("stream"):
                message: dict[str, Any] = {"role": "assistant", "content": content}
                if calls:
                    message["tool_calls"] = calls
                pieces = len(content or "") // 4 + 1
                return web.json_response(
                    {
                        "id": "chatcmpl-scripted",
                        "object": "chat.completion",
                        "created": 1700000000,
                        "model": body["model"],
                        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                        "usage": self.usage(body, pieces),
                    }
                )
            return await self._stream(request, body, content, calls, finish)
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled.set()
            raise

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        content: str | None,
        calls: list[dict[str, Any]],
        finish: str,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)

        async def chunk(delta: dict[str, Any], reason: str | None = None, **extra: Any) -> None:
            payload = {
                "id": "chatcmpl-scripted",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
                **extra,
            }
            await resp.write(f"data: {json.dumps(payload)}\n\n".encode())

        await chunk({"role": "assistant", "content": ""})
        pieces = [content[i : i + 4] for i in range(0, len(content), 4)] if content else []
        for i, piece in enumerate(pieces):
            await chunk({"content": piece})
            if i == 0 and self.gate is not None:
                await self.gate.wait()
        for j, call in enumerate(calls):
            head = {
                "index": j,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"]},
            }
            await chunk({"tool_calls": [{**head, "function": {**head["function"], "arguments": ""}}]})
            args = call["function"]["arguments"]
            for k in range(0, len(args), 5):
                await chunk({"tool_calls": [{"index": j, "function": {"arguments": args[k : k + 5]}}]})
        await chunk({}, finish)
        opts = body.get("stream_options") or {}
        if opts.get("include_usage") and self.stream_usage:
            payload = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "choices": []}
            payload["usage"] = self.usage(body, len(pieces) + len(calls))
            await resp.write(f"data: {json.dumps(payload)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()
