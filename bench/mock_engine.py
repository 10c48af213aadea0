"""A mock OpenAI engine that answers at once, to measure what the gateway itself costs.

    python bench/mock_engine.py PORT [--chunks 16]

Non-streamed chat answers a fixed completion; streamed chat answers ``--chunks`` SSE chunks, a
usage chunk and ``[DONE]`` in one go. `GET /v1/models` answers for health checks.
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


def make_app(chunks: int) -> web.Application:
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
            return web.Response(body=ANSWER, content_type="application/json")
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
    args = ap.parse_args()
    web.run_app(make_app(args.chunks), host="127.0.0.1", port=args.port, print=None, access_log=None)
