"""A mock OpenAI engine that answers at once, to measure what the gateway itself costs.

    python bench/mock_engine.py PORT [--chunks 16] [--usage-from-request]

Non-streamed chat answers a fixed completion; streamed chat answers ``--chunks`` SSE chunks, a
usage chunk and ``[DONE]`` in one go. `GET /v1/models` answers for health checks. With
``--usage-from-request`` a non-streamed answer reports ``max_tokens`` completion tokens and a
prompt of one token per 4 bytes of the messages' text (for the quota-accuracy benchmark).
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web

ANSWER = json.dumps(
    {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1,
        "model": "mock",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
).encode()


def usage_answer(body: dict) -> bytes:
    prompt = sum(len(str(m.get("content", "")).encode()) for m in body.get("messages", [])) // 4 + 1
    out = int(body.get("max_tokens") or 16)
    usage = {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}
    return json.dumps({**json.loads(ANSWER), "usage": usage}).encode()


def make_app(chunks: int, usage_from_request: bool = False) -> web.Application:
    delta = (
        b'data: {"id":"c","object":"chat.completion.chunk",'
        b'"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
    )
    tail = (
        b'data: {"id":"c","object":"chat.completion.chunk","choices":[],'
        b'"usage":{"prompt_tokens":5,"completion_tokens":' + str(chunks).encode() + b"}}\n\ndata: [DONE]\n\n"
    )

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            answer = usage_answer(body) if usage_from_request else ANSWER
            return web.Response(body=answer, content_type="application/json")
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(chunks):
            await resp.write(delta)
        await resp.write(tail)
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "mock", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--usage-from-request", action="store_true")
    args = ap.parse_args()
    web.run_app(
        make_app(args.chunks, args.usage_from_request),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
    )
