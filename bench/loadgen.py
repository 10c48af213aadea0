"""A small streaming load generator for OpenAI-compatible chat endpoints (used by the benchmarks).

Each worker sends streamed chat requests back to back; the result has output tokens per second
(from the engine's own usage numbers) and time-to-first-token percentiles.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass

import aiohttp


@dataclass
class Result:
    label: str
    concurrency: int
    requests: int
    errors: int
    output_tokens: int
    seconds: float
    ttft_s: list[float]

    @property
    def tok_per_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds else 0.0

    def ttft(self, q: float) -> float:
        if not self.ttft_s:
            return float("nan")
        xs = sorted(self.ttft_s)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    def row(self) -> str:
        return (
            f"| {self.label} | {self.concurrency} | {self.requests} | {self.errors} | {self.tok_per_s:.1f} | "
            f"{1000 * statistics.median(self.ttft_s) if self.ttft_s else float('nan'):.1f} | "
            f"{1000 * self.ttft(0.9):.1f} |"
        )


HEADER = (
    "| target | concurrency | requests | errors | output tok/s | TTFT p50 ms | TTFT p90 ms |\n"
    "|---|---|---|---|---|---|---|"
)


async def _one(session: aiohttp.ClientSession, url: str, headers: dict, body: dict) -> tuple[float, int]:
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    chunks = 0  # content chunks: the count when an engine reports no usage in streams
    async with session.post(url, json=body, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {(await resp.text())[:200]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (ttft if ttft is not None else time.perf_counter() - t0), tokens or chunks


async def run(
    label: str,
    base_url: str,
    model: str,
    concurrency: int,
    requests: int,
    max_tokens: int = 64,
    key: str | None = None,
    extra: dict | None = None,
) -> Result:
    """Send ``requests`` streamed chat requests with ``concurrency`` workers."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    url = f"{base_url}/chat/completions"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    ttfts: list[float] = []
    tokens = 0
    errors = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal tokens, errors
        while not queue.empty():
            i = queue.get_nowait()
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"Request {i}: tell me a story about the sea."}],
                "max_tokens": max_tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
                **(extra or {}),
            }
            try:
                ttft, n = await _one(session, url, headers, body)
                ttfts.append(ttft)
                tokens += n
            except Exception as exc:  # noqa: BLE001 - counted and reported, never hidden
                errors += 1
                if errors == 1:
                    print(f"  first error ({label}): {type(exc).__name__}: {str(exc)[:300]}", flush=True)

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    return Result(label, concurrency, requests, errors, tokens, seconds, ttfts)
