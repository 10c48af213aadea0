"""Quota definitions per team and per key: which metric, over which window, up to what limit.

A team's limits bind every key of the team together; a key's limits bind that key alone; a request
must fit both. Changing a quota bumps the identity revision, so gateways pick it up with the key
cache (the limits travel on the cached principal). Counting against them is the gateway's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from m2a.store.identity import IdentityError, IdentityStore, now
from m2a.store.limits import MAX_LIMIT, METRICS, NO_WINDOW, STORAGE, WINDOWLESS, WINDOWS
from m2a.store.schema import ApiKey, Quota, Team


@dataclass(frozen=True)
class QuotaInfo:
    team: str
    key_id: int | None
    metric: str
    window: str
    limit: int
    created_at: datetime
    team_id: int = 0  # the team's identity (what the gateway's counters are keyed by)


def check(metric: str, window: str, limit: int) -> None:
    if metric not in METRICS:
        raise IdentityError("invalid", f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    if metric in WINDOWLESS:
        if window != NO_WINDOW:
            raise IdentityError("invalid", f"{metric} has no window")
    elif window not in WINDOWS:
        raise IdentityError("invalid", f"window must be one of {', '.join(WINDOWS)}, not {window!r}")
    if not 0 <= limit <= MAX_LIMIT:
        raise IdentityError("invalid", f"a limit is between 0 and {MAX_LIMIT}")


class QuotaStore:
    """Set, list and clear quotas; shares the identity store's database and revision counter."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.identity = IdentityStore(engine)

    async def _key_of(self, s: AsyncSession, team: Team, key_id: int | None) -> None:
        if key_id is None:
            return
        key = await s.get(ApiKey, key_id) if 1 <= key_id < 2**31 else None
        if key is None or key.team_id != team.id:
            raise IdentityError("not_found", f"team {team.name!r} has no key with id {key_id}")

    async def set(self, team: str, limits: list[tuple[str, str, int]], key_id: int | None = None) -> None:
        """Set (replace) each ``(metric, window, limit)`` of the team, or of one of its keys."""
        for metric, window, limit in limits:
            check(metric, window, limit)
            if metric == STORAGE and key_id is not None:
                raise IdentityError(
                    "invalid", "storage_bytes is a team's limit: vector stores belong to teams"
                )
        async with self.identity._session() as s, s.begin():
            row = await self.identity._team(s, team)
            await self._key_of(s, row, key_id)
            for metric, window, limit in limits:
                await s.execute(
                    delete(Quota).where(
                        Quota.team_id == row.id,
                        Quota.key_id.is_(None) if key_id is None else Quota.key_id == key_id,
                        Quota.metric == metric,
                        Quota.window == window,
                    )
                )
                s.add(
                    Quota(
                        team_id=row.id,
                        key_id=key_id,
                        metric=metric,
                        window=window,
                        limit=limit,
                        created_at=now(),
                    )
                )
            await self.identity._bump(s)

    async def clear(self, team: str, key_id: int | None = None, metric: str | None = None) -> int:
        """Remove the team's (or key's) quotas, all or one metric; how many were removed."""
        async with self.identity._session() as s, s.begin():
            row = await self.identity._team(s, team)
            await self._key_of(s, row, key_id)
            q = delete(Quota).where(
                Quota.team_id == row.id, Quota.key_id.is_(None) if key_id is None else Quota.key_id == key_id
            )
            if metric is not None:
                q = q.where(Quota.metric == metric)
            removed = (await s.execute(q)).rowcount or 0
            await self.identity._bump(s)
            return removed

    async def list(self, team: str | None = None) -> list[QuotaInfo]:
        async with self.identity._session() as s:
            q = select(Quota, Team.name).join(Team, Quota.team_id == Team.id).where(Team.deleted_at.is_(None))
            if team is not None:
                q = q.where(Quota.team_id == (await self.identity._team(s, team)).id)
            rows = (await s.execute(q.order_by(Team.name, Quota.key_id, Quota.metric, Quota.window))).all()
            return [
                QuotaInfo(name, r.key_id, r.metric, r.window, r.limit, r.created_at, r.team_id)
                for r, name in rows
            ]
