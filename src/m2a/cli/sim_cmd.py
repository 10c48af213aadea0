"""`m2a sim`: run N simulated vLLM replicas on loopback ports until Ctrl-C (or fit the latency model).

Each replica answers the OpenAI API at ``http://HOST:PORT+i/v1``, Prometheus metrics at ``/metrics``,
faults at ``POST /sim/faults``, and with ``--kv-events`` publishes KV-cache events in vLLM's format on
a ZMQ PUB socket. ``--params FILE`` reads a JSON object of ``SimParams`` fields (flags win);
``--fit FILE`` fits the latency model to a CSV of measurements and prints those fields as JSON.
``--plan`` answers how many such replicas a workload needs for a p90 TTFT target (plan_cmd.py): on a
simulated clock, so ``--time-scale`` does not matter to it, and the same ``--seed`` (default 0) gives
the same answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import json
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
import zmq

from m2a.cli.plan_cmd import plan_options, run_plan
from m2a.config import RouterConfig, load_settings
from m2a.sim import SimParams, Simulator, fit


def _load_params(path: Path | None, overrides: dict[str, Any]) -> SimParams:
    fields = {f.name for f in dataclasses.fields(SimParams)}
    values: dict[str, Any] = {}
    if path is not None:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or set(data) - fields:
            raise ValueError(
                f"{path}: expected a JSON object with SimParams fields ({', '.join(sorted(fields))})"
            )
        values.update(data)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SimParams(**values)


FIT_COLUMNS = "prompt_tokens, cached_tokens, output_tokens, ttft, e2e[, running]"


def _fit_csv(path: Path, base: SimParams) -> SimParams:
    """Rows of prompt_tokens, cached_tokens, output_tokens, ttft, e2e[, running] (seconds); rows
    without a number (a header) and blank lines are skipped, a row with a gap or a stray word is an
    error."""
    rows = []
    with path.open(newline="") as f:
        for line, row in enumerate(csv.reader(f), 1):
            cells = [x.strip() for x in row]
            while cells and not cells[-1]:  # an empty optional `running` cell, or a blank line
                cells.pop()
            values = []
            for x in cells:
                with contextlib.suppress(ValueError):
                    values.append(float(x))
            if not values:
                continue  # a header
            if len(values) != len(cells) or len(values) not in (5, 6):
                raise ValueError(f"{path}, line {line}: expected {FIT_COLUMNS} as numbers, got {row}")
            rows.append(values)
    return fit(rows, base)


async def _serve(sim: Simulator) -> None:
    async with sim:
        for i, r in enumerate(sim.replicas):
            line = f"replica {i}: {r.url}  metrics {r.metrics_url}"
            if r.kv_endpoint:
                line += f"  kv-events {r.kv_endpoint} topic {r.kv_topic}"
            typer.echo(line)
        typer.echo(f"{len(sim.replicas)} simulated replicas of {sim.replicas[0].params.model}; Ctrl-C stops")
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError):  # SIGTERM stops as cleanly as Ctrl-C
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


def sim(
    replicas: Annotated[int, typer.Option("--replicas", "-n", help="How many replicas.")] = 4,
    port: Annotated[
        int, typer.Option(help="First replica's port; the others follow (0: free ports).")
    ] = 9100,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    model: Annotated[str | None, typer.Option(help="Served model name (default sim-model).")] = None,
    block_size: Annotated[int | None, typer.Option(help="Tokens per KV block (default 16).")] = None,
    capacity_blocks: Annotated[
        int | None, typer.Option(help="KV cache size in blocks (default 2048).")
    ] = None,
    max_num_seqs: Annotated[int | None, typer.Option(help="Running sequences at once (default 16).")] = None,
    scheduling_policy: Annotated[str | None, typer.Option(help="fcfs or priority (default fcfs).")] = None,
    base_ttft: Annotated[
        float | None, typer.Option(help="Seconds added to every TTFT (default 0.01).")
    ] = None,
    prefill_per_token: Annotated[
        float | None, typer.Option(help="Seconds per uncached prompt token.")
    ] = None,
    decode_per_token: Annotated[
        float | None, typer.Option(help="Seconds per decode step, one sequence.")
    ] = None,
    time_scale: Annotated[
        float | None,
        typer.Option(help="Wall seconds per simulated second (default 1; --plan runs on its own clock)."),
    ] = None,
    kv_events: Annotated[bool, typer.Option("--kv-events", help="Publish KV events over ZMQ.")] = False,
    kv_events_port: Annotated[int, typer.Option(help="First ZMQ PUB port (0: free ports).")] = 5557,
    seed: Annotated[
        int,
        typer.Option(help="Seed of injected errors; for --plan also of the workload and the router."),
    ] = 0,
    params: Annotated[Path | None, typer.Option("--params", help="JSON file of SimParams fields.")] = None,
    fit_csv: Annotated[
        Path | None, typer.Option("--fit", help="Fit to a measurements CSV; print JSON.")
    ] = None,
    plan: Annotated[
        bool, typer.Option("--plan", help="Capacity planning: the fewest replicas meeting --target-p90.")
    ] = False,
    rate: Annotated[float, typer.Option(help="--plan: requests per second.")] = 10.0,
    target_p90: Annotated[float, typer.Option(help="--plan: p90 time to first token, seconds.")] = 1.0,
    duration: Annotated[float, typer.Option(help="--plan: seconds of traffic per trial.")] = 60.0,
    groups: Annotated[int, typer.Option(help="--plan: groups of users sharing a system prompt.")] = 8,
    shared_tokens: Annotated[int, typer.Option(help="--plan: tokens of each shared prompt.")] = 1000,
    unique_tokens: Annotated[int, typer.Option(help="--plan: tokens of each request's own.")] = 100,
    output_tokens: Annotated[int, typer.Option(help="--plan: output tokens per request.")] = 64,
    max_replicas: Annotated[int, typer.Option(help="--plan: give up above this many.")] = 64,
    config: Annotated[
        Path | None, typer.Option("--config", help="--plan: m2a config whose `router` section routes.")
    ] = None,
) -> None:
    """Run simulated vLLM replicas (OpenAI API, vLLM metrics, prefix cache, KV events, faults)."""
    overrides = {
        "model": model,
        "block_size": block_size,
        "capacity_blocks": capacity_blocks,
        "max_num_seqs": max_num_seqs,
        "scheduling_policy": scheduling_policy,
        "base_ttft_s": base_ttft,
        "prefill_s_per_token": prefill_per_token,
        "decode_s_per_token": decode_per_token,
        "time_scale": time_scale,
    }
    try:
        base = _load_params(params, overrides)
        if fit_csv is not None:
            typer.echo(json.dumps(dataclasses.asdict(_fit_csv(fit_csv, base)), indent=2))
            return
        if plan:
            work = plan_options(rate, duration, groups, shared_tokens, unique_tokens, output_tokens, seed)
            router = load_settings(config).router if config else RouterConfig()
            best = run_plan(base, work, target_p90, max_replicas, router)
            raise typer.Exit(0 if best is not None else 1)
        simulator = Simulator(
            replicas,
            base,
            kv_events=kv_events,
            seed=seed,
            host=host,
            port=port,
            kv_events_port=kv_events_port,
        )
    except (OSError, ValueError, TypeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        asyncio.run(_serve(simulator))
    except KeyboardInterrupt:
        pass
    except (OSError, zmq.ZMQError) as exc:  # a port in use
        typer.echo(f"error: {getattr(exc, 'strerror', None) or exc} (use --port 0 for free ports)", err=True)
        raise typer.Exit(1) from exc
    typer.echo("stopped")


if __name__ == "__main__":
    typer.run(sim)
