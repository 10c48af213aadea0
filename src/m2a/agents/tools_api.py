"""The tools' admin API: MCP servers, tool-call approvals and the record of tool calls (FastAPI).

Served through the agents extension before the gateway's ``/admin`` mount, at:

- ``/admin/v1/tools`` — ``GET`` (list), ``POST`` (register: ``{name, url, headers, timeout_s,
  description}``, 201), ``/{name}`` ``GET`` / ``DELETE`` (204), ``/{name}/tools`` ``GET`` (the
  server's tools now, through MCP ``tools/list``: 502 when it fails, 504 when it hangs). **Admin keys
  only**: a server's headers are m2a's own credentials for it. They are never shown back: a listing
  names the headers with ``***`` for each value.
- ``/admin/v1/approvals`` — ``GET`` (``?status=pending``, ``?agent=<SPIFFE id>``), ``/{id}`` ``GET``,
  ``/{id}/approve`` and ``/{id}/deny`` ``POST`` (``{"reason": ...}`` optional). **An admin key, or a
  key of the agent's team** (the team answers for its agents): a team key sees only its own team's
  approvals, another team's id answers 404 as one that does not exist. An approval is decided once:
  deciding a decided or expired one is 409.
- ``/admin/v1/tool-calls`` — ``GET`` (newest first; ``?agent=``, ``?server=``, ``?status=``,
  ``?response_id=``, ``?limit=`` 1-1000, ``?before=<id>`` to page). Any key; a team key sees its own
  team's calls only, an admin key every team's.

An agent's own token is refused everywhere here (403 ``agents_cannot_manage``): an agent must not
register servers, nor approve its own calls out of band. Errors are OpenAI's error JSON. (No ``from
__future__ import annotations``: FastAPI reads the annotations at runtime.)
"""

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from m2a.agents.tools import MAX_TIMEOUT_S, ToolError, ToolFailure, ToolRegistry, masked
from m2a.gateway.access import Access
from m2a.gateway.errors import GatewayError, error_response
from m2a.gateway.keyed_api import keyed_api
from m2a.principal import Principal
from m2a.store.tools import (
    APPROVAL_STATUSES,
    CALL_STATUSES,
    ApprovalRecord,
    CallRecord,
    ServerRecord,
    ToolStore,
    ToolStoreError,
)

TOOLS = "/admin/v1/tools"
APPROVALS = "/admin/v1/approvals"
CALLS = "/admin/v1/tool-calls"
PREFIXES = (TOOLS, APPROVALS, CALLS)
MAX_BODY_BYTES = 256 << 10
NO_NUL = r"^[^\x00]*$"
_STATUS = {"not_found": 404, "conflict": 409, "invalid": 400, "forbidden": 403}

ServerName = Annotated[str, Path(min_length=1, max_length=64, pattern=NO_NUL)]
ApprovalId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Filter = Annotated[str | None, Query(max_length=256, pattern=NO_NUL)]


# -- bodies ------------------------------------------------------------------------------------------
class ServerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, examples=["erp"], description="The name manifests use.")
    url: str = Field(min_length=1, max_length=2048, examples=["http://127.0.0.1:8800/mcp"])
    headers: dict[str, str] = Field(
        default_factory=dict, description="Sent to the server on every call (m2a's credentials for it)."
    )
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S, description="Default 30 s.")
    description: str | None = Field(default=None, max_length=2000, pattern=NO_NUL)
    tiers: dict[str, Literal["read", "write", "destructive"]] = Field(
        default_factory=dict, description="Tool name → risk tier (destructive: needs a person's approval)."
    )


class ServerOut(BaseModel):
    name: str
    url: str
    headers: dict[str, str] = Field(description="Header names; every value shows as ***.")
    timeout_s: float
    description: str | None
    tiers: dict[str, str] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime


class ToolOut(BaseModel):
    name: str
    description: str | None
    input_schema: dict[str, Any]


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=1000, pattern=NO_NUL)


class ApprovalOut(BaseModel):
    id: str
    object: Literal["tool_approval"] = "tool_approval"
    agent: str
    agent_version: int | None
    team_id: int | None
    server: str
    tool: str
    arguments: Any = Field(description="The call's arguments, as the model gave them.")
    args_sha256: str
    status: str
    reason: str | None
    response_id: str | None
    created_at: datetime
    expires_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    used: bool = Field(description="Whether the approved call has run (it runs once).")
    tier: str | None = Field(default=None, description="read, write or destructive (trusted execution).")


