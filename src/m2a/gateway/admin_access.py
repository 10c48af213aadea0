"""Who may call which path of the admin API: one table, checked once per request.

Paths are relative to the API's mount point (``/admin``). A path not in the table needs an admin
key. ``ANY_KEY`` paths take any valid key, and their handlers show a team key its own team only.
``OPEN`` paths (the API's own description, no data) need no key while the gateway serves them
(``gateway.admin_docs``). The middleware of ``admin.py`` checks the table before FastAPI reads a
body, and leaves the caller's principal on ``request.state`` for the handlers.
"""

from __future__ import annotations

from starlette.requests import Request

from m2a.gateway.access import Access, require_admin
from m2a.principal import Principal

OPEN, ANY_KEY, ADMIN = "open", "any key", "admin"
TABLE: dict[str, str] = {
    "/openapi.json": OPEN,
    "/docs": OPEN,
    "/docs/oauth2-redirect": OPEN,
    "/v1/whoami": ANY_KEY,
    "/v1/usage": ANY_KEY,
    "/v1/usage/daily": ANY_KEY,  # a team key: its own team's rows only
    "/v1/traces": ANY_KEY,  # a team key: its own team's traces, and only their spans
    "/v1/traces/spans": ANY_KEY,
    "/v1/quotas/usage": ANY_KEY,  # a team key: its own team's limits and what is used of them
    "/v1/overview": ANY_KEY,  # a team key: its team's models only, no devices
    # /v1/guardrails/... (profiles, attachments, check): not listed, so admin keys only; a team key
    # must not read another team's attachment nor learn what a profile lets through.
}


def level(path: str, docs: bool = True) -> str:
    """What a path needs (exact match only: no suffix or prefix opens anything)."""
    needed = TABLE.get(path, ADMIN)
    return ADMIN if needed == OPEN and not docs else needed


async def authorize(request: Request, access: Access, docs: bool) -> Principal | None:
    """The caller of an admin path, or raise (401 without a valid key, 403 without the role)."""
    path = request.url.path.removeprefix(request.scope.get("root_path", ""))
    needed = level(path, docs)
    if needed == OPEN:
        return None
    principal = await access.principal(request)
    if needed == ADMIN:
        require_admin(principal)
    return principal


def caller(request: Request) -> Principal:
    """The principal the middleware authorized for this request (a FastAPI dependency)."""
    principal = getattr(request.state, "principal", None)
    if principal is None:  # an open path has no caller; no handler that asks for one is open
        raise RuntimeError("admin handler reached without authorization")
    return principal
