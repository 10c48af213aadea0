"""Reading the usage ledger: totals by team, key, model, replica, priority, status or agent, per time
bucket.

Rows follow the team's identity (its id), not its name: a team re-created under a deleted team's
name starts with no usage, and the deleted team's rows are labelled "<name> (deleted)". Costs are
the ones stored with each row when its request ended; rows older than that (no stored cost) are
summed apart so a report can price them at the prices configured now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.store.schema import Team, Usage

GROUPS = {
    "team": Usage.team,
    "key": Usage.key_prefix,
    "model": Usage.model,
    "replica": Usage.replica,
    "priority": Usage.priority,
    "status": Usage.status,
    "agent": Usage.agent,  # the SPIFFE id of the agent whose token made the request (none: an API key)
}
BUCKETS = ("hour", "day", "month")


@dataclass
class UsageRow:
    group: str | None
    model: str
    bucket: str | None
    requests: int
    errors: int  # answered with an error status
    interrupted: int  # cut off: the client left, or the gateway died
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    avg_ttft_ms: float | None
    avg_duration_ms: float | None
    cost: float = 0.0  # dollars stored with the rows
    # Tokens of rows that carry no cost (recorded before costs were stored): priced by the reader.
    unpriced_input: int = 0
    unpriced_output: int = 0
    unpriced_cached: int = 0


def _bucket(dialect: str, bucket: str) -> Any:
    if dialect == "postgresql":
        fmt = {"hour": 'YYYY-MM-DD"T"HH24:00', "day": "YYYY-MM-DD", "month": "YYYY-MM"}[bucket]
        return func.to_char(func.date_trunc(bucket, func.timezone("UTC", Usage.started_at)), fmt)
    fmt = {"hour": "%Y-%m-%dT%H:00", "day": "%Y-%m-%d", "month": "%Y-%m"}[bucket]
    return func.strftime(fmt, Usage.started_at)


async def usage_rows(
    engine: AsyncEngine,
    by: str = "team",
    since: datetime | None = None,
    until: datetime | None = None,
    team: str | None = None,
    bucket: str | None = None,
    team_id: int | None = None,
) -> list[UsageRow]:
    """Totals grouped by ``by`` and model, optionally per bucket; only the team named ``team`` (the
    live team of that name) or with id ``team_id``, when given."""
    if by not in GROUPS:
        raise ValueError(f"by must be one of {', '.join(GROUPS)}")
    if bucket is not None and bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {', '.join(BUCKETS)}")
    # SQLite keeps timestamps as UTC text and compares text: bring an offset-aware bound to UTC first
    since, until = (t.astimezone(UTC) if t is not None and t.tzinfo else t for t in (since, until))
    group = GROUPS[by]
    bucket_col = _bucket(engine.dialect.name, bucket) if bucket else None
    unpriced = Usage.cost.is_(None)
    if by == "team":  # one group per team identity, labelled with the name it had
        label: Any = case(
            (Team.deleted_at.is_not(None), Usage.team + " (deleted)"), else_=Usage.team
        )
        keys: list[Any] = [Usage.team_id, Usage.team, Team.deleted_at, Usage.model]
    else:
        label = group
        keys = [group, Usage.model]
    cols = [
        label.label("group"),
        Usage.model,
        func.count().label("requests"),
        func.sum(case((Usage.status == "error", 1), else_=0)).label("errors"),
        func.sum(case((Usage.status.in_(("interrupted", "cancelled")), 1), else_=0)).label("interrupted"),
        func.coalesce(func.sum(Usage.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(Usage.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(Usage.cached_tokens), 0).label("cached_tokens"),
        func.avg(Usage.ttft_ms).label("avg_ttft_ms"),
        func.avg(Usage.duration_ms).label("avg_duration_ms"),
        func.coalesce(func.sum(Usage.cost), 0.0).label("cost"),
        func.sum(case((unpriced, Usage.input_tokens), else_=0)).label("unpriced_input"),
        func.sum(case((unpriced, Usage.output_tokens), else_=0)).label("unpriced_output"),
        func.sum(case((unpriced, Usage.cached_tokens), else_=0)).label("unpriced_cached"),
    ]
    if bucket_col is not None:
        cols.append(bucket_col.label("bucket"))
        keys.append(bucket_col)
    q = select(*cols).select_from(Usage)
    if by == "team":
        q = q.outerjoin(Team, Team.id == Usage.team_id)
    q = q.group_by(*keys)
    if since is not None:
        q = q.where(Usage.started_at >= since)
    if until is not None:
        q = q.where(Usage.started_at < until)
    if team is not None:
        live = select(Team.id).where(Team.name == team, Team.deleted_at.is_(None)).scalar_subquery()
        q = q.where(Usage.team_id == live)
    if team_id is not None:
        q = q.where(Usage.team_id == team_id)
    async with engine.connect() as conn:
        rows = (await conn.execute(q)).mappings().all()
    out = [
        UsageRow(
            group=r["group"],
            model=r["model"],
            bucket=r.get("bucket"),
            requests=int(r["requests"]),
            errors=int(r["errors"] or 0),
            interrupted=int(r["interrupted"] or 0),
            input_tokens=int(r["input_tokens"]),
            output_tokens=int(r["output_tokens"]),
            cached_tokens=int(r["cached_tokens"]),
            avg_ttft_ms=None if r["avg_ttft_ms"] is None else float(r["avg_ttft_ms"]),
            avg_duration_ms=None if r["avg_duration_ms"] is None else float(r["avg_duration_ms"]),
            cost=float(r["cost"] or 0),
            unpriced_input=int(r["unpriced_input"] or 0),
            unpriced_output=int(r["unpriced_output"] or 0),
            unpriced_cached=int(r["unpriced_cached"] or 0),
        )
        for r in rows
    ]
    out.sort(key=lambda r: (r.bucket or "", r.group or "", r.model))
    return out


def priced(row: UsageRow, price: Any) -> float:
    """The row's dollars: what it stored, plus its cost-less older rows at ``price`` (a Price)."""
    if not (row.unpriced_input or row.unpriced_output):
        return row.cost
    return row.cost + price.cost(row.unpriced_input, row.unpriced_output, row.unpriced_cached)
