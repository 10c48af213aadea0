"""Routing on simulated replicas: a shared-prefix workload shaped like llm-d's, policy against policy.

    .venv/bin/python bench/routing.py                    # m2a's policies (about 4-5 minutes)
    .venv/bin/python bench/routing.py --vllm-router      # + vllm-router (bench/vllm_router_env.sh first)
    .venv/bin/python bench/routing.py --smoke            # a few seconds, to check the plumbing

Workload: ``--groups`` groups of users, each group sharing a long system prompt (``--prefix-tokens``
simple-tokens), each user a stable ~100-token context of their own and a new ~50-token question per
request; output lengths uniform in 32..96 tokens. Poisson arrivals, the rate rising in steps
(``--rates``, simulated requests/s, ``--step-s`` simulated seconds each). The request sequence is
drawn once from ``--seed``: every policy gets the very same requests at the very same times.

Replicas: ``--replicas`` simulated vLLM replicas (``m2a.sim``) in one child process, restarted
for every policy with the same seed (cold caches, same state). The latency model makes the prefill of
an uncached system prompt dominate time to first token (0.6 s for 3,000 tokens, serialised per
replica, against ~0.05 s when the prefix is cached) and gives each replica a small KV cache (room for
~7 system prompts), so round-robin thrashes the caches that prefix-aware routing keeps warm. Simulated
time runs at ``--time-scale`` (0.25: four times faster than real time) so that load generator, router
and replicas fit on two cores; every time reported is in simulated seconds (wall ÷ time scale).

Routers (each in its own child process, in front of the same replicas):

- m2a's gateway (``create_app`` on uvicorn, a ``Router`` with one ``RouterConfig``) with the policies
  ``random``, ``round_robin``, ``load`` (queue + kv_usage + inflight), ``prefix`` (approximate prefix
  affinity only, with its pile-up guard) and ``default`` (``RouterConfig()``, m2a's default pipeline);
- with ``--vllm-router``: the Rust ``vllm-router`` 0.1.17 (its own venv, bench/.venv-vllm-router) with
  ``--policy cache_aware`` and ``--policy power_of_two``, pointed straight at the replicas, with its
  default settings. ``cache_aware`` tokenizes each prompt by asking a worker: first vLLM's
  ``/v1/chat/completions/render`` (the simulator answers 404), then ``/tokenize`` (the simulator's
  tokens); without ``/tokenize`` it logs ``render_unavailable`` and routes no better than
  ``power_of_two``. ``VLLM_ROUTER_LOG=<folder>`` (and ``VLLM_ROUTER_LOG_LEVEL=debug``) keeps its logs,
  with every cache decision and its match rate.

Reported per policy and rate step: p50/p90 time to first token (requests still waiting at the end
count with their wait so far, marked ≥), output tokens/s, and the prefix-cache hit rate from the
simulator's own counters (prompt tokens found cached / prompt tokens looked up); per policy the CPU
use of the replicas, router and load generator processes (psutil; children included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
VLLM_ROUTER = ROOT / "bench" / ".venv-vllm-router" / "bin" / "vllm-router"
KEY = "sk-bench-routing-" + "b" * 24
MODEL = "sim-model"
M2A_POLICIES = ["random", "round_robin", "load", "prefix", "precise", "default"]
GATEWAYS = "@"  # "default@2": the policy in two gateway processes, requests alternating between them
VLLM_POLICIES = ["vllm-router:cache_aware", "vllm-router:power_of_two"]


def sim_params(time_scale: float) -> dict:
    return {
        "model": MODEL,
        "base_ttft_s": 0.02,
        "prefill_s_per_token": 0.0002,  # 5,000 prompt tokens/s: 0.6 s for an uncached 3,000-token prefix
        "decode_s_per_token": 0.03,
        "decode_slowdown_per_seq": 0.02,
        "max_num_seqs": 16,
        "block_size": 16,
        "capacity_blocks": 1536,  # 24,576 tokens: ~7 system prompts with the running requests' blocks
        "hash_seed": 0x5EED,  # the replicas' block hashes differ from the router's, as vLLM's do
        "time_scale": time_scale,
        "min_emit_interval_s": 0.05,  # wall: a few chunks per answer, cheap streams
    }


def policy_config(name: str):  # -> RouterConfig
    from m2a.config import RouterConfig, ScorerConfig

    if name == "random":
        return RouterConfig(filters=["healthy"], scorers=[], picker="weighted_random")
    if name == "round_robin":
        return RouterConfig(filters=["healthy"], scorers=[], picker="round_robin")
    if name == "load":
        return RouterConfig(scorers=[ScorerConfig(name=n) for n in ("queue", "kv_usage", "inflight")])
    if name == "prefix":
        return RouterConfig(scorers=[ScorerConfig(name="prefix")])
    if name == "precise":
        return RouterConfig(scorers=[ScorerConfig(name="precise_prefix")])
    if name == "default":
        return RouterConfig()
    if name == "default_unqueued":  # the default, its prefix guards cooling busy replicas that do not queue
        queued = [
            sc.model_copy(update={"params": {**sc.params, "queued_only": False}})
            if sc.name in ("prefix", "precise_prefix")
            else sc
            for sc in RouterConfig().scorers
        ]
        return RouterConfig(scorers=queued)
    if name == "default_eager":  # the default, the approximate scorer scoring even where events are sent
        eager = [
            sc.model_copy(update={"params": {}}) if sc.name == "prefix" else sc
            for sc in RouterConfig().scorers
        ]
        return RouterConfig(scorers=eager)
    if name == "default_sized":  # the default, its prefix LRUs sized like the simulated KV caches
        sized = [
            sc.model_copy(update={"params": {**sc.params, "kv_cache_tokens": 1536 * 16}})
            if sc.name == "prefix"
            else sc
            for sc in RouterConfig().scorers
        ]
        return RouterConfig(scorers=sized)
    raise SystemExit(f"unknown policy {name}")


# -- child processes -------------------------------------------------------------------------------


async def child_sim(n: int, params: dict, seed: int) -> None:
    from m2a.sim import SimParams, Simulator

    async with Simulator(n, params=SimParams(**params), seed=seed, kv_events=True) as sim:
        print(json.dumps({"urls": sim.urls, "metrics": sim.metrics_urls, "kv": sim.kv_endpoints}), flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


def child_gateway(
    policy: str, urls: list[str], metrics: list[str], kv: list[str], port: int, seed: int
) -> None:
    import uvicorn

    from m2a.config import GatewayConfig
    from m2a.gateway.app import create_app
    from m2a.router.pipeline import Router
    from m2a.router.pool import Endpoint, Pool

    pool = Pool()
    for i, (url, murl, kurl) in enumerate(zip(urls, metrics, kv, strict=True)):
        ep = Endpoint(
            f"sim-{i}", MODEL, url, metrics_url=murl, healthy=True, tokenizer="simple", kv_events=kurl
        )
        pool.add(ep)
    router = Router(pool, {}, default=policy_config(policy), seed=seed)
    app = create_app(pool, KEY, GatewayConfig(priorities=False), router=router)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, loop="uvloop")


# -- workload ----------------------------------------------------------------------------------------


@dataclass
class Planned:
    at: float  # simulated seconds from the start
    step: int
    body: bytes
    max_tokens: int


def plan(args: argparse.Namespace) -> list[Planned]:
    rng = random.Random(args.seed)
    vocab = [f"w{i}" for i in range(4000)]

    def text(n: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(n))

    systems = [f"Group {g} rules. " + text(args.prefix_tokens) for g in range(args.groups)]
    users = [
        [f"I am user {u} of group {g}. " + text(100) for u in range(args.users)] for g in range(args.groups)
    ]
    out: list[Planned] = []
    t = 0.0
    for step, rate in enumerate(args.rates):
        end = (step + 1) * args.step_s
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                t = end
                break
            g, u = rng.randrange(args.groups), rng.randrange(args.users)
            max_tokens = rng.randint(32, 96)
            body = {
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": systems[g]},
                    {"role": "user", "content": users[g][u] + " Question: " + text(50)},
                ],
                "max_tokens": max_tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            out.append(Planned(t, step, json.dumps(body).encode(), max_tokens))
    return out


@dataclass
class Done:
    step: int
    start: float  # wall, from the run's start
    ttft: float | None = None  # wall seconds
    end: float | None = None
    tokens: int = 0
    error: str | None = None


async def one(session: aiohttp.ClientSession, url: str, p: Planned, t0: float, rec: Done) -> None:
    try:
        async with session.post(url, data=p.body, headers={"content-type": "application/json"}) as resp:
            if resp.status != 200:
                rec.error = f"HTTP {resp.status}"
                await resp.read()
                return
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                if rec.ttft is None and b'"content"' in line:
                    rec.ttft = time.perf_counter() - t0 - rec.start
                if b'"error"' in line:
                    rec.error = "stream error"
                elif b'"completion_tokens"' in line:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        rec.tokens = json.loads(line[6:])["usage"]["completion_tokens"]
            rec.end = time.perf_counter() - t0
    except (aiohttp.ClientError, TimeoutError) as exc:
        rec.error = type(exc).__name__


# -- measurement -------------------------------------------------------------------------------------


async def cache_counts(session: aiohttp.ClientSession, urls: list[str]) -> tuple[int, int]:
    """(hits, queries) summed over the replicas, from the simulator's own counters."""
    hits = queries = 0
    for u in urls:
        async with session.get(u.removesuffix("/v1") + "/sim/cache") as r:
            info = await r.json()
        hits, queries = hits + info["hits"], queries + info["queries"]
    return hits, queries


