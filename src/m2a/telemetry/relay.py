"""Pass spans that engines sent to m2a on to an external OTLP/HTTP collector, unchanged.

m2a keeps every trace in its embedded store; when a collector is configured too, the engines'
spans must reach it as well, or its traces would stop at the gateway's engine-call span. Exports
are sent as received (same bytes, type and encoding), in the background, at most ``limit`` at
once; beyond that, and on errors, they are dropped with a warning (the store still has them).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

log = logging.getLogger(__name__)


class Relay:
    def __init__(self, url: str, limit: int = 16, timeout_s: float = 10.0) -> None:
        self.url = url
        self.limit = limit
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, body: bytes, content_type: str, encoding: str) -> None:
        if len(self._tasks) >= self.limit:
            log.warning("collector relay: %d exports in flight, dropping one", len(self._tasks))
            return
        task = asyncio.get_running_loop().create_task(self._send(body, content_type, encoding))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, body: bytes, content_type: str, encoding: str) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"content-type": content_type}
        if encoding not in ("", "identity"):
            headers["content-encoding"] = encoding
        try:
            async with self._session.post(self.url, data=body, headers=headers) as resp:
                if resp.status >= 300:
                    log.warning("collector %s refused engine spans: %s", self.url, resp.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("collector %s unreachable: %s", self.url, exc)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._session is not None:
            await self._session.close()
