"""`m2a sim --plan`: how many replicas a workload needs for a p90 time-to-first-token target.

Runs trials on simulated replicas (``m2a.router.capacity``), printing each as it finishes, then the
answer. The replicas' latency model comes from ``--params`` (for example the JSON ``m2a sim --fit``
printed for a real engine) and the other ``m2a sim`` flags. Trials run on a simulated clock, so the
answer depends on the arguments and ``--seed`` alone.
"""

from __future__ import annotations

import asyncio
import math

import typer
from rich.console import Console
from rich.table import Table

from m2a.config import RouterConfig
from m2a.router.capacity import Trial, Workload, plan_replicas
from m2a.sim import SimParams


def _s(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def run_plan(
    params: SimParams, work: Workload, target_p90_s: float, max_replicas: int, cfg: RouterConfig
) -> int | None:
    console = Console()
    console.print(
        f"planning: {work.rate:g} req/s for {work.duration_s:g} s, {work.groups} groups sharing "
        f"{work.shared_tokens}-token prompts (+{work.unique_tokens} own), {work.output_tokens} output "
        f"tokens; target p90 TTFT ≤ {target_p90_s:g} s; seed {work.seed}"
    )

    def show(t: Trial) -> None:
        mark = "[green]meets[/green]" if t.meets else "[red]misses[/red]"
        console.print(
            f"  {t.replicas:>3} {'replica: ' if t.replicas == 1 else 'replicas:'} p50 {_s(t.p50_s)} s, "
            f"p90 {_s(t.p90_s)} s, cache hits {100 * t.hit_rate:.0f}%, errors {t.errors}, "
            f"still waiting {t.waiting}: {mark}"
        )

    best, trials = asyncio.run(plan_replicas(work, params, target_p90_s, cfg, max_replicas, show))
    table = Table("replicas", "requests", "TTFT p50 (s)", "TTFT p90 (s)", "cache hit rate", "meets target")
    for t in trials:
        table.add_row(
            str(t.replicas), str(t.requests), _s(t.p50_s), _s(t.p90_s), f"{100 * t.hit_rate:.1f}%",
            "yes" if t.meets else "no",
        )  # fmt: skip
    console.print(table)
    if best is None:
        console.print(f"[red]not even {max_replicas} replicas meet the target[/red]")
    else:
        console.print(f"[bold]{best} replica{'s meet' if best > 1 else ' meets'}[/bold] the target")
    return best


def plan_options(
    rate: float, duration: float, groups: int, shared: int, unique: int, output: int, seed: int
) -> Workload:
    if rate <= 0 or duration <= 0 or groups < 1 or min(shared, unique, output) < 0:
        raise typer.BadParameter("rate, duration and groups must be positive; token counts not negative")
    return Workload(rate, duration, groups, shared, unique, max(1, output), seed)
