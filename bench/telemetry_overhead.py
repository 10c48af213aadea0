"""What tracing and metrics cost: gateway throughput with telemetry on and off, side by side.

Two `m2a up` processes serve the same mock engine (bench/mock_engine.py): one with the defaults
(a trace per request with four spans, exported to the embedded SQLite trace store; metrics by team,
priority and replica), one with `telemetry.tracing: false` and `telemetry.trace_store: false`.
Rounds alternate between them, with a team key, at concurrency 1 and 16, JSON and streamed.
The cost is given twice: as the share of throughput lost, and as the share of the gateway's CPU
time per request (psutil) added. The second is far less disturbed by other load on a small machine.

    .venv/bin/python bench/telemetry_overhead.py [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_mock import load, rounds  # noqa: E402
from stack import KEY, Up, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent


def team_key(root: str) -> str:
    admin = {"authorization": f"Bearer {KEY}"}
    httpx.post(f"{root}/admin/v1/teams", json={"name": "bench"}, headers=admin)
    httpx.put(f"{root}/admin/v1/teams/bench/grants/mock", headers=admin).raise_for_status()
    r = httpx.post(f"{root}/admin/v1/keys", json={"team": "bench", "name": "bench"}, headers=admin)
    r.raise_for_status()
    return r.json()["key"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="per round and target")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--home", type=Path, default=Path("/tmp/m2a-bench-telemetry"))
    args = ap.parse_args()
    port = free_port()
    mock = subprocess.Popen([sys.executable, str(HERE / "mock_engine.py"), str(port)])
    model = [{"name": "mock", "engine": "remote", "url": f"http://127.0.0.1:{port}/v1"}]
    off = {"telemetry": {"tracing": False, "trace_store": False}}
    try:
        with (
            Up(model, args.home / "on", label="telemetry on") as on_,
            Up(model, args.home / "off", label="telemetry off", extra=off) as off_,
        ):
            targets = [
                ("telemetry on", f"{on_.base_url}/chat/completions", team_key(on_.root)),
                ("telemetry off", f"{off_.base_url}/chat/completions", team_key(off_.root)),
            ]
            for _, url, key in targets:
                asyncio.run(load(url, key, 4, 1, False))
            pids = {"telemetry on": on_.pid, "telemetry off": off_.pid}
            cpu: dict[tuple[bool, int], dict[str, float]] = {}
            rates = rounds(targets, args.rounds, args.seconds, pids, cpu_per_request=cpu)
            print(
                "\n| answer | concurrency | cost of telemetry: throughput lost | CPU µs/req added |"
                "\n|---|---|---|---|"
            )
            for (stream, c), rate in rates.items():
                cost = 100 * (1 - rate["telemetry on"] / rate["telemetry off"])
                on_cpu, off_cpu = cpu[(stream, c)]["telemetry on"], cpu[(stream, c)]["telemetry off"]
                added = f"{on_cpu - off_cpu:+.0f} ({100 * (on_cpu / off_cpu - 1):+.1f}%)"
                kind = "stream (16 chunks)" if stream else "JSON"
                print(f"| {kind} | {c} | {cost:.1f}% | {added} |", flush=True)
            stored = httpx.get(f"{on_.root}/readyz").status_code  # still healthy after the run
            print(f"\ntelemetry-on gateway /readyz after the run: {stored}")
    finally:
        mock.terminate()
        mock.wait()


if __name__ == "__main__":
    main()
