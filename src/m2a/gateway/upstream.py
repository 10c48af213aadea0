"""The engine side of forwarding: the pooled engine client, a streaming response that always
cleans up, and waiting on something unless the client disconnects first (``ClientWatch``)."""

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


class ClientWatch:
    """One request's client, watched for a disconnect while the gateway waits on something.

    Engines such as vLLM send no headers for a non-streamed answer until it is complete, so the
    waits for an engine (its response headers, then a whole answer) and for a priority slot must
    watch the client too. ``wait(aw)`` runs ``aw`` in the caller's own task; one watcher task per
    request, started by the first wait, waits on the client and, if it leaves, cancels the wait in
    progress (a cancellation of the caller from elsewhere still propagates). ``close()`` stops the
    watcher: call it before anything else reads the client's messages (a streamed answer does).
    """

    __slots__ = ("_receive", "_task", "_waiter", "gone", "_cancelled")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Task[Any] | None = None
        self.gone = False  # the client disconnected
        self._cancelled = False  # the watcher cancelled a wait in progress

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._waiter is not None:
            self._cancelled = True
            self._waiter.cancel()

    async def wait(self, aw: Awaitable[T]) -> T | None:
        """``aw``'s result, or None (``aw`` cancelled, or never started) if the client has left."""
        if self.gone:
            if asyncio.iscoroutine(aw):
                aw.close()  # never started: no "never awaited" warning
            return None
        current = asyncio.current_task()
        assert current is not None
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())
        self._waiter = current
        try:
            result = await aw
        except asyncio.CancelledError:
            if self._cancelled and current.uncancel() == 0:  # only the watcher cancelled it
                return None
            raise
        except BaseException:
            if self._cancelled:  # aw turned the watcher's cancellation into an error of its own
                current.uncancel()
            raise
        finally:
            self._waiter = None
        if self._cancelled:  # aw finished anyway: its result stands, the cancellation is taken back
            current.uncancel()
        return result

    def close(self) -> None:
        """Stop watching (idempotent)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()


async def unless_disconnected(request: Request, aw: Awaitable[T]) -> T | None:
    """``aw``'s result, or None (``aw`` cancelled) if the client disconnects first: a one-wait
    ``ClientWatch``."""
    watch = ClientWatch(request.receive)
    try:
        return await watch.wait(aw)
    finally:
        watch.close()
