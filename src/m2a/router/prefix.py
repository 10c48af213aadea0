"""Approximate prefix-cache affinity, and the guard that keeps it from piling onto one replica.

The ``prefix`` scorer keeps, for each replica, an LRU of the block hashes of the prompts the router
sent it (inserted by ``on_pick``), sized like the replica's KV cache: ``capacity_blocks`` (default
8192), or ``kv_cache_tokens // block_size`` when the KV size is known: the ``kv_cache_tokens``
param, the engine's own report (``Endpoint.kv_cache_tokens``, from its metrics; load.py), or
``set_capacity(replica, blocks)``. A
replica's score is the fraction of the request's blocks it holds from the start: longest matching
prefix / total blocks. A prompt shorter than one block scores the neutral 0.5 everywhere.

Each insert touches a whole chain with the ancestors last (most recent), as vLLM frees a sequence's
tail blocks first, so a block is never evicted before its parent: the set of blocks held is closed
under "parent of", and the longest match is found by binary search over the request's chain.

The guard (``cool``): cache affinity alone sends every request of a hot prefix to the one replica that
holds it, until that replica drowns. A replica whose load (requests in flight from this router, or
the engine's waiting queue when larger) is above ``max_load_ratio`` × the least-loaded candidate's
load + ``slack`` gets its affinity score multiplied by ``hot_factor`` (0 by default): the next
requests go to a less-loaded replica, which then warms up too, and the prefix spreads. With
``queued_only`` (the default) a replica is cooled only while its engine also reports requests
waiting (or reports no metrics): a replica running more sequences than the others but not queueing
keeps its affinity, since a cache miss elsewhere costs a whole prefill while one more running
sequence costs little (measured in bench/README.md: p90 TTFT 0.59 s → 0.13 s at the lightest load).

With ``defer_to_events`` the scorer abstains when every candidate replica reports its KV cache in
events (the ``precise_prefix`` scorer then knows better than this router's guesses), and records no
decisions for replicas that report (its LRU for one warms up again if its events stop).
"""

from __future__ import annotations

from collections import OrderedDict

from m2a.router.plugins import NEUTRAL, Hooks, RouteRequest, Shared, register_scorer
from m2a.router.pool import Endpoint


def load(e: Endpoint) -> float:
    """A replica's load in requests: in flight from this router, or the engine's queue if larger."""
    return max(float(e.inflight), e.waiting or 0.0)


def cool(
    scores: dict[str, float],
    eps: list[Endpoint],
    max_load_ratio: float,
    slack: float,
    factor: float,
    queued_only: bool = False,
) -> None:
    """Multiply the scores of replicas loaded well above the least-loaded candidate by ``factor``;
    with ``queued_only``, only those whose engine also reports requests waiting (or reports nothing)."""
    if len(eps) < 2:
        return
    loads = [load(e) for e in eps]
    limit = min(loads) * max_load_ratio + slack
    for e, lo in zip(eps, loads, strict=True):
        if lo > limit and not (queued_only and e.waiting is not None and e.waiting <= 0):
            scores[e.id] *= factor


class BlockLRU:
    """Block hashes one replica is believed to hold, least recently used first."""

    __slots__ = ("capacity", "blocks")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def insert_chain(self, hashes: list[int]) -> None:
        blocks = self.blocks
        for h in reversed(hashes):  # ancestors end up most recent: evicted after their children
            if h in blocks:
                blocks.move_to_end(h)
            else:
                blocks[h] = None
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)

    def match(self, hashes: list[int]) -> int:
        """How many leading blocks of ``hashes`` are held (binary search: the set is parent-closed)."""
        blocks = self.blocks
        lo, hi = 0, len(hashes)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if hashes[mid - 1] in blocks:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def resize(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)


@register_scorer("prefix")
class PrefixScorer(Hooks):
    def __init__(
        self,
        block_size: int = 16,
        capacity_blocks: int = 8192,
        kv_cache_tokens: int | None = None,
        max_load_ratio: float = 2.0,
        slack: float = 4.0,
        hot_factor: float = 0.0,
        defer_to_events: bool = False,
        queued_only: bool = True,
    ) -> None:
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        self.block_size = block_size
        self.capacity = kv_cache_tokens // block_size if kv_cache_tokens else capacity_blocks
        self.max_load_ratio, self.slack, self.hot_factor = max_load_ratio, slack, hot_factor
        self.lrus: dict[str, BlockLRU] = {}
        self._capacities: dict[str, int] = {}
        self.defer_to_events = defer_to_events
        self.queued_only = queued_only
        self._fed: dict[str, float] = {}  # the KV-event index's replicas with events

    def attach(self, shared: Shared) -> None:
        self._fed = shared.kv_index.fed

    def _lru(self, replica: str) -> BlockLRU:
        lru = self.lrus.get(replica)
        if lru is None:
            lru = self.lrus[replica] = BlockLRU(self._capacities.get(replica, self.capacity))
        return lru

    def set_capacity(self, replica: str, blocks: int) -> None:
        """Size one replica's LRU from its engine's KV cache (in blocks of this scorer's size)."""
        self._capacities[replica] = blocks
        if replica in self.lrus:
            self.lrus[replica].resize(blocks)

    def clear(self, replica: str) -> None:
        """Forget what a replica held (it restarted: its cache is empty)."""
        self.lrus.pop(replica, None)

    def score(self, req: RouteRequest, eps: list[Endpoint]) -> dict[str, float] | None:
        if self.defer_to_events and self._fed and all(e.id in self._fed for e in eps):
            return None  # every candidate reports its KV cache: precise_prefix knows better
        hashes = req.hashes(self.block_size)
        if not hashes:
            return {e.id: NEUTRAL for e in eps}
        n = len(hashes)
        lrus = self.lrus
        scores = {e.id: (lrus[e.id].match(hashes) / n if e.id in lrus else 0.0) for e in eps}
        cool(scores, eps, self.max_load_ratio, self.slack, self.hot_factor, self.queued_only)
        return scores

    def on_pick(self, req: RouteRequest, ep: Endpoint) -> None:
        if self.defer_to_events and ep.id in self._fed:
            return  # its engine reports its cache: nothing to guess (the LRU warms again if events stop)
        hashes = req.hashes(self.block_size)
        if hashes:
            if ep.kv_cache_tokens and ep.id not in self._capacities:  # the engine told its size
                self.set_capacity(ep.id, max(1, ep.kv_cache_tokens // self.block_size))
            self._lru(ep.id).insert_chain(hashes)
