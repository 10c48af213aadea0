"""The KV-event subscriber: one ZMQ SUB socket per replica that publishes, feeding ``KVBlockIndex``.

Each replica's ``Endpoint.kv_events`` names its engine's publisher (``tcp://host:port``). Every
gateway process subscribes to every replica on its own, so several processes build the same index.
Frames are ``[topic, sequence, payload]`` (``m2a.protocol.kv_events``). A gap in the sequence numbers
(events dropped at a high-water mark) or a sequence going back (the engine restarted) clears that
replica in the index: it only knows what it saw. ZMQ reconnects on its own when an engine restarts.
A payload that does not decode is counted and skipped, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import zmq
import zmq.asyncio

from m2a.protocol.kv_events import BadEvents, decode_batch
from m2a.router.kvindex import KVBlockIndex

log = logging.getLogger("m2a.router.kvevents")


@dataclass
class FeedStats:
    """What one replica's subscription has seen."""

    batches: int = 0
    events: int = 0
    gaps: int = 0  # sequence gaps and restarts (each cleared the replica)
    bad: int = 0  # frames that did not decode
    last_seq: int | None = None


class KVEventSubscriber:
    def __init__(self, index: KVBlockIndex, sources: dict[str, str], topic: str = "") -> None:
        """``sources``: replica id → ZMQ publisher endpoint."""
        self.index = index
        self.sources = dict(sources)
        self.topic = topic.encode()
        self.stats: dict[str, FeedStats] = {rid: FeedStats() for rid in self.sources}
        self._ctx: zmq.asyncio.Context | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def handle(self, replica: str, frames: list[bytes]) -> None:
        """One multipart message from ``replica``'s publisher."""
        st = self.stats.setdefault(replica, FeedStats())
        if len(frames) != 3 or len(frames[1]) != 8:
            st.bad += 1
            return
        seq = int.from_bytes(frames[1], "big", signed=True)
        if st.last_seq is not None and seq != st.last_seq + 1:
            st.gaps += 1
            self.index.clear(replica)
            log.info(
                "KV events of %s: sequence %d after %d, forgetting its blocks", replica, seq, st.last_seq
            )
        st.last_seq = seq
        try:
            batch = decode_batch(frames[2])
        except BadEvents as exc:
            st.bad += 1
            if st.bad == 1:
                log.warning("KV events of %s do not decode: %s", replica, exc)
            return
        st.batches += 1
        st.events += len(batch.events)
        self.index.apply(replica, batch.events)

    async def _run(self, replica: str, endpoint: str) -> None:
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, self.topic)
        try:
            sock.connect(endpoint)
            while True:
                self.handle(replica, await sock.recv_multipart())
        except asyncio.CancelledError:
            raise
        except zmq.ZMQError as exc:
            log.warning("KV events of %s at %s: %s; routing without them", replica, endpoint, exc)
        finally:
            sock.close(linger=0)
            self.index.forget(replica)

    def start(self) -> None:
        if not self.sources or self._tasks:
            return
        self._ctx = zmq.asyncio.Context()
        self._tasks = [asyncio.create_task(self._run(r, ep)) for r, ep in self.sources.items()]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
