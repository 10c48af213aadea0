"""The admin APIs that higher layers serve beside ``/admin`` (agents, tools, policies, audit): who may
call them, a bounded body, and their errors in OpenAI's shape — one place for what each would repeat.

``keyed_api(...)`` makes such a FastAPI app: every request is authenticated first (before FastAPI
reads a body) with a valid API key — an agent's token is refused 403 ``agents_cannot_manage`` — and
its body bounded; ``GatewayError``, validation errors (400 ``invalid_request`` naming the field),
unknown paths (404 ``unknown_url``) and the app's own error types answer in OpenAI's error shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from m2a.gateway.access import Access
from m2a.gateway.body import buffer_body
from m2a.gateway.errors import GatewayError, error_response
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


def keyed_api(
    *,
    title: str,
    description: str,
    access: Access,
    agents_refused: str,
    max_body: int,
    openapi_url: str | None = None,
    errors: dict[type[Exception], Callable[[Any], Response]] | None = None,
    statuses: dict[int, tuple[str, str]] | None = None,
) -> FastAPI:
    """An app whose every request is a key's (see the module docstring). ``openapi_url``: its OpenAPI
    document, served without a key; ``errors``: an exception type → its response; ``statuses``: an
    HTTP status Starlette raises (405 …) → (message, code) to answer with instead of its own."""
    api = FastAPI(
        title=title, version="1", description=description, docs_url=None, redoc_url=None,
        openapi_url=openapi_url,
    )  # fmt: skip

    @api.middleware("http")
    async def authenticate_first(request: Request, call_next):  # type: ignore[no-untyped-def]
        """The key before anything else (FastAPI would parse a body first), and a bounded body."""
        if openapi_url is not None and request.method == "GET" and request.url.path == openapi_url:
            return await call_next(request)
        try:
            principal = await key_caller(request, access, agents_refused, max_body)
        except GatewayError as exc:
            return exc.response()
        request.state.principal = principal
        return await call_next(request)

    @api.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        return exc.response()

    for kind, answer in (errors or {}).items():
        api.add_exception_handler(kind, _handler(answer))

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        param, msg, _ = first_invalid(exc)
        return error_response(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_request")

    @api.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(404, f"Unknown path {request.url.path}.", code="unknown_url")
        if exc.status_code in (statuses or {}):
            message, code = (statuses or {})[exc.status_code]
            return error_response(exc.status_code, message, code=code)
        return error_response(exc.status_code, str(exc.detail))

    return api


def _handler(answer: Callable[[Any], Response]) -> Callable[[Request, Exception], Any]:
    async def handle(request: Request, exc: Exception) -> Response:
        return answer(exc)

    return handle
