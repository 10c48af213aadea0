"""A paged KV cache with prefix reuse and LRU eviction, modelled on vLLM's block manager.

The cache holds ``capacity`` blocks of ``block_size`` tokens. A full block is identified by a chained
hash (its parent block's hash and its own token ids: ``m2a.protocol.tokens.block_hashes``). A request
reuses the longest run of cached full blocks from the start of its prompt (those tokens are prefix
cache hits; as in vLLM the last prompt token is always computed, so a prompt never hits whole), and
takes fresh blocks for the rest. Fresh blocks come from the head of the free queue; a block that
still holds a cached hash is evicted then (``BlockRemoved``). When a request ends its blocks go back
to the tail of the free queue, last block first, keeping their hashes for reuse until evicted: the
free queue is the LRU of reusable blocks. Hashes of new full blocks are reported as ``BlockStored``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from m2a.protocol.kv_events import AllBlocksCleared, KVCacheEvent, removed, stored
from m2a.sim.tokenize import ROOT_HASH, block_hashes, chained_hash


@dataclass(eq=False, slots=True)
class Block:
    id: int
    hash: int | None = None
    ref: int = 0


@dataclass
class CacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # prompt tokens found cached
    stored: int = 0  # blocks given a hash
    evicted: int = 0  # cached blocks reused for other content
    alloc_failures: int = 0  # output blocks that found no free block (generation went on untracked)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


@dataclass(eq=False)
class SeqBlocks:
    """One request's blocks and the tokens they hold."""

    tokens: list[int]
    blocks: list[Block]
    hit_tokens: int
    last_hash: int | None  # hash of the last full block (the parent of the next one)
    overflow: bool = False
    released: bool = field(default=False, repr=False)


class PagedKVCache:
    def __init__(
        self,
        block_size: int,
        capacity: int,
        on_event: Callable[[KVCacheEvent], None] | None = None,
        root: int = ROOT_HASH,
    ) -> None:
        self.block_size = block_size
        self.root = root  # the chain's seed, as vLLM's from PYTHONHASHSEED: hashes differ per seed
        self.capacity = capacity
        self.on_event = on_event
        self.stats = CacheStats()
        self._blocks = [Block(i) for i in range(capacity)]
        self._free: OrderedDict[int, Block] = OrderedDict((b.id, b) for b in self._blocks)
        self.cached: dict[int, Block] = {}

    # -- state -------------------------------------------------------------------------------------
    @property
    def free_blocks(self) -> int:
        """Blocks no running request holds (cached ones included: they can be evicted)."""
        return len(self._free)

    @property
    def used_blocks(self) -> int:
        return self.capacity - len(self._free)

    @property
    def usage(self) -> float:
        """vLLM's ``kv_cache_usage_perc``: the fraction of blocks held by running requests."""
        return self.used_blocks / self.capacity

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def cached_prefix(self, tokens: Sequence[int]) -> int:
        """How many prompt tokens a request for ``tokens`` would find cached now."""
        return self._match(block_hashes(tokens, self.block_size, self.root), len(tokens)) * self.block_size

    def _match(self, hashes: list[int], n_tokens: int) -> int:
        limit = min(len(hashes), (n_tokens - 1) // self.block_size)
        hit = 0
        while hit < limit and hashes[hit] in self.cached:
            hit += 1
        return hit

    # -- allocation --------------------------------------------------------------------------------
    def _emit(self, event: KVCacheEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _take_free(self, evicted: list[int]) -> Block:
        _, block = self._free.popitem(last=False)
        if block.hash is not None:
            del self.cached[block.hash]
            evicted.append(block.hash)
            block.hash = None
        block.ref = 1
        return block

    def allocate(self, tokens: Sequence[int]) -> SeqBlocks | None:
        """Blocks for a prompt, reusing its cached prefix; None when too few blocks are free now."""
        bs = self.block_size
        hashes = block_hashes(tokens, bs, self.root)
        hit = self._match(hashes, len(tokens))
        hit_blocks = [self.cached[h] for h in hashes[:hit]]
        need = self.blocks_for(len(tokens)) - hit
        if len(self._free) - sum(1 for b in hit_blocks if b.ref == 0) < need:
            return None
        for b in hit_blocks:
            if b.ref == 0:
                del self._free[b.id]
            b.ref += 1
        evicted: list[int] = []
        fresh = [self._take_free(evicted) for _ in range(need)]
        if evicted:
            self.stats.evicted += len(evicted)
            self._emit(removed(evicted))
        seq = SeqBlocks(list(tokens), hit_blocks + fresh, hit * bs, hashes[hit - 1] if hit else None)
        self._store(seq, hit, hashes[hit:])
        self.stats.queries += len(tokens)
        self.stats.hits += hit * bs
        return seq

    def _store(self, seq: SeqBlocks, first: int, hashes: list[int]) -> None:
        """Give blocks ``first...`` of ``seq`` their chain hashes; one BlockStored per unbroken run."""
        run: list[int] = []
        run_start, run_parent = first, seq.last_hash
        for i, h in enumerate(hashes, start=first):
            if h in self.cached:  # the same content is cached in another block already: keep that one
                self._flush_run(seq, run, run_parent, run_start)
                run, run_start, run_parent = [], i + 1, h
            else:
                block = seq.blocks[i]
                block.hash = h
                self.cached[h] = block
                run.append(h)
            seq.last_hash = h
        self._flush_run(seq, run, run_parent, run_start)

    def _flush_run(self, seq: SeqBlocks, run: list[int], parent: int | None, start: int) -> None:
        if not run:
            return
        bs = self.block_size
        self.stats.stored += len(run)
        self._emit(stored(list(run), parent, seq.tokens[start * bs : (start + len(run)) * bs], bs))

    def append(self, seq: SeqBlocks, token_ids: Sequence[int]) -> None:
        """Add generated tokens: new blocks as they are needed, hashes as blocks fill."""
        if seq.overflow or seq.released:
            return
        bs = self.block_size
        filled_from = len(seq.tokens) // bs
        evicted: list[int] = []
        for t in token_ids:
            if len(seq.tokens) == len(seq.blocks) * bs:
                if not self._free:
                    self.stats.alloc_failures += 1
                    seq.overflow = True
                    break
                seq.blocks.append(self._take_free(evicted))
            seq.tokens.append(t)
        if evicted:
            self.stats.evicted += len(evicted)
            self._emit(removed(evicted))
        full = len(seq.tokens) // bs
        if full > filled_from:
            hashes, parent = [], self.root if seq.last_hash is None else seq.last_hash
            for i in range(filled_from, full):
                parent = chained_hash(parent, seq.tokens[i * bs : (i + 1) * bs])
                hashes.append(parent)
            self._store(seq, filled_from, hashes)

    def release(self, seq: SeqBlocks) -> None:
        """A request ended: its blocks go back to the free queue, cached ones reusable (LRU)."""
        if seq.released:
            return
        seq.released = True
        for block in reversed(seq.blocks):
            block.ref -= 1
            if block.ref == 0:
                self._free[block.id] = block
                if block.hash is None:  # nothing to reuse: hand it out first
                    self._free.move_to_end(block.id, last=False)

    def clear(self) -> None:
        """Forget every cached block (a restart); running requests must have been released."""
        for block in self._blocks:
            block.hash, block.ref = None, 0
        self.cached.clear()
        self._free = OrderedDict((b.id, b) for b in self._blocks)
        self._emit(AllBlocksCleared())
