"""The daily usage rollup: ``usage_daily`` holds the ledger summed per UTC day, team, key and model.

Kept by the ledger in the transaction that writes its rows (:func:`add`), so it always equals a
``GROUP BY`` over ``usage``: a row counts on the UTC day its request *started* (a request that ends
after midnight belongs to the day before, as in migration 0012), ``team_id``/``key_id`` 0 stand for
none, ``errors`` counts every status but ``ok``, and a missing cost or duration counts as 0. A
ledger row written again (a journal replayed after a crash) replaces the stored one: the ledger
hands :func:`add` the old row too, and only the difference reaches the rollup, so nothing is
counted twice. Concurrent writers (gateway processes sharing the database) add to the same rows
with ``col = col + excluded.col``, in one sorted order so two transactions never deadlock.

Reading it (:func:`daily`) is what the usage-by-day API serves: fast on a ledger of millions of rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import and_, case, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from m2a.store.schema import ApiKey, Team, Usage, UsageDailyRow

KEYS = ("day", "team_id", "key_id", "model")
SUMS = ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "cost", "duration_ms")
GROUPS = ("day", "team", "key", "model")  # what a reader may group by
_OLD_COLUMNS = (
    Usage.request_id,
    Usage.started_at,
    Usage.team_id,
    Usage.key_id,
    Usage.model,
    Usage.team,
    Usage.status,
    Usage.input_tokens,
    Usage.output_tokens,
    Usage.cached_tokens,
    Usage.cost,
    Usage.duration_ms,
)

Key = tuple[str, int, int, str]


def day_of(t: datetime) -> str:
    """The UTC day (YYYY-MM-DD) of a timestamp; a naive one is UTC already (SQLite drops the zone)."""
    if t.tzinfo is not None and t.tzinfo is not UTC:
        t = t.astimezone(UTC)
    return t.date().isoformat()  # a third of strftime's time: twice per request in the ledger


def _key(row: dict[str, Any]) -> Key:
    return (day_of(row["started_at"]), row.get("team_id") or 0, row.get("key_id") or 0, row["model"])


def _amounts(row: dict[str, Any]) -> tuple[float, ...]:
    return (
        1,
        int(row.get("status") != "ok"),
        row.get("input_tokens") or 0,
        row.get("output_tokens") or 0,
        row.get("cached_tokens") or 0,
        row.get("cost") or 0.0,
        row.get("duration_ms") or 0.0,
    )


async def old_rows(conn: AsyncConnection, request_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The stored ledger rows of ``request_ids`` (those about to be replaced), locked on PostgreSQL
    until the transaction ends, so the difference :func:`add` takes is the one really replaced."""
    if not request_ids:
        return []
    q = select(*_OLD_COLUMNS).where(Usage.request_id.in_(list(request_ids)))
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    return [dict(r) for r in (await conn.execute(q)).mappings()]


