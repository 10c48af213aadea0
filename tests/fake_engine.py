"""A fake OpenAI-compatible engine (think vLLM) for tests of the gateway's own behaviour.

It runs an aiohttp server on a free loopback port inside the running event loop, records every
request it receives (path, headers, raw body), and can be steered by the test:

* ``mode``: ``"ok"`` answers normally, ``"error"`` answers ``error_status`` (400 by default) in
  vLLM's older error shape, ``"die_mid_stream"`` sends one SSE chunk of a streamed answer and then
  drops the connection.
* ``usage``: the token counts every answer reports (a whole answer's ``usage``; a stream's final
  usage-only chunk, sent only when the request asks with ``stream_options.include_usage``, as vLLM).
* ``gate``: when set to an ``asyncio.Event``, a streamed answer pauses after its first chunk (and a
  dying one dies only then) and a non-streamed answer waits before answering, until the test sets it.
* ``answer`` / ``tool_calls``: a whole answer's content and tool calls; ``chunks``: a stream's pieces.
* ``chunk_delay``: seconds between streamed chunks; ``delay``: seconds before answering at all.
* ``waiting``: what ``GET /metrics`` reports as ``vllm:num_requests_waiting`` (vLLM's queue).
* ``cancelled``: set when a handler notices that its client (the gateway) went away.
* ``embed``: ``"fixed"`` answers every embeddings request with one 3-d vector; ``"hash"`` gives each
  input a 64-d hashed bag of its words (the same words, the same direction) and counts one prompt
  token per word: deterministic vectors that search can tell apart, for tests of the data services.

It is not a model: tests about real answers use the real engines (tests/test_e2e_*.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from tests.conftest import free_port

Mode = Literal["ok", "error", "die_mid_stream"]
HASH_DIM = 64
_WORD = re.compile(r"\w+")


def hash_embedding(text: str) -> tuple[list[float], int]:
    """A hashed bag of words of ``text`` (64 floats, zero for no words) and its word count."""
    vec = [0.0] * HASH_DIM
    words = _WORD.findall(text.lower())
    for word in words:
        h = hashlib.blake2b(word.encode(), digest_size=8).digest()
        vec[h[0] % HASH_DIM] += 1.0 if h[1] & 1 else -1.0
    return vec, len(words)


# vLLM's older error body (before it adopted OpenAI's {"error": {...}} shape).
OLD_VLLM_ERROR = {
    "object": "error",
    "message": "This model's maximum context length is 2048 tokens. However, you requested 9999 tokens.",
    "type": "BadRequestError",
    "param": None,
    "code": 400,
}


@dataclass
class Received:
    """One request as the engine saw it."""

    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    peer: object = None  # the client's (host, port): one port for many requests = a reused connection

    @property
    def json(self) -> Any:
        return json.loads(self.body)


DEFAULT_USAGE = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def chat_answer(
    model: str, usage: dict[str, int] | None = None, content: str = "Paris.", tool_calls: list | None = None
) -> bytes:
    """A non-streamed answer, serialized with unusual spacing and vLLM's extra fields on purpose."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "reasoning_content": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    answer = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "stop",
                "stop_reason": None,
            }
        ],
        "usage": usage or DEFAULT_USAGE,
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }
    return json.dumps(answer, indent=1, separators=(",", " : ")).encode()


def sse_chunk(model: str, content: str | None, finish_reason: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    chunk = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


def usage_chunk(model: str, usage: dict[str, int]) -> bytes:
    """The last chunk of a stream that asked for usage: no choices, only the counts."""
    chunk = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [],
        "usage": usage,
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


class FakeEngine:
    def __init__(self, chunks: tuple[str, ...] = ("Hel", "lo", ", ", "world", "!")) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"  # an OpenAI base URL, as the pool wants it
        self.chunks = chunks
        self.answer = "Paris."  # a whole answer's content
        self.tool_calls: list[dict[str, Any]] | None = None  # and its tool calls
        self.mode: Mode = "ok"
        self.gate: asyncio.Event | None = None
        self.chunk_delay = 0.0
        self.delay = 0.0
        self.error_status = 400
        self.usage: dict[str, int] = dict(DEFAULT_USAGE)
        self.waiting = 0.0
        self.embed: Literal["fixed", "hash"] = "fixed"
        self.requests: list[Received] = []
        self.started = asyncio.Event()  # some handler began
        self.cancelled = asyncio.Event()  # some handler saw its client go away
        self.chunks_sent = 0  # streamed chunks written so far, over all requests
        self._runner: web.AppRunner | None = None

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    # ------------------------------------------------------------------ handlers
    async def _record(self, request: web.Request) -> Received:
        received = Received(
            request.path,
            {k.lower(): v for k, v in request.headers.items()},
            await request.read(),
            request.transport.get_extra_info("peername") if request.transport else None,
        )
        self.requests.append(received)
        self.started.set()
        return received

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        if self.mode == "error":
            return web.json_response(OLD_VLLM_ERROR, status=self.error_status)
        body = received.json
        model = body.get("model", "?")
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if body.get("stream"):
                opts = body.get("stream_options")
                usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
                return await self._stream(request, model, usage)
            if self.gate is not None:
                await self.gate.wait()
            answer = chat_answer(model, self.usage, self.answer, self.tool_calls)
            return web.Response(body=answer, content_type="application/json")
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled.set()
            raise

    async def _stream(self, request: web.Request, model: str, usage: bool = False) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await resp.prepare(request)
        for i, piece in enumerate(self.chunks):
            if i > 0:
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                if i == 1 and self.gate is not None:
                    await self.gate.wait()
            await resp.write(sse_chunk(model, piece))
            self.chunks_sent += 1
            if self.mode == "die_mid_stream":
                if self.gate is not None:
                    await self.gate.wait()
                assert request.transport is not None
                request.transport.close()  # no chunked-encoding terminator: a truncated answer
                await asyncio.sleep(3600)  # cancelled by aiohttp once the connection is gone
        await resp.write(sse_chunk(model, None, "stop"))
        if usage:
            await resp.write(usage_chunk(model, self.usage))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _embeddings(self, request: web.Request) -> web.Response:
        received = await self._record(request)
        if self.mode == "error":
            return web.json_response(OLD_VLLM_ERROR, status=self.error_status)
        body = received.json
        if self.embed == "hash":
            if self.gate is not None:
                await self.gate.wait()
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            done = [hash_embedding(str(t)) for t in inputs]
            tokens = sum(n for _, n in done)
            return web.json_response(
                {
                    "object": "list",
                    "data": [
                        {"object": "embedding", "index": i, "embedding": v} for i, (v, _) in enumerate(done)
                    ],
                    "model": body.get("model"),
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                    "created": int(time.time()),
                }
            )
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]}],
                "model": body.get("model"),
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
                "created": int(time.time()),
            }
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        """A few of vLLM's Prometheus series (not recorded as requests)."""
        text = (
            "# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{model_name="fake"}} {self.waiting}\n'
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            'vllm:kv_cache_usage_perc{model_name="fake"} 0.25\n'
        )
        return web.Response(text=text, content_type="text/plain")

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._chat)  # answers in chat's shape: it is not a model
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/metrics", self._metrics)
        # handler_cancellation: a handler is cancelled when its client disconnects, as in vLLM.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def release(self) -> None:
        """Let every request waiting on the gate go on."""
        if self.gate is not None:
            self.gate.set()

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()
