"""The policies' admin API (FastAPI): Cedar policies per scope, and a dry run of a decision.

Served through the agents extension under ``/admin/v1/policies``:

- ``GET /admin/v1/policies`` (``?scope=``): the rows of the ``policies`` table (files in the policy
  folder are read by the engine, not listed here); ``GET|PUT|DELETE /admin/v1/policies/{scope}/{name}``
  (``agent:sales/order-bot/limits``: the last segment is the name). ``PUT`` takes ``{"text": "<cedar>",
  "mode": null|"enforce"|"log_only"}``, checks the text (``PolicyEngine.validate``: 400
  ``invalid_policy`` with Cedar's message) and answers 201 when it created the row, 200 when it
  changed (or kept) it, with the version; ``DELETE`` answers 204.
- ``POST /admin/v1/policies/check``: a dry run, ``{"call": {...CallRequest's fields...}}`` or
  ``{"approve": {...ApproveRequest's fields...}}`` → the decision the engine would make now.

Who: an **admin key** for everything, ``global`` alone included. A **team's key** for its own
``team:<team>`` and ``agent:<team>/<name>`` scopes and dry runs of its own agents: another team's
scope answers 404 as if it held nothing, ``global`` 403 ``admin_only``. Setting a ``mode`` is an
admin's (it can switch a team's enforcement off): a team key's ``PUT`` with a mode is 403 and one
without keeps the row's mode, and a row carrying a mode is removed only by an admin. An agent's own
token is refused everywhere (403 ``agents_cannot_manage``). Errors are OpenAI's error JSON. (No
``from __future__ import annotations``: FastAPI reads the annotations at runtime.)
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from m2a.gateway.access import Access
from m2a.gateway.errors import GatewayError, error_response
from m2a.gateway.keyed_api import keyed_api
from m2a.principal import Principal
from m2a.store.policies import (
    MAX_TEXT,
    PolicyRecord,
    PolicyStore,
    PolicyStoreError,
    Scope,
    check_name,
    parse_scope,
)
from m2a.trust.policy import ApproveRequest, CallRequest, Decision, PolicyEngine
from m2a.trust.policy_schema import TIERS

PREFIX = "/admin/v1/policies"
CHECK = PREFIX + "/check"
MAX_BODY_BYTES = 256 << 10
NO_NUL = r"^[^\x00]*$"
_STATUS = {"invalid": 400, "conflict": 409}

Short = Annotated[str, Field(min_length=1, max_length=300, pattern=NO_NUL)]
Tier = Literal[TIERS]  # type: ignore[valid-type]


# -- bodies ------------------------------------------------------------------------------------------
class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=MAX_TEXT, pattern=NO_NUL, description="Cedar policies (namespace M2A).")
    mode: Literal["enforce", "log_only"] | None = Field(
        default=None, description="Override the configured mode for this team or agent (admins only)."
    )


class PolicyOut(BaseModel):
    object: Literal["policy"] = "policy"
    scope: str
    name: str
    text: str
    version: int
    mode: str | None
    created_at: datetime
    updated_at: datetime
    updated_by: str


class CallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team: Short
    agent_name: Short
    server: Short
    tool: Short
    tier: Tier
    granted: bool = True
    arguments: dict[str, Any] | None = None
    guardrails: list[Short] = Field(default_factory=list, max_length=100)
    on_behalf_of: Short | None = None
    version: int | None = Field(default=None, ge=0, le=2**31 - 1)
    agent_spiffe: str = Field(default="", max_length=512, pattern=NO_NUL)
    agent_id: int = Field(default=0, ge=0, le=2**31 - 1)


class ApproveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_team: Short
    server: Short
    tool: Short
    tier: Tier
    key_id: int | None = Field(default=None, ge=0, le=2**63 - 1)
    key_team: Short | None = None
    admin: bool = False


class CheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    call: CallIn | None = None
    approve: ApproveIn | None = None

    @model_validator(mode="after")
    def _one(self) -> "CheckIn":
        if (self.call is None) == (self.approve is None):
            raise ValueError("give one of 'call' or 'approve'")
        return self


class DecisionOut(BaseModel):
    object: Literal["policy_decision"] = "policy_decision"
    allowed: bool = Field(description="Whether it may go ahead (log_only: even when Cedar said deny).")
    cedar_allowed: bool
    mode: str
    policy_ids: list[str]
    policy_version: str
    errors: list[str]


def policy_out(r: PolicyRecord) -> PolicyOut:
    return PolicyOut(
        scope=r.scope, name=r.name, text=r.text, version=r.version, mode=r.mode, created_at=r.created_at,
        updated_at=r.updated_at, updated_by=r.updated_by,
    )  # fmt: skip


def decision_out(d: Decision) -> DecisionOut:
    return DecisionOut(
        allowed=d.allowed, cedar_allowed=d.cedar_allowed, mode=d.mode, policy_ids=list(d.policy_ids),
        policy_version=d.policy_version, errors=list(d.errors),
    )  # fmt: skip


def writer(p: Principal) -> str:
    """Who wrote a row, as ``updated_by`` records it."""
    if p.is_admin and p.team is None:
        return f"admin key {p.key_prefix}"
    return f"key {p.key_prefix} (team {p.team})"


# -- who may see what --------------------------------------------------------------------------------
def caller(request: Request) -> Principal:
    principal = getattr(request.state, "principal", None)
    if principal is None:
        raise RuntimeError("policies API handler reached without authentication")
    return principal


def engine_of(request: Request) -> PolicyEngine:
    return request.app.state.engine


def store_of(request: Request) -> PolicyStore:
    return request.app.state.store


Caller = Annotated[Principal, Depends(caller)]
Engine = Annotated[PolicyEngine, Depends(engine_of)]
Store = Annotated[PolicyStore, Depends(store_of)]


def _owns(p: Principal, scope: Scope) -> bool:
    return p.is_admin or (p.team is not None and scope.kind != "global" and scope.team == p.team)


def _scope(p: Principal, text: str, name: str | None = None) -> Scope:
    """``text`` parsed; 403 for ``global`` and 404 for another team's scope unless ``p`` may."""
    try:
        scope = parse_scope(text)
    except PolicyStoreError as exc:
        raise GatewayError(400, exc.message, param="scope", code="invalid_scope") from None
    if not _owns(p, scope):
        if scope.kind == "global":
            raise GatewayError(403, "The global scope is managed with an admin key.", code="admin_only")
        what = f"policy '{name}' in scope '{scope}'" if name else f"scope '{scope}'"
        raise GatewayError(404, f"No {what}.", code="policy_not_found")
    return scope


