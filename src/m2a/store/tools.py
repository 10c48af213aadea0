"""The tools' tables: MCP servers registered in m2a, every tool call, and tool-call approvals.

``tool_servers`` holds what m2a needs to reach a server (URL, m2a's own headers for it, a timeout);
the rules for those values live in ``agents/tools.py``, which is the only writer. ``tool_calls`` is
append-only: one row per call an agent made (or was refused), with the sha256 of the call's RFC
8785 canonical arguments, never the arguments themselves. ``tool_approvals`` keeps the arguments of
a call that waits for a person, since the call runs from them once approved; an approval is decided
once (``pending`` → ``approved`` / ``denied``, or ``expired`` past ``expires_at``) by a conditional
``UPDATE``, so two deciders cannot both win, and an approved call is claimed once (``used_at``) so a
replayed approval never runs the call twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from m2a.store.schema import ToolApprovalRow, ToolCallRow, ToolServerRow

CALL_STATUSES = ("ok", "error", "denied", "timeout", "pending")  # pending: waits for an approval
APPROVAL_STATUSES = ("pending", "approved", "denied", "expired")
MAX_PAGE = 1000


class ToolStoreError(Exception):
    """A refused change; ``kind`` is not_found, conflict or invalid."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def now() -> datetime:
    return datetime.now(UTC)


def _aware(t: datetime | None) -> datetime | None:
    """SQLite hands timezone-aware columns back naive (in UTC)."""
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


@dataclass(frozen=True)
class ServerRecord:
    name: str
    url: str
    headers: dict[str, str]  # m2a's credentials for the server: never show these back in full
    timeout_s: float
    description: str | None
    created_at: datetime
    updated_at: datetime
    tiers: dict[str, str] = field(default_factory=dict)  # tool → read|write|destructive, set by an admin


@dataclass(frozen=True)
class CallRecord:
    id: int
    at: datetime
    agent: str
    agent_id: int | None
    version: int | None
    team_id: int | None
    server: str
    tool: str
    args_sha256: str
    status: str
    error: str | None
    duration_ms: float
    via: str
    call_id: str | None
    trace_id: str | None
    response_id: str | None


@dataclass(frozen=True)
class ApprovalRecord:
    id: str
    agent: str
    agent_id: int | None
    version: int | None
    team_id: int | None
    server: str
    tool: str
    args_sha256: str
    arguments: str  # JSON text
    status: str
    reason: str | None
    response_id: str | None
    created_at: datetime
    expires_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    used_at: datetime | None
    tier: str | None = None  # read, write, destructive (trusted execution); None: not known


def _server(r: ToolServerRow) -> ServerRecord:
    return ServerRecord(
        r.name, r.url, json.loads(r.headers or "{}"), r.timeout_s, r.description,
        _aware(r.created_at), _aware(r.updated_at), json.loads(r.tiers or "{}"),  # type: ignore[arg-type]
    )  # fmt: skip


def _call(r: ToolCallRow) -> CallRecord:
    return CallRecord(
        r.id, _aware(r.at), r.agent, r.agent_id, r.version, r.team_id, r.server, r.tool,  # type: ignore[arg-type]
        r.args_sha256, r.status, r.error, r.duration_ms, r.via, r.call_id, r.trace_id, r.response_id,
    )  # fmt: skip


def _approval(r: ToolApprovalRow, at: datetime | None = None) -> ApprovalRecord:
    expires = _aware(r.expires_at)
    assert expires is not None
    status = r.status
    if status == "pending" and expires <= (at or now()):
        status = "expired"  # not yet written back: it is expired all the same
    return ApprovalRecord(
        r.id, r.agent, r.agent_id, r.version, r.team_id, r.server, r.tool, r.args_sha256, r.arguments,
        status, r.reason, r.response_id, _aware(r.created_at), expires, r.decided_by,  # type: ignore[arg-type]
        _aware(r.decided_at), _aware(r.used_at), r.tier,
    )  # fmt: skip


