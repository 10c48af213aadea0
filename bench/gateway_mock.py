"""The gateway's own cost per request, against a mock engine that answers at once.

Starts `bench/mock_engine.py`, then `m2a up` serving it as a remote model, creates a team and a team
key with quotas through the admin API (so each request goes through key lookup, the grant check,
schema validation, quota reservation and settlement, the priority gate and a usage-ledger record),
and sends the same requests straight to the mock and through the gateway, rounds
alternating, at concurrency 1 and 16, non-streamed and streamed (16 chunks).

With LiteLLM installed in its own environment (`bench/litellm_env.sh`), its proxy is a third target
in the same rounds ("through LiteLLM"; `litellm_proxy.py` says how it is started); `--no-litellm`
leaves it out.

    .venv/bin/python bench/gateway_mock.py [--seconds 5] [--rounds 3] [--no-litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from litellm_proxy import LITELLM, LiteLLM  # noqa: E402
from stack import KEY, Up, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent


async def load(
    url: str, key: str | None, concurrency: int, seconds: float, stream: bool
) -> tuple[int, list[float]]:
    """Requests done in ``seconds`` and their latencies (to the first byte of the answer body)."""
    body = {
        "model": "mock",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 16,
        "stream": stream,
    }
    headers = {"authorization": f"Bearer {key}"} if key else {}
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with session.post(url, json=body, headers=headers) as resp:
                first = await resp.content.readany()
                latency = time.perf_counter() - t0
                await resp.read()
                if resp.status != 200 or not first:
                    errors += 1
                    continue
            latencies.append(latency)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    if errors:
        raise SystemExit(f"{errors} requests failed against {url}")
    return len(latencies), latencies


def rounds(
    targets: list[tuple[str, str, str | None]], n_rounds: int, seconds: float
) -> dict[tuple[bool, int], dict[str, float]]:
    """Alternate the targets round by round at concurrency 1 and 16, JSON then streamed; print one
    table row per target and return req/s by (stream, concurrency) and target."""
    rates: dict[tuple[bool, int], dict[str, float]] = {}
    print("| answer | concurrency | target | req/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
    for stream in (False, True):
        for c in (1, 16):
            results: dict[str, tuple[int, list[float], float]] = {}
            for _ in range(n_rounds):
                for label, url, key in targets:
                    n, lat = asyncio.run(load(url, key, c, seconds, stream))
                    done, lats, secs = results.get(label, (0, [], 0.0))
                    results[label] = (done + n, lats + lat, secs + seconds)
            kind = "stream (16 chunks)" if stream else "JSON"
            for label, (done, lats, secs) in results.items():
                lats.sort()
                p50, p99 = 1000 * statistics.median(lats), 1000 * lats[int(0.99 * (len(lats) - 1))]
                rates.setdefault((stream, c), {})[label] = done / secs
                print(f"| {kind} | {c} | {label} | {done / secs:.0f} | {p50:.2f} | {p99:.2f} |", flush=True)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="per round and target")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--home", type=Path, default=Path("/tmp/m2a-bench-mock"))
    ap.add_argument(
        "--litellm",
        action=argparse.BooleanOptionalAction,
        default=LITELLM.exists(),
        help="also measure LiteLLM's proxy (default: when bench/.venv-litellm has it)",
    )
    args = ap.parse_args()
    # Ctrl-C and kill both stop the run the way asyncio.run handles Ctrl-C, so the children are ended.
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    port = free_port()
    mock = subprocess.Popen([sys.executable, str(HERE / "mock_engine.py"), str(port)])
    try:
        direct = f"http://127.0.0.1:{port}/v1/chat/completions"
        with (
            Up([{"name": "mock", "engine": "remote", "url": f"http://127.0.0.1:{port}/v1"}], args.home) as up,
            LiteLLM(f"http://127.0.0.1:{port}/v1") if args.litellm else contextlib.nullcontext() as ll,
        ):
            admin = {"authorization": f"Bearer {KEY}"}
            httpx.post(f"{up.root}/admin/v1/teams", json={"name": "bench"}, headers=admin)
            httpx.put(f"{up.root}/admin/v1/teams/bench/grants/mock", headers=admin).raise_for_status()
            r = httpx.post(f"{up.root}/admin/v1/keys", json={"team": "bench", "name": "bench"}, headers=admin)
            team_key = r.json()["key"]
            # Every governance feature on: limits the run never reaches, so each request is
            # reserved and settled against four counters (and recorded in the usage ledger).
            limits = [
                {"metric": "tokens", "window": "minute", "limit": 10**12},
                {"metric": "tokens", "window": "day", "limit": 10**12},
                {"metric": "requests", "window": "minute", "limit": 10**12},
                {"metric": "concurrency", "window": "-", "limit": 1000},
            ]
            q = httpx.put(f"{up.root}/admin/v1/teams/bench/quotas", json={"limits": limits}, headers=admin)
            q.raise_for_status()
            targets = [
                ("mock direct", direct, None),
                ("through m2a", f"{up.base_url}/chat/completions", team_key),
            ]
            if ll is not None:
                targets.append(("through LiteLLM", f"{ll.base_url}/chat/completions", ll.key))
            for _, url, key in targets:  # warm every path
                asyncio.run(load(url, key, 4, 1, False))
            rounds(targets, args.rounds, args.seconds)
    finally:
        mock.terminate()
        mock.wait()


if __name__ == "__main__":
    main()
