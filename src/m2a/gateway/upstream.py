"""The engine side of forwarding: the pooled engine client, a streaming response that always
cleans up, and waiting on something unless the client disconnects first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from m2a.gateway.engine_http import DEFAULT_MAX_ANSWER, EngineClient

T = TypeVar("T")


class Upstream:
    """The engine client every engine call of the process shares (``gateway/engine_http.py``)."""

    def __init__(
        self, connect_timeout_s: float, read_timeout_s: float, max_answer_bytes: int = DEFAULT_MAX_ANSWER
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_answer_bytes = max_answer_bytes
        self.client: EngineClient | None = None

    async def open(self) -> None:
        self.client = EngineClient(
            self.connect_timeout_s, self.read_timeout_s, max_answer_bytes=self.max_answer_bytes
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


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
