"""`m2a traces list` and `m2a traces show ID`: the traces kept in ``$M2A_HOME/traces.db``.

These read the embedded trace store directly (the gateway need not run; while it runs, SQLite's WAL
lets both work at once). Drawing a trace is :mod:`m2a.cli.waterfall`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from m2a.cli.identity_cmd import ConfigOpt, err, out, parse_duration
from m2a.cli.waterfall import ms, waterfall, when
from m2a.config import ConfigError, load_settings
from m2a.telemetry.store import DB_NAME, AmbiguousTraceId, TraceStore, TraceSummary

traces_app = typer.Typer(
    no_args_is_help=True, help="Traces kept by the gateway (and engines that send it OTLP): list, show."
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
SHORT_ID = 12
_LIST_COLUMNS = ("TRACE", "STARTED", "DURATION", "SPANS", "STATUS", "TEAM", "MODEL", "ROOT", "SERVICES")


def open_traces(config: Path | None) -> TraceStore:
    """The configured trace store; exits 2 on a bad config and 1 when there is no store yet."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    path = settings.home / DB_NAME
    if not path.is_file():
        err.print(
            f"[red]error:[/] no trace store at {escape(str(path))}: it is made when the gateway runs "
            "with telemetry.trace_store on (the default) and a request or an OTLP export comes in"
        )
        raise typer.Exit(1)
    tel = settings.telemetry
    return TraceStore(path, tel.trace_retention_hours * 3600, tel.trace_max_spans)


def _summary_json(t: TraceSummary) -> dict[str, Any]:
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t.start_ns // 1_000_000_000)) + "Z"
    return {**t.to_dict(), "started": started, "duration_ms": round(t.duration_ns / 1e6, 3)}


@traces_app.command("list")
def list_traces(
    limit: Annotated[int, typer.Option(min=1, help="How many traces.")] = 20,
    since: Annotated[str | None, typer.Option(help="Only traces started in the last 90m, 1h, 7d …")] = None,
    team: Annotated[str | None, typer.Option(help="Only traces with this team (m2a.team).")] = None,
    model: Annotated[
        str | None, typer.Option(help="Only traces for this model (gen_ai.request.model).")
    ] = None,
    status: Annotated[str | None, typer.Option(help="ok or error.")] = None,
    slowest: Annotated[bool, typer.Option("--slowest", help="Slowest first (else newest first).")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Recent traces, newest (or slowest) first."""
    if status is not None and status not in ("ok", "error"):
        raise typer.BadParameter("--status is ok or error", param_hint="--status")
    since_ns = None
    if since is not None:
        since_ns = time.time_ns() - int(parse_duration(since).total_seconds() * 1e9)
    store = open_traces(config)
    try:
        found = store.traces(limit, since_ns, team, model, status, slowest)
    finally:
        store.close()
    if as_json:
        print(json.dumps([_summary_json(t) for t in found], indent=2))
        return
    if not found:
        err.print("no traces" + (" match" if any((since, team, model, status)) else " yet"))
        return
    rows = [
        [
            t.trace_id[:SHORT_ID],
            when(t.start_ns, "%m-%d %H:%M:%S"),
            ms(t.duration_ns),
            str(t.span_count),
            t.status,
            t.team or "-",
            t.model or "-",
            t.root,
            ",".join(t.services),
        ]
        for t in found
    ]
    table = Table(box=None, header_style="bold", pad_edge=False)
    for i, column in enumerate(_LIST_COLUMNS):
        fixed = column not in ("TEAM", "MODEL", "ROOT", "SERVICES")  # these shrink, with an ellipsis
        table.add_column(
            column,
            justify="right" if column in ("DURATION", "SPANS") else "left",
            no_wrap=True,
            overflow="ellipsis",
            min_width=max(len(column), *(len(r[i]) for r in rows)) if fixed else None,
            max_width={"ROOT": 32, "TEAM": 16, "MODEL": 24}.get(column),
        )
    for r in rows:
        r[4] = "[red]error[/]" if r[4] == "error" else "[green]ok[/]"
        table.add_row(*r[:4], r[4], *map(escape, r[5:]))
    out.print(table)


@traces_app.command("show")
def show_trace(
    trace_id: Annotated[str, typer.Argument(help="A trace id, or its first 8 or more characters.")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """One trace as a waterfall: each span on the trace's timeline, with its key attributes."""
    store = open_traces(config)
    try:
        spans = store.spans(trace_id)
    except (AmbiguousTraceId, ValueError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    finally:
        store.close()
    if not spans:
        err.print(f"[red]error:[/] no trace {escape(trace_id)!r} in the store (it may have been pruned)")
        raise typer.Exit(1)
    full = spans[0].trace_id
    if as_json:
        print(json.dumps({"trace_id": full, "spans": [s.to_dict() for s in spans]}, indent=2))
        return
    t0 = min(s.start_ns for s in spans)
    total = max(s.end_ns for s in spans) - t0
    services = sorted({s.service for s in spans})
    out.print(
        f"[bold]trace {full}[/]  {when(t0)}  {ms(total)}  {len(spans)} span(s)  "
        f"services: {escape(', '.join(services))}",
        soft_wrap=True,
    )
    for line in waterfall(spans, out.width):
        out.print(line, soft_wrap=True)
