"""Who an agent is and how it proves it: its SPIFFE id, its versions as tokens see them, and its
OAuth client credentials (``agent_credentials``) with the client assertions already seen.

- **client_id** is the agent's SPIFFE id, ``spiffe://<trust domain>/team/<team>/agent/<name>``:
  one OAuth client per agent, whatever credentials it holds. An agent may hold several at once
  (a new secret or key before the old one is revoked: rotation without downtime); each is one
  row, ``kind`` ``secret`` or ``jwk``. The id is resolved to the live agent of that team and
  name every time (an agent or team deleted and made again under the same name is a new agent:
  the old one's credentials are not its).
- A **client secret** (``m2a-cs-`` + 256 random bits) is shown once and stored as its sha256.
- A **public key** (a JWK: EC P-256 for ES256, or RSA of at least 2048 bits for RS256; never a
  private key) is for ``private_key_jwt`` client assertions (RFC 7523); its ``kid`` is its
  RFC 7638 thumbprint unless it names one. An assertion's ``jti`` is inserted in
  ``assertion_jtis`` (primary key: client id and jti) and kept until the assertion expires: a
  second insert fails, so a replay is refused in every process sharing the store.
- Revoking a credential stops new tokens made with it at once; tokens already issued with it
  live out their (at most five) minutes. Revoking the agent or the version stops those too.

A version can have tokens when it is ``tested``, ``approved``, ``production`` or ``deprecated``:
never a ``draft`` (not red-team gated), never a revoked one (``stage`` revoked or ``revoked_at``
set).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from m2a.agents.keys import thumbprint
from m2a.agents.manifest import Manifest
from m2a.agents.tokens import parse_spiffe, spiffe_id
from m2a.principal import Principal
from m2a.store.identity import MAX_ID, IdentityStore
from m2a.store.schema import (
    AgentAliasRow,
    AgentCredentialRow,
    AgentRow,
    AgentVersionRow,
    ApiKey,
    AssertionJti,
    Team,
)

SECRET_PREFIX = "m2a-cs-"
USABLE_STAGES = ("tested", "approved", "production", "deprecated")
ASSERTION_ALGS = ("ES256", "RS256")
MAX_CREDENTIALS = 16  # live credentials per agent: room to rotate, not to hoard
MIN_RSA_BITS = 2048
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


class CredentialError(Exception):
    """A refused credential change; ``kind`` is not_found, conflict or invalid (404, 409, 400)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class AgentIdentity:
    """A live agent (neither it nor its team deleted or revoked)."""

    agent_id: int
    team_id: int
    team: str
    name: str
    spiffe_id: str


@dataclass(frozen=True)
class VersionInfo:
    id: int
    number: int
    stage: str
    revoked: bool
    manifest: Manifest

    @property
    def usable(self) -> bool:
        return not self.revoked and self.stage in USABLE_STAGES


@dataclass(frozen=True)
class CredentialInfo:
    id: int
    client_id: str
    kind: str  # secret or jwk
    kid: str | None
    alg: str | None
    created_at: datetime
    revoked_at: datetime | None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _aware(t: datetime | None) -> datetime | None:
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


def _now() -> datetime:
    return datetime.now(UTC)


def check_public_jwk(jwk: Any) -> dict[str, Any]:
    """A registrable public JWK (ES256 on P-256, or RS256 with at least 2048 bits), with ``kid`` and
    ``alg`` set; ``CredentialError`` (invalid) otherwise."""
    if not isinstance(jwk, dict):
        raise CredentialError("invalid", "a JWK is a JSON object")
    if any(m in jwk for m in _PRIVATE_MEMBERS):
        raise CredentialError("invalid", "this JWK holds a private key: register only its public half")
    kty = jwk.get("kty")
    if kty == "EC":
        if jwk.get("crv") != "P-256":
            raise CredentialError("invalid", "an EC key must be on P-256 (ES256)")
        alg = "ES256"
    elif kty == "RSA":
        alg = "RS256"
    else:
        raise CredentialError("invalid", "a key is EC (P-256, ES256) or RSA (RS256)")
    if jwk.get("alg") not in (None, alg):
        raise CredentialError("invalid", f"a {kty} key here signs with {alg}, not {jwk.get('alg')!r}")
    if jwk.get("use") not in (None, "sig"):
        raise CredentialError("invalid", "the key's use must be sig")
    try:
        key = jwt.PyJWK(jwk, alg).key
        kid = jwk.get("kid") or thumbprint(jwk)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise CredentialError("invalid", f"not a usable public key: {exc}") from exc
    if kty == "RSA" and key.key_size < MIN_RSA_BITS:
        raise CredentialError("invalid", f"an RSA key needs at least {MIN_RSA_BITS} bits")
    if not isinstance(kid, str) or not 1 <= len(kid) <= 128:
        raise CredentialError("invalid", "kid is text of 1-128 characters")
    public = {k: jwk[k] for k in ("kty", "crv", "x", "y", "n", "e") if k in jwk}
    return {**public, "kid": kid, "alg": alg, "use": "sig"}