class CallOut(BaseModel):
    id: int
    at: datetime
    agent: str
    agent_version: int | None
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


def server_out(s: ServerRecord) -> ServerOut:
    return ServerOut(
        name=s.name, url=s.url, headers=masked(s.headers), timeout_s=s.timeout_s, description=s.description,
        created_at=s.created_at, updated_at=s.updated_at, tiers=s.tiers,
    )  # fmt: skip


def approval_out(a: ApprovalRecord) -> ApprovalOut:
    try:
        arguments = json.loads(a.arguments)
    except ValueError:
        arguments = a.arguments
    return ApprovalOut(
        id=a.id, agent=a.agent, agent_version=a.version, team_id=a.team_id, server=a.server, tool=a.tool,
        arguments=arguments, args_sha256=a.args_sha256, status=a.status, reason=a.reason,
        response_id=a.response_id, created_at=a.created_at, expires_at=a.expires_at, decided_by=a.decided_by,
        decided_at=a.decided_at, used=a.used_at is not None, tier=a.tier,
    )  # fmt: skip


def call_out(c: CallRecord) -> CallOut:
    return CallOut(
        id=c.id, at=c.at, agent=c.agent, agent_version=c.version, team_id=c.team_id, server=c.server,
        tool=c.tool, args_sha256=c.args_sha256, status=c.status, error=c.error, duration_ms=c.duration_ms,
        via=c.via, call_id=c.call_id, trace_id=c.trace_id, response_id=c.response_id,
    )  # fmt: skip


def decider(p: Principal) -> str:
    """Who decided, as ``decided_by`` records it."""
    if p.is_admin and p.team is None:
        return f"admin key {p.key_prefix}"
    return f"key {p.key_prefix} (team {p.team})"


# -- dependencies ------------------------------------------------------------------------------------
def caller(request: Request) -> Principal:
    principal = getattr(request.state, "principal", None)
    if principal is None:
        raise RuntimeError("tools API handler reached without authentication")
    return principal


def admin(p: Annotated[Principal, Depends(caller)]) -> Principal:
    if not p.is_admin:
        raise GatewayError(403, "Registering MCP servers needs an admin key.", code="admin_only")
    return p


def registry_of(request: Request) -> ToolRegistry:
    return request.app.state.registry


def store_of(request: Request) -> ToolStore:
    return request.app.state.store


Caller = Annotated[Principal, Depends(caller)]
Admin = Annotated[Principal, Depends(admin)]
Reg = Annotated[ToolRegistry, Depends(registry_of)]
Store = Annotated[ToolStore, Depends(store_of)]


def _team_scope(p: Principal) -> int | None:
    """The team a caller's listings are limited to (None: an admin sees every team's)."""
    if p.is_admin:
        return None
    if p.team_id is None:  # a non-admin principal without a team sees nothing
        return -1
    return p.team_id


async def _approval(store: ToolStore, p: Principal, approval_id: str) -> ApprovalRecord:
    found = await store.get_approval(approval_id)
    if found is None or (not p.is_admin and found.team_id != p.team_id):
        raise GatewayError(404, f"No approval '{approval_id}'.", code="approval_not_found")
    return found


# -- routes ------------------------------------------------------------------------------------------
tools_router = APIRouter()


@tools_router.get(TOOLS, response_model=list[ServerOut])
async def list_servers(_: Admin, registry: Reg) -> list[ServerOut]:
    return [server_out(s) for s in await registry.list()]


@tools_router.post(TOOLS, response_model=ServerOut, status_code=201)
async def add_server(body: ServerIn, _: Admin, registry: Reg) -> ServerOut:
    """Register an MCP server (streamable HTTP) under a name agents' manifests use."""
    return server_out(
        await registry.add(
            body.name, body.url, body.headers, body.timeout_s, body.description, dict(body.tiers)
        )
    )


@tools_router.get(TOOLS + "/{name}", response_model=ServerOut)
async def show_server(name: ServerName, _: Admin, registry: Reg) -> ServerOut:
    return server_out(await registry.get(name))


@tools_router.get(TOOLS + "/{name}/tools", response_model=list[ToolOut])
async def server_tools(name: ServerName, _: Admin, registry: Reg) -> list[ToolOut]:
    """The server's tools now (MCP ``tools/list``, bounded by the server's timeout)."""
    server = await registry.get(name)
    try:
        tools = await registry.tools(server, fresh=True)
    except ToolFailure as exc:
        raise GatewayError(
            504 if exc.status == "timeout" else 502, exc.message, code=f"tool_server_{exc.status}"
        ) from None
    return [ToolOut(name=t.name, description=t.description, input_schema=t.input_schema) for t in tools]