class ToolStore:
    """Reads and writes the tools' tables (one short transaction per call)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    # -- servers -------------------------------------------------------------------------------

    async def add_server(
        self,
        name: str,
        url: str,
        headers: dict[str, str],
        timeout_s: float,
        description: str | None = None,
        tiers: dict[str, str] | None = None,
    ) -> ServerRecord:
        at = now()
        row = ToolServerRow(
            name=name, url=url, headers=json.dumps(headers), timeout_s=timeout_s, description=description,
            created_at=at, updated_at=at, tiers=json.dumps(tiers) if tiers else None,
        )  # fmt: skip
        try:
            async with self._session.begin() as s:
                s.add(row)
        except IntegrityError as exc:
            raise ToolStoreError("conflict", f"an MCP server named '{name}' is already registered") from exc
        return _server(row)

    async def get_server(self, name: str) -> ServerRecord | None:
        async with self._session() as s:
            row = await s.scalar(select(ToolServerRow).where(ToolServerRow.name == name))
            return _server(row) if row is not None else None

    async def list_servers(self) -> list[ServerRecord]:
        async with self._session() as s:
            rows = await s.scalars(select(ToolServerRow).order_by(ToolServerRow.name))
            return [_server(r) for r in rows]

    async def remove_server(self, name: str) -> bool:
        """Forget a server (its calls stay recorded); whether it was there."""
        async with self._session.begin() as s:
            result = await s.execute(delete(ToolServerRow).where(ToolServerRow.name == name))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    # -- calls ---------------------------------------------------------------------------------

    async def record_call(self, **fields: Any) -> int:
        """One call as it ended (``ToolCallRow``'s columns; ``at`` defaults to now); its row id."""
        if fields.get("status") not in CALL_STATUSES:
            raise ValueError(f"a tool call's status is one of {CALL_STATUSES}")
        fields.setdefault("at", now())
        row = ToolCallRow(**fields)
        async with self._session.begin() as s:
            s.add(row)
        return row.id

    async def list_calls(
        self,
        *,
        team_id: int | None = None,
        agent: str | None = None,
        server: str | None = None,
        status: str | None = None,
        response_id: str | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> list[CallRecord]:
        """Newest first; ``team_id`` None: every team's (the caller decides who may see what)."""
        given = dict(team_id=team_id, agent=agent, server=server, status=status, response_id=response_id)
        q = select(ToolCallRow).filter_by(**{k: v for k, v in given.items() if v is not None})
        if before is not None:
            q = q.where(ToolCallRow.id < before)
        q = q.order_by(ToolCallRow.id.desc()).limit(max(1, min(limit, MAX_PAGE)))
        async with self._session() as s:
            return [_call(r) for r in await s.scalars(q)]

    # -- approvals -----------------------------------------------------------------------------

    async def create_approval(self, **fields: Any) -> ApprovalRecord:
        """A pending approval (``ToolApprovalRow``'s columns: id, agent, server, tool, arguments …)."""
        fields.setdefault("created_at", now())
        row = ToolApprovalRow(status="pending", **fields)
        async with self._session.begin() as s:
            s.add(row)
        return _approval(row)

    async def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        async with self._session() as s:
            row = await s.scalar(select(ToolApprovalRow).where(ToolApprovalRow.id == approval_id))
            return _approval(row) if row is not None else None

    async def expire(self) -> int:
        """Write ``expired`` on pending approvals past their time; how many."""
        at = now()
        async with self._session.begin() as s:
            result = await s.execute(
                update(ToolApprovalRow)
                .where(ToolApprovalRow.status == "pending", ToolApprovalRow.expires_at <= at)
                .values(status="expired", decided_at=at, decided_by="timeout")
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def list_approvals(
        self,
        *,
        status: str | None = None,
        team_id: int | None = None,
        agent: str | None = None,
        response_id: str | None = None,
        limit: int = 100,
    ) -> list[ApprovalRecord]:
        """Newest first; ``team_id`` None: every team's; ``response_id``: those that response asked."""
        await self.expire()
        given = dict(status=status, team_id=team_id, agent=agent, response_id=response_id)
        q = select(ToolApprovalRow).filter_by(**{k: v for k, v in given.items() if v is not None})
        q = q.order_by(ToolApprovalRow.seq.desc()).limit(max(1, min(limit, MAX_PAGE)))
        async with self._session() as s:
            return [_approval(r) for r in await s.scalars(q)]

    async def decide(
        self, approval_id: str, approve: bool, by: str, reason: str | None = None
    ) -> ApprovalRecord:
        """Approve or deny a pending approval, once: a decided or expired one is a conflict."""
        at = now()
        async with self._session.begin() as s:
            result = await s.execute(
                update(ToolApprovalRow)
                .where(
                    ToolApprovalRow.id == approval_id,
                    ToolApprovalRow.status == "pending",
                    ToolApprovalRow.expires_at > at,
                )
                .values(
                    status="approved" if approve else "denied",
                    decided_by=by[:300],
                    decided_at=at,
                    reason=reason,
                )
            )
            won = bool(result.rowcount)  # type: ignore[attr-defined]
        found = await self.get_approval(approval_id)
        if found is None:
            raise ToolStoreError("not_found", f"no approval '{approval_id}'")
        if not won:
            raise ToolStoreError("conflict", f"approval '{approval_id}' is {found.status}, not pending")
        return found

    async def find_open(self, agent: str, server: str, tool: str, args_sha256: str) -> ApprovalRecord | None:
        """The newest approval of this very call (agent, tool, arguments' digest) still of use: pending,
        or approved and not yet run; None when there is none (decided against, expired or used)."""
        q = (
            select(ToolApprovalRow)
            .filter_by(agent=agent, server=server, tool=tool, args_sha256=args_sha256)
            .where(ToolApprovalRow.status.in_(("pending", "approved")), ToolApprovalRow.used_at.is_(None))
            .order_by(ToolApprovalRow.seq.desc())
            .limit(1)
        )
        async with self._session() as s:
            row = await s.scalar(q)
        found = _approval(row) if row is not None else None
        return found if found is not None and found.status in ("pending", "approved") else None

    async def claim(self, approval_id: str) -> bool:
        """Take an approved call to run it: true for exactly one caller, never for an unapproved one."""
        async with self._session.begin() as s:
            result = await s.execute(
                update(ToolApprovalRow)
                .where(
                    ToolApprovalRow.id == approval_id,
                    ToolApprovalRow.status == "approved",
                    ToolApprovalRow.used_at.is_(None),
                )
                .values(used_at=now())
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]
