"""Shared pieces of the ingestion tests: a chunking strategy and an embedder that can be held."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

STRATEGY = {"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 0}}


class Embedder:
    """A deterministic hash embedder (the tests are about the queue and the quota, not the vectors)
    that counts its calls; clearing ``hold`` freezes every call until it is set again."""

    def __init__(self) -> None:
        self.calls = 0
        self.hold = asyncio.Event()
        self.hold.set()
        self.entered = asyncio.Event()

    async def __call__(self, team_id: int, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        self.entered.set()
        await self.hold.wait()
        return [[b / 255 for b in hashlib.sha256(t.encode()).digest()[:8]] for t in texts]
