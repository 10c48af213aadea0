"""``ApiClient``: how every console page reads data and acts — m2a's own HTTP APIs, in process, as
the signed-in principal.

Each call goes to the gateway app itself through an ASGI transport (no socket, no second port)
with ``Authorization: Bearer <the session's bearer>``, so the console can never do more than that
principal could with curl. Errors come back as ``ApiError`` with the API's own status and message
(OpenAI's error shape). The transport streams: ``ApiClient.stream`` yields the response while
the gateway is still writing it (the playground relays a chat stream as it comes), where httpx's
own ``ASGITransport`` would wait for the whole body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.types import ASGIApp, Message

BASE_URL = "http://m2a.console"
TIMEOUT_S = 120.0
_END = object()


class ApiError(Exception):
    """An API call that did not succeed: its status, the API's message and error code."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def error_of(resp: httpx.Response) -> ApiError:
    message, code = f"HTTP {resp.status_code}", None
    try:
        err = resp.json().get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            code = err.get("code")
        elif isinstance(err, str):
            message = err
    except (ValueError, AttributeError):
        pass
    return ApiError(resp.status_code, message, code if isinstance(code, str) else None)


class _Body(httpx.AsyncByteStream):
    def __init__(self, queue: asyncio.Queue[object], task: asyncio.Task[None], done: asyncio.Event) -> None:
        self._queue, self._task, self._done = queue, task, done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item

    async def aclose(self) -> None:
        self._done.set()  # the app sees http.disconnect if it is still sending
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """Calls an ASGI app in process; the response body streams as the app sends it."""

    def __init__(self, app: ASGIApp, client: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.app = app
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port or 80),
            "client": self.client,
            "root_path": "",
        }
        sent_request = False
        done = asyncio.Event()
        started: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = (
            asyncio.get_running_loop().create_future()
        )
        queue: asyncio.Queue[object] = asyncio.Queue()

        async def receive() -> Message:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.set_result((message["status"], list(message.get("headers", []))))
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                if chunk:
                    await queue.put(bytes(chunk))
                if not message.get("more_body", False):
                    await queue.put(_END)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except BaseException as exc:  # the app failed: before the start line, or mid-body
                if not started.done():
                    started.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                else:
                    await queue.put(httpx.ReadError(f"the API failed mid-answer: {exc}"))
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                if not started.done():
                    started.set_exception(RuntimeError("the API sent no answer"))
                await queue.put(_END)

        task = asyncio.create_task(run())
        try:
            status, headers = await started
        except BaseException:
            task.cancel()
            raise
        return httpx.Response(status, headers=headers, stream=_Body(queue, task, done), request=request)


class ApiClient:
    """m2a's HTTP APIs as one principal (its bearer); one per request, sharing one transport."""

    def __init__(self, http: httpx.AsyncClient, bearer: str) -> None:
        self._http = http
        self._auth = {"authorization": f"Bearer {bearer}"}

    def __repr__(self) -> str:  # never the bearer
        return "ApiClient()"

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """The raw response (any status); ``path`` is the gateway's, e.g. ``/admin/v1/teams``."""
        headers = {**kw.pop("headers", {}), **self._auth}
        return await self._http.request(method, path, headers=headers, **kw)

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        """The JSON answer of a successful call (None for 204); else raise ``ApiError``."""
        resp = await self.request(method, path, **kw)
        if resp.status_code >= 400:
            raise error_of(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    async def get(self, path: str, **params: Any) -> Any:
        return await self.call("GET", path, params={k: v for k, v in params.items() if v is not None})

    async def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return await self.call("POST", path, json=json, **kw)

    async def put(self, path: str, json: Any = None, **kw: Any) -> Any:
        return await self.call("PUT", path, json=json, **kw)

    async def patch(self, path: str, json: Any = None, **kw: Any) -> Any:
        return await self.call("PATCH", path, json=json, **kw)

    async def delete(self, path: str, **kw: Any) -> Any:
        return await self.call("DELETE", path, **kw)

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, **kw: Any) -> AsyncIterator[httpx.Response]:
        """The response while it streams (``aiter_bytes``/``aiter_lines``); any status."""
        headers = {**kw.pop("headers", {}), **self._auth}
        async with self._http.stream(method, path, headers=headers, **kw) as resp:
            yield resp


def make_http(app: ASGIApp) -> httpx.AsyncClient:
    """The one client (and transport) the console's ``ApiClient``s share for the gateway ``app``."""
    return httpx.AsyncClient(
        transport=StreamingASGITransport(app), base_url=BASE_URL, timeout=TIMEOUT_S, trust_env=False
    )
