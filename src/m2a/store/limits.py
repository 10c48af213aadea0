"""Limits as the gateway enforces them, read with a key's principal (no other store imports)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from m2a.principal import Limit
from m2a.store.schema import Quota

# Token metrics count the engine's usage numbers; cost is in micro-dollars (prices from the config).
# storage_bytes is what a team's vector stores hold (their usage_bytes): a team limit, no window,
# checked by the data services (attaching a file, ingesting it), never by a request's admission.
STORAGE = "storage_bytes"
METRICS = ("tokens", "input_tokens", "output_tokens", "requests", "cost", "concurrency", STORAGE)
WINDOWLESS = ("concurrency", STORAGE)
REQUEST_METRICS = tuple(m for m in METRICS if m != STORAGE)  # what a request's admission counts
WINDOWS = {"minute": 60, "hour": 3600, "day": 86400, "month": 30 * 86400}  # month: calendar, UTC
NO_WINDOW = "-"  # concurrency and storage have none
MAX_LIMIT = 2**62


async def limits_for(s: AsyncSession, team_id: int, key_id: int) -> tuple[Limit, ...]:
    """The team's limits and the key's own that a request's admission checks, for the principal of
    ``key_id`` (not ``storage_bytes``: the data services read that one)."""
    rows = (
        await s.execute(
            select(Quota).where(
                Quota.team_id == team_id,
                (Quota.key_id.is_(None)) | (Quota.key_id == key_id),
                Quota.metric != STORAGE,
            )
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
