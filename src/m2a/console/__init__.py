"""The web console: m2a's control panel in a browser, served by the gateway at ``/console``.

The top layer: it may import ``gateway/``, ``store/``, ``agents/`` and ``config``; nothing imports
it but the composition root (``m2a up`` adds ``console_extension()``). It owns its sessions table
(``console_sessions``), its templates and static files, and nothing else: every page's data and
every action is a call to m2a's own HTTP APIs as the signed-in principal, so the console can never
do more than that key or token could with curl. Where a page needs an API that is missing, the
API is added where it belongs (``/admin/v1/overview``, ``/admin/v1/quotas/usage``), not read from
the store in a page.

Files: ``extension.py`` (the extension: routing, the per-request session and principal check,
CSRF, error pages), ``sessions.py`` (sessions in the store, the bearer AES-GCM-encrypted),
``security.py`` (headers, cookie flags, CSRF and same-origin checks), ``api.py`` (``ApiClient``),
``pages.py`` (the page registry and ``Ctx``), ``filters.py`` (template filters), ``views_*.py``
(the pages: ``views_core`` sign-in, sign-out, Overview; ``views_teams`` Teams and keys; …),
``templates/`` (Jinja2, autoescaped), ``static/`` (CSS, ``console.js``, vendored JS under
``static/vendor/`` with its licence).

How to add a page (for whoever writes the next ``views_*.py``; it is found and imported by itself)
----------------------------------------------------------------------------------------------------

**Registry** (``pages.py``)::

    from m2a.console.pages import Ctx, NOTICES, action, page

    @page("usage", "/usage", "Usage", "usage.html", who="any", order=30)   # GET /console/usage
    async def usage(ctx: Ctx) -> dict | Response:
        rows = await ctx.api.get("/admin/v1/usage", by="team", since_days=30)
        return {"rows": rows}                     # rendered with usage.html (or return a Response)

    @action("usage.export", "/usage/export", who="admin")   # POST; origin + CSRF checked before
    async def export(ctx: Ctx) -> Response:
        ctx.field("since")                        # a text field of the form ('' if absent)
        return ctx.redirect("usage", notice="exported")     # 303; NOTICES["exported"] = "..."

``who``: ``"public"`` (no session), ``"any"`` (signed in), ``"admin"``, or ``callable(principal)``.
The nav lists the ``nav=True`` pages the principal may open, by ``order`` (overview 10, teams 20;
take 30-90 for the others). An ``ApiError`` a view lets through becomes the error page with the
API's status and message; catch it to show the error inline (``ctx.render(error=exc.message,
status=exc.status, ...)``).

**What a view gets** (``Ctx``): ``request`` (Starlette), ``session`` (``sessions.ConsoleSession``:
``subject``, ``admin``, ``team_id``, ``csrf``; its ``bearer`` is for ``ApiClient`` only — never
render it), ``principal`` (``m2a.principal.Principal``, re-checked at most a second ago: ``team``,
``team_id``, ``is_admin``, ``models``, ``agent``), ``api`` (``ApiClient``), ``form`` (an action's
parsed form), ``field(name)``, ``fields(name)``, ``query(name)``, ``url(page_name, **query)``,
``render(template=None, status=200, **values)``, ``redirect(page_name, notice=None, **query)``,
``console`` (the ``ConsoleExtension``: ``host``, ``sessions``, ``templates``).

**ApiClient** (``api.py``): ``await ctx.api.get(path, **query)``, ``post/put/patch(path, json=...)``,
``delete(path)`` return the JSON (None for 204) or raise ``ApiError(status, message, code)``;
``request(method, path, ...)`` returns the raw ``httpx.Response``; ``async with ctx.api.stream(
"POST", "/v1/chat/completions", json=...) as resp: async for line in resp.aiter_lines()`` streams
(the transport relays the gateway's body as it is written).

**Templates**: ``{% extends "base.html" %}`` with blocks ``title``, ``head`` (extra ``<link>``s),
``content`` and ``scripts`` (extra ``<script src=...>``: only files under ``static/``; the CSP
forbids inline script and style — wire behaviour with ``data-`` attributes). Every template sees
``page``, ``title``, ``nav``, ``session``, ``principal``, ``is_admin``, ``notice``, ``error``,
``url(name)``, ``static(path)`` and ``csrf_field()``: every POST form carries ``{{ csrf_field() }}``.
Filters: ``num``, ``pct``, ``ms``, ``money``, ``bytes``, ``dt`` (``filters.py``). ``console.js``
gives ``data-confirm`` on forms, ``data-copy`` buttons, ``table.sortable`` and ``data-autorefresh``.
CSS classes: ``card``, ``stats``, ``table-wrap``, ``n`` (numeric cell), ``bar`` (``<div class="bar">
<span class="w40"></span></div>``, steps of 5), ``notice``, ``error``, ``help``, ``badge``.

**Tests**: ``tests/console/conftest.py`` — the ``console`` fixture (``console_gateway(home,
endpoints=..., console={...}, **create_app_kw)`` for your own: a live gateway with the console and
agents extensions, a SQLite store, a scripted chat engine serving ``alpha``, a ledger and a trace
store fed by a real tracer). ``console.team(name, models)`` makes a team and returns a member key,
``console.chat(key)`` sends a request through the gateway, ``console.api(method, path, key)`` calls
the API as a script would. ``console.browser()`` is a ``Browser`` (httpx keeping cookies, sending
a same-origin ``Origin``): ``signin(key)``, ``get(path)``, ``post(path, data)`` (adds the page's CSRF
token; ``csrf=False`` or a string to test refusals), ``seen`` (every HTML page it got: grep it).
"""
