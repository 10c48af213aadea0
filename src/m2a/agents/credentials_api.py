"""An agent's OAuth client credentials in the agents admin API, at
``/admin/v1/agents/{team}/{name}/credentials`` (``admin_api.py`` includes ``router`` there).

- ``POST`` ``{"type": "client_secret"}`` makes a client secret, answered once (201, with
  ``client_secret``; only its sha256 is kept), or ``{"type": "jwk", "jwk": {...}}`` registers a
  public key for ``private_key_jwt`` client assertions (EC P-256 / ES256 or RSA ≥ 2048 / RS256; a
  private key is refused).
- ``GET`` lists them (never a secret), ``POST /{id}/revoke`` revokes one (its new tokens stop at
  once; ``credentials.py`` says what happens to tokens already issued).

Every answer names the ``client_id`` (the agent's SPIFFE id) and the ``token_endpoint``. Scoping
is the agents API's: a team key reaches only its own team's agents (another team's is 404, as if
it did not exist); an admin key any; an agent's token none. A revoked agent gets no new
credentials (409). (No ``from __future__ import annotations``: FastAPI reads the annotations at
runtime.)
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from m2a.agents.admin_api import Owned
from m2a.agents.credentials import AgentDirectory, AgentIdentity, CredentialError, CredentialInfo
from m2a.agents.oauth import TOKEN_PATH
from m2a.agents.registry import AgentInfo
from m2a.gateway.errors import GatewayError
from m2a.store.identity import MAX_ID

_STATUS = {"not_found": 404, "conflict": 409, "invalid": 400}


class CredentialIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["client_secret", "jwk"] = Field(
        description="client_secret: a new secret; jwk: register a public key for private_key_jwt."
    )
    jwk: dict[str, Any] | None = Field(default=None, description="The public JWK (type jwk only).")


class CredentialOut(BaseModel):
    id: int
    client_id: str = Field(description="The agent's SPIFFE id: the OAuth client_id of all its credentials.")
    type: str = Field(description="client_secret or jwk.")
    kid: str | None
    alg: str | None
    created_at: datetime
    revoked_at: datetime | None
    token_endpoint: str


class NewCredentialOut(CredentialOut):
    client_secret: str | None = Field(default=None, description="Shown this once; only its sha256 is kept.")


CredentialId = Annotated[int, Path(ge=1, le=MAX_ID)]


def directory_of(request: Request) -> AgentDirectory:
    """One directory per agents API app, on the registry's store and trust domain."""
    state = request.app.state
    found = getattr(state, "agent_directory", None)
    if found is None:
        registry = state.registry
        found = state.agent_directory = AgentDirectory(registry.engine, registry.trust_domain)
    return found


def token_endpoint_of(request: Request) -> str:
    """The token endpoint clients are told: the issuer's (``agents.issuer``) where the app knows
    it, else this gateway's address as the request reached it."""
    issuer = getattr(request.app.state, "issuer", None)
    return (issuer or str(request.base_url).rstrip("/")) + TOKEN_PATH


Directory = Annotated[AgentDirectory, Depends(directory_of)]


def _identity(agent: AgentInfo) -> AgentIdentity:
    return AgentIdentity(agent.id, agent.team_id, agent.team, agent.name, agent.spiffe_id)


def _out(c: CredentialInfo, endpoint: str, secret: str | None = None) -> NewCredentialOut:
    return NewCredentialOut(
        id=c.id, client_id=c.client_id, type="client_secret" if c.kind == "secret" else "jwk", kid=c.kid,
        alg=c.alg, created_at=c.created_at, revoked_at=c.revoked_at, token_endpoint=endpoint,
        client_secret=secret,
    )  # fmt: skip


def _refused(exc: CredentialError, param: str | None = None) -> GatewayError:
    return GatewayError(_STATUS.get(exc.kind, 400), exc.message, param=param, code=f"credential_{exc.kind}")


router = APIRouter(tags=["agent credentials"])


@router.post("", response_model=NewCredentialOut, status_code=201, response_model_exclude_none=True)
async def create_credential(
    body: CredentialIn, agent: Owned, directory: Directory, request: Request
) -> NewCredentialOut:
    """A client secret (shown once) or a registered public key for the agent."""
    if agent.revoked_at is not None:
        raise GatewayError(409, f"Agent '{agent.team}/{agent.name}' is revoked.", code="agent_revoked")
    endpoint = token_endpoint_of(request)
    identity = _identity(agent)
    try:
        if body.type == "client_secret":
            if body.jwk is not None:
                raise CredentialError("invalid", "a client_secret takes no jwk")
            secret, info = await directory.create_secret(identity)
            return _out(info, endpoint, secret)
        if body.jwk is None:
            raise CredentialError("invalid", "type jwk needs the public key as 'jwk'")
        return _out(await directory.register_key(identity, body.jwk), endpoint)
    except CredentialError as exc:
        raise _refused(exc, "jwk" if exc.kind == "invalid" else None) from None


@router.get("", response_model=list[CredentialOut])
async def list_credentials(agent: Owned, directory: Directory, request: Request) -> list[CredentialOut]:
    """The agent's credentials, live and revoked (never a secret)."""
    endpoint = token_endpoint_of(request)
    return [
        CredentialOut(**_out(c, endpoint).model_dump(exclude={"client_secret"}))
        for c in await directory.credentials(_identity(agent))
    ]


@router.post("/{credential_id}/revoke", response_model=CredentialOut)
async def revoke_credential(
    credential_id: CredentialId, agent: Owned, directory: Directory, request: Request
) -> CredentialOut:
    """Revoke one credential of the agent (another agent's id is 404)."""
    try:
        info = await directory.revoke(_identity(agent), credential_id)
    except CredentialError as exc:
        raise _refused(exc) from None
    return CredentialOut(**_out(info, token_endpoint_of(request)).model_dump(exclude={"client_secret"}))
