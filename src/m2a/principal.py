"""Who is calling, as every layer above the store sees it: a principal and the limits it carries.

Defined once here, outside ``store/`` (which reads principals from keys, teams and quotas) so the
gateway, and later agents acting for someone, share one definition without importing the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

PRIORITIES = {"critical": 0, "standard": 100, "batch": 200}  # lower runs first, as in vLLM


@dataclass(frozen=True)
class Limit:
    """One limit as the gateway enforces it; ``subject`` names the counter (team id or key id)."""

    scope: str  # team or key
    subject: int
    metric: str
    window: str
    limit: int

    def describe(self, team: str | None) -> str:
        who = f"team '{team}'" if self.scope == "team" else f"key {self.subject}"
        if self.metric == "concurrency":
            return f"{self.limit} concurrent requests for {who}"
        if self.metric == "storage_bytes":
            return f"{self.limit} bytes in the vector stores of {who}"
        amount = (
            f"${self.limit / 1e6:.2f}"
            if self.metric == "cost"
            else f"{self.limit} {self.metric.replace('_', ' ')}"
        )
        return f"{amount} per {self.window} for {who}"


@dataclass(frozen=True)
class AgentRef:
    """The agent a principal is: an agent token (m2a's token endpoint, or a trusted issuer's).

    ``subject`` is the user it acts for when the token came from a token exchange (RFC 8693: the
    token's ``sub``, the agent its ``act``), else ``None``.
    """

    spiffe_id: str  # spiffe://<trust domain>/team/<team>/agent/<name>
    agent_id: int
    name: str
    version: int | None = None  # the version number the token was issued for
    version_id: int | None = None
    subject: str | None = None


@dataclass(frozen=True)
class Principal:
    """Who a valid key belongs to, as the gateway needs it on every request."""

    key_id: int
    key_prefix: str
    team: str | None  # None for admin keys
    role: str
    priority: str
    priority_order: int
    models: frozenset[str] | None  # None: every model (admins)
    expires_at: datetime | None
    team_id: int | None = None
    limits: tuple[Limit, ...] = ()  # the team's quotas and the key's own
    guardrails: str | None = None  # the guardrail profile attached to the key, else to its team
    agent: AgentRef | None = None  # set when the caller is an agent (a token, not an API key)
    data_scopes: frozenset[str] | None = None  # vector stores it may read; None: its team's, all

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models