@tools_router.delete(TOOLS + "/{name}", status_code=204)
async def remove_server(name: ServerName, _: Admin, registry: Reg) -> Response:
    await registry.remove(name)
    return Response(status_code=204)


@tools_router.get(APPROVALS, response_model=list[ApprovalOut])
async def list_approvals(
    p: Caller,
    store: Store,
    status: Annotated[Literal[APPROVAL_STATUSES] | None, Query()] = None,  # type: ignore[valid-type]
    agent: Filter = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[ApprovalOut]:
    found = await store.list_approvals(status=status, team_id=_team_scope(p), agent=agent, limit=limit)
    return [approval_out(a) for a in found]


@tools_router.get(APPROVALS + "/{approval_id}", response_model=ApprovalOut)
async def show_approval(approval_id: ApprovalId, p: Caller, store: Store) -> ApprovalOut:
    return approval_out(await _approval(store, p, approval_id))


async def _decide(
    request: Request, store: ToolStore, p: Principal, approval_id: str, approve: bool, body: DecisionIn | None
) -> ApprovalOut:
    found = await _approval(store, p, approval_id)  # 404 for another team's
    trust = getattr(request.app.state, "trust", None)
    if trust is not None:  # trusted execution: Cedar's `approve` says who may decide (destructive: admins)
        decision = await trust.may_approve(p, found)
        if not decision.allowed:
            raise GatewayError(
                403,
                f"This key may not decide approval '{approval_id}' ({found.tier or 'write'} tier): "
                "no policy permits it"
                + (f" ({', '.join(decision.policy_ids)})" if decision.policy_ids else "")
                + ". Destructive actions need an admin's approval unless a policy says otherwise.",
                code="approver_not_allowed",
            )
    reason = body.reason if body is not None else None
    decided = await store.decide(approval_id, approve, decider(p), reason)
    if trust is not None:
        await trust.record_decision(decided, approve)
    return approval_out(decided)


@tools_router.post(APPROVALS + "/{approval_id}/approve", response_model=ApprovalOut)
async def approve(
    request: Request, approval_id: ApprovalId, p: Caller, store: Store, body: DecisionIn | None = None
) -> ApprovalOut:
    """Let the call run (once, when the agent's response continues)."""
    return await _decide(request, store, p, approval_id, True, body)


@tools_router.post(APPROVALS + "/{approval_id}/deny", response_model=ApprovalOut)
async def deny(
    request: Request, approval_id: ApprovalId, p: Caller, store: Store, body: DecisionIn | None = None
) -> ApprovalOut:
    return await _decide(request, store, p, approval_id, False, body)


@tools_router.get(CALLS, response_model=list[CallOut])
async def list_calls(
    p: Caller,
    store: Store,
    agent: Filter = None,
    server: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    status: Annotated[Literal[CALL_STATUSES] | None, Query()] = None,  # type: ignore[valid-type]
    response_id: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> list[CallOut]:
    found = await store.list_calls(
        team_id=_team_scope(p), agent=agent, server=server, status=status, response_id=response_id,
        before=before, limit=limit,
    )  # fmt: skip
    return [call_out(c) for c in found]


def _tool_error(exc: ToolError) -> Response:
    code = {"not_found": "tool_server_not_found", "conflict": "conflict"}.get(exc.kind, "invalid_request")
    return error_response(_STATUS.get(exc.kind, 400), exc.message, param=exc.param, code=code)


def _store_error(exc: ToolStoreError) -> Response:
    return error_response(_STATUS.get(exc.kind, 400), exc.message, code=exc.kind)


def create_tools_api(registry: ToolRegistry, store: ToolStore, access: Access, trust: Any = None) -> FastAPI:
    """The API over ``registry`` and ``store`` for the callers ``access`` authenticates; ``trust``
    (``agents/trust_wiring.py``) decides who may approve, when trusted execution is on."""
    api = keyed_api(
        title="m2a tools API",
        description="MCP servers, tool-call approvals and tool calls of an m2a gateway.",
        access=access,
        agents_refused="An agent's token cannot manage tools or approve tool calls; use an API key.",
        max_body=MAX_BODY_BYTES,
        errors={ToolError: _tool_error, ToolStoreError: _store_error},
    )
    api.state.registry = registry
    api.state.store = store
    api.state.trust = trust
    api.include_router(tools_router)
    return api
