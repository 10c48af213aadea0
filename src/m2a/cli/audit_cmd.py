"""`m2a audit …`: check, read and export the tamper-evident audit log (``trust/audit.py``).

These work on the store directly (the gateway need not run):

- ``m2a audit verify [--json] [--jwks FILE]``: walk every record and checkpoint; exit 0 with "the
  audit log is intact: N records, M checkpoints", or exit 1 listing each problem as ``seq N: kind:
  detail``. Checkpoints are checked against m2a's JWKS (the one the gateway publishes, from
  ``agents/keys.py``) and the keys in ``--jwks FILE`` (a JWKS kept from earlier: m2a deletes retired
  keys, so old checkpoints are checked only against such a copy);
- ``m2a audit show [--agent SPIFFE] [--trace ID] [--kind K] [--since ISO|30m|2h|1d] [--until …]
  [--limit N] [--after SEQ] [--json]``: the newest matching records (or the first after ``SEQ``);
- ``m2a audit export [--out FILE] [filters]``: every matching record as JSON lines.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.agents.keys import SigningKeys
from m2a.agents.tokens import issuer_of
from m2a.cli.identity_cmd import run_store
from m2a.config import Settings
from m2a.trust.audit import AuditError, AuditLog, AuditReport

audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log of agents' actions.")
out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
AgentOpt = Annotated[str | None, typer.Option("--agent", help="An agent's SPIFFE id.")]
TraceOpt = Annotated[str | None, typer.Option("--trace", help="A trace id (32 hex digits).")]
KindOpt = Annotated[str | None, typer.Option("--kind", help="A record kind: decision, intent, receipt, ...")]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="ISO 8601 time, or an age: 45s, 30m, 2h, 1d, 2w.")
]
UntilOpt = Annotated[str | None, typer.Option("--until", help="ISO 8601 time, or an age (exclusive).")]
_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(value: str | None, option: str, now: datetime | None = None) -> datetime | None:
    """An ISO 8601 time (UTC when it names no zone), or an age before ``now``: ``30m``, ``2h``, ``1d``."""
    if value is None:
        return None
    match = _AGE.match(value.strip())
    if match:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise typer.BadParameter(
            "use an ISO 8601 time (2025-01-31T12:00:00Z) or an age: 45s, 30m, 2h, 1d, 2w", param_hint=option
        ) from exc
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _filters(
    agent: str | None, trace: str | None, kind: str | None, since: str | None, until: str | None
) -> dict:
    return {
        "agent": agent,
        "trace_id": trace,
        "kind": kind,
        "since": parse_when(since, "--since"),
        "until": parse_when(until, "--until"),
    }


def _log(settings: Settings, engine: AsyncEngine) -> AuditLog:
    return AuditLog(engine, None, issuer=issuer_of(settings.agents, settings.gateway))


def _read_jwks(path: Path | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read a JWKS from {path}: {exc}", param_hint="--jwks") from exc
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise typer.BadParameter(f"{path} is not a JWKS (an object with a 'keys' list)", param_hint="--jwks")
    return [k for k in keys if isinstance(k, dict)]


def _report_json(r: AuditReport) -> dict[str, Any]:
    return {
        "ok": r.ok,
        "records": r.records,
        "checkpoints": r.checkpoints,
        "verified_seq": r.verified_seq,
        "unverifiable": r.unverifiable,
        "problems": [{"seq": p.seq, "kind": p.kind, "detail": p.detail} for p in r.problems],
    }


@audit_app.command("verify")
def verify(
    as_json: JsonOpt = False,
    jwks_file: Annotated[
        Path | None, typer.Option("--jwks", help="A JWKS file whose keys may also have signed checkpoints.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Check every record's hash and link and every checkpoint's signature and root."""
    saved = _read_jwks(jwks_file)

    async def work(settings: Settings, engine: AsyncEngine) -> AuditReport:
        agents = settings.agents
        published = await SigningKeys(engine, agents.key_rotation_hours, agents.token_ttl_s).jwks()
        keys = {k.get("kid"): k for k in [*saved, *published.get("keys", [])]}
        return await _log(settings, engine).verify({"keys": list(keys.values())})

    report = run_store(config, work, (AuditError,))
    if as_json:
        print(json.dumps(_report_json(report), indent=2))
    elif report.ok:
        out.print(f"the audit log is intact: {report.records} records, {report.checkpoints} checkpoints")
        if report.checkpoints:
            vouched = f"records 1..{report.verified_seq}" if report.verified_seq else "no records"
            out.print(f"signed checkpoints vouch for {vouched}", highlight=False)
        if report.unverifiable:
            out.print(
                f"{report.unverifiable} checkpoints were signed by keys m2a has since retired and could not "
                "be checked (pass --jwks with a JWKS saved while they were published)"
            )
    else:
        n = len(report.problems)
        err.print(f"[red]the audit log has {n} problem{'s' if n != 1 else ''}[/] ({report.records} records):")
        for p in report.problems:
            err.print(f"seq {p.seq}: {p.kind}: {escape(p.detail)}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("show")
def show(
    agent: AgentOpt = None,
    trace: TraceOpt = None,
    kind: KindOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="At most this many records.")] = 50,
    after: Annotated[
        int | None, typer.Option("--after", help="Records after this seq (else the newest).")
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """The newest records matching the filters (or the first ones after --after)."""
    filters = _filters(agent, trace, kind, since, until)
    records = run_store(config, lambda s, e: _log(s, e).show(**filters, limit=limit, after_seq=after))
    if as_json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
        return
    table = Table("seq", "at", "kind", "agent", "trace", "body")
    for r in records:
        body = json.dumps(r["body"], ensure_ascii=False, separators=(",", ":"))
        table.add_row(
            str(r["seq"]),
            r["at"][:23] + "Z",
            escape(r["kind"]),
            escape(r["agent"] or "-"),
            escape((r["trace_id"] or "-")[:12]),
            escape(body if len(body) <= 100 else body[:99] + "…"),
        )
    out.print(table)


@audit_app.command("export")
def export(
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write here (default: standard output).")
    ] = None,
    agent: AgentOpt = None,
    trace: TraceOpt = None,
    kind: KindOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    after: Annotated[int | None, typer.Option("--after", help="Records after this seq.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Every matching record as JSON lines: seq, at, kind, agent, team_id, trace_id, body, prev_hash, hash."""
    filters = _filters(agent, trace, kind, since, until)
    if out_file is None:
        n = run_store(config, lambda s, e: _log(s, e).export(sys.stdout, **filters, after_seq=after))
        sys.stdout.flush()
        err.print(f"exported {n} records")
        return
    try:
        with out_file.open("w", encoding="utf-8") as f:
            n = run_store(config, lambda s, e: _log(s, e).export(f, **filters, after_seq=after))
    except OSError as exc:
        err.print(f"[red]error:[/] cannot write {escape(str(out_file))}: {escape(str(exc))}")
        raise typer.Exit(1) from exc
    err.print(f"exported {n} records to {escape(str(out_file))}")
