"""KV-cache events in vLLM's wire format, published over ZMQ PUB.

The structs mirror ``vllm.distributed.kv_events`` (vLLM 0.32) field for field and with the same
msgspec options, so a subscriber that decodes a real vLLM engine's events with vLLM's own classes
decodes the simulator's too: the batch is an array ``[ts, [events...], data_parallel_rank]``, each
event a map tagged ``{"type": "BlockStored", ...}``. Frames are ``[topic, sequence as 8 bytes
big-endian, msgpack payload]``, as vLLM's ``ZmqEventPublisher`` sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import zmq

MEDIUM_GPU = "GPU"


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    """Base of the three event kinds (tagged by class name, as vLLM's)."""


class BlockStored(KVCacheEvent):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None  # no defaults: vLLM's decoder requires these keys on the wire
    medium: str | None
    lora_name: str | None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int]
    medium: str | None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]
    data_parallel_rank: int | None = None


def stored(hashes: list[int], parent: int | None, token_ids: list[int], block_size: int) -> BlockStored:
    return BlockStored(hashes, parent, token_ids, block_size, None, MEDIUM_GPU, None)


def removed(hashes: list[int]) -> BlockRemoved:
    return BlockRemoved(hashes, MEDIUM_GPU)


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