def deltas(added: Iterable[dict[str, Any]], removed: Iterable[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """What the rollup rows change by when ``added`` ledger rows replace ``removed`` ones: one dict
    per (day, team, key, model) that changes, in key order (the order rows are locked in)."""
    sums: dict[Key, list[float]] = {}
    names: dict[Key, str | None] = {}
    for sign, rows in ((1, added), (-1, removed)):
        for row in rows:
            key = _key(row)
            acc = sums.setdefault(key, [0] * len(SUMS))
            for i, amount in enumerate(_amounts(row)):
                acc[i] += sign * amount
            if sign > 0 and row.get("team") is not None:
                names[key] = row["team"]
            else:
                names.setdefault(key, None)
    out = []
    for key in sorted(sums):
        acc = sums[key]
        if not any(acc) and names[key] is None:  # replaced by the same row: nothing changes
            continue
        row = {**dict(zip(KEYS, key, strict=True)), "team": names[key]}
        out.append({**row, **dict(zip(SUMS, acc, strict=True))})
    return out


async def add(
    conn: AsyncConnection, added: Sequence[dict[str, Any]], removed: Sequence[dict[str, Any]] = ()
) -> None:
    """Bring the rollup in line with ``added`` ledger rows having replaced ``removed`` ones (the old
    versions of rows written again), inside the caller's transaction."""
    rows = deltas(added, removed)
    if not rows:
        return
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    table = UsageDailyRow.__table__
    stmt = insert(UsageDailyRow)
    update: dict[str, Any] = {c: table.c[c] + stmt.excluded[c] for c in SUMS}
    update["team"] = func.coalesce(stmt.excluded.team, table.c.team)
    await conn.execute(stmt.on_conflict_do_update(index_elements=list(KEYS), set_=update), rows)
    if removed:  # a row moved to another group: an emptied group is no group
        days = sorted({r["day"] for r in rows})
        await conn.execute(
            delete(UsageDailyRow).where(UsageDailyRow.requests == 0, UsageDailyRow.day.in_(days))
        )


# -- reading -------------------------------------------------------------------------------------


@dataclass
class DailyTotal:
    """One line of usage by day: the dimensions not grouped by are None."""

    day: str | None
    team_id: int | None
    team: str | None  # its name as recorded, "<name> (deleted)" for a deleted team
    key_id: int | None
    key_prefix: str | None
    key_name: str | None
    model: str | None
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost: float
    duration_ms: float  # summed; the mean is duration_ms / requests

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def avg_duration_ms(self) -> float | None:
        return self.duration_ms / self.requests if self.requests else None


async def daily(
    engine: AsyncEngine,
    since: date | None = None,
    until: date | None = None,
    *,
    team_id: int | None = None,
    team: str | None = None,
    key_id: int | None = None,
    model: str | None = None,
    group: Sequence[str] = GROUPS,
    limit: int | None = None,
) -> list[DailyTotal]:
    """Usage per day (``since`` to ``until``, both included), grouped by ``group`` (some of day,
    team, key, model), newest day first; only one team (``team_id``, or the live team named
    ``team``), key or model when given."""
    if bad := [g for g in group if g not in GROUPS]:
        raise ValueError(f"group by {', '.join(GROUPS)}, not {bad[0]!r}")
    d = UsageDailyRow
    cols: list[Any] = []
    keys: list[Any] = []
    if "day" in group:
        cols.append(d.day)
        keys.append(d.day)
    if "team" in group:
        label = case((Team.deleted_at.is_not(None), func.max(d.team) + " (deleted)"), else_=func.max(d.team))
        cols += [d.team_id, label.label("team")]
        keys += [d.team_id, Team.deleted_at]
    if "key" in group:
        cols += [d.key_id, ApiKey.prefix.label("key_prefix"), ApiKey.name.label("key_name")]
        keys += [d.key_id, ApiKey.prefix, ApiKey.name]
    if "model" in group:
        cols.append(d.model)
        keys.append(d.model)
    cols += [func.sum(getattr(d, c)).label(c) for c in SUMS]
    q = select(*cols).select_from(d)
    if "team" in group:
        q = q.outerjoin(Team, Team.id == d.team_id)
    if "key" in group:
        q = q.outerjoin(ApiKey, ApiKey.id == d.key_id)
    conds = []
    if since is not None:
        conds.append(d.day >= since.isoformat())
    if until is not None:
        conds.append(d.day <= until.isoformat())
    if team_id is not None:
        conds.append(d.team_id == team_id)
    if team is not None:
        live = select(Team.id).where(Team.name == team, Team.deleted_at.is_(None)).scalar_subquery()
        conds.append(d.team_id == live)
    if key_id is not None:
        conds.append(d.key_id == key_id)
    if model is not None:
        conds.append(d.model == model)
    if conds:
        q = q.where(and_(*conds))
    if keys:
        q = q.group_by(*keys)
    order = [d.day.desc()] if "day" in group else []
    q = q.order_by(*order, func.sum(d.input_tokens + d.output_tokens).desc())
    if limit is not None:
        q = q.limit(limit)
    async with engine.connect() as conn:
        found = (await conn.execute(q)).mappings().all()
    return [_total(r) for r in found]


def _total(r: Any) -> DailyTotal:
    team_id, key_id = r.get("team_id"), r.get("key_id")
    return DailyTotal(
        day=r.get("day"),
        team_id=team_id,
        team=r.get("team") if team_id else None,
        key_id=key_id,
        key_prefix=r.get("key_prefix"),
        key_name=r.get("key_name"),
        model=r.get("model"),
        requests=int(r["requests"] or 0),
        errors=int(r["errors"] or 0),
        input_tokens=int(r["input_tokens"] or 0),
        output_tokens=int(r["output_tokens"] or 0),
        cached_tokens=int(r["cached_tokens"] or 0),
        cost=float(r["cost"] or 0.0),
        duration_ms=float(r["duration_ms"] or 0.0),
    )
