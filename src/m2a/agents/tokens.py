"""m2a's agent access tokens: JWTs (RFC 9068 profile) issued and checked with PyJWT.

A token's header is ``{"alg": "ES256", "typ": "at+jwt", "kid": <signing key>}``; its claims:

- ``iss`` m2a's issuer (``agents.issuer``, else the gateway's own URL: ``issuer_of``), ``aud`` one
  audience (``agents.audience``, a string, never a list), ``sub`` the agent's SPIFFE id
  (``spiffe://<trust domain>/team/<team>/agent/<name>``), or for a token exchange the user's;
- ``iat``, ``nbf`` (both the issue time) and ``exp``: at most ``agents.token_ttl_s`` (≤ 300 s)
  later, less where what it was exchanged from ends sooner; ``jti`` random;
- ``client_id`` (the agent's SPIFFE id: see ``credentials.py``), ``team``, ``agent_id`` and
  ``agent_version`` (the version's number);
- for a token exchange (RFC 8693): ``act: {"sub": <the agent's SPIFFE id>}`` and the subject it
  acts for, ``subject_key_id`` (a team API key) or ``subject_agent_id`` + ``subject_agent_version``
  (another agent's token).

``verify`` takes only m2a's own tokens: alg ES256 and nothing else (``none``, HS256 made with the
public key, RS256 … are refused before any key is looked at), ``typ`` ``at+jwt``, a ``kid`` of a
published signing key, the signature, ``iss``, the one ``aud``, ``exp`` / ``nbf`` / ``iat`` with
``LEEWAY_S`` of clock skew, a lifetime of at most ``MAX_TTL_S``, and the m2a claims' types. It
says nothing about whether the agent or version still exist: ``verify.py`` checks that.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt

from m2a.agents.keys import ALG, LEEWAY_S, SigningKeys
from m2a.config import AgentsConfig, GatewayConfig

TYP = "at+jwt"
MAX_TTL_S = 300
SPIFFE = re.compile(
    r"^spiffe://([a-z0-9._-]{1,255})/team/([a-z0-9][a-z0-9_-]{0,63})/agent/([a-z0-9][a-z0-9-]{0,62})$"
)
_REQUIRED = ["iss", "aud", "sub", "exp", "iat", "nbf", "jti"]


class TokenError(Exception):
    """A token m2a does not accept; the message says why (for logs and the error's text)."""


def spiffe_id(trust_domain: str, team: str, agent: str) -> str:
    return f"spiffe://{trust_domain}/team/{team}/agent/{agent}"


def parse_spiffe(value: str) -> tuple[str, str, str] | None:
    """(trust domain, team, agent name) of an agent's SPIFFE id, or None if it is not one."""
    m = SPIFFE.fullmatch(value) if isinstance(value, str) else None
    return (m.group(1), m.group(2), m.group(3)) if m else None


def issuer_of(agents: AgentsConfig, gateway: GatewayConfig) -> str:
    """The ``iss`` of m2a's tokens: ``agents.issuer``, else the gateway's URL from its host and port
    (a wildcard address as 127.0.0.1). Set ``agents.issuer`` where clients reach the gateway at
    another address (a proxy, a cluster's service name: it is where the metadata points them), and
    wherever several gateway processes share a store: each accepts only tokens of its own issuer,
    so they must all have the same one."""
    if agents.issuer:
        return agents.issuer.rstrip("/")
    host = gateway.host if gateway.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{gateway.port}"


@dataclass(frozen=True)
class Issued:
    token: str
    expires_in: int
    claims: dict[str, Any]


class Tokens:
    """Issues and verifies m2a's agent access tokens with the store's signing keys."""

    def __init__(
        self,
        keys: SigningKeys,
        issuer: str,
        audience: str,
        ttl_s: int = MAX_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= ttl_s <= MAX_TTL_S:
            raise ValueError(f"agent tokens live at most {MAX_TTL_S} s")
        self.keys = keys
        self.clock = clock  # the tokens' times (PyJWT checks them against the system clock)
        self.issuer = issuer
        self.audience = audience
        self.ttl_s = ttl_s
        self._reread_at = float("-inf")

    async def issue(
        self,
        *,
        sub: str,
        client_id: str,
        team: str,
        agent_id: int,
        agent_version: int,
        not_after: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Issued:
        """A signed token for the agent's version; ``not_after`` (epoch s) shortens its life."""
        signer = await self.keys.signer()
        now = int(self.clock())
        exp = now + self.ttl_s
        if not_after is not None:
            exp = min(exp, int(not_after))
        if exp <= now:
            raise TokenError("what this token would be made from has expired")
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": self.audience,
            "exp": exp,
            "iat": now,
            "nbf": now,
            "jti": secrets.token_urlsafe(16),
            "client_id": client_id,
            "team": team,
            "agent_id": agent_id,
            "agent_version": agent_version,
            **(extra or {}),
        }
        token = jwt.encode(claims, signer.key, algorithm=ALG, headers={"kid": signer.kid, "typ": TYP})
        return Issued(token, exp - now, claims)

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of a valid m2a token, or ``TokenError``."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(f"not a JWT: {exc}") from exc
        if header.get("alg") != ALG:  # the allow-list: one algorithm, checked before any key
            raise TokenError(f"m2a's tokens are signed with {ALG}, not {header.get('alg')!r}")
        if header.get("typ") != TYP:
            raise TokenError(f"not an access token (typ {header.get('typ')!r}, not {TYP!r})")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenError("the token names no signing key (kid)")
        now = self.clock()
        reread = now - self._reread_at >= 1.0  # an unknown kid reads the store at most once a second
        jwk = await self.keys.public(kid, reread=reread)
        if jwk is None:
            if reread:
                self._reread_at = now
            raise TokenError(f"unknown signing key {kid!r}")
        try:
            claims = jwt.decode(
                token,
                jwt.PyJWK(jwk, ALG).key,
                algorithms=[ALG],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": _REQUIRED, "strict_aud": True},
            )
        except jwt.PyJWTError as exc:
            raise TokenError(f"{type(exc).__name__}: {exc}") from exc
        self._check(claims, now)
        return claims

    @staticmethod
    def _check(claims: dict[str, Any], now: float) -> None:
        for name in ("exp", "iat", "nbf"):
            if not isinstance(claims[name], int) or isinstance(claims[name], bool):
                raise TokenError(f"{name} is not a whole number of seconds")
        if claims["exp"] - claims["iat"] > MAX_TTL_S or claims["nbf"] < claims["iat"] - LEEWAY_S:
            raise TokenError(f"m2a's tokens live at most {MAX_TTL_S} s")
        if claims["iat"] > now + LEEWAY_S:
            raise TokenError("issued in the future")
        for name, kind in (
            ("sub", str), ("client_id", str), ("team", str), ("agent_id", int), ("agent_version", int),
        ):  # fmt: skip
            value = claims.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TokenError(f"the {name} claim is missing or not a {kind.__name__}")
        act = claims.get("act")
        if act is not None and not (isinstance(act, dict) and isinstance(act.get("sub"), str)):
            raise TokenError("act is not {sub: ...}")


def unverified_issuer(token: str) -> str | None:
    """The ``iss`` a token claims, read without checking anything: only to pick who verifies it."""
    try:
        iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        return None
    return iss if isinstance(iss, str) else None
