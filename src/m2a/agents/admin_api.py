"""The agent registry's admin API at ``/admin/v1/agents`` (FastAPI, served through the agents
extension before the gateway's ``/admin`` mount).

Who may do what:

- Any valid API key may call it; an agent's own token may not (agents do not manage the registry).
- A team key sees and manages only its own team's agents: another team's agent answers 404, the
  same as one that does not exist, so a key learns nothing of other teams; creating an agent in
  another team is 403. An admin key sees every team's agents and names the team when it creates one.
- Approving a version (``tested → approved``) needs an admin key: separation of duties. A team
  builds, tests (with a passed red-team gate) and, once approved, puts its own versions in
  production, deprecates, rolls back and revokes them; it never approves its own work. A forged
  red-team report therefore still has to get past an admin before it reaches production.

Routes (under ``/admin/v1/agents``): ``GET`` / ``POST`` the collection; ``/{team}/{name}`` (``GET``,
``PATCH`` sponsors), ``/revoke``, ``/rollback``, ``/events``; ``/versions`` (``GET``, ``POST`` a
manifest: 201 for a new version, 200 with the existing one for a manifest already registered),
``/versions/{n}`` (``n`` a number or an alias such as ``production``), ``/versions/{n}/promote``
(``{"to": STAGE, "redteam": {...}}``), ``/versions/{n}/revoke``. Errors are OpenAI's error JSON
with the right status (400 bad input, 401, 403, 404, 409 a transition the state refuses, 413).

The routes are ``APIRouter``s and the dependencies (``caller``, ``registry_of``, ``owned_agent``) read
what they need from the app's state, so another module can add routes under an agent:
``m2a.agents.credentials_api.router`` is included at ``/{team}/{name}/credentials`` when that module
exists. (No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.)
"""

import importlib
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from m2a.agents.manifest import AGENT_NAME, MAX_SPONSORS, Manifest
from m2a.agents.registry import (
    MAX_VERSION,
    AgentInfo,
    EventInfo,
    RedteamReport,
    Registry,
    RegistryError,
    VersionInfo,
)
from m2a.gateway.access import Access
from m2a.gateway.errors import GatewayError, error_response
from m2a.gateway.keyed_api import first_invalid, key_caller
from m2a.principal import Principal

PREFIX = "/admin/v1/agents"
MAX_BODY_BYTES = 1 << 20  # a manifest with its system prompt and a red-team summary fit many times over
NO_NUL = r"^[^\x00]*$"
_STATUS = {"not_found": 404, "conflict": 409, "invalid": 400, "forbidden": 403}

TeamName = Annotated[str, Path(min_length=1, max_length=64, pattern=NO_NUL, description="The agent's team.")]
AgentName = Annotated[str, Path(pattern=AGENT_NAME, description="The agent's name.")]
VersionRef = Annotated[
    str,
    Path(
        pattern=r"^(?:[1-9][0-9]{0,9}|draft|tested|approved|production)$",
        description="A version number, or an alias: draft, tested, approved, production.",
    ),
]
VersionNumber = Annotated[int, Path(ge=1, le=MAX_VERSION)]
Stage = Literal["draft", "tested", "approved", "production", "deprecated", "revoked"]  # registry.STAGES
Reason = Annotated[str | None, Field(default=None, max_length=1000, pattern=NO_NUL)]


# -- bodies ------------------------------------------------------------------------------------------
class AgentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=AGENT_NAME, examples=["support-bot"], description="Part of its SPIFFE id.")
    team: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=NO_NUL, description="Required with an admin key."
    )
    sponsors: list[str] = Field(min_length=1, max_length=MAX_SPONSORS, description="E-mails of its people.")
    manifest: Manifest | None = Field(default=None, description="Version 1, as a draft.")


class SponsorsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sponsors: list[str] = Field(min_length=1, max_length=MAX_SPONSORS)


class VersionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    manifest: Manifest


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: Stage
    redteam: RedteamReport | None = Field(default=None, description="Needed for tested: the gate's run.")
    reason: Reason


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason


# -- answers -----------------------------------------------------------------------------------------
class AgentOut(BaseModel):
    id: int
    team: str
    name: str
    spiffe_id: str
    sponsors: list[str]
    created_at: datetime
    created_by: int | None
    revoked_at: datetime | None
    aliases: dict[str, int] = Field(description="Alias (stage) -> the version number it points at.")
    versions: int
    latest: int | None


class VersionOut(BaseModel):
    team: str
    agent: str
    number: int
    digest: str = Field(description="sha256 of the canonical manifest (RFC 8785 JSON).")
    stage: str
    aliases: list[str]
    manifest: dict[str, Any]
    redteam: dict[str, Any] | None
    created_at: datetime
    created_by: int | None
    revoked_at: datetime | None


class NewVersionOut(VersionOut):
    created: bool = Field(description="False: this manifest was registered already, as this version.")


class CreatedOut(AgentOut):
    version: VersionOut | None


class EventOut(BaseModel):
    id: int
    action: str
    version: int | None
    from_stage: str | None
    to_stage: str | None
    detail: dict[str, Any]
    by_key: int | None
    at: datetime


