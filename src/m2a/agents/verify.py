"""The gateway's verifier of agent tokens (``Access.tokens``): a JWT bearer to a ``Principal``.

Two kinds of token are accepted, told apart by their ``iss`` (read unverified only to choose who
checks it; everything is then checked):

- **m2a's own** (``tokens.py``: ES256, ``typ`` at+jwt, a published ``kid``, ``iss``, the one
  ``aud``, time). The agent (``agent_id``) must still exist, not be revoked, be in the token's
  team, and have the token's SPIFFE id; the version (``agent_version``) must exist and be usable
  (``credentials.USABLE_STAGES``, not revoked).
- **A trusted issuer's** (``agents.trusted_issuers``: a SPIRE cluster's JWT-SVIDs): RS256 or ES256
  only, signed by a key of that issuer's JWKS, its ``iss``, an ``aud`` naming the issuer's
  ``audience``, ``exp`` (required) and ``nbf`` with the same leeway. ``sub`` must be a SPIFFE id
  in that issuer's trust domain, ``spiffe://<domain>/team/<team>/agent/<name>``, naming a
  registered, non-revoked agent of a live team; a token with ``act`` is refused (m2a does not
  take delegation from outside). Such a token is that agent at the version its ``production``
  alias points at (none there: refused): it may do what an m2a token of that version may, call
  the gateway and be the actor (or the subject) of a token exchange, and nothing more.

The principal of an agent is its team's (``IdentityStore.team_principal``), narrowed by the
version's manifest: models = the team's grants ∩ the manifest's ``models``; vector stores it may
read = the manifest's ``data_scopes`` (``Principal.data_scopes``); priority the
manifest's where it is not above the team's, else the team's; limits the team's plus the agent's
own (``Limit(scope="agent", subject=<agent id>)``, counted per agent across versions); guardrails
the manifest's profile, else the team's. ``key_prefix`` is ``agent:<id>`` (the ledger's key column),
``agent`` the ``AgentRef`` (its m2a SPIFFE id, also for a trusted issuer's token).

A token from a **token exchange** (``act`` set) is the intersection of its subject (a member key,
re-read by id; or another agent's version) and its actor: models ∩, the lower priority, both sets
of limits, the earlier expiry, the subject key's id (its ledger rows and key limits), and one
guardrail profile: the actor's, or the subject's own where only it has one (the same one where
both have one: a token whose two differ is never issued, and refused if presented).

**Cache.** A verified principal is kept per token (at most ``CACHE_SIZE``, least recently used
out) until the token expires, and all of them are dropped when the identity revision moves
(``Access.on_change``: a revoked agent, version, key or team, or a changed grant or quota, in
any process) — so a revoked version's tokens stop within about the revision poll (half a second).
Refusals are not cached: a forged token costs a signature check and no database read. m2a's
public keys come from the store (re-read on an unknown ``kid`` at most once a second). A trusted
issuer's JWKS is read from ``jwks_file`` or fetched from ``jwks_url`` (aiohttp, at most
``FETCH_TIMEOUT_S``, at most ``MAX_JWKS_BYTES``), kept ``JWKS_TTL_S``, fetched again on an unknown
``kid`` at most every ``REFETCH_S``; a failed fetch keeps the keys it had.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt

from m2a.agents.credentials import AgentDirectory, AgentIdentity, VersionInfo
from m2a.agents.keys import LEEWAY_S
from m2a.agents.tokens import TokenError, Tokens, unverified_issuer
from m2a.config import TrustedIssuer
from m2a.gateway.errors import GatewayError
from m2a.principal import PRIORITIES, AgentRef, Limit, Principal
from m2a.store.identity import IdentityStore

log = logging.getLogger("m2a.agents.verify")

CACHE_SIZE = 10_000
TRUSTED_ALGS = ("RS256", "ES256")
FETCH_TIMEOUT_S = 5.0
MAX_JWKS_BYTES = 1 << 20
JWKS_TTL_S = 300.0
REFETCH_S = 5.0
MAX_REASON = 200


def key_subject(key_id: int) -> str:
    """The ``sub`` of a token exchanged for a team API key's holder."""
    return f"m2a:key:{key_id}"


