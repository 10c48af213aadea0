"""The engine side of forwarding: one pooled aiohttp session, a streaming response that always
cleans up, and waiting on something unless the client disconnects first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import yarl
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


class Upstream:
    """One pooled aiohttp session for every engine call of the process."""

    def __init__(self, connect_timeout_s: float, read_timeout_s: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=read_timeout_s)
        self.session: aiohttp.ClientSession | None = None
        self._urls: dict[tuple[str, str], yarl.URL] = {}

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
        # No cookie jar: engines' cookies must not travel from one caller's request to another's
        # (and none is parsed or matched per request).
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    def url(self, base_url: str, path: str) -> yarl.URL:
        """An engine URL, parsed once (a replica's base URL and an engine path) rather than per call."""
        key = (base_url, path)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) > 4096:  # replicas come and go: bounded
                self._urls.clear()
            url = self._urls[key] = yarl.URL(base_url + path)
        return url

    async def close(self) -> None:
        if self.session:
            await self.session.close()


class Stream(StreamingResponse):
    """A streaming response that always runs its cleanup, even if it never started sending."""

    def __init__(self, content: AsyncIterator[bytes], cleanup: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._cleanup()


async def _wait_disconnect(receive: Receive, waiter: asyncio.Task[Any], gone: list[bool]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.append(True)
    waiter.cancel()


async def unless_disconnected(request: Request, aw: Awaitable[T]) -> T | None:
    """``aw``'s result, or None (``aw`` cancelled) if the client disconnects first.

    Engines such as vLLM send no headers for a non-streamed answer until it is complete, so the
    wait for the engine's response headers must watch the client too. ``aw`` runs in the caller's
    own task; one watcher task waits on the client and, if it leaves, cancels the caller's wait
    (a cancellation of the caller from elsewhere still propagates).
    """
    current = asyncio.current_task()
    assert current is not None
    gone: list[bool] = []
    watcher = asyncio.get_running_loop().create_task(_wait_disconnect(request.receive, current, gone))
    try:
        result = await aw
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:  # only the watcher cancelled it: the client left
            return None
        raise
    except BaseException:
        if gone:  # aw turned the watcher's cancellation into an error of its own
            current.uncancel()
        raise
    finally:
        if not gone:
            watcher.cancel()
    if gone:  # aw finished anyway: its result stands, the cancellation is taken back
        current.uncancel()
    return result
