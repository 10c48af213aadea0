"""A slow OpenAI-compatible backend for end-to-end tests of `m2a up` as a `remote` model.

It runs in a thread of the test process (so the test can read what it saw) and is separate from
the gateway process: killing the gateway leaves it serving. Each chat request's last message says
how it should be answered, ``"chunks=N delay=S"``: N content chunks S seconds apart when streamed,
or one JSON answer after N * S seconds. Usage is ``prompt_tokens`` = the words of that message
(fewer than the gateway's estimate from its bytes, as with a real tokenizer) and
``completion_tokens`` = N: in the JSON answer, and in a final chunk when the request asks for it
(``stream_options.include_usage``). Every request is recorded by the gateway's ``x-request-id``.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

_SPEC = re.compile(r"chunks=(\d+)(?:\s+delay=([0-9.]+))?")


def ask(chunks: int, delay: float = 0.0) -> str:
    """The message content that makes the backend answer ``chunks`` tokens, ``delay`` s apart."""
    return f"chunks={chunks} delay={delay}"


@dataclass
class Seen:
    """One request as the backend saw it, and the usage it answered (or would have)."""

    request_id: str
    stream: bool
    include_usage: bool
    prompt_tokens: int
    completion_tokens: int
    finished: bool = False  # the whole answer was written
    at: float = field(default_factory=time.monotonic)


class SlowBackend:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.seen: dict[str, Seen] = {}  # by x-request-id
        self.duplicates: list[str] = []  # request ids that arrived twice
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    # -- what it saw, read from the test's thread ----------------------------------------------

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen.values())

    def count(self) -> int:
        with self._lock:
            return len(self.seen)

    # -- the server ----------------------------------------------------------------------------

    def _record(self, request: web.Request, body: dict) -> Seen:
        content = body["messages"][-1]["content"]
        m = _SPEC.search(content)
        opts = body.get("stream_options") or {}
        seen = Seen(
            request_id=request.headers.get("x-request-id", ""),
            stream=bool(body.get("stream")),
            include_usage=bool(opts.get("include_usage")),
            prompt_tokens=len(content.split()),
            completion_tokens=int(m.group(1)) if m else 1,
        )
        with self._lock:
            if seen.request_id in self.seen:
                self.duplicates.append(seen.request_id)
            self.seen[seen.request_id] = seen
        return seen

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "slow", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen = self._record(request, body)
        m = _SPEC.search(body["messages"][-1]["content"])
        delay = float(m.group(2) or 0) if m else 0.0
        usage = {
            "prompt_tokens": seen.prompt_tokens,
            "completion_tokens": seen.completion_tokens,
            "total_tokens": seen.prompt_tokens + seen.completion_tokens,
        }
        created = int(time.time())
        if not seen.stream:
            await asyncio.sleep(delay * seen.completion_tokens)
            seen.finished = True
            return web.json_response(
                {
                    "id": f"chatcmpl-{seen.request_id}",
                    "object": "chat.completion",
                    "created": created,
                    "model": body.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "x" * seen.completion_tokens},
                        }
                    ],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)

        def event(choices: list, **extra: object) -> bytes:
            chunk = {
                "id": f"chatcmpl-{seen.request_id}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.get("model"),
                "choices": choices,
                **extra,
            }
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        try:
            for i in range(seen.completion_tokens):
                if i and delay:
                    await asyncio.sleep(delay)
                await resp.write(event([{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]))
            await resp.write(event([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
            if seen.include_usage:
                await resp.write(event([], usage=usage))
            await resp.write(b"data: [DONE]\n\n")
            seen.finished = True
        except ConnectionError:  # the gateway went away mid-answer
            pass
        return resp

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        # A gateway that goes away cancels its requests here too, so `finished` stays honest.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> SlowBackend:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