def refused(reason: str) -> GatewayError:
    return GatewayError(401, f"The access token was refused: {reason[:MAX_REASON]}.", code="invalid_api_key")


# -- principals -----------------------------------------------------------------------------------


def agent_principal(
    team: Principal, agent: AgentIdentity, version: VersionInfo, expires_at: datetime | None
) -> Principal:
    """The team's principal narrowed by the version's manifest (see the module docstring)."""
    m = version.manifest
    priority, order = team.priority, team.priority_order
    if m.priority is not None and m.priority != team.priority and PRIORITIES[m.priority] > order:
        priority, order = m.priority, PRIORITIES[m.priority]  # lower than the team's: allowed
    own = tuple(Limit("agent", agent.agent_id, x.metric, x.window, x.limit) for x in m.limits)
    models = frozenset(m.models) if team.models is None else team.models & frozenset(m.models)
    return replace(
        team,
        key_id=0,
        key_prefix=f"agent:{agent.agent_id}"[:16],
        priority=priority,
        priority_order=order,
        models=models,
        expires_at=expires_at,
        limits=team.limits + own,
        guardrails=m.guardrails or team.guardrails,
        agent=AgentRef(agent.spiffe_id, agent.agent_id, agent.name, version.number, version.id),
        data_scopes=frozenset(m.data_scopes),  # the vector stores it may read, and no others
    )


class GuardrailConflict(ValueError):
    """The subject and the actor of a token exchange each bring a different guardrail profile."""


def delegated_principal(subject: Principal, subject_own: str | None, actor: Principal, sub: str) -> Principal:
    """What an actor may do for a subject: the intersection of both (see the module docstring).
    ``subject_own`` is the subject's own profile (its key's, or its manifest's), not its team's."""
    assert actor.agent is not None
    if subject.team_id != actor.team_id:
        raise ValueError("the subject and the actor belong to different teams")
    guardrails = actor.guardrails
    if subject_own is not None and guardrails is None:
        guardrails = subject_own
    elif subject_own is not None and subject_own != guardrails:
        raise GuardrailConflict(
            f"the subject's guardrail profile {subject_own!r} differs from the agent's {guardrails!r}"
        )
    low = subject if subject.priority_order > actor.priority_order else actor
    limits = list(actor.limits)
    limits += [x for x in subject.limits if x not in limits]
    ends = [t for t in (subject.expires_at, actor.expires_at) if t is not None]
    if subject.models is None or actor.models is None:
        models = subject.models if actor.models is None else actor.models
    else:
        models = subject.models & actor.models
    by_key = subject.agent is None
    return replace(
        actor,
        key_id=subject.key_id if by_key else actor.key_id,
        key_prefix=subject.key_prefix if by_key else actor.key_prefix,
        priority=low.priority,
        priority_order=low.priority_order,
        models=models,
        expires_at=min(ends) if ends else None,
        limits=tuple(limits),
        guardrails=guardrails,
        agent=replace(actor.agent, subject=sub),
        data_scopes=actor.data_scopes
        if subject.data_scopes is None or actor.data_scopes is None
        else actor.data_scopes & subject.data_scopes,
    )


# -- trusted issuers --------------------------------------------------------------------------------