class AgentDirectory:
    """Reads agents and versions as tokens need them, and keeps the agents' client credentials."""

    def __init__(self, engine: AsyncEngine, trust_domain: str) -> None:
        self.engine = engine
        self.trust_domain = trust_domain
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    # -- agents and versions -------------------------------------------------------------------

    def _identity(self, agent: AgentRow, team: Team) -> AgentIdentity:
        spiffe = spiffe_id(self.trust_domain, team.name, agent.name)
        return AgentIdentity(agent.id, team.id, team.name, agent.name, spiffe)

    async def agent(self, team: str, name: str) -> AgentIdentity | None:
        """The live agent ``name`` of the live team ``team``."""
        async with self._session() as s:
            row = (
                await s.execute(
                    select(AgentRow, Team)
                    .join(Team, AgentRow.team_id == Team.id)
                    .where(
                        Team.name == team, Team.deleted_at.is_(None), AgentRow.name == name,
                        AgentRow.revoked_at.is_(None),
                    )
                )
            ).first()  # fmt: skip
        return self._identity(*row) if row else None

    async def agent_by_id(self, agent_id: int) -> AgentIdentity | None:
        if not 1 <= agent_id <= MAX_ID:
            return None
        async with self._session() as s:
            q = select(AgentRow, Team).join(Team, AgentRow.team_id == Team.id).where(AgentRow.id == agent_id)
            row = (await s.execute(q)).first()
        if row is None or row[0].revoked_at is not None or row[1].deleted_at is not None:
            return None
        return self._identity(*row)

    async def agent_by_spiffe(self, value: str, trust_domain: str | None = None) -> AgentIdentity | None:
        """The live agent a SPIFFE id names, in ``trust_domain`` (default m2a's own)."""
        parts = parse_spiffe(value)
        if parts is None or parts[0] != (trust_domain or self.trust_domain):
            return None
        return await self.agent(parts[1], parts[2])

    async def version(self, agent_id: int, number: int | None = None) -> VersionInfo | None:
        """Version ``number`` of the agent, or (None) the one its ``production`` alias points at."""
        async with self._session() as s:
            q = select(AgentVersionRow).where(AgentVersionRow.agent_id == agent_id)
            if number is None:
                q = q.join(AgentAliasRow, AgentAliasRow.version_id == AgentVersionRow.id).where(
                    AgentAliasRow.agent_id == agent_id, AgentAliasRow.alias == "production"
                )
            elif not 1 <= number <= MAX_ID:
                return None
            else:
                q = q.where(AgentVersionRow.number == number)
            row = (await s.execute(q)).scalar()
        if row is None:
            return None
        return VersionInfo(
            row.id,
            row.number,
            row.stage,
            row.revoked_at is not None or row.stage == "revoked",
            Manifest.model_validate_json(row.manifest),
        )

    async def key_principal(self, key_id: int) -> Principal | None:
        """The principal of a live member key, by id (a delegated token's user): None when the key
        is unknown, revoked, expired, an admin key, or its team is gone."""
        if not 1 <= key_id <= MAX_ID:
            return None
        async with self._session() as s:
            q = select(ApiKey, Team).join(Team, ApiKey.team_id == Team.id).where(ApiKey.id == key_id)
            row = (await s.execute(q)).first()
            if row is None:
                return None
            k, team = row
            expires = _aware(k.expires_at)
            if k.revoked_at is not None or k.role != "member" or team.deleted_at is not None:
                return None
            if expires is not None and expires <= _now():
                return None
            # The store's own rule for a member key's principal (grants, priority, limits, guardrails).
            return await IdentityStore.member_principal(
                s, team, k.id, k.prefix, k.priority, k.guardrails, expires
            )

    async def key_guardrails(self, key_id: int) -> str | None:
        """The guardrail profile attached to the key itself (not its team's)."""
        async with self._session() as s:
            return (await s.execute(select(ApiKey.guardrails).where(ApiKey.id == key_id))).scalar()

    # -- credentials ---------------------------------------------------------------------------

    @staticmethod
    def _info(row: AgentCredentialRow) -> CredentialInfo:
        jwk = json.loads(row.public_jwk) if row.public_jwk else {}
        return CredentialInfo(
            row.id, row.client_id, row.kind, jwk.get("kid"), jwk.get("alg"),
            _aware(row.created_at), _aware(row.revoked_at),  # type: ignore[arg-type]
        )  # fmt: skip

    async def _add(self, agent: AgentIdentity, row: AgentCredentialRow) -> CredentialInfo:
        async with self._session() as s, s.begin():
            live = (
                await s.execute(
                    select(AgentCredentialRow.id, AgentCredentialRow.public_jwk).where(
                        AgentCredentialRow.agent_id == agent.agent_id, AgentCredentialRow.revoked_at.is_(None)
                    )
                )
            ).all()
            if len(live) >= MAX_CREDENTIALS:
                raise CredentialError(
                    "conflict",
                    f"agent {agent.name!r} has {MAX_CREDENTIALS} live credentials: revoke one first",
                )
            if row.public_jwk is not None:
                kid = json.loads(row.public_jwk)["kid"]
                if any(j and json.loads(j).get("kid") == kid for _, j in live):
                    raise CredentialError("conflict", f"a live key with kid {kid!r} is registered already")
            s.add(row)
            await s.flush()
        return self._info(row)

    async def create_secret(self, agent: AgentIdentity) -> tuple[str, CredentialInfo]:
        """A new client secret: the plaintext (shown once, never stored) and its record."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        row = AgentCredentialRow(
            agent_id=agent.agent_id, client_id=agent.spiffe_id, kind="secret",
            secret_hash=hash_secret(secret), created_at=_now(),
        )  # fmt: skip
        return secret, await self._add(agent, row)

    async def register_key(self, agent: AgentIdentity, jwk: Any) -> CredentialInfo:
        """Register a public key (JWK) for the agent's signed client assertions."""
        public = check_public_jwk(jwk)
        row = AgentCredentialRow(
            agent_id=agent.agent_id, client_id=agent.spiffe_id, kind="jwk",
            public_jwk=json.dumps(public), created_at=_now(),
        )  # fmt: skip
        return await self._add(agent, row)

    async def credentials(self, agent: AgentIdentity) -> list[CredentialInfo]:
        async with self._session() as s:
            rows = (
                await s.execute(
                    select(AgentCredentialRow)
                    .where(AgentCredentialRow.agent_id == agent.agent_id)
                    .order_by(AgentCredentialRow.id)
                )
            ).scalars()
            return [self._info(r) for r in rows]

    async def revoke(self, agent: AgentIdentity, credential_id: int) -> CredentialInfo:
        """Revoke one of the agent's credentials (another agent's id is not found)."""
        if not 1 <= credential_id <= MAX_ID:
            raise CredentialError("not_found", f"no credential {credential_id} for agent {agent.name!r}")
        async with self._session() as s, s.begin():
            row = await s.get(AgentCredentialRow, credential_id)
            if row is None or row.agent_id != agent.agent_id:
                raise CredentialError("not_found", f"no credential {credential_id} for agent {agent.name!r}")
            if row.revoked_at is None:
                revoke = update(AgentCredentialRow).where(AgentCredentialRow.id == row.id)
                await s.execute(revoke.values(revoked_at=_now()))
                await s.refresh(row)
        return self._info(row)

    async def _live(self, s: AsyncSession, agent: AgentIdentity, kind: str) -> list[AgentCredentialRow]:
        return list(
            (
                await s.execute(
                    select(AgentCredentialRow).where(
                        AgentCredentialRow.agent_id == agent.agent_id,
                        AgentCredentialRow.kind == kind,
                        AgentCredentialRow.revoked_at.is_(None),
                    )
                )
            ).scalars()
        )

    async def check_secret(self, client_id: str, secret: str) -> AgentIdentity | None:
        """The agent whose live client secret this is, or None (every hash compared in full)."""
        agent = await self.agent_by_spiffe(client_id)
        if agent is None:
            hmac.compare_digest(hash_secret(secret), "0" * 64)  # about the same work as a real check
            return None
        presented = hash_secret(secret)
        async with self._session() as s:
            rows = await self._live(s, agent, "secret")
        found = False
        for row in rows:
            found |= hmac.compare_digest(presented, row.secret_hash or "")
        return agent if found else None

    async def assertion_keys(self, client_id: str) -> tuple[AgentIdentity, list[dict[str, Any]]] | None:
        """The agent ``client_id`` names and its live registered public keys."""
        agent = await self.agent_by_spiffe(client_id)
        if agent is None:
            return None
        async with self._session() as s:
            rows = await self._live(s, agent, "jwk")
        return agent, [json.loads(r.public_jwk) for r in rows if r.public_jwk]

    async def spend_jti(self, client_id: str, jti: str, expires_at: datetime) -> bool:
        """Record a client assertion's ``jti``; False when it was recorded before (a replay)."""
        try:
            async with self._session() as s, s.begin():
                s.add(AssertionJti(client_id=client_id, jti=jti, expires_at=expires_at))
                await s.flush()
        except IntegrityError:
            return False
        return True

    async def prune_jtis(self) -> int:
        """Forget the ``jti``s of assertions that have expired (a replay of one is refused as expired)."""
        async with self._session() as s, s.begin():
            result = await s.execute(delete(AssertionJti).where(AssertionJti.expires_at < _now()))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
