"""The console as a gateway extension: everything under ``/console``, served by the gateway itself.

``console_extension()`` is the factory for ``create_app(extensions=[...])`` (``m2a up`` adds it).
Each request: the session cookie is looked up (``sessions.py``), its bearer re-checked with the
gateway's ``Access`` (cached at most ``CHECK_S``: a revoked key or expired token ends the session
within about a second), the page's ``who`` checked, a POST's origin and CSRF token checked
(``security.py``), then the view runs with a ``Ctx`` (``pages.py``) whose ``ApiClient`` calls the
gateway app in process as that principal (``api.py``). Every response gets the security headers.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Mount, NoMatchFound, Route, get_route_path
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from m2a.config import EconomicsConfig
from m2a.console import filters
from m2a.console.api import ApiClient, ApiError, make_http
from m2a.console.pages import PAGES, Ctx, Page, load_views
from m2a.console.security import (
    COOKIE,
    COOKIE_PATH,
    CSRF_FIELD,
    SIGNIN_COOKIE,
    add_headers,
    clear_session_cookie,
    csrf_ok,
)
from m2a.console.sessions import IDLE_S, PURPOSE, ConsoleSession, SessionStore
from m2a.gateway.errors import GatewayError
from m2a.gateway.extensions import ExtensionFactory, Host
from m2a.principal import Principal

log = logging.getLogger("m2a.console")

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
CHECK_S = 1.0  # how long a session's principal is trusted before it is checked again
MAX_FORM_BYTES = 1 << 20
_CHECKED_MAX = 10_000


def make_templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    filters.install(env)
    return env


class _Under(BaseRoute):
    """Every HTTP path at or under ``/console`` goes to the console app, path unchanged; the
    gateway app (what ``ApiClient`` calls) is learned from the first request's scope."""

    def __init__(self, console: ConsoleExtension) -> None:
        self.console = console

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http":
            path = get_route_path(scope)
            if path == COOKIE_PATH or path.startswith(COOKIE_PATH + "/"):
                return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: object) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.console.gateway_app is None:
            self.console.gateway_app = scope["app"]
        await self.console.asgi(scope, receive, send)


