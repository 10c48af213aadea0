"""Precise prefix-cache affinity: which blocks each replica holds, as its engine reports them.

vLLM publishes KV-cache events (ZMQ, msgpack batches of BlockStored / BlockRemoved /
AllBlocksCleared). ``KVBlockIndex`` is the state those events build: for every block hash, the
replicas holding it. An event subscriber (not written yet) feeds it through ``apply_stored``,
``apply_removed`` and ``clear_all``; it should call ``clear_all`` too when it misses events (a gap in
the sequence numbers) or a replica restarts, since the index only shrinks on events.

The ``precise_prefix`` scorer scores a replica by the fraction of the request's blocks, from the
start, that the index says it holds. It needs the request's blocks hashed *the engine's way*
(``RouteRequest.engine_block_hashes``: vLLM hashes the engine's block size of tokens with its own
hash function and seed, which differ from ``tokens.block_hashes``). NOT YET WIRED: nothing computes
``engine_block_hashes`` today, and without them the scorer answers the neutral 0.5 for every replica,
so it changes no decision. The same load guard as the approximate scorer applies (prefix.py).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from m2a.router.plugins import NEUTRAL, Hooks, RouteRequest, Shared, register_scorer
from m2a.router.pool import Endpoint
from m2a.router.prefix import cool


class KVBlockIndex:
    """Block hash → replicas holding it, kept from the engines' KV events."""

    def __init__(self) -> None:
        self.by_block: dict[Hashable, set[str]] = {}
        self.by_replica: dict[str, dict[Hashable, Hashable | None]] = {}  # block → parent

    def apply_stored(
        self, replica: str, block_hashes: Sequence[Hashable], parent: Hashable | None = None
    ) -> None:
        """A BlockStored event: a chain of blocks, the first one's parent ``parent`` (None: a root)."""
        held = self.by_replica.setdefault(replica, {})
        for h in block_hashes:
            held[h] = parent
            self.by_block.setdefault(h, set()).add(replica)
            parent = h

    def apply_removed(self, replica: str, block_hashes: Sequence[Hashable]) -> None:
        """A BlockRemoved event."""
        held = self.by_replica.get(replica)
        if held is None:
            return
        for h in block_hashes:
            if held.pop(h, _MISSING) is not _MISSING:
                holders = self.by_block.get(h)
                if holders is not None:
                    holders.discard(replica)
                    if not holders:
                        del self.by_block[h]

    def clear_all(self, replica: str) -> None:
        """An AllBlocksCleared event (or events were lost): the replica holds nothing we know of."""
        self.apply_removed(replica, list(self.by_replica.get(replica, ())))
        self.by_replica.pop(replica, None)

    def blocks(self, replica: str) -> int:
        return len(self.by_replica.get(replica, ()))

    def match(self, replicas: Sequence[str], hashes: Sequence[Hashable]) -> dict[str, int]:
        """For each replica, how many leading blocks of ``hashes`` it holds."""
        matched = dict.fromkeys(replicas, 0)
        live = set(replicas)
        by_block = self.by_block
        for i, h in enumerate(hashes):
            holders = by_block.get(h)
            if not holders:
                return matched
            live &= holders
            if not live:
                return matched
            for r in live:
                matched[r] = i + 1
        return matched


_MISSING = object()


@register_scorer("precise_prefix")
class PrecisePrefixScorer(Hooks):
    def __init__(
        self,
        index: KVBlockIndex | None = None,
        max_load_ratio: float = 2.0,
        slack: float = 4.0,
        hot_factor: float = 0.0,
    ) -> None:
        self.index = index
        self.max_load_ratio, self.slack, self.hot_factor = max_load_ratio, slack, hot_factor

    def attach(self, shared: Shared) -> None:
        if self.index is None:
            self.index = shared.kv_index

    def score(self, req: RouteRequest, eps: list[Endpoint]) -> dict[str, float]:
        hashes = req.engine_block_hashes
        if not hashes or self.index is None:
            return {e.id: NEUTRAL for e in eps}
        n = len(hashes)
        matched = self.index.match([e.id for e in eps], hashes)
        scores = {e.id: matched[e.id] / n for e in eps}
        cool(scores, eps, self.max_load_ratio, self.slack, self.hot_factor)
        return scores
