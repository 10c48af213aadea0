"""Sign-in, sign-out and the Overview page.

Sign-in takes an API key or an agent/user token, checks it as the gateway would (``Access``) and
starts a session (``sessions.py``); a bad one gets the form again with 401 and no session. The
Overview shows the models and replicas the principal may use (``/admin/v1/overview``), the
devices (admins), and the last five minutes' traffic (``/admin/v1/usage``: a team key sees its
own team's numbers only).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import RedirectResponse, Response

from m2a.console.api import ApiError
from m2a.console.pages import NOTICES, Ctx, action, page
from m2a.console.security import COOKIE_PATH, SIGNIN_COOKIE, clear_session_cookie, set_session_cookie

TRAFFIC_WINDOW_S = 300.0
MAX_BEARER = 8192

NOTICES["signed-in"] = "You are signed in."


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (never another site, never //host)."""
    home = COOKIE_PATH + "/"
    if not target or not target.startswith(home) or "\\" in target or ".." in target:
        return home
    return home if target.startswith(COOKIE_PATH + "/signin") else target


@page("signin", "/signin", "Sign in", "signin.html", who="public", nav=False)
async def signin_form(ctx: Ctx) -> Response | dict[str, Any]:
    if ctx.session is not None:
        return RedirectResponse(safe_next(ctx.query("next")), status_code=303)
    return {"next": safe_next(ctx.query("next"))}


@action("signin.post", "/signin", who="public", template="signin.html")
async def signin(ctx: Ctx) -> Response:
    bearer = ctx.field("key")
    target = safe_next(ctx.field("next"))
    principal = await ctx.console.check_bearer(bearer) if 0 < len(bearer) <= MAX_BEARER else None
    if principal is None:
        return ctx.render(
            "signin.html",
            status=401,
            next=target,
            error="That key or token is not valid (unknown, revoked or expired).",
        )
    assert ctx.console.sessions is not None
    session_id, _ = await ctx.console.sessions.create(bearer, principal)
    out = RedirectResponse(target, status_code=303)
    set_session_cookie(out, ctx.request, session_id)
    out.delete_cookie(SIGNIN_COOKIE, path=COOKIE_PATH)
    return out


@action("signout", "/signout", who="any")
async def signout(ctx: Ctx) -> Response:
    if ctx.session is not None:
        await ctx.console.end_session(ctx.session)
    out = ctx.redirect("signin", notice="signed-out")
    clear_session_cookie(out, ctx.request)
    return out


def traffic(rows: list[dict[str, Any]], window_s: float = TRAFFIC_WINDOW_S) -> dict[str, Any]:
    """Per model and in all: requests and tokens per second, errors, mean time to first token."""
    per_model: dict[str, dict[str, Any]] = {}
    for r in rows:
        m = per_model.setdefault(
            r["model"], {"requests": 0, "errors": 0, "tokens": 0, "ttft_sum": 0.0, "ttft_n": 0}
        )
        m["requests"] += r["requests"]
        m["errors"] += r["errors"]
        m["tokens"] += r["input_tokens"] + r["output_tokens"]
        if r.get("avg_ttft_ms") is not None:
            m["ttft_sum"] += r["avg_ttft_ms"] * r["requests"]
            m["ttft_n"] += r["requests"]

    def finish(m: dict[str, Any]) -> dict[str, Any]:
        return {
            "requests": m["requests"],
            "errors": m["errors"],
            "requests_per_s": m["requests"] / window_s,
            "tokens_per_s": m["tokens"] / window_s,
            "ttft_ms": m["ttft_sum"] / m["ttft_n"] if m["ttft_n"] else None,
        }

    total = {"requests": 0, "errors": 0, "tokens": 0, "ttft_sum": 0.0, "ttft_n": 0}
    for m in per_model.values():
        for k in total:
            total[k] += m[k]
    return {"models": {k: finish(v) for k, v in sorted(per_model.items())}, "total": finish(total)}


@page("overview", "/", "Overview", "overview.html", order=10)
async def overview(ctx: Ctx) -> dict[str, Any]:
    assert ctx.api is not None
    data = await ctx.api.get("/admin/v1/overview")
    try:
        rows = await ctx.api.get("/admin/v1/usage", by="model", since_days=TRAFFIC_WINDOW_S / 86400)
    except ApiError as exc:  # a member key without a team, say: the page still shows the models
        rows, usage_error = [], exc.message
    else:
        usage_error = None
    return {
        "overview": data,
        "traffic": traffic(rows),
        "usage_error": usage_error,
        "window_min": int(TRAFFIC_WINDOW_S // 60),
    }
