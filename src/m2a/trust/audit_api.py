"""The audit log's read-only admin API (FastAPI): ``GET /admin/v1/audit``.

Served through the agents extension (``agents/trust_wiring.py: Trust.routes``) when trusted
execution is on. It reads ``trust/audit.py``'s records, the way ``m2a audit show`` does on the store:

- ``GET /admin/v1/audit`` (``?kind=``, ``?agent=<SPIFFE id>``, ``?trace_id=``, ``?since=`` and
  ``?until=`` as ISO 8601 times, ``until`` exclusive; ``?limit=`` 1-1000, default 100; ``?after=<seq>``,
  ``?before=<seq>``): the newest matching records in seq order (below ``before``: paging back), or the
  first ``limit`` after ``after`` (paging on). Each
  record is what ``m2a audit export`` writes: seq, at, kind, agent, team_id, trace_id, body,
  prev_hash, hash. Bodies hold digests, names and ids, never secrets (``audit.py``).

Who: an **admin key** sees every record; a **team's key** only the records of its own team (a record
of no team, or another team's, is not listed: as if it did not exist); an agent's own token is
refused (403 ``agents_cannot_manage``). Nothing here writes. Errors are OpenAI's error JSON. (No
``from __future__ import annotations``: FastAPI reads the annotations at runtime.)
"""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import BaseModel

from m2a.gateway.access import Access
from m2a.gateway.keyed_api import keyed_api
from m2a.principal import Principal
from m2a.trust.audit import AuditLog

PREFIX = "/admin/v1/audit"
MAX_BODY_BYTES = 4 << 10  # a GET: nothing worth reading
NO_NUL = r"^[^\x00]*$"


class AuditRecordOut(BaseModel):
    object: Literal["audit_record"] = "audit_record"
    seq: int
    at: datetime
    kind: str
    agent: str | None
    team_id: int | None
    trace_id: str | None
    body: Any
    prev_hash: str
    hash: str


def caller(request: Request) -> Principal:
    principal = getattr(request.state, "principal", None)
    if principal is None:
        raise RuntimeError("audit API handler reached without authentication")
    return principal


def log_of(request: Request) -> AuditLog:
    return request.app.state.log


Caller = Annotated[Principal, Depends(caller)]
Log = Annotated[AuditLog, Depends(log_of)]
Text = Annotated[str | None, Query(min_length=1, max_length=256, pattern=NO_NUL)]


def _team_scope(p: Principal) -> int | None:
    """The team whose records a caller reads (None: an admin reads every record; -1: none)."""
    if p.is_admin:
        return None
    return p.team_id if p.team_id is not None else -1


def _aware(at: datetime | None) -> datetime | None:
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at


audit_router = APIRouter()


@audit_router.get(PREFIX, response_model=list[AuditRecordOut])
async def list_records(
    p: Caller,
    log: Log,
    kind: Annotated[str | None, Query(min_length=1, max_length=32, pattern=NO_NUL)] = None,
    agent: Text = None,
    trace_id: Annotated[str | None, Query(pattern=r"^[0-9a-f]{32}$")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> list[dict[str, Any]]:
    """Audit records, newest ``limit`` (below ``before``; or the first after ``after``), in seq order."""
    return await log.show(
        agent=agent, trace_id=trace_id, kind=kind, since=_aware(since), until=_aware(until), limit=limit,
        after_seq=after, before_seq=before, team_id=_team_scope(p),
    )  # fmt: skip


def create_audit_api(log: AuditLog, access: Access) -> FastAPI:
    """The read-only API over ``log`` for the callers ``access`` authenticates."""
    api = keyed_api(
        title="m2a audit API",
        description="The tamper-evident audit log of an m2a gateway (read only). Send an API key as Bearer.",
        access=access,
        agents_refused="An agent's token cannot read the audit log; use an API key.",
        max_body=MAX_BODY_BYTES,
        statuses={405: ("The audit log is read only.", "method_not_allowed")},
    )
    api.state.log = log
    api.include_router(audit_router)
    return api
