"""`m2a quotas …` and `m2a usage`: limits per team or key, and the usage ledger with costs.

Like the other identity commands these work on the store directly; a running gateway picks up a
quota change within about half a second.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from m2a.cli.identity_cmd import ConfigOpt, err, out, parse_duration, run_store
from m2a.config import Price
from m2a.store.limits import NO_WINDOW, WINDOWS
from m2a.store.quotas import QuotaStore
from m2a.store.usage import BUCKETS, GROUPS, priced, usage_rows

quotas_app = typer.Typer(
    no_args_is_help=True, help="Token, request, cost, concurrency and vector-storage limits."
)
_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmKM]?)\s*/\s*(minute|hour|day|month|min|h|d|mo)\s*$")
_WINDOW_ALIASES = {"min": "minute", "h": "hour", "d": "day", "mo": "month"}


def parse_limit(text: str, money: bool = False) -> tuple[int, str]:
    """`20000/minute`, `200k/day`, `1.5M/month`; money in dollars (`50/month`) to micro-dollars."""
    m = _LIMIT.match(text)
    if not m:
        raise typer.BadParameter(f"{text!r}: use AMOUNT/WINDOW, e.g. 20000/minute, 200k/day, 50/month")
    amount = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]
    window = _WINDOW_ALIASES.get(m.group(3), m.group(3))
    assert window in WINDOWS
    if money:
        return round(amount * 1e6), window
    count = round(amount, 6)  # 1.005 * 1e3 is 1004.99…
    if count != int(count):
        raise typer.BadParameter(f"{text!r}: a count of tokens or requests is a whole number")
    return int(count), window


def _limits(option: str, values: list[str] | None, money: bool = False) -> list[tuple[str, str, int]]:
    metric = option.replace("-", "_")
    return [(metric, w, n) for n, w in (parse_limit(v, money) for v in values or [])]


@quotas_app.command("set")
def quotas_set(
    team: str,
    tokens: Annotated[
        list[str] | None, typer.Option(help="Total tokens, e.g. 200000/day (repeatable).")
    ] = None,
    input_tokens: Annotated[list[str] | None, typer.Option(help="Prompt tokens per window.")] = None,
    output_tokens: Annotated[list[str] | None, typer.Option(help="Completion tokens per window.")] = None,
    requests: Annotated[list[str] | None, typer.Option(help="Requests per window, e.g. 60/minute.")] = None,
    cost: Annotated[list[str] | None, typer.Option(help="Dollars per window, e.g. 50/month.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight at once.", min=0)] = None,
    storage_bytes: Annotated[
        int | None, typer.Option(help="Bytes the team's vector stores may hold (their usage_bytes).", min=0)
    ] = None,
    key: Annotated[int | None, typer.Option("--key", help="Limit one key of the team, by id.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Set limits of a team (or of one of its keys); limits not named stay as they are."""
    limits = (
        _limits("tokens", tokens)
        + _limits("input_tokens", input_tokens)
        + _limits("output_tokens", output_tokens)
        + _limits("requests", requests)
        + _limits("cost", cost, money=True)
    )
    if concurrency is not None:
        limits.append(("concurrency", NO_WINDOW, concurrency))
    if storage_bytes is not None:
        limits.append(("storage_bytes", NO_WINDOW, storage_bytes))
    if not limits:
        raise typer.BadParameter("name at least one limit: --tokens, --requests, --cost, --concurrency …")
    run_store(config, lambda _s, db: QuotaStore(db).set(team, limits, key))
    who = f"key {key} of team {team}" if key else f"team {team}"
    out.print(f"limits set for [bold]{escape(who)}[/]: " + ", ".join(_describe(*x) for x in limits))


def _describe(metric: str, window: str, limit: int) -> str:
    if metric == "concurrency":
        return f"{limit} concurrent"
    if metric == "storage_bytes":
        return f"{limit} bytes stored"
    amount = f"${limit / 1e6:g}" if metric == "cost" else f"{limit} {metric.replace('_', ' ')}"
    return f"{amount}/{window}"


