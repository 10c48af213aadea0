"""Limits as the gateway enforces them, read with a key's principal (no other store imports)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from m2a.principal import Limit
from m2a.store.schema import Quota

# Token metrics count the engine's usage numbers; cost is in micro-dollars (prices from the config).
METRICS = ("tokens", "input_tokens", "output_tokens", "requests", "cost", "concurrency")
WINDOWS = {"minute": 60, "hour": 3600, "day": 86400, "month": 30 * 86400}  # month: calendar, UTC
NO_WINDOW = "-"  # concurrency has none
MAX_LIMIT = 2**62


async def limits_for(s: AsyncSession, team_id: int, key_id: int) -> tuple[Limit, ...]:
    """The team's limits and the key's own, for the principal of ``key_id``."""
    rows = (
        await s.execute(
            select(Quota).where(Quota.team_id == team_id, (Quota.key_id.is_(None)) | (Quota.key_id == key_id))
        )
    ).scalars()
    return tuple(
        Limit(
            "team" if q.key_id is None else "key",
            team_id if q.key_id is None else key_id,
            q.metric,
            q.window,
            q.limit,
        )
        for q in rows
    )
