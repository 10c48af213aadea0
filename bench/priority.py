"""Priority under saturation: a batch team floods a model at ~3x what its engine serves, while a
critical team sends a few requests a second. The critical team's time to first token is measured
with no flood, with the flood and priorities off, and with the flood and priorities on.

One vLLM engine (SmolLM2-135M on CPU) serves all three scenarios. Gateway A (`m2a up`, priorities
on) owns it; gateway B (`m2a up`, `gateway.priorities: false`) reaches the same engine as a remote
URL, so it neither holds requests nor passes a priority to vLLM. Between scenarios the flood's
leftovers are cancelled and the engine is drained.

    .venv/bin/python bench/priority.py [--seconds 45] [--critical-rate 1] [--flood-factor 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import KEY, Up  # noqa: E402

MODEL = "smollm2-135m-instruct"


def teams(root: str) -> dict[str, str]:
    """A critical and a batch team on one gateway, each with a key: {team: key}."""
    admin = {"authorization": f"Bearer {KEY}"}
    keys = {}
    for team, priority in (("payments", "critical"), ("research", "batch")):
        httpx.post(f"{root}/admin/v1/teams", json={"name": team, "priority": priority}, headers=admin)
        httpx.put(f"{root}/admin/v1/teams/{team}/grants/{MODEL}", headers=admin).raise_for_status()
        r = httpx.post(f"{root}/admin/v1/keys", json={"team": team, "name": "bench"}, headers=admin)
        r.raise_for_status()
        keys[team] = r.json()["key"]
    return keys


async def one(
    session: aiohttp.ClientSession, url: str, key: str, prompt: str, max_tokens: int
) -> tuple[int, float]:
    """(status, time to first content token in s; NaN when there was none)."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    t0 = time.perf_counter()
    async with session.post(url, json=body, headers={"authorization": f"Bearer {key}"}) as resp:
        if resp.status != 200:
            await resp.read()
            return resp.status, float("nan")
        ttft = float("nan")
        async for raw in resp.content:
            line = raw.strip()
            if ttft != ttft and line.startswith(b"data: {") and b'"content"' in line:
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                    ttft = time.perf_counter() - t0
        return 200, ttft


async def poisson(rate: float, seconds: float, send) -> list[asyncio.Task]:  # type: ignore[no-untyped-def]
    tasks = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        tasks.append(asyncio.create_task(send(i)))
        i += 1
        await asyncio.sleep(random.expovariate(rate))
    return tasks


async def engine_idle(metrics_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        while True:
            text = await (await s.get(metrics_url)).text()
            busy = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting"))
            )
            if busy == 0:
                return
            await asyncio.sleep(0.5)


async def capacity(url: str, key: str, seconds: float = 20) -> float:
    """Requests per second the engine completes at 16 concurrent streams of 64 tokens."""
    done = 0
    end = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def worker(w: int) -> None:
            nonlocal done
            n = 0
            while time.perf_counter() < end:
                await one(s, url, key, f"Worker {w} request {n}: tell me a story about the sea.", 64)
                done, n = done + 1, n + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(16)))
        return done / (time.perf_counter() - t0)


async def scenario(
    label: str, url: str, keys: dict[str, str], flood_rate: float, args: argparse.Namespace, metrics_url: str
) -> str:
    print(f"[{label}] {args.seconds:.0f} s, flood {flood_rate:.1f} req/s", flush=True)
    crit: list[float] = []
    crit_status: Counter[int] = Counter()
    batch_status: Counter[int] = Counter()
    batch_ttft: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def critical(i: int) -> None:
            status, ttft = await one(s, url, keys["payments"], f"Payment {i}: is this transfer valid?", 32)
            crit_status[status] += 1
            if status == 200:
                crit.append(ttft)

        async def batch(i: int) -> None:
            status, ttft = await one(
                s, url, keys["research"], f"Doc {i} {random.random()}: summarise the sea.", 64
            )
            batch_status[status] += 1
            if status == 200:
                batch_ttft.append(ttft)

        runs = [poisson(args.critical_rate, args.seconds, critical)]
        if flood_rate:
            runs.append(poisson(flood_rate, args.seconds, batch))
        crit_tasks, *flood_tasks = await asyncio.gather(*runs)
        await asyncio.wait(crit_tasks, timeout=120)  # the critical ones finish; the flood is cut off
        leftover = [t for ts in flood_tasks for t in ts if not t.done()]
        for t in leftover:
            t.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
    await engine_idle(metrics_url)
    xs = sorted(crit)
    p50 = 1000 * statistics.median(xs) if xs else float("nan")
    p90 = 1000 * xs[min(len(xs) - 1, int(0.9 * len(xs)))] if xs else float("nan")
    sent = sum(batch_status.values()) + len([t for ts in flood_tasks for t in ts if t.cancelled()])
    batch_p50 = 1000 * statistics.median(batch_ttft) if batch_ttft else float("nan")
    return (
        f"| {label} | {sum(crit_status.values())} | {dict(crit_status)} | {p50:.0f} | {p90:.0f} | "
        f"{sent} | {batch_status.get(200, 0)} | {batch_status.get(503, 0)} | {len(leftover)} | "
        f"{batch_p50:.0f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=45.0, help="per scenario")
    ap.add_argument("--critical-rate", type=float, default=1.0, help="critical requests per second")
    ap.add_argument("--flood-factor", type=float, default=3.0, help="flood rate over measured capacity")
    ap.add_argument("--home", type=Path, default=Path("/tmp/m2a-bench-priority"))
    args = ap.parse_args()
    random.seed(7)
    with Up([{"name": MODEL}], args.home / "a", label="gateway A (priorities on)") as a:
        replica = a.replicas()[0]
        engine_url = str(replica["url"])
        metrics_url = engine_url.removesuffix("/v1") + "/metrics"
        remote = [{"name": MODEL, "engine": "remote", "url": engine_url}]
        with Up(
            remote,
            args.home / "b",
            label="gateway B (priorities off)",
            extra={"gateway": {"priorities": False}},
        ) as b:
            keys_a, keys_b = teams(a.root), teams(b.root)
            print("[capacity] 16 streams of 64 tokens for 20 s", flush=True)
            cap = asyncio.run(capacity(f"{b.base_url}/chat/completions", keys_b["research"]))
            asyncio.run(engine_idle(metrics_url))
            flood = args.flood_factor * cap
            print(f"[capacity] {cap:.2f} req/s; flood at {flood:.1f} req/s", flush=True)
            rows = [
                asyncio.run(
                    scenario("no flood", f"{a.base_url}/chat/completions", keys_a, 0, args, metrics_url)
                ),
                asyncio.run(
                    scenario(
                        "flood, priorities off",
                        f"{b.base_url}/chat/completions",
                        keys_b,
                        flood,
                        args,
                        metrics_url,
                    )
                ),
                asyncio.run(
                    scenario(
                        "flood, priorities on",
                        f"{a.base_url}/chat/completions",
                        keys_a,
                        flood,
                        args,
                        metrics_url,
                    )
                ),
            ]
    print(
        f"\nengine capacity {cap:.2f} req/s (64-token answers); flood {flood:.1f} req/s; "
        f"critical {args.critical_rate} req/s"
    )
    print(
        "| scenario | critical sent | critical statuses | critical TTFT p50 ms | p90 ms | batch sent | "
        "batch ok | batch 503 | batch cut off at end | batch TTFT p50 ms |\n" + "|---" * 10 + "|"
    )
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
