"""A simulated replica's KV-cache events, published over ZMQ PUB as vLLM's ``ZmqEventPublisher`` does.

Frames are ``[topic, sequence as 8 bytes big-endian, msgpack payload]``; the payload is encoded with
the structs of ``m2a.protocol.kv_events``, which mirror vLLM's, so vLLM's own classes decode it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import zmq

from m2a.protocol.kv_events import KVCacheEvent, KVEventBatch


class EventPublisher:
    """Collects a replica's events and publishes them as one batch per event-loop turn."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str | None = None, topic: str = "") -> None:
        self._sock = ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.set_hwm(100_000)
        if endpoint is None:
            port = self._sock.bind_to_random_port("tcp://127.0.0.1")
            endpoint = f"tcp://127.0.0.1:{port}"
        else:
            self._sock.bind(endpoint)
        self.endpoint = endpoint
        self._topic = topic.encode()
        self._seq = 0
        self._pending: list[KVCacheEvent] = []
        self._enc = msgspec.msgpack.Encoder()
        self.published = 0  # batches sent

    @property
    def topic(self) -> str:
        return self._topic.decode()

    @topic.setter
    def topic(self, value: str) -> None:
        self._topic = value.encode()

    def emit(self, event: KVCacheEvent) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(event)

    def flush(self) -> None:
        if not self._pending or self._sock.closed:
            self._pending.clear()
            return
        batch = KVEventBatch(ts=time.time(), events=self._pending, data_parallel_rank=0)
        self._pending = []
        payload = self._enc.encode(batch)
        with contextlib.suppress(zmq.Again):  # at the high-water mark: dropped, as a real PUB socket does
            self._sock.send_multipart((self._topic, self._seq.to_bytes(8, "big"), payload), flags=zmq.NOBLOCK)
        self._seq += 1
        self.published += 1

    def close(self) -> None:
        self.flush()
        self._sock.close(linger=0)
