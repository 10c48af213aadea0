"""The admin HTTP API (FastAPI, so it documents itself at /admin/openapi.json and /admin/docs).

Teams, grants, keys, quotas and guardrail profiles for callers with an admin key; `/admin/v1/whoami` and
`/admin/v1/usage` (own team only) for any valid key.
Errors use OpenAI's error shape like the rest of the gateway. (No `from __future__ import
annotations` here: FastAPI reads the dependency annotations at runtime.)
"""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException

from m2a.config import Price
from m2a.gateway.access import Access
from m2a.gateway.admin_access import authorize, caller
from m2a.gateway.admin_guardrails import guardrails_router
from m2a.gateway.admin_overview import Overview, overview_router
from m2a.gateway.admin_traces import traces_router
from m2a.gateway.admin_usage import usage_router
from m2a.gateway.admin_usage_daily import daily_router
from m2a.gateway.counters import Counters
from m2a.gateway.errors import GatewayError, error_response
from m2a.gateway.guards import Guards
from m2a.principal import Principal
from m2a.store.data import DataStore
from m2a.store.guardrails import GuardrailStore
from m2a.store.identity import MAX_ID, IdentityError, IdentityStore, KeyInfo, TeamInfo
from m2a.store.quotas import QuotaStore
from m2a.telemetry.store import TraceStore

Priority = Literal["critical", "standard", "batch"]
# What the database can hold: PostgreSQL text cannot contain NUL, ids are 32-bit, grants 256 chars.
NO_NUL = r"^[^\x00]*$"
TeamName = Annotated[str, Path(pattern=NO_NUL)]
ModelName = Annotated[str, Path(max_length=256, pattern=NO_NUL)]
_STATUS = {"not_found": 404, "conflict": 409, "invalid": 400}


class TeamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, examples=["research"])
    priority: Priority = "standard"
    priority_order: int | None = Field(default=None, ge=-1_000_000, le=1_000_000)


class TeamPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    priority: Priority | None = None
    priority_order: int | None = Field(default=None, ge=-1_000_000, le=1_000_000)


class TeamOut(BaseModel):
    name: str
    priority: str
    priority_order: int
    created_at: datetime
    models: list[str]


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team: str | None = Field(default=None, pattern=NO_NUL, description="Required for member keys.")
    name: str = Field(min_length=1, max_length=128, pattern=NO_NUL)
    role: Literal["member", "admin"] = "member"
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)
    priority: Priority | None = None


class KeyOut(BaseModel):
    id: int
    name: str
    prefix: str
    team: str | None
    role: str
    priority: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class NewKeyOut(KeyOut):
    key: str = Field(description="The key itself. Shown this once: only its hash is stored.")


class WhoAmI(BaseModel):
    team: str | None
    role: str
    key_prefix: str
    priority: str
    priority_order: int
    models: list[str] | None = Field(description="Models the key may use; null for every model.")
    expires_at: datetime | None


def _team(t: TeamInfo) -> TeamOut:
    return TeamOut(
        name=t.name,
        priority=t.priority,
        priority_order=t.priority_order,
        created_at=t.created_at,
        models=list(t.models),
    )


def _key(k: KeyInfo) -> KeyOut:
    return KeyOut(**k.__dict__)


