"""What the agents layer's admin APIs (``admin_api.py``, ``tools_api.py``) share: who may call
them, a bounded body, and FastAPI's validation errors read for OpenAI's error shape."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError

from m2a.gateway.access import Access
from m2a.gateway.body import buffer_body
from m2a.gateway.errors import GatewayError
from m2a.principal import Principal


async def key_caller(request: Request, access: Access, agents_refused: str, max_body: int) -> Principal:
    """The caller, checked before FastAPI reads anything: a valid key (not an agent's token:
    ``agents_refused`` says why), and a body within ``max_body`` (chunked bodies too), or raise."""
    principal = await access.principal(request)
    if principal.agent is not None:
        raise GatewayError(403, agents_refused, code="agents_cannot_manage")
    await buffer_body(request, max_body)
    return principal


def first_invalid(exc: RequestValidationError) -> tuple[str | None, str, int]:
    """The first validation error as (param, message), and how many errors there were."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query")]
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    return ".".join(loc) or None, msg, len(errors)