def _split(path: str) -> tuple[str, str]:
    scope, _, name = path.rpartition("/")
    if not scope:
        raise GatewayError(
            404, f"Unknown path {PREFIX}/{path}: use {PREFIX}/{{scope}}/{{name}}.", code="unknown_url"
        )
    return scope, name


def _name(name: str) -> str:
    try:
        return check_name(name)
    except PolicyStoreError as exc:
        raise GatewayError(400, exc.message, param="name", code="invalid_request") from None


async def _found(store: PolicyStore, p: Principal, path: str) -> tuple[Scope, PolicyRecord]:
    scope_text, name = _split(path)
    scope = _scope(p, scope_text, name)
    found = await store.get(str(scope), name)
    if found is None:
        raise GatewayError(404, f"No policy '{name}' in scope '{scope}'.", code="policy_not_found")
    return scope, found


# -- routes ------------------------------------------------------------------------------------------
policies_router = APIRouter()
PolicyPath = Annotated[str, Path(min_length=1, max_length=400, pattern=NO_NUL)]


@policies_router.get(PREFIX, response_model=list[PolicyOut])
async def list_policies(
    p: Caller, store: Store, scope: Annotated[str | None, Query(max_length=300, pattern=NO_NUL)] = None
) -> list[PolicyOut]:
    """The table's policies (a team key: its own team's and agents' only)."""
    if scope is not None:
        try:
            wanted = parse_scope(scope)
        except PolicyStoreError as exc:
            raise GatewayError(400, exc.message, param="scope", code="invalid_scope") from None
        if not _owns(p, wanted):
            return []
        return [policy_out(r) for r in await store.list(str(wanted))]
    return [policy_out(r) for r in await store.list() if _owns(p, parse_scope(r.scope))]


