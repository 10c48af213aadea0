"""A replica's HTTP surface: vLLM's OpenAI routes, ``/health``, ``/metrics`` and the fault admin.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (streamed or not), ``GET /v1/models``,
``GET /health``, ``GET /metrics``, ``POST /tokenize`` (vLLM's: a chat or completions body → the prompt's
token ids after the chat template; routers such as vllm-router's ``cache_aware`` ask for it);
``GET|POST /sim/faults`` (``{"slow": 2.0, "error_rate": 0.1,
"die_after": 3}``) and ``GET /sim/cache`` (the cache's counters) for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from m2a.sim import openai_io as io
from m2a.sim.openai_io import ApiError
from m2a.sim.tokenize import prompt_ids

if TYPE_CHECKING:
    from m2a.sim.replica import Replica

_json = msgspec.json.Encoder()
REPLICA: web.AppKey[Replica] = web.AppKey("replica")


def _json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json")


def _error(exc: ApiError) -> web.Response:
    return web.Response(body=exc.body(), status=exc.status, content_type="application/json")


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    replica = request.app[REPLICA]
    try:
        call = io.parse(await request.read(), chat, replica.params)
    except ApiError as exc:
        return _error(exc)
    if replica.rng.random() < replica.faults.error_rate:
        return _error(ApiError(500, "simulated engine failure (fault injection)"))
    dying = replica.count_start()
    replica.track(asyncio.current_task())
    words: list[str] = []
    resp: web.StreamResponse | None = None
    async with contextlib.aclosing(replica.engine.generate(call.run)) as chunks:
        async for piece in chunks:
            text = " ".join(piece) if not words else " " + " ".join(piece)
            first = not words
            words.extend(piece)
            if call.stream:
                if resp is None:
                    resp = web.StreamResponse(
                        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
                    )
                    await resp.prepare(request)
                await resp.write(io.chunk(call, text, first=first))
            if dying and first:
                replica.die()  # cancels this handler too, with the first token on the wire
                await asyncio.sleep(0)
    if not call.stream:
        return web.Response(body=io.full(call, " ".join(words)), content_type="application/json")
    assert resp is not None
    await resp.write(io.chunk(call, None, finish=call.run.finish_reason))
    if call.include_usage:
        await resp.write(io.usage_chunk(call))
    await resp.write(io.DONE)
    await resp.write_eof()
    return resp


async def _answer(request: web.Request, chat: bool) -> web.StreamResponse:
    try:
        return await _generate(request, chat=chat)
    except ConnectionResetError:  # the client hung up mid-stream: its sequence was freed on the way out
        return web.Response(status=499)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _answer(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _answer(request, chat=False)


async def models(request: web.Request) -> web.Response:
    p = request.app[REPLICA].params
    card = {
        "id": p.model,
        "object": "model",
        "created": 0,
        "owned_by": "vllm",
        "root": p.model,
        "parent": None,
        "max_model_len": p.max_model_len,
    }
    return _json_response({"object": "list", "data": [card]})


async def tokenize(request: web.Request) -> web.Response:
    """vLLM's ``/tokenize``: ``{"messages": [...]}`` or ``{"prompt": "..."}`` → ``{"count", "max_model_len",
    "tokens"}``, the very tokens the replica's prefix cache sees."""
    try:
        payload = msgspec.json.decode(await request.read())
        ids = prompt_ids(payload) if isinstance(payload, dict) else None
    except (msgspec.DecodeError, TypeError, ValueError) as exc:
        return _error(ApiError(400, f"cannot tokenize: {exc}"))
    if ids is None:
        return _error(ApiError(400, "a tokenize request needs `messages` or `prompt`"))
    p = request.app[REPLICA].params
    body = {"count": len(ids), "max_model_len": p.max_model_len, "tokens": ids, "token_strs": None}
    return _json_response(body)


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[REPLICA].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def faults(request: web.Request) -> web.Response:
    replica = request.app[REPLICA]
    if request.method == "POST":
        try:
            changes = msgspec.json.decode(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object")
            now = changes.get("die_after") == 0
            replica.set_fault(**{k: v for k, v in changes.items() if not (now and k == "die_after")})
            if now:  # answer first, then die
                asyncio.get_running_loop().call_later(0.05, replica.die)
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            return _error(ApiError(400, str(exc)))
    return _json_response(replica.faults.as_dict())


async def cache(request: web.Request) -> web.Response:
    return _json_response(request.app[REPLICA].cache_info())


def make_app(replica: Replica) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[REPLICA] = replica
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/sim/faults", faults)
    app.router.add_get("/sim/cache", cache)
    return app