@quotas_app.command("show")
def quotas_show(
    team: Annotated[str | None, typer.Argument(help="One team (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Limits of every team (or one)."""
    rows = run_store(config, lambda _s, db: QuotaStore(db).list(team))
    if as_json:
        print(json.dumps([{**q.__dict__, "created_at": q.created_at.isoformat()} for q in rows], indent=2))
        return
    table = Table("team", "key", "limit")
    for q in rows:
        table.add_row(q.team, str(q.key_id or "all"), _describe(q.metric, q.window, q.limit))
    out.print(table)


@quotas_app.command("clear")
def quotas_clear(
    team: str,
    key: Annotated[int | None, typer.Option("--key", help="Only this key's limits.")] = None,
    metric: Annotated[str | None, typer.Option(help="Only this metric (tokens, requests, cost …).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Remove limits of a team (or of one key)."""
    n = run_store(config, lambda _s, db: QuotaStore(db).clear(team, key, metric))
    out.print(f"removed {n} limit(s)")


def usage(
    by: Annotated[str, typer.Option(help=f"Group by: {', '.join(GROUPS)}.")] = "team",
    since: Annotated[str, typer.Option(help="How far back: 90m, 12h, 7d, 2w.")] = "7d",
    bucket: Annotated[str | None, typer.Option(help=f"Also per time bucket: {', '.join(BUCKETS)}.")] = None,
    team: Annotated[str | None, typer.Option(help="Only this team.")] = None,
    cost: Annotated[
        bool,
        typer.Option("--cost", help="Add cost: as priced when each request ended (stored with it)."),
    ] = False,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    config: ConfigOpt = None,
) -> None:
    """Requests, tokens, errors and (with --cost) dollars from the usage ledger."""
    if by not in GROUPS:
        raise typer.BadParameter(f"--by must be one of {', '.join(GROUPS)}")
    if bucket is not None and bucket not in BUCKETS:
        raise typer.BadParameter(f"--bucket must be one of {', '.join(BUCKETS)}")
    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter("--format must be table, csv or json")
    start = datetime.now(UTC) - parse_duration(since)
    prices: dict[str, Price] = {}

    async def work(settings, db):  # type: ignore[no-untyped-def]
        prices.update({m.name: m.price for m in settings.models})
        return await usage_rows(db, by, since=start, team=team, bucket=bucket)

    rows = run_store(config, work)
    # Rows come per group and model (prices are per model); the report is per group (and bucket).
    merged: dict[tuple[str | None, str | None], dict[str, float]] = {}
    for r in rows:
        label = r.model if by == "model" else r.group
        t = merged.setdefault(
            (r.bucket, label),
            dict.fromkeys(("requests", "errors", "interrupted", "input", "output", "cached", "cost"), 0.0),
        )
        for k, v in (
            ("requests", r.requests),
            ("errors", r.errors),
            ("interrupted", r.interrupted),
            ("input", r.input_tokens),
            ("output", r.output_tokens),
            ("cached", r.cached_tokens),
        ):
            t[k] += v
        t["cost"] += priced(r, prices.get(r.model) or Price())  # older records: at the configured prices
    cols = ["requests", "errors", "interrupted", "input", "output", "cached"] + (["cost"] if cost else [])
    head = (["bucket"] if bucket else []) + [by] + cols
    records = [
        {
            **({"bucket": b} if bucket else {}),
            by: label if label is not None else "-",
            **{c: round(v[c], 6) if c == "cost" else int(v[c]) for c in cols},
        }
        for (b, label), v in sorted(merged.items(), key=lambda kv: (kv[0][0] or "", str(kv[0][1])))
    ]
    if fmt == "json":
        print(json.dumps(records, indent=2))
    elif fmt == "csv":
        w = csv.DictWriter(sys.stdout, fieldnames=head)
        w.writeheader()
        w.writerows(records)
    else:
        table = Table(*head)
        for rec in records:
            table.add_row(*(f"${rec[c]:.4f}" if c == "cost" else str(rec[c]) for c in head))
        if not records:
            err.print(f"no usage in the last {since}")
        out.print(table)
