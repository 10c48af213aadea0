"""Engine load from the engines' own Prometheus metrics: waiting queue and KV-cache usage.

Polls each replica's ``/metrics`` every ``interval_s`` and keeps the numbers on its ``Endpoint``;
numbers older than ``stale_s`` (a replica that stopped answering) are cleared to None, unknown.
The KV cache's size in tokens (``vllm:cache_config_info``: ``num_gpu_blocks`` × ``block_size``)
is kept on ``Endpoint.kv_cache_tokens``; the approximate prefix scorer sizes its LRUs from it.
Only the few series needed are picked out of the text, line by line: vLLM's page is tens of
kilobytes of histograms, and a full parse each time would cost more than the poll is worth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time

import aiohttp

from m2a.router.pool import Endpoint, Pool

log = logging.getLogger("m2a.router.load")

WAITING = b"vllm:num_requests_waiting"
KV_USAGE = b"vllm:kv_cache_usage_perc"
CACHE_INFO = b"vllm:cache_config_info{"
_LABEL = re.compile(rb'(\w+)="([^"]*)"')
NO_METRICS_RETRY_S = 60.0


def parse_load(text: bytes) -> tuple[float | None, float | None]:
    """(waiting requests, KV-cache usage 0-1) summed over the series of one replica's metrics page."""
    waiting = kv = None
    for line in text.split(b"\n"):
        if line.startswith(WAITING) or line.startswith(KV_USAGE):
            name, _, rest = line.partition(b"{") if b"{" in line else line.partition(b" ")
            try:
                value = float(rest.rsplit(b" ", 1)[-1] if b"}" in rest else rest.split()[0])
            except (ValueError, IndexError):
                continue
            if name.startswith(WAITING):
                waiting = (waiting or 0.0) + value
            else:
                kv = max(kv or 0.0, value)
    return waiting, kv


def parse_cache_tokens(text: bytes) -> int | None:
    """The KV cache's size in tokens from ``vllm:cache_config_info``'s labels; None when absent."""
    at = text.find(CACHE_INFO)
    if at < 0:
        return None
    labels = dict(_LABEL.findall(text[at : text.find(b"}", at)]))
    try:
        return int(labels[b"num_gpu_blocks"]) * int(labels[b"block_size"])
    except (KeyError, ValueError):
        try:
            return int(labels[b"kv_cache_size_tokens"])
        except (KeyError, ValueError):
            return None


class LoadWatcher:
    def __init__(self, pool: Pool, interval_s: float = 0.1, stale_s: float = 2.0) -> None:
        self.pool = pool
        self.interval_s = interval_s
        self.stale_s = stale_s
        self._seen: dict[str, float] = {}
        self.pages: dict[str, bytes] = {}  # each replica's last metrics page, for re-export
        self._skip_until: dict[str, float] = {}  # endpoints without a metrics page: until when
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _poll(self, ep: Endpoint) -> None:
        assert self._session is not None and ep.metrics_url
        try:
            async with self._session.get(ep.metrics_url) as resp:
                if resp.status != 200:  # no metrics there (a remote API): ask again in a minute
                    self._skip_until[ep.id] = time.monotonic() + NO_METRICS_RETRY_S
                    return
                page = await resp.read()
                ep.waiting, ep.kv_usage = parse_load(page)
                if ep.kv_cache_tokens is None:
                    ep.kv_cache_tokens = parse_cache_tokens(page)
                self.pages[ep.id] = page
                self._seen[ep.id] = time.monotonic()
        except (aiohttp.ClientError, TimeoutError):
            pass

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            eps = [
                e
                for e in self.pool.all()
                if e.metrics_url and e.healthy and self._skip_until.get(e.id, 0.0) <= now
            ]
            if eps:
                await asyncio.gather(*(self._poll(e) for e in eps))
            now = time.monotonic()
            for e in self.pool.all():
                if now - self._seen.get(e.id, 0.0) > self.stale_s:
                    e.waiting = e.kv_usage = None
                    self.pages.pop(e.id, None)
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if any(e.metrics_url for e in self.pool.all()):
            timeout = aiohttp.ClientTimeout(total=max(self.interval_s * 5, 1.0))
            self._session = aiohttp.ClientSession(timeout=timeout)
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session:
            await self._session.close()
