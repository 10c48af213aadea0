"""Priorities under saturation: when a model is busy, higher priorities go first, lower ones wait.

Each model has a capacity: the requests its healthy replicas run at once (``max_inflight`` per
replica). A request enters at once while the model has room for its priority class; otherwise it
waits in a queue ordered by priority order (lower first, as in vLLM), then arrival. While higher
priorities are active (seen in the last ``active_s``), each class may fill only its share of the
capacity (``priority_headroom``), so a flood of batch requests leaves room for critical ones. An
engine that reports a waiting queue counts as full, whatever its in-flight count. A request that
waits longer than its class's deadline, or finds the queue full, gets 503 with ``Retry-After``;
when the queue is full a newcomer of higher priority takes the place of the lowest waiter.

The gate counts the requests it *admitted* per model, from admission to the end; that is not a
second in-flight count of replicas (``Endpoint.inflight``, kept by the forwarder from connection
to the end, is the only one): an admitted request may still be on its way to a replica, and must
hold its place meanwhile, or a burst would be admitted past the capacity.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from dataclasses import dataclass, field

from m2a.config import GatewayConfig
from m2a.gateway.errors import GatewayError
from m2a.router.pool import Pool

CLASSES = ("critical", "standard", "batch")


@dataclass(order=True)
class _Waiter:
    order: int
    seq: int
    cls: str = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


class _Model:
    def __init__(self) -> None:
        self.inflight = 0
        self.queue: list[_Waiter] = []
        self.last_seen: dict[str, float] = {}


class PriorityGate:
    def __init__(self, pool: Pool, cfg: GatewayConfig, active_s: float = 10.0) -> None:
        self.pool = pool
        self.cfg = cfg
        self.active_s = active_s
        self._models: dict[str, _Model] = {}
        self._seq = itertools.count()

    def capacity(self, model: str) -> float:
        """Requests the model's healthy replicas run at once (infinite when unknown)."""
        total = 0.0
        for ep in self.pool.endpoints(model):
            if not ep.healthy:
                continue
            if ep.max_inflight is None:
                return math.inf
            # A replica with a waiting queue is full now, whatever we count in flight.
            total += ep.inflight if ep.waiting else ep.max_inflight
        return total

    def _share(self, m: _Model, cls: str, now: float) -> float:
        """The share of capacity ``cls`` may fill: all of it unless a higher class is active."""
        higher = CLASSES[: CLASSES.index(cls)] if cls in CLASSES else ()
        if any(now - m.last_seen.get(h, -math.inf) < self.active_s for h in higher):
            return self.cfg.priority_headroom.get(cls, 1.0)
        return 1.0

    def _fits(self, model: str, m: _Model, cls: str, now: float) -> bool:
        cap = self.capacity(model)
        return cap == math.inf or m.inflight < max(1.0, cap * self._share(m, cls, now))

    async def enter(self, model: str, cls: str, order: int) -> None:
        """Wait for room (or raise 503); the caller must ``leave`` once the request is done."""
        if not self.try_enter(model, cls, order):
            await self.wait(model, cls, order)

    def try_enter(self, model: str, cls: str, order: int) -> bool:
        """Take a slot if there is room now and nobody better waits; False: call ``wait``."""
        m = self._models.setdefault(model, _Model())
        now = time.monotonic()
        m.last_seen[cls] = now
        if (not m.queue or m.queue[0].order > order) and self._fits(model, m, cls, now):
            m.inflight += 1
            return True
        return False

    async def wait(self, model: str, cls: str, order: int) -> bool:
        """Queue for a slot (after ``try_enter`` said no); True once in. Cancelling gives the place up."""
        m = self._models[model]
        if len(m.queue) >= self.cfg.max_waiting:
            worst = max(m.queue) if m.queue else None
            if worst is None or worst.order <= order:
                raise self._overloaded(model, "its queue is full")
            m.queue.remove(worst)
            heapq.heapify(m.queue)
            worst.future.set_exception(self._overloaded(model, "a higher priority took its place"))
        waiter = _Waiter(order, next(self._seq), cls, asyncio.get_running_loop().create_future())
        heapq.heappush(m.queue, waiter)
        deadline = self.cfg.priority_deadline_s.get(cls, 30.0)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), deadline)
        except TimeoutError:
            if waiter.future.done() and not waiter.future.exception():
                return True  # admitted just as the deadline passed
            self._drop(m, waiter)
            raise self._overloaded(model, f"no room within {deadline:g} s") from None
        except asyncio.CancelledError:  # the client left while waiting
            if waiter.future.done() and not waiter.future.exception():
                self.leave(model)
            else:
                self._drop(m, waiter)
            raise
        return True

    def _drop(self, m: _Model, waiter: _Waiter) -> None:
        if waiter in m.queue:
            m.queue.remove(waiter)
            heapq.heapify(m.queue)
        if not waiter.future.done():
            waiter.future.cancel()

    def _overloaded(self, model: str, why: str) -> GatewayError:
        return GatewayError(
            503,
            f"The model '{model}' is saturated and higher priorities go first ({why}). Try again shortly.",
            code="model_overloaded",
            headers={"Retry-After": "2"},
        )

    def leave(self, model: str) -> None:
        m = self._models[model]
        m.inflight -= 1
        self.wake(model)

    def wake(self, model: str) -> None:
        """Admit waiters, best first, while they fit (also called when replicas come back)."""
        m = self._models.get(model)
        if m is None:
            return
        now = time.monotonic()
        while m.queue:
            head = m.queue[0]
            if head.future.done():
                heapq.heappop(m.queue)
                continue
            if not self._fits(model, m, head.cls, now):
                break
            heapq.heappop(m.queue)
            m.inflight += 1
            head.future.set_result(None)

    def waiting(self, model: str) -> int:
        m = self._models.get(model)
        return len(m.queue) if m else 0

    def inflight(self, model: str) -> int:
        m = self._models.get(model)
        return m.inflight if m else 0

    async def run(self, interval_s: float = 0.1) -> None:
        """Wake waiters as engine load and health change (a queue that drained, a replica back)."""
        while True:
            await asyncio.sleep(interval_s)
            for model, m in self._models.items():
                if m.queue:
                    self.wake(model)
