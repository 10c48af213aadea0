"""Who is calling and what they may use: API keys resolved to principals, cached with invalidation.

The bootstrap admin key (``M2A_ADMIN_KEY`` or ``$M2A_HOME/admin.key``) works without a database.
Team keys are looked up in the identity store once and cached; a background task polls the store's
revision counter and drops the cache when anything changed (a revoked key stops working within
about ``poll_s`` seconds, in every gateway process sharing the store). Expiry is checked on every
request from the cached record.

Work the gateway does for a team (embedding the team's files for its vector stores) calls the
gateway's own ``/v1/embeddings`` with ``internal_token``, random per process and never logged, plus
``x-m2a-on-behalf-of: <team id>``: that pair resolves to the team's own principal (its grants,
priority and limits: ``IdentityStore.team_principal``), so the work is routed, metered and counted
like the team's requests. The header without the token, or the token without the header, is 401.

A bearer credential shaped like a JWT (three base64url parts, the first a JSON header) goes to
``tokens`` when a higher layer set it (the agents layer's verifier: agent tokens and trusted
issuers' JWT-SVIDs); without one, such a token is refused like an unknown key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from starlette.requests import Request

from m2a.gateway.auth import bearer_token
from m2a.gateway.errors import GatewayError
from m2a.principal import PRIORITIES, Principal
from m2a.store.identity import IdentityStore

log = logging.getLogger("m2a.gateway.access")

CACHE_SIZE = 10_000
REFUSED_CACHE_SIZE = 1_000
ON_BEHALF_HEADER = "x-m2a-on-behalf-of"

# Verifies a JWT bearer token and returns its principal, or raises GatewayError (401) — never
# returns for a token it did not fully check (signature, issuer, audience, time, revocation).
TokenVerifier = Callable[[str], Awaitable[Principal]]


def looks_like_jwt(token: str) -> bool:
    """A compact JWS: three dot-separated parts, the header's base64url starting as JSON does."""
    return token.startswith("eyJ") and token.count(".") == 2

BOOTSTRAP = Principal(
    key_id=0,
    key_prefix="bootstrap",
    team=None,
    role="admin",
    priority="critical",
    priority_order=PRIORITIES["critical"],
    models=None,
    expires_at=None,
)

_REFUSALS = {
    "unknown": "Incorrect API key provided.",
    "revoked": "This API key has been revoked.",
    "expired": "This API key has expired.",
    "team deleted": "This API key belongs to a team that no longer exists.",
}


class Access:
    """Resolves bearer keys to principals; the one place the gateway asks "who is this?"."""

    def __init__(self, admin_key: str, store: IdentityStore | None = None, poll_s: float = 0.5) -> None:
        if not admin_key:
            raise ValueError("the gateway needs an admin key: it never serves an open endpoint")
        self._admin = admin_key.encode()
        self.internal_token = secrets.token_urlsafe(32)  # this process's own calls (see the docstring)
        self.store = store
        self.poll_s = poll_s
        self.tokens: TokenVerifier | None = None  # set by the agents layer (see the docstring)
        # Valid keys and refused ones are cached apart, so a flood of random keys cannot push the
        # valid ones out (it only churns the refusals).
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._refused: OrderedDict[str, str] = OrderedDict()
        self._revision = -1
        self._generation = 0  # bumped whenever the cache is dropped
        self._poller: asyncio.Task[None] | None = None
        # Called after any identity change is seen (here or in another process): what else
        # caches the store (the guardrail profiles) reloads.
        self.on_change: list[Callable[[], Awaitable[None]]] = []
        self._reloads: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.store is not None:
            self._revision = await self.store.revision()
            self._poller = asyncio.create_task(self._poll())

    async def close(self) -> None:
        if self._poller:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def _poll(self) -> None:
        assert self.store is not None
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                revision = await self.store.revision()
            except Exception:  # the database may blip: keep serving from the cache meanwhile
                log.warning("could not read the identity revision", exc_info=True)
                continue
            if revision != self._revision:
                self._revision = revision
                self.invalidate()

    def invalidate(self) -> None:
        """Drop cached lookups at once (this process changed something)."""
        self._generation += 1
        self._cache.clear()
        self._refused.clear()
        for reload in self.on_change:
            task = asyncio.get_running_loop().create_task(self._reload(reload))
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)

    @staticmethod
    async def _reload(reload: Callable[[], Awaitable[None]]) -> None:
        try:
            await reload()
        except Exception:  # the database may blip: the next change reloads again
            log.warning("could not reload after an identity change", exc_info=True)

    async def _lookup(self, token: str) -> Principal | str:
        if hmac.compare_digest(token.encode(), self._admin):
            return BOOTSTRAP
        if self.store is None:
            return "unknown"
        for cache in (self._cache, self._refused):
            hit = cache.get(token)
            if hit is not None:
                cache.move_to_end(token)  # least recently used goes first
                return hit
        generation = self._generation
        found = await self.store.lookup(token)
        # A lookup that overlapped a cache drop may have read the store before the change: use it
        # for this request only, or a revoked key would stay cached until the next change.
        if generation == self._generation:
            cache, limit = (
                (self._refused, REFUSED_CACHE_SIZE) if isinstance(found, str) else (self._cache, CACHE_SIZE)
            )
            cache[token] = found  # type: ignore[assignment]
            if len(cache) > limit:
                cache.popitem(last=False)
        return found

    async def principal(self, request: Request) -> Principal:
        token = bearer_token(request)
        if token is None:
            raise GatewayError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        on_behalf = request.headers.get(ON_BEHALF_HEADER)
        internal = hmac.compare_digest(token.encode(), self.internal_token.encode())
        if on_behalf is not None or internal:
            return await self._on_behalf(on_behalf if internal else None)
        if self.tokens is not None and looks_like_jwt(token):
            return await self.tokens(token)
        found = await self._lookup(token)
        if isinstance(found, str):
            raise GatewayError(401, _REFUSALS.get(found, _REFUSALS["unknown"]), code="invalid_api_key")
        if found.expires_at is not None and found.expires_at <= datetime.now(UTC):
            raise GatewayError(401, _REFUSALS["expired"], code="invalid_api_key")
        return found

    async def _on_behalf(self, team: str | None) -> Principal:
        """The team's principal for the gateway's own calls; ``None``: the token or header is missing."""
        refused = GatewayError(
            401, f"'{ON_BEHALF_HEADER}' is for the gateway's own calls, with its internal token.",
            code="invalid_api_key",
        )  # fmt: skip
        if team is None or not team.isdigit() or self.store is None or len(team) > 10:
            raise refused
        name = f"\0team:{int(team)}"  # no bearer key can start with NUL: its own cache slot
        found = self._cache.get(name)
        if found is None:
            generation = self._generation
            found = await self.store.team_principal(int(team))
            if found is None:
                raise refused
            if generation == self._generation:
                self._cache[name] = found
                if len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return found

    def derived_key(self, purpose: bytes, length: int = 32) -> bytes:
        """A secret for ``purpose`` derived from the admin key (HKDF-SHA256): the same in every
        gateway process with that key, and the admin key itself never leaves this object."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose).derive(self._admin)

    async def is_admin(self, request: Request) -> bool:
        """Whether the request carries a valid admin key (never raises: for optional detail)."""
        if bearer_token(request) is None:
            return False
        try:
            return (await self.principal(request)).is_admin
        except GatewayError:
            return False


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise GatewayError(403, "This needs an admin key.", code="admin_only")
