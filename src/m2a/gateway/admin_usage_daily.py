"""``GET /admin/v1/usage/daily``: usage per UTC day, team, key and model, as JSON or CSV.

Read from the daily rollup (``store/usage_daily.py``), so it stays fast on a ledger of millions of
rows. Admins see every team; a team key (or an agent's token) its own team only: asking for another
team is 403, and its rows never include other teams. ``group`` keeps some of day, team, key, model
(the others are summed over). ``format=csv`` answers the same rows as a CSV download (text cells
that a spreadsheet would read as a formula are prefixed with ``'``).
(No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.)
"""

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.gateway.admin_access import caller
from m2a.gateway.errors import GatewayError
from m2a.principal import Principal
from m2a.store.identity import MAX_ID
from m2a.store.usage_daily import GROUPS, DailyTotal, daily

NO_NUL = r"^[^\x00]*$"
MAX_ROWS = 100_000
Group = Literal["day", "team", "key", "model"]


class DailyOut(BaseModel):
    day: str | None = Field(description="YYYY-MM-DD (UTC: the day each request started); null: summed over.")
    team_id: int | None = Field(description="0: no team (admin keys); null: summed over.")
    team: str | None
    key_id: int | None = Field(description="0: none; null: summed over.")
    key_prefix: str | None
    key_name: str | None
    model: str | None
    requests: int
    errors: int = Field(description="Requests that did not end ok (errors, cancelled, interrupted).")
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost: float = Field(description="Dollars, as priced when each request ended.")
    avg_duration_ms: float | None


CSV_FIELDS = list(DailyOut.model_fields)


def _out(t: DailyTotal) -> DailyOut:
    fields = DailyOut.model_fields.keys() - {"avg_duration_ms"}
    return DailyOut(**{f: getattr(t, f) for f in fields}, avg_duration_ms=t.avg_duration_ms)


def _cell(value: object) -> object:
    """A CSV cell; text a spreadsheet would run as a formula starts with ``'``."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def to_csv(rows: list[DailyOut]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        writer.writerow([_cell(getattr(r, f)) for f in CSV_FIELDS])
    return buf.getvalue()


def daily_router(usage: AsyncEngine | None) -> APIRouter:
    """The route, reading ``usage`` (the store's engine; None: no ledger, no rows)."""
    router = APIRouter()
    Caller = Annotated[Principal, Depends(caller)]

    @router.get("/v1/usage/daily", response_model=list[DailyOut])
    async def usage_daily(
        p: Caller,
        since: Annotated[date | None, Query(description="First day (UTC), included.")] = None,
        until: Annotated[date | None, Query(description="Last day (UTC), included; default today.")] = None,
        days: Annotated[int, Query(ge=1, le=3660, description="Without `since`: the last N days.")] = 30,
        team: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
        key_id: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
        model: Annotated[str | None, Query(max_length=256, pattern=NO_NUL)] = None,
        group: Annotated[list[Group] | None, Query(description="Keep these apart (default all).")] = None,
        format: Literal["json", "csv"] = "json",
        limit: Annotated[int, Query(ge=1, le=MAX_ROWS)] = 10_000,
    ) -> Response | list[DailyOut]:
        """Usage by day; team keys see their own team's only (by the team's id, not its name)."""
        team_id = None
        if not p.is_admin:
            if team is not None and team != p.team:
                raise GatewayError(403, "A team key sees its own team's usage only.", code="not_your_team")
            if p.team_id is None:  # a member key always has a team; refuse rather than show all
                raise GatewayError(403, "This key belongs to no team.", code="not_your_team")
            team, team_id = None, p.team_id
        today = datetime.now(UTC).date()
        until = until or today
        since = since or (until - timedelta(days=days - 1))
        if since > until:
            raise GatewayError(400, "`since` is after `until`.", code="invalid_request_error")
        keep = [g for g in GROUPS if g in (group or GROUPS)]
        rows: list[DailyOut] = []
        if usage is not None:
            found = await daily(
                usage,
                since,
                until,
                team_id=team_id,
                team=team,
                key_id=key_id,
                model=model,
                group=keep,
                limit=limit,
            )
            rows = [_out(t) for t in found]
        if format == "csv":
            name = f"m2a-usage-{since.isoformat()}-{until.isoformat()}.csv"
            return Response(
                to_csv(rows),
                media_type="text/csv; charset=utf-8",
                headers={"content-disposition": f'attachment; filename="{name}"'},
            )
        return rows

    return router