@policies_router.post(CHECK, response_model=DecisionOut)
async def check(body: CheckIn, p: Caller, engine: Engine) -> DecisionOut:
    """What the engine would decide now for this call or approval (nothing runs, nothing is logged)."""
    if body.call is not None:
        c = body.call
        if not p.is_admin and c.team != p.team:
            raise GatewayError(404, f"No agent '{c.team}/{c.agent_name}'.", code="agent_not_found")
        decision = await engine.decide_call(
            CallRequest(
                agent_spiffe=c.agent_spiffe,
                agent_id=c.agent_id,
                agent_name=c.agent_name,
                team=c.team,
                version=c.version,
                on_behalf_of=c.on_behalf_of,
                server=c.server,
                tool=c.tool,
                tier=c.tier,
                granted=c.granted,
                arguments=c.arguments,
                guardrails=tuple(c.guardrails),
            )  # fmt: skip
        )
        return decision_out(decision)
    a = body.approve
    assert a is not None
    if not p.is_admin and a.agent_team != p.team:
        raise GatewayError(404, f"No team '{a.agent_team}'.", code="team_not_found")
    decision = await engine.decide_approve(
        ApproveRequest(
            key_id=a.key_id,
            key_team=a.key_team,
            admin=a.admin,
            agent_team=a.agent_team,
            server=a.server,
            tool=a.tool,
            tier=a.tier,
        )  # fmt: skip
    )
    return decision_out(decision)


@policies_router.get(PREFIX + "/{path:path}", response_model=PolicyOut)
async def show_policy(path: PolicyPath, p: Caller, store: Store) -> PolicyOut:
    return policy_out((await _found(store, p, path))[1])


@policies_router.put(PREFIX + "/{path:path}", response_model=PolicyOut)
async def put_policy(
    path: PolicyPath, body: PolicyIn, p: Caller, store: Store, engine: Engine, response: Response
) -> PolicyOut:
    """Create or change a policy text (checked first: Cedar's message when it is refused)."""
    scope_text, name = _split(path)
    scope = _scope(p, scope_text, name)
    _name(name)
    if body.mode is not None and scope.kind == "global":
        raise GatewayError(
            400, "The global mode is trust.mode in the config; a mode overrides it per team or agent.",
            param="mode", code="invalid_request",
        )  # fmt: skip
    mode = body.mode
    if not p.is_admin:
        if mode is not None:
            raise GatewayError(403, "Setting a team's or agent's mode needs an admin key.", code="admin_only")
        existing = await store.get(str(scope), name)
        mode = existing.mode if existing is not None else None
    problems = engine.validate(body.text, str(scope))
    if problems:
        raise GatewayError(
            400, "Cedar refused the policy: " + "; ".join(problems), param="text", code="invalid_policy"
        )
    record = await store.put(str(scope), name, body.text, mode, writer(p))
    await engine.reload()
    response.status_code = 201 if record.created else 200
    return policy_out(record)


@policies_router.delete(PREFIX + "/{path:path}", status_code=204)
async def delete_policy(path: PolicyPath, p: Caller, store: Store, engine: Engine) -> Response:
    scope, found = await _found(store, p, path)
    if found.mode is not None and not p.is_admin:
        raise GatewayError(
            403, f"Policy '{found.name}' carries a mode set by an admin; removing it needs an admin key.",
            code="admin_only",
        )  # fmt: skip
    await store.delete(str(scope), found.name)
    await engine.reload()
    return Response(status_code=204)


def _store_error(exc: PolicyStoreError) -> Response:
    return error_response(_STATUS.get(exc.kind, 400), exc.message, code=exc.kind)


def create_policies_api(
    engine: PolicyEngine, store: PolicyStore, access: Access, docs: bool = True
) -> FastAPI:
    """The API over ``engine`` and ``store`` for the callers ``access`` authenticates; ``docs`` serves
    its OpenAPI document (``/admin/v1/policies/openapi.json``) without a key."""
    openapi = f"{PREFIX}/openapi.json"
    api = keyed_api(
        title="m2a policies API",
        description="Cedar policies of an m2a gateway's trusted execution. Send an API key as Bearer.",
        access=access,
        agents_refused="An agent's token cannot manage policies; use an API key.",
        max_body=MAX_BODY_BYTES,
        openapi_url=openapi if docs else None,
        errors={PolicyStoreError: _store_error},
    )
    api.state.engine = engine
    api.state.store = store
    api.include_router(policies_router)
    return api
