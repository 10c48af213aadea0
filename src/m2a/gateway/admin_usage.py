"""Admin API routes for quotas and the usage ledger (mounted by ``admin.py``).

Quotas are for admins. Usage is for admins (any team) and for team keys (their own team only:
a team key asking for another team's usage gets 403, and its rows never include other teams).
``/v1/quotas/usage`` (what is used of each limit in its current window, from the gateway's own
counters) follows the usage rule: admins any team, a team key its own.
(No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.)
"""

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.config import Price
from m2a.gateway.access import Access
from m2a.gateway.admin_access import caller
from m2a.gateway.counters import Counters
from m2a.gateway.errors import GatewayError
from m2a.gateway.quota import Quotas, window_bounds
from m2a.principal import Limit, Principal
from m2a.store.identity import MAX_ID
from m2a.store.limits import MAX_LIMIT, NO_WINDOW, STORAGE
from m2a.store.quotas import QuotaInfo, QuotaStore
from m2a.store.usage import priced, usage_rows

NO_NUL = r"^[^\x00]*$"
Metric = Literal[
    "tokens", "input_tokens", "output_tokens", "requests", "cost", "concurrency", "storage_bytes"
]
Window = Literal["minute", "hour", "day", "month", "-"]


class LimitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: Metric
    window: Window = Field(
        default=NO_WINDOW, description="'-' for concurrency and storage_bytes, else minute, hour, day, month."
    )
    limit: int = Field(
        ge=0,
        le=MAX_LIMIT,
        description="Tokens, requests or concurrent requests; cost in micro-dollars; storage_bytes: what "
        "the team's vector stores may hold (their usage_bytes).",
    )


class QuotasIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limits: list[LimitIn] = Field(min_length=1, max_length=32)
    key_id: int | None = Field(default=None, ge=1, le=MAX_ID, description="Limits of one key of the team.")


class QuotaOut(BaseModel):
    team: str
    key_id: int | None
    metric: str
    window: str
    limit: int
    created_at: datetime


class QuotaUseOut(QuotaOut):
    used: int | None = Field(
        description="Used in the current window (concurrency: in flight now; storage_bytes: held now); "
        "null where this gateway keeps no counters."
    )
    resets_at: datetime | None = Field(description="When the current window ends; null for concurrency.")


class UsageOut(BaseModel):
    group: str | None
    model: str
    bucket: str | None
    requests: int
    errors: int
    interrupted: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    avg_ttft_ms: float | None
    avg_duration_ms: float | None
    cost: float = Field(
        description="Dollars, as priced when each request ended (older records: at today's prices)."
    )


def _quota(q: QuotaInfo) -> QuotaOut:
    return QuotaOut(**q.__dict__)


def usage_router(
    access: Access,
    quotas: QuotaStore,
    usage: AsyncEngine | None,
    prices: dict[str, Price],
    counters: Counters | None = None,
    storage_used: Callable[[int], Awaitable[int]] | None = None,
) -> APIRouter:
    """``counters``: the gateway's quota counters (what ``/v1/quotas/usage`` reads);
    ``storage_used``: a team's vector-store bytes, by team id."""
    router = APIRouter()

    Caller = Annotated[Principal, Depends(caller)]
    Admin = Caller  # admin_access.TABLE: only usage takes a team key here
    Team = Annotated[str, Query(pattern=NO_NUL)]

    @router.get("/v1/quotas", response_model=list[QuotaOut])
    async def list_quotas(_: Admin, team: Team | None = None) -> list[QuotaOut]:
        return [_quota(q) for q in await quotas.list(team)]

    @router.get("/v1/quotas/usage", response_model=list[QuotaUseOut])
    async def quota_usage(p: Caller, team: Team | None = None) -> list[QuotaUseOut]:
        """Each limit with what is used of it now; team keys see their own team's only."""
        if not p.is_admin:
            if team is not None and team != p.team:
                raise GatewayError(403, "A team key sees its own team's quotas only.", code="not_your_team")
            if p.team is None:
                raise GatewayError(403, "This key belongs to no team.", code="not_your_team")
            team = p.team
        now = time.time()
        out = []
        for q in await quotas.list(team):
            scope, subject = ("key", q.key_id) if q.key_id is not None else ("team", q.team_id)
            lim = Limit(scope, subject, q.metric, q.window, q.limit)
            if q.metric == STORAGE:
                used = await storage_used(q.team_id) if storage_used is not None else None
                out.append(QuotaUseOut(**_quota(q).model_dump(), used=used, resets_at=None))
                continue
            concurrency = q.metric == "concurrency"
            key = f"{scope}:{subject}:concurrency" if concurrency else Quotas.counter_key(lim, now)
            used = await counters.value(key) if counters is not None else None
            resets = None if concurrency else datetime.fromtimestamp(window_bounds(q.window, now)[1], UTC)
            out.append(QuotaUseOut(**_quota(q).model_dump(), used=used, resets_at=resets))
        return out

    @router.put("/v1/teams/{team}/quotas", response_model=list[QuotaOut])
    async def set_quotas(team: str, body: QuotasIn, _: Admin) -> list[QuotaOut]:
        """Set limits of the team (or of one key); other limits stay as they are."""
        await quotas.set(team, [(x.metric, x.window, x.limit) for x in body.limits], body.key_id)
        access.invalidate()
        return [_quota(q) for q in await quotas.list(team)]

    @router.delete("/v1/teams/{team}/quotas", status_code=204)
    async def clear_quotas(
        team: str,
        _: Admin,
        key_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
        metric: Metric | None = None,
    ) -> Response:
        await quotas.clear(team, key_id, metric)
        access.invalidate()
        return Response(status_code=204)

    @router.get("/v1/usage", response_model=list[UsageOut])
    async def get_usage(
        p: Caller,
        by: Literal["team", "key", "model", "replica", "priority", "status", "agent"] = "team",
        since_days: Annotated[float, Query(gt=0, le=3660)] = 7,
        bucket: Literal["hour", "day", "month"] | None = None,
        team: Team | None = None,
    ) -> list[UsageOut]:
        """Usage totals; team keys see their own team's only (by the team's id, not its name)."""
        team_id = None
        if not p.is_admin:
            if team is not None and team != p.team:
                raise GatewayError(403, "A team key sees its own team's usage only.", code="not_your_team")
            team, team_id = None, p.team_id
            if team_id is None:  # a member key always has a team; refuse rather than show all
                raise GatewayError(403, "This key belongs to no team.", code="not_your_team")
        if usage is None:
            return []
        since = datetime.now(UTC) - timedelta(days=since_days)
        rows = await usage_rows(usage, by, since=since, team=team, bucket=bucket, team_id=team_id)
        fields = UsageOut.model_fields.keys() - {"cost"}
        return [
            UsageOut(**{f: getattr(r, f) for f in fields}, cost=priced(r, prices.get(r.model) or Price()))
            for r in rows
        ]

    return router
