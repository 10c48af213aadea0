"""What the lean request path keeps: engine cookies stay with nobody, an unexpected error on the
OpenAI routes' direct path is a 500 in OpenAI's shape, and a wait "unless the client disconnects"
tells the client leaving apart from a cancellation from elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
from aiohttp import web

from m2a.gateway.context import RequestContext
from m2a.gateway.stages import STAGES, Stage, stage
from m2a.gateway.upstream import unless_disconnected
from tests.fake_engine import chat_answer, free_port
from tests.openai_shape import assert_openai_error
from tests.test_gateway import CHAT, HELLO, endpoint, http_client, make_pool, serve_gateway


class CookieEngine:
    """An OpenAI-compatible engine that sets a cookie on every answer and notes the ones it gets."""

    def __init__(self) -> None:
        self.cookies: list[str | None] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> CookieEngine:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://localhost:{port}/v1"  # a host name: a cookie jar would keep its cookies
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.Response:
        self.cookies.append(request.headers.get("cookie"))
        resp = web.Response(body=chat_answer(CHAT), content_type="application/json")
        resp.set_cookie("session", f"caller-{len(self.cookies)}")
        return resp


async def test_an_engines_cookie_never_reaches_the_next_request() -> None:
    async with CookieEngine() as eng:
        pool = make_pool(endpoint(eng.url))
        async with serve_gateway(pool) as gw, http_client(gw) as client:
            for _ in range(3):
                r = await client.post("/v1/chat/completions", json={"model": CHAT, "messages": HELLO})
                assert r.status_code == 200
    assert eng.cookies == [None, None, None]


@stage("explode_for_test")
class Explode(Stage):
    async def before(self, ctx: RequestContext) -> None:
        if ctx.request.headers.get("x-explode"):
            raise RuntimeError("a bug in a stage")


async def test_an_unexpected_error_on_an_openai_route_is_a_500_in_openai_shape() -> None:
    async with CookieEngine() as eng:
        stages = (*STAGES[:3], "explode_for_test", *STAGES[3:])
        pool = make_pool(endpoint(eng.url))
        async with serve_gateway(pool, stages=stages) as gw, http_client(gw) as client:
            body = {"model": CHAT, "messages": HELLO}
            r = await client.post("/v1/chat/completions", json=body, headers={"x-explode": "1"})
            assert_openai_error(r, 500, "internal_error")
            assert "a bug in a stage" not in r.text  # logged, not told
            assert (await client.post("/v1/chat/completions", json=body)).status_code == 200  # still serving
    assert len(eng.cookies) == 1  # the exploding request never reached the engine


class FakeRequest:
    """The part of a Starlette request the watcher reads: ``receive``, fed by the test."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def receive(self) -> dict[str, Any]:
        return await self.messages.get()


@pytest.fixture
async def request_() -> AsyncIterator[FakeRequest]:
    yield FakeRequest()


def slow_engine_call() -> tuple[asyncio.Event, Coroutine[Any, Any, str]]:
    """An engine call that takes its time, and the event set once it has begun."""
    started = asyncio.Event()

    async def engine_call() -> str:
        started.set()
        await asyncio.sleep(30)
        return "answer"

    return started, engine_call()


async def test_a_client_that_leaves_cancels_only_the_wait(request_: FakeRequest) -> None:
    started, call = slow_engine_call()

    async def handler() -> tuple[str | None, int, str]:
        got = await unless_disconnected(request_, call)  # type: ignore[arg-type]
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0)  # no cancellation left pending for the handler's next await
        return got, task.cancelling(), "went on"

    task = asyncio.create_task(handler())
    await started.wait()
    await request_.messages.put({"type": "http.disconnect"})
    assert await asyncio.wait_for(task, 5) == (None, 0, "went on")


async def test_a_cancellation_from_elsewhere_still_cancels(request_: FakeRequest) -> None:
    started, call = slow_engine_call()
    task = asyncio.create_task(unless_disconnected(request_, call))  # type: ignore[arg-type]
    await started.wait()
    task.cancel()  # a shutdown, a timeout around the handler: not the client leaving
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_answer_before_the_client_leaves_is_returned(request_: FakeRequest) -> None:
    async def engine_call() -> str:
        return "answer"

    before = asyncio.all_tasks()
    assert await unless_disconnected(request_, engine_call()) == "answer"  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the watcher's cancellation runs
    assert asyncio.all_tasks() == before  # no watcher left behind
