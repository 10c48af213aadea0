"""The console's page registry, and what a view gets (``Ctx``).

A view module (any ``m2a/console/views_*.py``: found and imported by ``load_views``) registers its
pages with the ``page`` decorator and its form posts with ``action``::

    @page("teams", "/teams", "Teams and keys", "teams.html", who="any", order=20)
    async def teams(ctx: Ctx) -> dict[str, Any]:
        return {"teams": await ctx.api.get("/admin/v1/teams")}

    @action("teams.create", "/teams/create", who="admin")
    async def create_team(ctx: Ctx) -> Response:
        await ctx.api.post("/admin/v1/teams", json={"name": ctx.field("name")})
        return ctx.redirect("teams", notice="team-created")

``path`` is under ``/console``. A GET view returns a dict (rendered with the page's ``template``)
or a ``Response``; an action (POST) runs only after the same-origin and CSRF checks passed, with
the form parsed (``ctx.form``). ``who`` says who may open it: ``"public"`` (no session: sign-in),
``"any"`` (any signed-in principal), ``"admin"``, or a callable on the ``Principal``. The
navigation lists the pages with ``nav=True`` the principal may open, by ``order``. An ``ApiError``
a view lets through becomes the error page with the API's status and message.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from markupsafe import Markup, escape
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from m2a.console.security import COOKIE_PATH, CSRF_FIELD
from m2a.principal import Principal

if TYPE_CHECKING:
    from m2a.console.api import ApiClient
    from m2a.console.extension import ConsoleExtension
    from m2a.console.sessions import ConsoleSession

View = Callable[["Ctx"], Awaitable[Any]]
Who = str | Callable[[Principal], bool]


@dataclass(frozen=True)
class Page:
    """One page (GET) or form action (POST) of the console."""

    name: str
    path: str  # under /console, starting with "/"
    title: str
    template: str | None
    view: View
    who: Who = "any"
    methods: tuple[str, ...] = ("GET",)
    nav: bool = True
    order: int = 100

    @property
    def url(self) -> str:
        return COOKIE_PATH + self.path

    def allows(self, principal: Principal | None) -> bool:
        if self.who == "public":
            return True
        if principal is None:
            return False
        if self.who == "any":
            return True
        if self.who == "admin":
            return principal.is_admin
        if callable(self.who):
            return bool(self.who(principal))
        return False


PAGES: list[Page] = []


def _register(p: Page) -> None:
    if any(q.name == p.name for q in PAGES):
        raise ValueError(f"a console page named {p.name!r} is registered already")
    if any(q.path == p.path and set(q.methods) & set(p.methods) for q in PAGES):
        raise ValueError(f"a console page serves {p.path!r} already")
    PAGES.append(p)


def page(
    name: str,
    path: str,
    title: str,
    template: str | None = None,
    *,
    who: Who = "any",
    nav: bool = True,
    order: int = 100,
    methods: tuple[str, ...] = ("GET",),
) -> Callable[[View], View]:
    """Register a page (see the module docstring)."""

    def deco(view: View) -> View:
        _register(Page(name, path, title, template, view, who, methods, nav, order))
        return view

    return deco


def action(name: str, path: str, *, who: Who = "any", template: str | None = None) -> Callable[[View], View]:
    """Register a form post (POST, CSRF-checked first, never in the navigation)."""

    def deco(view: View) -> View:
        _register(Page(name, path, name, template, view, who, ("POST",), False, 1000))
        return view

    return deco


def by_name(name: str) -> Page:
    for p in PAGES:
        if p.name == name:
            return p
    raise KeyError(f"no console page named {name!r}")


def page_url(name: str, **params: Any) -> str:
    """The URL of the page ``name`` (see ``Ctx.url``)."""
    target = by_name(name).url
    for key in [k for k in params if "{" + k + "}" in target or "{" + k + ":" in target]:
        value = quote(str(params.pop(key)), safe="")
        target = re.sub(r"\{" + re.escape(key) + r"(:[^}]*)?\}", lambda _m, v=value: v, target)
    query = {k: v for k, v in params.items() if v is not None}
    return target + ("?" + urlencode(query) if query else "")


def nav_for(principal: Principal | None) -> list[Page]:
    return sorted(
        (p for p in PAGES if p.nav and p.who != "public" and p.allows(principal)), key=lambda p: p.order
    )


_loaded = False


def load_views() -> None:
    """Import every ``m2a.console.views_*`` module once (they register their pages)."""
    global _loaded
    if _loaded:
        return
    import m2a.console as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("views_"):
            importlib.import_module(f"m2a.console.{info.name}")
    _loaded = True


@dataclass
class Ctx:
    """What a view gets: the request, who is signed in, the API as them, and rendering helpers."""

    request: Request
    page: Page
    console: ConsoleExtension
    session: ConsoleSession | None = None
    principal: Principal | None = None
    api: ApiClient | None = None  # type: ignore[assignment]
    form: FormData | None = None  # an action's parsed form (CSRF checked)
    extra: dict[str, Any] = field(default_factory=dict)  # what a view adds to every render

    # -- reading the request -------------------------------------------------------------------
    def field(self, name: str, default: str = "") -> str:
        """One text field of the posted form, stripped ('' when absent or not text)."""
        value = self.form.get(name) if self.form is not None else None
        return value.strip() if isinstance(value, str) else default

    def fields(self, name: str) -> list[str]:
        """Every value of a repeated form field (checkboxes), text only."""
        if self.form is None:
            return []
        return [v.strip() for v in self.form.getlist(name) if isinstance(v, str)]

    def query(self, name: str, default: str | None = None) -> str | None:
        return self.request.query_params.get(name, default)

    @property
    def is_admin(self) -> bool:
        return self.principal is not None and self.principal.is_admin

    # -- answering -----------------------------------------------------------------------------
    def url(self, name: str, **params: Any) -> str:
        """The URL of the page ``name``: ``params`` fill its path's ``{names}`` (quoted), the rest
        (None values left out) go in the query."""
        return page_url(name, **params)

    def csrf_field(self) -> Markup:
        """The hidden CSRF input every POST form carries (``{{ csrf_field() }}`` in templates)."""
        token = self.session.csrf if self.session is not None else self.extra.get("signin_csrf", "")
        return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, escape(token))

    def context(self, **values: Any) -> dict[str, Any]:
        """What every template sees, plus ``values``."""
        notice = self.query("notice")
        return {
            "page": self.page,
            "title": self.page.title,
            "nav": nav_for(self.principal),
            "session": self.session,
            "principal": self.principal,
            "is_admin": self.is_admin,
            "csrf_field": self.csrf_field,
            "url": page_url,
            "notice": NOTICES.get(notice or ""),
            "error": None,
            **self.extra,
            **values,
        }

    def render(self, template: str | None = None, status: int = 200, **values: Any) -> HTMLResponse:
        name = template or self.page.template
        if name is None:
            raise ValueError(f"page {self.page.name!r} has no template")
        html = self.console.templates.get_template(name).render(self.context(**values))
        return HTMLResponse(html, status_code=status)

    def redirect(self, name: str, notice: str | None = None, **params: Any) -> Response:
        """303 to the page ``name`` (POST/redirect/GET); ``notice``: a key of ``NOTICES``."""
        return RedirectResponse(self.url(name, notice=notice, **params), status_code=303)


# Messages a redirect may name (?notice=<key>): fixed texts, so a link cannot make the console
# say something it never would. View modules add their own.
NOTICES: dict[str, str] = {
    "signed-out": "You are signed out.",
    "session-ended": "Your session ended (it expired, or its key or token stopped working). Sign in again.",
}
