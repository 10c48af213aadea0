"""Precise prefix-cache affinity: which blocks each replica holds, as its engine reports them.

vLLM publishes KV-cache events (``m2a.protocol.kv_events``); ``kvevents.KVEventSubscriber`` feeds them
here. The index is keyed by the router's *own* block hashes (``tokens.block_hashes``), not the
engine's: a ``BlockStored`` event carries the blocks' token ids and the engine's hash of their parent,
so the index re-hashes the tokens onto the router's hash of that parent and remembers, per replica,
engine hash → own hash (for ``BlockRemoved``). The router can then match a request with the very
hashes it computes from the prompt tokens, whatever hash function and seed the engine uses
(``--prefix-caching-hash-algo``, ``PYTHONHASHSEED``), and several gateway processes agree.

A block whose parent the index never saw (stored before the gateway subscribed, or after lost
events) cannot be re-keyed and is left out: the index only under-reports. Blocks keyed by more than
their tokens (LoRA adapters, multimodal inputs) are left out too. After a gap in an engine's event
sequence, or when it restarts, the subscriber clears that replica (``clear``), since the index only
shrinks on events.

The ``precise_prefix`` scorer scores a replica by the fraction of the request's blocks, from the
start, that the replica holds or will hold: the index, plus the blocks of requests this router has
sent it that are still running (their ``BlockStored`` comes only once their prefill is done). It
abstains (no score, no weight) while no candidate replica has sent events. The same load guard as
the approximate scorer applies (prefix.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from m2a.protocol.kv_events import BlockHash, Cleared, Event, Removed, Stored
from m2a.protocol.tokens import ROOT_HASH, block_hashes
from m2a.router.plugins import NEUTRAL, Hooks, RouteRequest, Shared, register_scorer
from m2a.router.pool import Endpoint
from m2a.router.prefix import cool


class KVBlockIndex:
    """Own block hash → replicas holding it, kept from the engines' KV events."""

    def __init__(self) -> None:
        self.by_block: dict[int, set[str]] = {}
        self._keys: dict[str, dict[BlockHash, int]] = {}  # replica → engine hash → own hash
        self._held: dict[str, dict[int, int]] = {}  # replica → own hash → engine blocks with it
        self.block_size: dict[str, int] = {}  # replica → the engine's block size
        self.fed: dict[str, float] = {}  # replica → when its last batch arrived (monotonic)
        self.unkeyed = 0  # blocks left out: unknown parent, or keyed by more than tokens

    def apply(self, replica: str, events: Sequence[Event]) -> None:
        """One decoded batch of ``replica``'s events."""
        self.fed[replica] = time.monotonic()
        for ev in events:
            if isinstance(ev, Stored):
                self.stored(replica, ev)
            elif isinstance(ev, Removed):
                self.removed(replica, ev.block_hashes)
            elif isinstance(ev, Cleared):
                self.clear(replica)

    def stored(self, replica: str, ev: Stored) -> int:
        """A ``BlockStored`` event; returns how many of its blocks were indexed."""
        if ev.block_size > self.block_size.get(replica, 0):  # smaller: a partial-prefix entry
            self.block_size[replica] = ev.block_size
        keys = self._keys.setdefault(replica, {})
        root: int | None = ROOT_HASH if ev.parent is None else keys.get(ev.parent)
        if root is None or not ev.keyed:
            self.unkeyed += len(ev.block_hashes)
            return 0
        own = block_hashes(ev.token_ids, ev.block_size, root)
        held = self._held.setdefault(replica, {})
        n = min(len(own), len(ev.block_hashes))
        for engine_hash, h in zip(ev.block_hashes[:n], own[:n], strict=True):
            if keys.get(engine_hash) == h:
                continue  # the same block announced twice
            if engine_hash in keys:
                self._drop(replica, keys[engine_hash])
            keys[engine_hash] = h
            held[h] = held.get(h, 0) + 1
            self.by_block.setdefault(h, set()).add(replica)
        return n

    def removed(self, replica: str, engine_hashes: Sequence[BlockHash]) -> None:
        """A ``BlockRemoved`` event."""
        keys = self._keys.get(replica)
        if not keys:
            return
        for engine_hash in engine_hashes:
            h = keys.pop(engine_hash, None)
            if h is not None:
                self._drop(replica, h)

    def _drop(self, replica: str, h: int) -> None:
        held = self._held[replica]
        left = held.get(h, 0) - 1
        if left > 0:
            held[h] = left
            return
        held.pop(h, None)
        holders = self.by_block.get(h)
        if holders is not None:
            holders.discard(replica)
            if not holders:
                del self.by_block[h]

    def clear(self, replica: str) -> None:
        """``AllBlocksCleared``, lost events or a restart: the replica holds nothing we know of."""
        for h in self._held.pop(replica, {}):
            holders = self.by_block.get(h)
            if holders is not None:
                holders.discard(replica)
                if not holders:
                    del self.by_block[h]
        self._keys.pop(replica, None)

    def forget(self, replica: str) -> None:
        """The replica no longer sends events (its subscription ended)."""
        self.clear(replica)
        self.fed.pop(replica, None)

    def blocks(self, replica: str) -> int:
        return len(self._held.get(replica, ()))

    def holds(self, replica: str, h: int) -> bool:
        return h in self._held.get(replica, ())


