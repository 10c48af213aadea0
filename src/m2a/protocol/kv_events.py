"""vLLM's KV-cache events: the wire format, and a tolerant decoder for what real engines send.

A vLLM engine started with ``--kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq",
"endpoint": "tcp://*:PORT", "topic": ...}'`` publishes ZMQ multipart frames ``[topic, sequence as 8
bytes big-endian, msgpack payload]``. The payload is an ``EventBatch``: an array ``[ts, [events...],
data_parallel_rank]``; each event is ``BlockStored``, ``BlockRemoved`` or ``AllBlocksCleared``.

The structs below mirror ``vllm.distributed.kv_events`` (vLLM 0.32) field for field and with the same
msgspec options; the engine simulator encodes with them, so vLLM's own classes decode its events.

``decode_batch`` does not rely on one vLLM version: it reads events written as tagged maps
(``{"type": "BlockStored", ...}``, vLLM ≥ 0.10) or as tagged arrays (``["BlockStored", hashes, ...]``,
earlier versions), block hashes as integers or bytes, and ignores fields and event kinds it does not
know. Blocks it cannot re-key from tokens alone (LoRA adapters, multimodal or salted ``extra_keys``,
KV-cache groups other than the first of a hybrid model) are marked ``keyed=False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

MEDIUM_GPU = "GPU"
BlockHash = int | bytes


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


# -- decoding ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Stored:
    """A chain of newly cached full blocks; the first one's parent is ``parent`` (None: a root)."""

    block_hashes: list[BlockHash]
    parent: BlockHash | None
    token_ids: list[int]
    block_size: int
    keyed: bool = True  # False: the engine's hash covers more than the tokens (LoRA, extra keys...)


@dataclass(slots=True)
class Removed:
    block_hashes: list[BlockHash]


@dataclass(slots=True)
class Cleared:
    pass


Event = Stored | Removed | Cleared


@dataclass(slots=True)
class Batch:
    ts: float
    events: list[Event]
    rank: int | None = None


class BadEvents(ValueError):
    """A payload that is not a KV-event batch."""


# Positional field order of the legacy array layout.
_STORED_FIELDS = (
    "block_hashes",
    "parent_block_hash",
    "token_ids",
    "block_size",
    "lora_id",
    "medium",
    "lora_name",
    "extra_keys",
    "group_idx",
)
_REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")


def _fields(raw: Any, names: tuple[str, ...]) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    return dict(zip(names, raw[1:], strict=False))


def _hashes(value: Any) -> list[BlockHash]:
    if not isinstance(value, list) or not all(isinstance(h, int | bytes) for h in value):
        raise BadEvents("block_hashes must be a list of integers or bytes")
    return value


def _event(raw: Any) -> Event | None:
    if isinstance(raw, dict):
        kind = raw.get("type")
    elif isinstance(raw, list) and raw and isinstance(raw[0], str):
        kind = raw[0]
    else:
        raise BadEvents(f"not an event: {type(raw).__name__}")
    if kind == "BlockStored":
        f = _fields(raw, _STORED_FIELDS)
        tokens, size = f.get("token_ids"), f.get("block_size")
        if not isinstance(tokens, list) or not isinstance(size, int) or size < 1:
            raise BadEvents("BlockStored needs token_ids and a positive block_size")
        parent = f.get("parent_block_hash")
        keyed = (
            f.get("lora_id") is None
            and f.get("lora_name") is None
            and not any(k is not None for k in (f.get("extra_keys") or ()))
            and not f.get("group_idx")
        )
        return Stored(_hashes(f.get("block_hashes")), parent, tokens, size, keyed)
    if kind == "BlockRemoved":
        f = _fields(raw, _REMOVED_FIELDS)
        if f.get("group_idx"):
            return None  # another KV-cache group of a hybrid model: not indexed
        return Removed(_hashes(f.get("block_hashes")))
    if kind == "AllBlocksCleared":
        return Cleared()
    return None  # an event kind this version does not know


def decode_batch(payload: bytes) -> Batch:
    """One ZMQ payload → a ``Batch``; ``BadEvents`` when it is not one."""
    try:
        raw = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError as exc:
        raise BadEvents(f"not msgpack: {exc}") from exc
    if not isinstance(raw, list) or len(raw) < 2 or not isinstance(raw[1], list):
        raise BadEvents("a batch is an array [ts, [events...], rank]")
    ts = raw[0] if isinstance(raw[0], int | float) else 0.0
    rank = raw[2] if len(raw) > 2 and isinstance(raw[2], int) else None
    events = [e for e in (_event(r) for r in raw[1]) if e is not None]
    return Batch(float(ts), events, rank)