def create_admin_api(
    store: IdentityStore,
    access: Access,
    usage: AsyncEngine | None = None,
    prices: dict[str, Price] | None = None,
    served: Callable[[], list[str]] = list,
    docs: bool = True,
    guards: Guards | None = None,
    traces: TraceStore | None = None,
    counters: Counters | None = None,
    overview: Overview | None = None,
) -> FastAPI:
    """The admin API; ``served`` names the models this gateway serves (grants of others need
    ``force``); ``docs`` serves the OpenAPI document and its page without a key (False: none);
    ``guards`` are the gateway's guardrail profiles (default: built-in and stored ones); ``traces``
    the trace store (``/v1/traces``);
    ``counters`` the quota counters (``/v1/quotas/usage``), ``overview`` what
    ``/v1/overview`` reads (``admin_overview.py``)."""
    api = FastAPI(
        title="m2a admin API",
        version="1",
        description="Teams, model grants and API keys of an m2a gateway. "
        "Send an admin key as a Bearer token.",
        docs_url="/docs" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        servers=[{"url": "/admin"}],  # mounted under /admin in the gateway
    )

    @api.middleware("http")
    async def authenticate_first(request: Request, call_next):  # type: ignore[no-untyped-def]
        """Key and role (admin_access.TABLE) before anything else: FastAPI would parse a body first."""
        try:
            request.state.principal = await authorize(request, access, docs)
        except GatewayError as exc:
            return exc.response()
        return await call_next(request)

    Caller = Annotated[Principal, Depends(caller)]
    Admin = Caller  # the table made sure: every path here but whoami and usage needs an admin key

    @api.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        return exc.response()

    @api.exception_handler(IdentityError)
    async def _identity_error(request: Request, exc: IdentityError) -> Response:
        return error_response(_STATUS.get(exc.kind, 400), exc.message, code=exc.kind)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return error_response(400, f"{param}: {first['msg']}" if param else first["msg"], param=param)

    @api.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail))

    def changed() -> None:
        access.invalidate()

    @api.get("/v1/whoami", response_model=WhoAmI)
    async def whoami(p: Caller) -> WhoAmI:
        """The calling key's team, role, priority and usable models (any valid key)."""
        return WhoAmI(
            team=p.team,
            role=p.role,
            key_prefix=p.key_prefix,
            priority=p.priority,
            priority_order=p.priority_order,
            models=None if p.models is None else sorted(p.models),
            expires_at=p.expires_at,
        )

    @api.get("/v1/teams", response_model=list[TeamOut])
    async def list_teams(_: Admin) -> list[TeamOut]:
        return [_team(t) for t in await store.list_teams()]

    @api.post("/v1/teams", response_model=TeamOut, status_code=201)
    async def create_team(body: TeamIn, _: Admin) -> TeamOut:
        team = await store.create_team(body.name, body.priority, body.priority_order)
        changed()
        return _team(team)

    @api.get("/v1/teams/{team}", response_model=TeamOut)
    async def get_team(team: TeamName, _: Admin) -> TeamOut:
        return _team(await store.get_team(team))

    @api.patch("/v1/teams/{team}", response_model=TeamOut)
    async def update_team(team: TeamName, body: TeamPatch, _: Admin) -> TeamOut:
        updated = await store.update_team(team, body.priority, body.priority_order)
        changed()
        return _team(updated)

    @api.delete("/v1/teams/{team}", status_code=204)
    async def delete_team(team: TeamName, _: Admin) -> Response:
        await store.delete_team(team)
        changed()
        return Response(status_code=204)

    @api.put("/v1/teams/{team}/grants/{model:path}", response_model=TeamOut)
    async def grant(
        team: TeamName,
        model: ModelName,
        _: Admin,
        force: Annotated[bool, Query(description="Grant a model this gateway does not serve.")] = False,
    ) -> TeamOut:
        """Let the team use the model (one this gateway serves, unless ``force``: served elsewhere)."""
        if not force and model not in (names := served()):
            raise GatewayError(
                404,
                f"This gateway serves no model named '{model}' (it serves: {', '.join(names) or 'none'}); "
                "add ?force=true to grant a model another gateway serves.",
                param="model",
                code="model_not_found",
            )
        await store.grant(team, model)
        changed()
        return _team(await store.get_team(team))

    @api.delete("/v1/teams/{team}/grants/{model:path}", response_model=TeamOut)
    async def ungrant(team: TeamName, model: ModelName, _: Admin) -> TeamOut:
        await store.ungrant(team, model)
        changed()
        return _team(await store.get_team(team))

    @api.get("/v1/keys", response_model=list[KeyOut])
    async def list_keys(_: Admin, team: Annotated[str | None, Query(pattern=NO_NUL)] = None) -> list[KeyOut]:
        return [_key(k) for k in await store.list_keys(team)]

    @api.post("/v1/keys", response_model=NewKeyOut, status_code=201)
    async def create_key(body: KeyIn, _: Admin) -> NewKeyOut:
        expires = datetime.now(UTC) + timedelta(days=body.expires_in_days) if body.expires_in_days else None
        plaintext, info = await store.create_key(
            body.team, body.name, role=body.role, expires_at=expires, priority=body.priority
        )
        changed()
        return NewKeyOut(key=plaintext, **info.__dict__)

    @api.delete("/v1/keys/{key_id}", response_model=KeyOut)
    async def revoke_key(key_id: Annotated[int, Path(ge=1, le=MAX_ID)], _: Admin) -> KeyOut:
        await store.revoke_key(key_id)
        changed()
        return next(_key(k) for k in await store.list_keys() if k.id == key_id)

    storage_used = DataStore(store.engine).team_usage_bytes
    api.include_router(
        usage_router(access, QuotaStore(store.engine), usage, prices or {}, counters, storage_used)
    )
    api.include_router(daily_router(usage))
    api.include_router(traces_router(traces))
    if overview is not None:
        api.include_router(overview_router(overview))
    guardrails = GuardrailStore(store.engine)
    api.include_router(guardrails_router(access, guards or Guards(store=guardrails), guardrails))
    return api
