"""One simulated vLLM replica: engine, KV cache, metrics, optional KV-event publisher, HTTP server.

The server listens on its own socket so that the replica can *die* — stop listening and drop every
open connection, streams cut mid-way — and later be *revived* on the same port with an empty cache,
as a restarted engine would be.
"""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import zmq
from aiohttp import web

from m2a.sim.engine import Engine
from m2a.sim.events import EventPublisher
from m2a.sim.kvcache import PagedKVCache
from m2a.sim.metrics import EngineMetrics, EngineState
from m2a.sim.params import Faults, SimParams
from m2a.sim.server import make_app


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Replica:
    def __init__(
        self,
        index: int,
        params: SimParams,
        *,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        zmq_ctx: zmq.Context[Any] | None = None,
        kv_endpoint: str | None = None,
    ) -> None:
        self.index = index
        self.params = params
        self.host = host
        self.port = port
        self.faults = Faults()
        self.rng = random.Random(seed * 1_000_003 + index)
        self.publisher: EventPublisher | None = None
        self._zmq_ctx = zmq_ctx
        self._kv_endpoint = kv_endpoint
        self.metrics = EngineMetrics(params.model, params.block_size, params.capacity_blocks)
        self.cache = PagedKVCache(params.block_size, params.capacity_blocks, root=params.hash_seed)
        self.engine = Engine(params, self.faults, self.cache, self.metrics)
        self.metrics.state = EngineState(
            running=lambda: self.engine.running,
            waiting=lambda: self.engine.waiting,
            usage=lambda: self.cache.usage,
            queries=lambda: self.cache.stats.queries,
            hits=lambda: self.cache.stats.hits,
        )
        self.alive = False
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- addresses ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The OpenAI base URL, ending in /v1."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    @property
    def kv_endpoint(self) -> str | None:
        return self.publisher.endpoint if self.publisher else None

    @property
    def kv_topic(self) -> str | None:
        return self.publisher.topic if self.publisher else None

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._zmq_ctx is not None and self.publisher is None:
            self.publisher = EventPublisher(self._zmq_ctx, self._kv_endpoint)
            self.cache.on_event = self.publisher.emit
        if self._runner is None:
            self._runner = web.AppRunner(
                make_app(self),
                handle_signals=False,
                access_log=None,
                shutdown_timeout=1.0,
                handler_cancellation=True,  # a client that hangs up aborts its request, as in vLLM
            )
            await self._runner.setup()
        sock = _listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        if self.publisher is not None:
            self.publisher.topic = f"kv@{self.host}:{self.port}@{self.params.model}"
        self._server = await asyncio.get_running_loop().create_server(self._runner.server, sock=sock)
        self.alive = True

    def die(self) -> None:
        """Stop listening, cut every open connection (streams end mid-way), cancel in-flight work."""
        if not self.alive:
            return
        self.alive = False
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None and self._runner.server is not None:
            for conn in self._runner.server.connections:
                conn.force_close()
        for task in list(self._tasks):
            task.cancel()

    async def revive(self) -> None:
        """Come back on the same port, as a restarted engine: empty cache, no faults."""
        if self.alive:
            return
        while self._tasks:
            await asyncio.sleep(0.01)
        self.cache.clear()
        self.faults.update(slow=1.0, error_rate=0.0, die_after=None)
        await self.start()

    async def close(self) -> None:
        self.die()
        while self._tasks:
            await asyncio.sleep(0.01)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None

    # -- used by the HTTP handlers -------------------------------------------------------------------
    def track(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def count_start(self) -> bool:
        """Count a started request; True when it is the one that makes the replica die."""
        f = self.faults
        if f.die_after is None:
            return False
        f._started += 1
        return f._started >= f.die_after

    def set_fault(self, **changes: Any) -> None:
        self.faults.update(**changes)
        if self.faults.die_after == 0:
            self.die()

    def cache_info(self) -> dict[str, Any]:
        s, c = self.cache.stats, self.cache
        return {
            "block_size": c.block_size,
            "capacity_blocks": c.capacity,
            "used_blocks": c.used_blocks,
            "cached_blocks": len(c.cached),
            "usage": c.usage,
            "queries": s.queries,
            "hits": s.hits,
            "hit_rate": s.hit_rate,
            "stored": s.stored,
            "evicted": s.evicted,
            "alloc_failures": s.alloc_failures,
            "running": self.engine.running,
            "waiting": self.engine.waiting,
            "alive": self.alive,
        }