class _Headers:
    """Adds the security headers to every response of the console app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        page = not get_route_path(scope).startswith(COOKIE_PATH + "/static/")

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                response = Response(status_code=message["status"])
                response.raw_headers = list(message.get("headers", []))
                add_headers(response, page=page)
                message = {**message, "headers": response.raw_headers}
            await send(message)

        await self.app(scope, receive, sending)


class ConsoleExtension:
    """The console's pages and sessions on the gateway's store (module docstring)."""

    def __init__(self, host: Host, idle_s: float = IDLE_S, economics: EconomicsConfig | None = None) -> None:
        self.host = host
        self.economics = economics or EconomicsConfig()  # the Token economics page's prices and costs
        load_views()
        self.templates = make_templates()
        self.sessions = (
            SessionStore(host.db, host.access.derived_key(PURPOSE), idle_s) if host.db is not None else None
        )
        self.gateway_app: ASGIApp | None = None
        self._http: httpx.AsyncClient | None = None
        self._checked: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self.asgi: ASGIApp = _Headers(self._app())

    # -- the extension protocol ----------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [_Under(self)] if self.sessions is not None else []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    # -- who is signed in ----------------------------------------------------------------------
    def api(self, bearer: str) -> ApiClient:
        """m2a's APIs as the holder of ``bearer``."""
        if self._http is None:
            if self.gateway_app is None:
                raise RuntimeError("the console has not seen a request yet")
            self._http = make_http(self.gateway_app)
        return ApiClient(self._http, bearer)

    async def principal_of(self, session: ConsoleSession) -> Principal | None:
        """Whose the session's bearer is now (None: no longer valid); trusted for ``CHECK_S``."""
        hit = self._checked.get(session.id_hash)
        at = time.monotonic()
        if hit is not None and at - hit[0] < CHECK_S:
            return hit[1]
        found = await self.check_bearer(session.bearer)
        if found is None:
            self._checked.pop(session.id_hash, None)
            return None
        self._checked[session.id_hash] = (at, found)
        self._checked.move_to_end(session.id_hash)
        while len(self._checked) > _CHECKED_MAX:
            self._checked.popitem(last=False)
        return found

    async def check_bearer(self, bearer: str) -> Principal | None:
        """The principal of an API key or token as the gateway sees it; None when refused (401)."""
        scope = {
            "type": "http",
            "method": "GET",
            "path": COOKIE_PATH,
            "query_string": b"",
            "headers": [(b"authorization", f"Bearer {bearer}".encode())],
        }
        try:
            return await self.host.access.principal(Request(scope))
        except GatewayError as exc:
            if exc.status == 401:
                return None
            raise

    async def end_session(self, session: ConsoleSession) -> None:
        assert self.sessions is not None
        self._checked.pop(session.id_hash, None)
        await self.sessions.end(session.id_hash)

    # -- serving -------------------------------------------------------------------------------
    def _app(self) -> Starlette:
        routes: list[BaseRoute] = [Route(COOKIE_PATH, self._root, methods=["GET"])]
        for p in sorted(PAGES, key=lambda p: p.path):
            routes.append(Route(p.url, self._endpoint(p), methods=list(p.methods), name=p.name))
        routes.append(Mount(COOKIE_PATH + "/static", app=StaticFiles(directory=str(STATIC)), name="static"))
        return Starlette(
            routes=routes,
            exception_handlers={HTTPException: self._http_error, Exception: self._unexpected},
        )

    async def _root(self, request: Request) -> Response:
        return RedirectResponse(COOKIE_PATH + "/", status_code=307)

    def error_page(
        self, request: Request, status: int, message: str, principal: Principal | None = None
    ) -> Response:
        ctx = Ctx(request, _ERROR_PAGE, self, principal=principal)
        return ctx.render("error.html", status=status, status_code=status, message=message)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        messages = {404: "There is no such page.", 405: "That method is not allowed here."}
        return self.error_page(request, exc.status_code, messages.get(exc.status_code, str(exc.detail)))

    async def _unexpected(self, request: Request, exc: Exception) -> Response:
        log.exception("console error on %s", request.url.path)
        return self.error_page(request, 500, "The console hit an internal error; it has been logged.")

    def _endpoint(self, p: Page) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                return await self._serve(p, request)
            except HTTPException:
                raise
            except Exception as exc:  # answered here: Starlette's 500 handler would re-raise it
                return await self._unexpected(request, exc)

        return endpoint

    async def _serve(self, p: Page, request: Request) -> Response:
        assert self.sessions is not None
        session = await self.sessions.load(request.cookies.get(COOKIE))
        principal = await self.principal_of(session) if session is not None else None
        if session is not None and principal is None:  # revoked key, expired token: the session ends
            await self.end_session(session)
            session = None
        if p.who != "public" and (session is None or principal is None):
            had_cookie = COOKIE in request.cookies
            query = {"notice": "session-ended"} if had_cookie else {}
            if request.method == "GET" and request.url.path != COOKIE_PATH + "/":
                query["next"] = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            target = COOKIE_PATH + "/signin" + (f"?{urlencode(query)}" if query else "")
            out: Response = RedirectResponse(target, status_code=303)
            if had_cookie:
                clear_session_cookie(out, request)
            return out
        if not p.allows(principal):
            return self.error_page(request, 403, "Your key or token may not open this page.", principal)
        ctx = Ctx(request, p, self, session, principal, self.api(session.bearer) if session else None)
        new_signin_token = None
        if session is None:  # a public page: the sign-in form's own CSRF token (a cookie of its own)
            token = request.cookies.get(SIGNIN_COOKIE)
            if not token:
                token = new_signin_token = secrets.token_urlsafe(32)
            ctx.extra["signin_csrf"] = token
        if request.method == "POST":
            refused = await self._read_form(ctx)
            if refused is not None:
                return refused
        try:
            result = await p.view(ctx)
        except ApiError as exc:
            return self.error_page(request, exc.status, exc.message, principal)
        out = result if isinstance(result, Response) else ctx.render(**(result or {}))
        if new_signin_token is not None:
            out.set_cookie(
                SIGNIN_COOKIE, new_signin_token, path=COOKIE_PATH, httponly=True, samesite="strict",
                secure=request.url.scheme == "https",
            )  # fmt: skip
        return out

    async def _read_form(self, ctx: Ctx) -> Response | None:
        """Parse a POST's form and check its origin and CSRF token; a refusal, or None."""
        request = ctx.request
        if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
            return self.error_page(request, 413, "That form is too large.", ctx.principal)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return self.error_page(request, 413, "That form is too large.", ctx.principal)
        request._body = bytes(body)  # Starlette's form parser reads it from here
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            return self.error_page(request, 415, "Forms are sent as form data.", ctx.principal)
        ctx.form = await request.form(max_files=0, max_fields=200)
        expected = ctx.session.csrf if ctx.session is not None else request.cookies.get(SIGNIN_COOKIE, "")
        if not expected or not csrf_ok(request, ctx.form.get(CSRF_FIELD), expected):
            return self.error_page(
                request, 403, "This form was refused: it did not come from this console page "
                "(a missing or stale security token, or another site). Reload the page and try again.",
                ctx.principal,
            )  # fmt: skip
        return None


async def _no_view(ctx: Ctx) -> Any:  # the error page's Page: never routed
    return None


_ERROR_PAGE = Page("error", "/-error", "Error", "error.html", _no_view, who="public", nav=False)


def console_extension(idle_s: float = IDLE_S, economics: EconomicsConfig | None = None) -> ExtensionFactory:
    """The factory for ``create_app(extensions=[...])``; ``idle_s``: how long an unused session lives;
    ``economics``: the config's ``economics`` (Token economics)."""
    return lambda host: ConsoleExtension(host, idle_s, economics)
