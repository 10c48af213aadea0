"""The ``policies`` table: Cedar policy texts per scope, written through the admin API or the CLI.

A row is one named text in a scope: ``global``, ``team:<team>`` or ``agent:<team>/<agent>``
(``parse_scope`` is the one reading of a scope string). Its ``version`` starts at 1 and goes up by
one on each change (a write of the same text and mode changes nothing); ``mode`` (``enforce``,
``log_only`` or none) is a team's or an agent's override of the configured mode, never set on
``global``. Whether a text is valid Cedar is the trust layer's question (``trust/policy.py``), asked
before anything is written here. ``marker()`` is what other processes poll to see a change: the
row count, the latest ``updated_at`` and the sum of the versions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from m2a.store.schema import PolicyRow

MODES = ("enforce", "log_only")
TEAM = r"[a-z0-9][a-z0-9_-]{0,63}"  # as teams are named (store/identity.py)
AGENT = r"[a-z0-9][a-z0-9-]{0,62}"  # as agents are named (a SPIFFE path segment)
NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_SCOPE = re.compile(rf"global|team:({TEAM})|agent:({TEAM})/({AGENT})")
MAX_TEXT = 64 << 10
MAX_BY = 300


class PolicyStoreError(Exception):
    """A refused change; ``kind`` is invalid or conflict."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Scope:
    """A parsed scope: ``kind`` global, team or agent; the team and agent it names."""

    kind: str
    team: str | None = None
    agent: str | None = None

    def __str__(self) -> str:
        if self.kind == "global":
            return "global"
        return f"team:{self.team}" if self.kind == "team" else f"agent:{self.team}/{self.agent}"


def parse_scope(scope: str) -> Scope:
    """``global``, ``team:<team>`` or ``agent:<team>/<name>``, or raise ``PolicyStoreError``."""
    found = _SCOPE.fullmatch(scope) if isinstance(scope, str) else None  # fullmatch: no trailing \n
    if found is None:
        raise PolicyStoreError(
            "invalid", f"Scope {scope!r} is not one of global, team:<team>, agent:<team>/<agent>."
        )
    if found.group(1):
        return Scope("team", found.group(1))
    if found.group(2):
        return Scope("agent", found.group(2), found.group(3))
    return Scope("global")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise PolicyStoreError(
            "invalid", f"Policy name {name!r}: use 1-64 of a-z, 0-9, '_', '.', '-' (a letter or digit first)."
        )
    return name


@dataclass(frozen=True)
class PolicyRecord:
    scope: str
    name: str
    text: str
    version: int
    mode: str | None
    created_at: datetime
    updated_at: datetime
    updated_by: str
    created: bool = False  # set by put when it inserted the row


def _aware(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t  # SQLite hands them back naive


def _record(r: PolicyRow, created: bool = False) -> PolicyRecord:
    return PolicyRecord(
        r.scope, r.name, r.text, r.version, r.mode, _aware(r.created_at), _aware(r.updated_at),
        r.updated_by, created,
    )  # fmt: skip


class PolicyStore:
    """CRUD of ``policies`` rows."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def list(self, scope: str | None = None) -> list[PolicyRecord]:
        """Every row (``scope``: that scope's), ordered by scope and name."""
        query = select(PolicyRow).order_by(PolicyRow.scope, PolicyRow.name)
        if scope is not None:
            query = query.where(PolicyRow.scope == str(parse_scope(scope)))
        async with self._sessions() as s:
            return [_record(r) for r in (await s.scalars(query)).all()]

    async def get(self, scope: str, name: str) -> PolicyRecord | None:
        async with self._sessions() as s:
            row = await s.scalar(select(PolicyRow).where(PolicyRow.scope == scope, PolicyRow.name == name))
            return _record(row) if row is not None else None

    async def put(self, scope: str, name: str, text: str, mode: str | None, by: str) -> PolicyRecord:
        """Create or change a row (its version goes up by one when the text or mode changed)."""
        parsed = parse_scope(scope)
        check_name(name)
        if not isinstance(text, str) or len(text) > MAX_TEXT or "\x00" in text:
            raise PolicyStoreError("invalid", f"A policy text is at most {MAX_TEXT} characters, no NUL.")
        if mode is not None and mode not in MODES:
            raise PolicyStoreError("invalid", f"Mode {mode!r} is not one of {', '.join(MODES)}.")
        if mode is not None and parsed.kind == "global":
            raise PolicyStoreError(
                "invalid",
                "The global mode is trust.mode in the config; a mode overrides it per team or agent.",
            )
        by = by[:MAX_BY]
        for _ in range(3):  # a concurrent first write of the same row: the loser updates it
            found = await self.get(scope, name)
            at = datetime.now(UTC)
            async with self._sessions() as s:
                if found is None:
                    row = PolicyRow(
                        scope=scope, name=name, text=text, version=1, mode=mode, created_at=at,
                        updated_at=at, updated_by=by,
                    )  # fmt: skip
                    s.add(row)
                    try:
                        await s.commit()
                    except IntegrityError:
                        continue
                    return _record(row, created=True)
                if found.text == text and found.mode == mode:
                    return found
                await s.execute(
                    update(PolicyRow)
                    .where(PolicyRow.scope == scope, PolicyRow.name == name)
                    .values(text=text, mode=mode, version=PolicyRow.version + 1, updated_at=at, updated_by=by)
                )
                await s.commit()
            changed = await self.get(scope, name)
            if changed is not None:
                return changed
        raise PolicyStoreError("conflict", f"Policy {scope}/{name} is being changed concurrently; try again.")

    async def delete(self, scope: str, name: str) -> bool:
        """Remove a row; whether there was one."""
        async with self._sessions() as s:
            result = await s.execute(
                delete(PolicyRow).where(PolicyRow.scope == scope, PolicyRow.name == name)
            )
            await s.commit()
            return bool(result.rowcount)

    async def marker(self) -> tuple[int, str | None, int]:
        """What changes whenever a row is written or removed: (rows, latest updated_at, sum of versions)."""
        async with self.engine.connect() as conn:
            count, latest, versions = (
                await conn.execute(
                    select(
                        func.count(PolicyRow.id), func.max(PolicyRow.updated_at), func.sum(PolicyRow.version)
                    )
                )
            ).one()
        return int(count or 0), None if latest is None else str(latest), int(versions or 0)