def agent_out(a: AgentInfo) -> AgentOut:
    return AgentOut(
        id=a.id, team=a.team, name=a.name, spiffe_id=a.spiffe_id, sponsors=list(a.sponsors),
        created_at=a.created_at, created_by=a.created_by, revoked_at=a.revoked_at, aliases=a.aliases,
        versions=a.versions, latest=a.latest,
    )  # fmt: skip


def version_out(v: VersionInfo) -> VersionOut:
    return VersionOut(
        team=v.team, agent=v.agent, number=v.number, digest=v.digest, stage=v.stage, aliases=list(v.aliases),
        manifest=v.manifest.as_json(), redteam=v.redteam, created_at=v.created_at, created_by=v.created_by,
        revoked_at=v.revoked_at,
    )  # fmt: skip


def event_out(e: EventInfo) -> EventOut:
    return EventOut(**e.__dict__)


# -- dependencies (shared with routers other modules add) --------------------------------------------
def caller(request: Request) -> Principal:
    """The principal the middleware authenticated for this request."""
    principal = getattr(request.state, "principal", None)
    if principal is None:  # only the OpenAPI document is served without a key, and it asks for none
        raise RuntimeError("agents API handler reached without authentication")
    return principal


def registry_of(request: Request) -> Registry:
    return request.app.state.registry


def sees(p: Principal, team: str) -> bool:
    """Whether the caller may see and manage agents of ``team`` (admins: every team)."""
    return p.is_admin or (p.team is not None and p.team == team)


def scope(p: Principal, team: str, name: str) -> None:
    """404 for another team's agent, exactly as for one that does not exist."""
    if not sees(p, team):
        raise RegistryError("not_found", f"No agent named '{name}' in team '{team}'.", code="agent_not_found")


Caller = Annotated[Principal, Depends(caller)]
Reg = Annotated[Registry, Depends(registry_of)]


async def owned_agent(team: TeamName, name: AgentName, p: Caller, registry: Reg) -> AgentInfo:
    """The agent at ``/{team}/{name}``, when the caller may manage it (else 404)."""
    scope(p, team, name)
    return await registry.get(team, name)


Owned = Annotated[AgentInfo, Depends(owned_agent)]


def changed(request: Request) -> None:
    """This process drops its cached principals at once (others follow the identity revision)."""
    request.app.state.access.invalidate()


# -- routes ------------------------------------------------------------------------------------------
agents_router = APIRouter(prefix=PREFIX, tags=["agents"])


@agents_router.get("", response_model=list[AgentOut])
async def list_agents(
    p: Caller,
    registry: Reg,
    team: Annotated[str | None, Query(min_length=1, max_length=64, pattern=NO_NUL)] = None,
) -> list[AgentOut]:
    """Agents of every team (admin key; ``?team=`` for one), or of the key's own team."""
    if not p.is_admin:
        if team is not None and team != p.team:
            return []
        team = p.team
        if team is None:
            return []
    return [agent_out(a) for a in await registry.list(team)]


@agents_router.post("", response_model=CreatedOut, status_code=201)
async def create_agent(body: AgentIn, p: Caller, registry: Reg) -> CreatedOut:
    """Register an agent (with its first version when a manifest is given)."""
    team = body.team
    if p.is_admin:
        if team is None:
            raise GatewayError(
                400, "An admin key names the agent's team ('team').", param="team", code="missing_team"
            )
    else:
        if team is None:
            team = p.team
        if team is None or team != p.team:
            raise GatewayError(
                403, "A team key registers agents of its own team only.", param="team", code="not_your_team"
            )
    agent, version = await registry.create(
        team, body.name, body.sponsors, by_key=p.key_id, manifest=body.manifest
    )
    return CreatedOut(**agent_out(agent).model_dump(), version=version_out(version) if version else None)


@agents_router.get("/{team}/{name}", response_model=AgentOut)
async def get_agent(agent: Owned) -> AgentOut:
    return agent_out(agent)


@agents_router.patch("/{team}/{name}", response_model=AgentOut)
async def set_sponsors(body: SponsorsIn, agent: Owned, p: Caller, registry: Reg) -> AgentOut:
    """Replace the agent's sponsors."""
    return agent_out(await registry.set_sponsors(agent.team, agent.name, body.sponsors, by_key=p.key_id))


@agents_router.post("/{team}/{name}/revoke", response_model=AgentOut)
async def revoke_agent(
    agent: Owned, p: Caller, registry: Reg, request: Request, body: ReasonIn | None = None
) -> AgentOut:
    """Revoke the agent: all its versions, all its aliases; its tokens stop working."""
    revoked = await registry.revoke(
        agent.team, agent.name, by_key=p.key_id, reason=body.reason if body else None
    )
    changed(request)
    return agent_out(revoked)


@agents_router.post("/{team}/{name}/rollback", response_model=VersionOut)
async def rollback(
    agent: Owned, p: Caller, registry: Reg, request: Request, body: ReasonIn | None = None
) -> VersionOut:
    """Point production back at the version that held it before."""
    v = await registry.rollback(agent.team, agent.name, by_key=p.key_id, reason=body.reason if body else None)
    changed(request)
    return version_out(v)