def cpu_s(proc: psutil.Process) -> float:
    """CPU seconds of a process and its children (vllm-router's Python launcher runs the Rust binary)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


@dataclass
class StepResult:
    rate: float
    requests: int
    errors: int
    censored: int  # no first token by the end: counted with their wait so far
    p50: float
    p90: float
    tok_s: float
    hit_rate: float


@dataclass
class PolicyResult:
    name: str
    steps: list[StepResult] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core
    note: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_http(url: str, timeout: float, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with s.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up in {timeout:.0f} s")
            await asyncio.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run_policy(name: str, args: argparse.Namespace, planned: list[Planned]) -> PolicyResult:
    py = sys.executable
    me = str(Path(__file__).resolve())
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    sim = subprocess.Popen(
        [py, me, "--child", "sim", "--replicas", str(args.replicas), "--seed", str(args.seed),
         "--time-scale", str(args.time_scale)],
        stdout=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    routers: list[subprocess.Popen] = []
    base, _, copies = name.partition(GATEWAYS)
    result = PolicyResult(name)
    try:
        line = await asyncio.to_thread(sim.stdout.readline)  # type: ignore[union-attr]
        if not line:
            raise RuntimeError("the simulator did not start")
        info = json.loads(line)
        urls, murls, kurls = info["urls"], info["metrics"], info["kv"]
        ports = [free_port() for _ in range(int(copies or 1))]
        headers = {"authorization": f"Bearer {KEY}"}
        if name.startswith("vllm-router:"):
            roots = [u.removesuffix("/v1") for u in urls]
            level = os.environ.get("VLLM_ROUTER_LOG_LEVEL", "warning")
            cmd = [str(VLLM_ROUTER), "--host", "127.0.0.1", "--port", str(ports[0]), "--worker-urls", *roots,
                   "--policy", name.split(":", 1)[1], "--log-level", level]  # fmt: skip
            log_to = os.environ.get("VLLM_ROUTER_LOG")  # a folder for its logs, e.g. to check its choices
            log = open(f"{log_to}/{name.split(':')[1]}.log" if log_to else os.devnull, "w")  # noqa: SIM115
            routers.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
            await wait_http(f"http://127.0.0.1:{ports[0]}/health", 60)
        else:
            for i, port in enumerate(ports):
                cmd = [py, me, "--child", "gateway", "--policy", base, "--port", str(port), "--seed",
                       str(args.seed + i), "--urls", *urls, "--metrics", *murls, "--kv", *kurls]  # fmt: skip
                routers.append(subprocess.Popen(cmd, env=env))
            for port in ports:
                await wait_http(f"http://127.0.0.1:{port}/readyz", 60, headers)
        gw_urls = [f"http://127.0.0.1:{port}/v1/chat/completions" for port in ports]
        ts = args.time_scale
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
            warm = json.dumps(
                {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            )
            for _ in range(3):  # the m2a gateway loads its tokenizer in the background at start
                for url in gw_urls:
                    async with session.post(
                        url, data=warm, headers={"content-type": "application/json"}
                    ) as r:
                        await r.read()
                        if r.status != 200:
                            raise RuntimeError(f"warm-up request: HTTP {r.status}")
                await asyncio.sleep(0.2)
            procs = {
                "replicas": [psutil.Process(sim.pid)],
                "router": [psutil.Process(r.pid) for r in routers],
            }
            me_proc = psutil.Process()
            cpu0 = {k: sum(map(cpu_s, ps)) for k, ps in procs.items()} | {"loadgen": cpu_s(me_proc)}
            counts = [await cache_counts(session, urls)]
            recs: list[Done] = []
            tasks: list[asyncio.Task[None]] = []
            t0 = time.perf_counter()
            step_end = [(i + 1) * args.step_s * ts for i in range(len(args.rates))]
            next_step = 0
            for p in planned:
                while p.at * ts >= step_end[next_step]:
                    await asyncio.sleep(max(0.0, step_end[next_step] - (time.perf_counter() - t0)))
                    counts.append(await cache_counts(session, urls))
                    next_step += 1
                delay = p.at * ts - (time.perf_counter() - t0)
                if delay > 0:
                    await asyncio.sleep(delay)
                rec = Done(p.step, time.perf_counter() - t0)
                recs.append(rec)
                url = gw_urls[len(tasks) % len(gw_urls)]  # several gateways: requests alternate
                tasks.append(asyncio.create_task(one(session, url, p, t0, rec)))
            while next_step < len(args.rates):
                await asyncio.sleep(max(0.0, step_end[next_step] - (time.perf_counter() - t0)))
                counts.append(await cache_counts(session, urls))
                next_step += 1
            pending = [t for t in tasks if not t.done()]
            if pending:  # let the last step's requests get their first token, up to a limit
                await asyncio.wait(pending, timeout=args.drain_s * ts)
            cutoff = time.perf_counter() - t0
            elapsed = cutoff
            cpu1 = {k: sum(map(cpu_s, ps)) for k, ps in procs.items()} | {"loadgen": cpu_s(me_proc)}
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        result.cpu = {k: 100 * (cpu1[k] - cpu0[k]) / elapsed for k in cpu0}
        result.cpu["total"] = sum(result.cpu.values())
        for i, rate in enumerate(args.rates):
            lo, hi = i * args.step_s * ts, (i + 1) * args.step_s * ts
            mine = [r for r in recs if r.step == i]
            ttfts, censored = [], 0
            for r in mine:
                if r.ttft is not None:
                    ttfts.append(r.ttft / ts)
                elif r.error is None:
                    censored += 1
                    ttfts.append((cutoff - r.start) / ts)
            tokens = sum(r.tokens for r in recs if r.end is not None and lo <= r.end < hi)
            (h0, q0), (h1, q1) = counts[i], counts[i + 1]
            result.steps.append(
                StepResult(
                    rate=rate,
                    requests=len(mine),
                    errors=sum(r.error is not None for r in mine),
                    censored=censored,
                    p50=pct(ttfts, 0.5),
                    p90=pct(ttfts, 0.9),
                    tok_s=tokens / ((hi - lo) / ts),
                    hit_rate=(h1 - h0) / (q1 - q0) if q1 > q0 else float("nan"),
                )
            )
        if any(r.poll() is not None for r in routers):
            result.note = "a router exited early"
    finally:
        for r in routers:
            stop(r)
        stop(sim)
    return result


def fmt_s(x: float, censored: bool) -> str:
    s = f"{x:.2f}" if x < 100 else f"{x:.0f}"
    return ("≥" + s) if censored else s


def table(results: list[PolicyResult], rates: list[float]) -> str:
    lines = [
        "| policy | rate (req/s) | requests | errors | TTFT p50 (s) | TTFT p90 (s) | output tok/s "
        "| cache hit rate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        for s in res.steps:
            c = s.censored > 0
            lines.append(
                f"| {res.name} | {s.rate:g} | {s.requests} | {s.errors} | {fmt_s(s.p50, c)} "
                f"| {fmt_s(s.p90, c)} | {s.tok_s:.0f} | {100 * s.hit_rate:.1f}% |"
            )
    return "\n".join(lines)


def cpu_table(results: list[PolicyResult]) -> str:
    lines = [
        "| policy | replicas (1 process) | router | load generator | all three (of 200%) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        c = r.cpu
        lines.append(
            f"| {r.name} | {c['replicas']:.0f}% | {c['router']:.0f}% | {c['loadgen']:.0f}% "
            f"| {c['total']:.0f}% |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    policies = list(args.policies)
    if args.vllm_router:
        if not VLLM_ROUTER.exists():
            raise SystemExit(f"{VLLM_ROUTER} is missing: run bench/vllm_router_env.sh first")
        policies += VLLM_POLICIES
    planned = plan(args)
    ts = args.time_scale
    print(
        f"{args.replicas} simulated replicas, {args.groups} groups × {args.users} users, "
        f"{args.prefix_tokens}-token system prompts; rates {args.rates} req/s × {args.step_s:g} s each "
        f"({len(planned)} requests); time scale {ts:g} (wall = simulated × {ts:g}); seed {args.seed}",
        flush=True,
    )
    results = []
    for name in policies:
        started = time.perf_counter()
        try:
            res = await run_policy(name, args, planned)
        except Exception as exc:  # one router that cannot run does not sink the others
            print(f"{name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        results.append(res)
        c = res.cpu
        print(
            f"{name}: {time.perf_counter() - started:.0f} s wall; CPU replicas {c['replicas']:.0f}% router "
            f"{c['router']:.0f}% loadgen {c['loadgen']:.0f}% total {c['total']:.0f}% {res.note}",
            flush=True,
        )
        for s in res.steps:
            print(
                f"   {s.rate:g} req/s: n={s.requests} err={s.errors} waiting={s.censored} p50={s.p50:.2f} "
                f"p90={s.p90:.2f} tok/s={s.tok_s:.0f} hit={100 * s.hit_rate:.1f}%",
                flush=True,
            )
    print("\n" + table(results, args.rates))
    print("\nCPU (% of one core, over each policy's run):\n\n" + cpu_table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                [{"name": r.name, "cpu": r.cpu, "steps": [s.__dict__ for s in r.steps]} for r in results]
            )
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", type=lambda s: s.split(","), default=M2A_POLICIES)
    ap.add_argument("--vllm-router", action="store_true", help="also run vllm-router's two policies")
    ap.add_argument("--replicas", type=int, default=6)
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--users", type=int, default=8, help="users per group")
    ap.add_argument("--prefix-tokens", type=int, default=3000)
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[8.0, 16.0, 24.0])
    ap.add_argument("--step-s", type=float, default=30.0, help="simulated seconds per rate step")
    ap.add_argument(
        "--drain-s", type=float, default=20.0, help="simulated seconds to wait after the last step"
    )
    ap.add_argument("--time-scale", type=float, default=0.35)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="tiny run: two policies, short steps")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", choices=["sim", "gateway"], help=argparse.SUPPRESS)
    ap.add_argument("--policy", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--urls", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--metrics", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--kv", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "sim":
        asyncio.run(child_sim(args.replicas, sim_params(args.time_scale), args.seed))
        return
    if args.child == "gateway":
        child_gateway(args.policy, args.urls, args.metrics, args.kv, args.port, args.seed)
        return
    if args.smoke:
        args.step_s, args.drain_s, args.rates = 8.0, 4.0, [4.0, 8.0]
        if args.policies == M2A_POLICIES:
            args.policies = ["round_robin", "default"]
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
