"""Signed intents, the server side: m2a turns each side-effecting action an agent asks for into an
intent (who asks, for whom, which tool, the digest of the exact arguments, the risk tier, the policy
that allowed it, the guardrails' decisions, a nonce) and signs it as a short-lived JWS (ES256,
``typ`` ``m2a-intent+jwt``, at most 60 s) with its signing keys. An executor acts only on a valid
intent meant for it, once (``verify.py``, ``replay.py``).

The claims model and the arguments' digest live in ``verify.py`` (the light library third parties
verify with) and are re-exported here.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from m2a.principal import AgentRef
from m2a.trust.signing import KeySource, sign
from m2a.trust.verify import (
    MAX_TTL_S,
    TYP,
    Act,
    AgentClaim,
    GuardrailClaim,
    Intent,
    PolicyClaim,
    ToolClaim,
    args_digest,
)

__all__ = [
    "MAX_TTL_S",
    "TYP",
    "Act",
    "AgentClaim",
    "GuardrailClaim",
    "Intent",
    "IntentIssuer",
    "PolicyClaim",
    "SignedIntent",
    "ToolClaim",
    "args_digest",
    "intent_digest",
    "on_behalf_of",
]

Tier = Literal["read", "write", "destructive"]
ActLike = str | Mapping[str, Any] | Act | None
_SPIFFE_TEAM = re.compile(r"^spiffe://[^/]+/team/([^/]+)/agent/[^/]+$")


def intent_digest(token: str) -> str:
    """sha256 (hex) of the compact token's ASCII: how receipts and the audit log name an intent."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def on_behalf_of(*subjects: str) -> Act | None:
    """The on-behalf-of chain (RFC 8693 nested ``act``), nearest first: ``on_behalf_of("user:ana")``
    is ``{"sub": "user:ana"}``; no subjects, None."""
    chain: Act | None = None
    for sub in reversed(subjects):
        chain = Act(sub=sub, act=chain)
    return chain


def _act(act: ActLike, subject: str | None) -> Act | None:
    if act is None:
        return on_behalf_of(subject) if subject else None
    if isinstance(act, Act):
        return act
    if isinstance(act, str):
        return Act(sub=act)
    return Act.model_validate(dict(act))


def _agent(
    agent: AgentRef | AgentClaim | Mapping[str, Any], team: str | None, sub: str | None, act: ActLike
) -> tuple[AgentClaim, str, Act | None]:
    """The ``agent`` claim, ``sub`` and ``act`` of an intent, from what the caller has."""
    if isinstance(agent, AgentRef):
        if team is None:
            match = _SPIFFE_TEAM.match(agent.spiffe_id)
            if match is None:
                raise ValueError(f"no team given, and none in the agent's id {agent.spiffe_id!r}")
            team = match.group(1)
        claim = AgentClaim(
            id=agent.agent_id, name=agent.name, team=team, version=agent.version, version_id=agent.version_id
        )
        return claim, sub or agent.spiffe_id, _act(act, agent.subject)
    claim = agent if isinstance(agent, AgentClaim) else AgentClaim.model_validate(dict(agent))
    if team is not None and team != claim.team:
        raise ValueError(f"the agent's team is {claim.team!r}, not {team!r}")
    if not sub:
        raise ValueError("an intent needs the agent's SPIFFE id (sub)")
    return claim, sub, _act(act, None)


@dataclass(frozen=True)
class SignedIntent:
    """A signed intent: the compact JWS, its claims, and its digest (``intent_digest(token)``)."""

    token: str
    claims: Intent
    digest: str


class IntentIssuer:
    """Signs intents with ``keys`` as ``issuer``, each living ``ttl_s`` (1..60 s).

    ``clock`` (epoch seconds) is for tests.
    """

    def __init__(
        self, keys: KeySource, issuer: str, ttl_s: int = 30, clock: Callable[[], float] = time.time
    ) -> None:
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_TTL_S:
            raise ValueError(f"an intent lives 1..{MAX_TTL_S} s, not {ttl_s!r}")
        if not issuer:
            raise ValueError("an intent issuer needs a name")
        self.keys = keys
        self.issuer = issuer
        self.ttl_s = ttl_s
        self.clock = clock

    async def issue(
        self,
        *,
        audience: str,
        agent: AgentRef | AgentClaim | Mapping[str, Any],
        act: ActLike = None,
        server: str,
        tool: str,
        arguments: Any,
        tier: Tier,
        policy: PolicyClaim | Mapping[str, Any],
        guardrails: Sequence[GuardrailClaim | Mapping[str, Any]] = (),
        approval: str | None = None,
        trace_id: str | None = None,
        team: str | None = None,
        sub: str | None = None,
    ) -> SignedIntent:
        """Sign one intent for the executor ``audience``.

        ``agent``: the caller's agent, either the principal's ``AgentRef`` (its SPIFFE id becomes
        ``sub``; ``team`` defaults to the one in that id) or the ``agent`` claim itself (an
        ``AgentClaim`` or its dict: ``id``, ``name``, ``team``, ``version``, ``version_id``) with
        the agent's SPIFFE id as ``sub``. ``act``: whom it acts for, nearest first (a subject, a
        nested ``{"sub", "act"}`` chain, or None: for an ``AgentRef``, the user its token was
        exchanged for, if any). ``ValueError`` for claims that are not valid (arguments JCS cannot
        canonicalize, a destructive action without an approval, a missing ``sub``, ...).
        """
        if tier == "destructive" and not approval:
            raise ValueError("a destructive action needs a person's approval before it is signed")
        claim, subject, chain = _agent(agent, team, sub, act)
        iat = int(self.clock())
        claims = Intent(
            iss=self.issuer,
            aud=audience,
            sub=subject,
            jti=secrets.token_hex(16),
            iat=iat,
            exp=iat + self.ttl_s,
            agent=claim,
            act=chain,
            tool=ToolClaim(server=server, name=tool),
            args_sha256=args_digest(arguments),
            tier=tier,
            policy=policy if isinstance(policy, PolicyClaim) else PolicyClaim.model_validate(dict(policy)),
            guardrails=[
                g if isinstance(g, GuardrailClaim) else GuardrailClaim.model_validate(dict(g))
                for g in guardrails
            ],
            approval=approval,
            trace_id=trace_id,
        )
        token = await sign(self.keys, claims.claims(), TYP)
        return SignedIntent(token, claims, intent_digest(token))