@agents_router.get("/{team}/{name}/events", response_model=list[EventOut])
async def events(agent: Owned, registry: Reg) -> list[EventOut]:
    """The agent's history: made, versions added, promoted, rolled back, revoked; by which key."""
    return [event_out(e) for e in await registry.events(agent.team, agent.name)]


@agents_router.get("/{team}/{name}/versions", response_model=list[VersionOut])
async def list_versions(agent: Owned, registry: Reg) -> list[VersionOut]:
    return [version_out(v) for v in await registry.versions(agent.team, agent.name)]


@agents_router.post("/{team}/{name}/versions", response_model=NewVersionOut, status_code=201)
async def add_version(
    body: VersionIn, agent: Owned, p: Caller, registry: Reg, response: Response
) -> NewVersionOut:
    """A new draft version (201), or the existing version of this very manifest (200)."""
    v, created = await registry.add_version(agent.team, agent.name, body.manifest, by_key=p.key_id)
    if not created:
        response.status_code = 200
    return NewVersionOut(**version_out(v).model_dump(), created=created)


@agents_router.get("/{team}/{name}/versions/{ref}", response_model=VersionOut)
async def get_version(ref: VersionRef, agent: Owned, registry: Reg) -> VersionOut:
    return version_out(await registry.resolve(agent.team, agent.name, ref))


@agents_router.post("/{team}/{name}/versions/{number}/promote", response_model=VersionOut)
async def promote(
    number: VersionNumber, body: PromoteIn, agent: Owned, p: Caller, registry: Reg, request: Request
) -> VersionOut:
    """Move the version to a stage: the next in draft → tested → approved → production, or
    deprecated / revoked. ``tested`` needs ``redteam`` (a passed gate); ``approved`` an admin key."""
    v = await registry.promote(
        agent.team, agent.name, number, body.to, by_key=p.key_id, admin=p.is_admin, redteam=body.redteam,
        reason=body.reason,
    )  # fmt: skip
    changed(request)
    return version_out(v)


@agents_router.post("/{team}/{name}/versions/{number}/revoke", response_model=VersionOut)
async def revoke_version(
    number: VersionNumber,
    agent: Owned,
    p: Caller,
    registry: Reg,
    request: Request,
    body: ReasonIn | None = None,
) -> VersionOut:
    """Revoke the version (final): its aliases dropped, its tokens stop working."""
    v = await registry.revoke_version(
        agent.team, agent.name, number, by_key=p.key_id, reason=body.reason if body else None
    )
    changed(request)
    return version_out(v)


def _credentials_router() -> APIRouter | None:
    """``m2a.agents.credentials_api.router`` when that module exists (it is another part's)."""
    try:
        module = importlib.import_module("m2a.agents.credentials_api")
    except ModuleNotFoundError as exc:
        if exc.name != "m2a.agents.credentials_api":
            raise  # the module exists but something it imports does not: that is a bug, say so
        return None
    return module.router


def create_agents_api(registry: Registry, access: Access, docs: bool = True) -> FastAPI:
    """The agents API over ``registry``, for the callers ``access`` authenticates; ``docs`` serves its
    OpenAPI document (``/admin/v1/agents/openapi.json``) without a key."""
    openapi = f"{PREFIX}/openapi.json"
    api = FastAPI(
        title="m2a agents API",
        version="1",
        description="The agent registry of an m2a gateway: agents, versions, stages. "
        "Send an API key as a Bearer token.",
        docs_url=None,
        redoc_url=None,
        openapi_url=openapi if docs else None,
    )
    api.state.registry = registry
    api.state.access = access

    @api.middleware("http")
    async def authenticate_first(request: Request, call_next):  # type: ignore[no-untyped-def]
        """The key before anything else (FastAPI would parse a body first), and a bounded body."""
        if docs and request.url.path.removeprefix(request.scope.get("root_path", "")) == openapi:
            return await call_next(request)
        try:
            principal = await key_caller(
                request, access, "An agent's token cannot manage the agent registry; use an API key.",
                MAX_BODY_BYTES,
            )  # fmt: skip
        except GatewayError as exc:
            return exc.response()
        request.state.principal = principal
        return await call_next(request)

    @api.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        return exc.response()

    @api.exception_handler(RegistryError)
    async def _registry_error(request: Request, exc: RegistryError) -> Response:
        return error_response(_STATUS.get(exc.kind, 400), exc.message, code=exc.code, param=exc.param)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        param, msg, count = first_invalid(exc)
        more = f" (and {count - 1} more)" if count > 1 else ""
        return error_response(400, f"{param}: {msg}{more}" if param else msg + more, param=param)

    @api.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail))

    api.include_router(agents_router)
    # -- credentials: another module's routes under each agent (included when it exists) ----------
    credentials = _credentials_router()
    if credentials is not None:
        api.include_router(credentials, prefix=PREFIX + "/{team}/{name}/credentials")
    return api
