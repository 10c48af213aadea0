"""``Simulator``: N simulated vLLM replicas on loopback ports, in this process and event loop.

    async with Simulator(n=4, params=SimParams(time_scale=0.1), kv_events=True, seed=0) as sim:
        sim.urls            # OpenAI base URLs, ending in /v1
        sim.metrics_urls    # Prometheus endpoints
        sim.kv_endpoints    # ZMQ PUB endpoints (kv_events=True), topics in sim.kv_topics
        sim.replicas[0].cache.stats
        sim.set_fault(1, slow=3.0); sim.set_fault(2, die_after=0); await sim.revive(2)

``params`` is one ``SimParams`` for every replica or a list with one per replica. ``port`` puts the
replicas on ``port, port+1, ...`` (0: free ports); ``kv_events_port`` likewise for the ZMQ PUB
sockets (0: free ports).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq

from m2a.sim.params import SimParams
from m2a.sim.replica import Replica


class Simulator:
    def __init__(
        self,
        n: int = 1,
        params: SimParams | Sequence[SimParams] | None = None,
        *,
        kv_events: bool = False,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        kv_events_port: int = 0,
    ) -> None:
        if n < 1:
            raise ValueError("n must be at least 1")
        if params is None or isinstance(params, SimParams):
            per = [params or SimParams()] * n
        else:
            per = list(params)
            if len(per) != n:
                raise ValueError(f"{len(per)} SimParams for {n} replicas")
        self._ctx: zmq.Context[Any] | None = zmq.Context() if kv_events else None
        self.replicas = [
            Replica(
                i,
                per[i],
                seed=seed,
                host=host,
                port=port + i if port else 0,
                zmq_ctx=self._ctx,
                kv_endpoint=f"tcp://{host}:{kv_events_port + i}" if kv_events and kv_events_port else None,
            )
            for i in range(n)
        ]

    async def start(self) -> Simulator:
        try:
            for r in self.replicas:
                await r.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        for r in self.replicas:
            await r.close()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    @property
    def metrics_urls(self) -> list[str]:
        return [r.metrics_url for r in self.replicas]

    @property
    def kv_endpoints(self) -> list[str | None]:
        return [r.kv_endpoint for r in self.replicas]

    @property
    def kv_topics(self) -> list[str | None]:
        return [r.kv_topic for r in self.replicas]

    def set_fault(self, i: int, **faults: Any) -> None:
        """``slow=factor``, ``error_rate=p``, ``die_after=n`` (0: die now; None: never)."""
        self.replicas[i].set_fault(**faults)

    def kill(self, i: int) -> None:
        self.replicas[i].die()

    async def revive(self, i: int) -> None:
        await self.replicas[i].revive()