class TrustedJWKS:
    """One trusted issuer's signing keys, from its JWKS file or URL (see the module docstring)."""

    def __init__(self, cfg: TrustedIssuer, clock: Callable[[], float] = time.monotonic) -> None:
        if (cfg.jwks_url is None) == (cfg.jwks_file is None):
            raise ValueError(f"trusted issuer {cfg.issuer!r}: set one of jwks_url and jwks_file")
        self.cfg = cfg
        self.clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._read_at = float("-inf")
        self._tried_at = float("-inf")
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    @staticmethod
    def parse(data: Any) -> dict[str, jwt.PyJWK]:
        """The usable keys of a JWKS document: RSA (RS256) and EC P-256 (ES256) with a ``kid``."""
        keys: dict[str, jwt.PyJWK] = {}
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError('a JWKS is {"keys": [...]}')
        for item in data["keys"]:
            if not isinstance(item, dict) or not isinstance(item.get("kid"), str):
                continue
            if item.get("use") not in (None, "sig"):
                continue
            try:
                key = jwt.PyJWK(item)
            except jwt.PyJWTError:
                continue  # a key type or algorithm m2a does not take: skipped, not fatal
            if key.algorithm_name in TRUSTED_ALGS:
                keys[item["kid"]] = key
        return keys

    async def _load(self) -> dict[str, jwt.PyJWK]:
        if self.cfg.jwks_file is not None:
            path = self.cfg.jwks_file
            text = await asyncio.to_thread(path.read_bytes)
            if len(text) > MAX_JWKS_BYTES:
                raise ValueError(f"{path} is larger than {MAX_JWKS_BYTES} bytes")
            return self.parse(json.loads(text))
        assert self.cfg.jwks_url is not None
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S), trust_env=False
            )
        async with asyncio.timeout(FETCH_TIMEOUT_S):
            async with self._session.get(self.cfg.jwks_url, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ValueError(f"{self.cfg.jwks_url} answered {resp.status}")
                body = await resp.content.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError(f"{self.cfg.jwks_url} sent more than {MAX_JWKS_BYTES} bytes")
        return self.parse(json.loads(body))

    async def _refresh(self, unknown: bool) -> None:
        async with self._lock:
            now = self.clock()
            stale = now - self._read_at >= JWKS_TTL_S
            if not (stale or (unknown and now - self._tried_at >= REFETCH_S)):
                return
            self._tried_at = now
            try:
                self._keys = await self._load()
                self._read_at = self.clock()
            except Exception as exc:  # unreachable or garbage: keep the keys it had
                log.warning("trusted issuer %s: could not read its JWKS: %s", self.cfg.issuer, exc)

    async def key(self, kid: str) -> jwt.PyJWK | None:
        if self.clock() - self._read_at >= JWKS_TTL_S:
            await self._refresh(unknown=False)
        if kid not in self._keys:
            await self._refresh(unknown=True)
        return self._keys.get(kid)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# -- the verifier --------------------------------------------------------------------------------------


@dataclass
class _Cached:
    principal: Principal
    until: float  # epoch seconds: the token's exp plus the leeway


class AgentVerifier:
    """``Access.tokens``: verifies a JWT bearer and returns its agent's principal, or raises 401."""

    def __init__(
        self,
        tokens: Tokens,
        directory: AgentDirectory,
        identity: IdentityStore,
        trusted: Sequence[TrustedIssuer] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tokens = tokens
        self.directory = directory
        self.identity = identity
        self.clock = clock
        self.trusted = {t.issuer: (t, TrustedJWKS(t)) for t in trusted if t.issuer != tokens.issuer}
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._generation = 0

    def clear(self) -> None:
        """Forget every verified token (the identity revision moved)."""
        self._generation += 1
        self._cache.clear()

    async def on_change(self) -> None:  # for Access.on_change
        self.clear()

    async def close(self) -> None:
        for _, jwks in self.trusted.values():
            await jwks.close()

    async def __call__(self, token: str) -> Principal:
        hit = self._cache.get(token)
        now = self.clock()
        if hit is not None:
            if now < hit.until:
                self._cache.move_to_end(token)
                return hit.principal
            del self._cache[token]
        generation = self._generation
        try:
            principal, exp = await self._verify(token)
        except TokenError as exc:
            raise refused(str(exc)) from None
        if generation == self._generation:  # not read across a revocation: keep it
            self._cache[token] = _Cached(principal, exp + LEEWAY_S)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        iss = unverified_issuer(token)
        if iss is None:
            raise TokenError("not a JWT with an issuer")
        if iss == self.tokens.issuer:
            claims = await self.tokens.verify(token)
            return await self.m2a_principal(claims), float(claims["exp"])
        if iss in self.trusted:
            return await self._trusted(token, *self.trusted[iss])
        raise TokenError("not issued by m2a or a trusted issuer")

    async def _team(self, agent: AgentIdentity) -> Principal:
        team = await self.identity.team_principal(agent.team_id)
        if team is None:
            raise TokenError("the agent's team no longer exists")
        return team

    async def _version(self, agent: AgentIdentity, number: int | None) -> VersionInfo:
        version = await self.directory.version(agent.agent_id, number)
        if version is None:
            which = "no production version" if number is None else f"no version {number}"
            raise TokenError(f"agent {agent.name!r} has {which}")
        if not version.usable:
            raise TokenError(f"version {version.number} of agent {agent.name!r} is {version.stage}")
        return version

    async def version_principal(
        self, agent_id: int, number: int | None, expires_at: datetime | None
    ) -> Principal:
        """The principal of a live agent's usable version (``None``: its production one)."""
        agent = await self.directory.agent_by_id(agent_id)
        if agent is None:
            raise TokenError("the agent no longer exists or was revoked")
        version = await self._version(agent, number)
        return agent_principal(await self._team(agent), agent, version, expires_at)

    async def m2a_principal(self, claims: dict[str, Any]) -> Principal:
        """The principal of verified m2a token claims (``Tokens.verify``)."""
        expires = datetime.fromtimestamp(claims["exp"], UTC)
        actor = await self.version_principal(claims["agent_id"], claims["agent_version"], expires)
        assert actor.agent is not None
        if claims["client_id"] != actor.agent.spiffe_id or claims["team"] != actor.team:
            raise TokenError("the token's agent is not the registered one")
        act = claims.get("act")
        if act is None:
            if claims["sub"] != actor.agent.spiffe_id:
                raise TokenError("the token's subject is not its agent")
            return actor
        if act.get("sub") != actor.agent.spiffe_id or set(act) != {"sub"}:
            raise TokenError("the token's actor is not its agent")
        key_id, agent_id = claims.get("subject_key_id"), claims.get("subject_agent_id")
        if isinstance(key_id, int) and not isinstance(key_id, bool) and agent_id is None:
            subject = await self.directory.key_principal(key_id)
            if subject is None:
                raise TokenError("the key this token acts for is no longer valid")
            if claims["sub"] != key_subject(key_id):
                raise TokenError("the token's subject is not its key")
            own = await self.directory.key_guardrails(key_id)
        elif isinstance(agent_id, int) and isinstance(claims.get("subject_agent_version"), int):
            subject = await self.version_principal(agent_id, claims["subject_agent_version"], None)
            assert subject.agent is not None
            if claims["sub"] != subject.agent.spiffe_id:
                raise TokenError("the token's subject is not its agent")
            version = await self.directory.version(agent_id, claims["subject_agent_version"])
            own = version.manifest.guardrails if version is not None else None
        else:
            raise TokenError("a delegated token without its subject")
        try:
            return delegated_principal(subject, own, actor, claims["sub"])
        except ValueError as exc:
            raise TokenError(str(exc)) from exc

    async def _trusted(self, token: str, cfg: TrustedIssuer, jwks: TrustedJWKS) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(f"not a JWT: {exc}") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in TRUSTED_ALGS:
            raise TokenError(f"a trusted issuer's tokens are signed with RS256 or ES256, not {alg!r}")
        if not isinstance(kid, str) or not kid:
            raise TokenError("the token names no signing key (kid)")
        key = await jwks.key(kid)
        if key is None:
            raise TokenError(f"unknown signing key {kid!r} for issuer {cfg.issuer!r}")
        if key.algorithm_name != alg:
            raise TokenError(f"key {kid!r} signs with {key.algorithm_name}, not {alg}")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=cfg.audience,
                issuer=cfg.issuer,
                leeway=LEEWAY_S,
                options={"require": ["iss", "sub", "aud", "exp"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(f"{type(exc).__name__}: {exc}") from exc
        if "act" in claims:
            raise TokenError("m2a takes no delegated tokens from other issuers")
        if not isinstance(claims["exp"], int | float) or isinstance(claims["exp"], bool):
            raise TokenError("exp is not a number")
        agent = await self.directory.agent_by_spiffe(claims["sub"], cfg.trust_domain)
        if agent is None:
            raise TokenError(f"{claims['sub']!r} names no agent registered in {cfg.trust_domain!r}")
        exp = float(claims["exp"])
        version = await self._version(agent, None)
        return agent_principal(await self._team(agent), agent, version, datetime.fromtimestamp(exp, UTC)), exp
