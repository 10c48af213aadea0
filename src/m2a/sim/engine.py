"""One simulated engine: a scheduler with a running set and a waiting queue, over the paged KV cache.

A request waits (FIFO, or by ``priority``, lower first) until fewer than ``max_num_seqs`` requests run
and the cache has room for its uncached prompt blocks. Then it prefills — serialised with the other
prefills on the replica's one compute unit when ``serial_prefill`` — for ``base_ttft_s +
prefill_s_per_token × uncached tokens``, emits its first token, and decodes one token per step. A
step lasts longer the more sequences run. All times are simulated seconds × ``time_scale`` × the
replica's ``slow`` fault. Tokens due closer together than ``min_emit_interval_s`` (wall) leave as one
chunk, which keeps hundreds of concurrent streams cheap.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field

from m2a.sim.kvcache import PagedKVCache, SeqBlocks
from m2a.sim.metrics import EngineMetrics
from m2a.sim.params import Faults, SimParams
from m2a.sim.tokenize import output_words, word_ids


@dataclass(eq=False)
class Run:
    """One request as the engine sees it; the server reads its numbers for ``usage``."""

    prompt: list[int]
    max_tokens: int
    priority: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"
    ttft_s: float | None = None  # simulated seconds, once the first token is out
    _fut: asyncio.Future[SeqBlocks] | None = field(default=None, repr=False)


class Engine:
    def __init__(
        self, params: SimParams, faults: Faults, cache: PagedKVCache, metrics: EngineMetrics
    ) -> None:
        self.params = params
        self.faults = faults
        self.cache = cache
        self.metrics = metrics
        self.running = 0
        self.waiting = 0
        self._queue: list[tuple[int, int, Run]] = []
        self._order = itertools.count()
        self._prefill = asyncio.Lock()

    # -- time ------------------------------------------------------------------------------------
    def wall(self, simulated: float) -> float:
        return simulated * self.params.time_scale * self.faults.slow

    def decode_step(self) -> float:
        """Simulated seconds of one decode step with the sequences running now."""
        p = self.params
        return p.decode_s_per_token * (1.0 + p.decode_slowdown_per_seq * max(self.running - 1, 0))

    # -- scheduling ------------------------------------------------------------------------------
    def _schedule(self) -> None:
        while self._queue and self.running < self.params.max_num_seqs:
            run = self._queue[0][2]
            fut = run._fut
            if fut is None or fut.done():  # gave up while waiting
                heapq.heappop(self._queue)
                continue
            seq = self.cache.allocate(run.prompt)
            if seq is None:  # head of line waits for blocks to come free
                break
            heapq.heappop(self._queue)
            self.waiting -= 1
            self.running += 1
            fut.set_result(seq)

    async def _admit(self, run: Run) -> SeqBlocks:
        run._fut = asyncio.get_running_loop().create_future()
        key = run.priority if self.params.scheduling_policy == "priority" else 0
        heapq.heappush(self._queue, (key, next(self._order), run))
        self.waiting += 1
        self._schedule()
        try:
            return await run._fut
        except asyncio.CancelledError:
            fut = run._fut
            if fut.done() and not fut.cancelled():  # admitted just as the caller went away
                self._finish(fut.result())
            else:
                self.waiting -= 1
            raise

    def _finish(self, seq: SeqBlocks) -> None:
        self.cache.release(seq)
        self.running -= 1
        self._schedule()

    # -- a request ---------------------------------------------------------------------------------
    async def generate(self, run: Run) -> AsyncIterator[list[str]]:
        """Chunks of output words; the first chunk is the first token alone."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        p = self.params
        seq = await self._admit(run)
        try:
            run.cached_tokens = seq.hit_tokens
            prefill = p.base_ttft_s + p.prefill_s_per_token * (len(run.prompt) - seq.hit_tokens)
            unit: AbstractAsyncContextManager[object] = self._prefill if p.serial_prefill else nullcontext()
            async with unit:
                await asyncio.sleep(self.wall(prefill))
            words = output_words(run.prompt, run.max_tokens)
            ids = word_ids(words)
            self.cache.append(seq, ids[:1])
            run.completion_tokens = 1
            run.ttft_s = (loop.time() - t0) / p.time_scale
            self.metrics.ttft.observe(run.ttft_s)
            yield words[:1]
            done, progress, last = 1, 0.0, loop.time()
            while done < len(words):
                step = self.wall(self.decode_step())
                await asyncio.sleep(max((1.0 - progress) * step, p.min_emit_interval_s))
                now = loop.time()
                progress += (now - last) / step if step > 0 else len(words)
                last = now
                k = min(int(progress), len(words) - done)
                if k <= 0:
                    continue
                progress -= k
                self.cache.append(seq, ids[done : done + k])
                chunk = words[done : done + k]
                done += k
                run.completion_tokens = done
                yield chunk
            self.metrics.finished(run, (loop.time() - t0) / p.time_scale)
        finally:
            self._finish(seq)
