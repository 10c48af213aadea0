"""What the sandbox costs to start: running ``true`` and ``python -c pass`` through each backend that
works here (bwrap, unshare) against a plain subprocess (the baseline), N runs each, interleaved so
that the machine's noise falls on all of them alike. It reports p50 / p95 / mean wall-clock
milliseconds per run, from spawn until the run's result is back (the sandbox's pid namespace gone).

    .venv/bin/python bench/sandbox.py [--n 200] [--backends bwrap,unshare]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from m2a.trust.sandbox import Limits, SandboxUnavailable, detect

LIMITS = Limits(timeout_s=60, cpu_s=30, memory_mb=1024, max_procs=64)
COMMANDS = {"true": ["true"], "python -c pass": [sys.executable, "-c", "pass"]}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def plain(argv: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    await proc.communicate(b"")
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="runs per command and backend")
    ap.add_argument("--backends", default="bwrap,unshare")
    args = ap.parse_args()

    runners = {"plain subprocess": None}
    for name in args.backends.split(","):
        try:
            runners[name] = detect(name)
        except SandboxUnavailable as e:
            print(f"skipping {name}: {e}")
    times: dict[tuple[str, str], list[float]] = {(r, c): [] for r in runners for c in COMMANDS}
    total = args.n * len(runners) * len(COMMANDS)
    done = 0
    started = time.monotonic()
    for i in range(args.n):
        for cmd, argv in COMMANDS.items():
            for rname, backend in runners.items():
                t0 = time.perf_counter()
                if backend is None:
                    await plain(argv)
                else:
                    res = await backend.run(argv, limits=LIMITS)
                    if res.exit_code != 0:
                        raise RuntimeError(f"{rname} {cmd}: {res.exit_code} {res.stderr[-300:]!r}")
                times[(rname, cmd)].append((time.perf_counter() - t0) * 1000)
                done += 1
        if (i + 1) % max(1, args.n // 20) == 0 or i + 1 == args.n:
            print(f"  {done}/{total} runs, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

    print(f"\n{args.n} runs each; wall-clock ms per run, spawn to result\n")
    print("| command | how | p50 ms | p95 ms | mean ms | p50 over plain |")
    print("|---|---|---|---|---|---|")
    for cmd in COMMANDS:
        base = pct(times[("plain subprocess", cmd)], 0.5)
        for rname in runners:
            xs = times[(rname, cmd)]
            p50 = pct(xs, 0.5)
            over = "—" if rname == "plain subprocess" else f"+{p50 - base:.1f} ms"
            mean = statistics.mean(xs)
            print(f"| `{cmd}` | {rname} | {p50:.1f} | {pct(xs, 0.95):.1f} | {mean:.1f} | {over} |")


if __name__ == "__main__":
    asyncio.run(main())