def _match(
    ids: Sequence[str],
    hashes: Sequence[int],
    by_block: dict[int, set[str]],
    running: dict[int, dict[str, int]],
) -> dict[str, int]:
    """For each replica, how many leading blocks of ``hashes`` it holds or its running requests will
    hold: one walk down the chain, keeping the replicas that still match (usually one or two)."""
    matched = dict.fromkeys(ids, 0)
    live = set(ids)
    for i, h in enumerate(hashes):
        holders = by_block.get(h)
        pending = running.get(h)
        if pending:
            live.intersection_update(holders.union(pending) if holders else pending)
        elif holders:
            live.intersection_update(holders)
        else:
            break
        if not live:
            break
        for r in live:
            matched[r] = i + 1
    return matched


@register_scorer("precise_prefix")
class PrecisePrefixScorer(Hooks):
    def __init__(
        self,
        index: KVBlockIndex | None = None,
        block_size: int | None = None,
        max_load_ratio: float = 2.0,
        slack: float = 4.0,
        hot_factor: float = 0.0,
        queued_only: bool = True,
    ) -> None:
        self.index = index
        self.queued_only = queued_only
        self.default_block_size = block_size  # until a replica's events tell its own
        self.max_load_ratio, self.slack, self.hot_factor = max_load_ratio, slack, hot_factor
        self.running: dict[int, dict[str, int]] = {}  # block → replicas whose running requests hold it
        self._picked: dict[tuple[int, str], list[int]] = {}  # (request, replica) → hashes added

    def attach(self, shared: Shared) -> None:
        if self.index is None:
            self.index = shared.kv_index

    def _block_size(self, rid: str) -> int | None:
        """The replica's block size from its events, else another replica's, else the configured one."""
        assert self.index is not None
        sizes = self.index.block_size
        return sizes.get(rid) or next(iter(sizes.values()), None) or self.default_block_size

    def score(self, req: RouteRequest, eps: list[Endpoint]) -> dict[str, float] | None:
        index = self.index
        if index is None or not req.prompt_tokens or not any(e.id in index.fed for e in eps):
            return None  # abstain: nothing known about these replicas
        scores = {e.id: NEUTRAL for e in eps}  # replicas sending no events stay unknown
        by_size: dict[int, list[str]] = {}
        for e in eps:
            bs = self._block_size(e.id)
            if e.id in index.fed and bs:
                by_size.setdefault(bs, []).append(e.id)
        for bs, ids in by_size.items():
            hashes = req.hashes(bs)
            if hashes:  # else a prompt under one block: neutral
                for rid, n in _match(ids, hashes, index.by_block, self.running).items():
                    scores[rid] = n / len(hashes)
        cool(scores, eps, self.max_load_ratio, self.slack, self.hot_factor, self.queued_only)
        return scores

    def on_pick(self, req: RouteRequest, ep: Endpoint) -> None:
        bs = self._block_size(ep.id) if self.index is not None else None
        if not bs or not req.prompt_tokens:
            return
        hashes = req.hashes(bs)
        self._picked[id(req), ep.id] = hashes
        running, rid = self.running, ep.id
        for h in hashes:
            on = running.get(h)
            if on is None:
                running[h] = {rid: 1}
            else:
                on[rid] = on.get(rid, 0) + 1

    def on_done(self, req: RouteRequest, ep: Endpoint) -> None:
        hashes = self._picked.pop((id(req), ep.id), None)
        if not hashes:
            return
        running, rid = self.running, ep.id
        for h in hashes:
            on = running.get(h)
            if on is None:
                continue
            left = on.get(rid, 0) - 1
            if left > 0:
                on[rid] = left
            else:
                on.pop(rid, None)
                if not on:
                    del running[h]
