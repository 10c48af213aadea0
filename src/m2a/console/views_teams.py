"""Teams and keys: teams, their model grants, quotas (with what is used of each now), priorities,
and API keys — all through the admin API as the signed-in principal.

An admin sees every team and key and may change them. A team member sees their own team (its
models, priority, quotas and what is used of them: ``/admin/v1/whoami`` and
``/admin/v1/quotas/usage``) and changes nothing: the admin API refuses a team key, and so the
console's actions are for admins only too. A new key is shown once, on the page that answers its
creation (never stored, never shown again: the API keeps only its hash).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.responses import Response

from m2a.console.api import ApiError
from m2a.console.pages import NOTICES, Ctx, action, page

PRIORITIES = ("critical", "standard", "batch")
METRICS = {
    "tokens": "tokens",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
    "requests": "requests",
    "cost": "cost (micro-dollars)",
    "concurrency": "concurrent requests",
    "storage_bytes": "vector storage (bytes)",
}
WINDOWS = ("minute", "hour", "day", "month")

NOTICES.update(
    {
        "team-created": "The team was created.",
        "team-updated": "The team's priority was changed.",
        "team-deleted": "The team was deleted; its keys no longer work.",
        "granted": "The model was granted.",
        "ungranted": "The grant was removed.",
        "quota-set": "The quota was set.",
        "quota-cleared": "The quota was removed.",
        "key-revoked": "The key was revoked: it stops working at once, and so do its console sessions.",
    }
)


def seg(name: str) -> str:
    """A name as one path segment of an API URL."""
    return quote(name, safe="")


def bar(used: int | None, limit: int) -> dict[str, Any]:
    """How full a quota is, for the template: share (0-1, None when unknown), CSS width step, state."""
    if used is None:
        return {"share": None, "step": 0, "state": ""}
    share = 1.0 if limit <= 0 else min(1.0, used / limit)
    state = "full" if share >= 1.0 else "warn" if share >= 0.8 else ""
    return {"share": share, "step": int(round(share * 20)) * 5, "state": state}


def with_bars(quotas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**q, "bar": bar(q.get("used"), q["limit"]), "metric_label": METRICS.get(q["metric"])} for q in quotas
    ]


def team_of(ctx: Ctx) -> str:
    return str(ctx.request.path_params["team"])


# -- pages -------------------------------------------------------------------------------------
@page("teams", "/teams", "Teams and keys", "teams.html", order=20)
async def teams(ctx: Ctx) -> dict[str, Any]:
    assert ctx.api is not None
    if not ctx.is_admin:
        return await _own_team(ctx)
    return {
        "teams": await ctx.api.get("/admin/v1/teams"),
        "priorities": PRIORITIES,
    }


async def _own_team(ctx: Ctx) -> dict[str, Any]:
    """A team member's view: their team, its quotas and what is used of them."""
    assert ctx.api is not None
    me = await ctx.api.get("/admin/v1/whoami")
    quotas: list[dict[str, Any]] = []
    error = None
    if me.get("team"):
        try:
            quotas = with_bars(await ctx.api.get("/admin/v1/quotas/usage"))
        except ApiError as exc:
            error = exc.message
    return {"me": me, "quotas": quotas, "quota_error": error}


async def _team_detail(ctx: Ctx, team: str, **extra: Any) -> dict[str, Any]:
    assert ctx.api is not None
    info = await ctx.api.get(f"/admin/v1/teams/{seg(team)}")
    served = [m["id"] for m in (await ctx.api.get("/v1/models"))["data"]]
    return {
        "team": info,
        "grantable": [m for m in served if m not in info["models"]],
        "quotas": with_bars(await ctx.api.get("/admin/v1/quotas/usage", team=team)),
        "keys": await ctx.api.get("/admin/v1/keys", team=team),
        "priorities": PRIORITIES,
        "metrics": METRICS,
        "windows": WINDOWS,
        "title": f"Team {team}",
        **extra,
    }


@page("team", "/teams/{team}", "Team", "team.html", who="admin", nav=False)
async def team_page(ctx: Ctx) -> dict[str, Any]:
    return await _team_detail(ctx, team_of(ctx))


@page("keys", "/keys", "Keys", "keys.html", who="admin", order=21)
async def keys(ctx: Ctx) -> dict[str, Any]:
    assert ctx.api is not None
    return await _keys_page(ctx)


async def _keys_page(ctx: Ctx, **extra: Any) -> dict[str, Any]:
    assert ctx.api is not None
    return {
        "keys": await ctx.api.get("/admin/v1/keys"),
        "teams": [t["name"] for t in await ctx.api.get("/admin/v1/teams")],
        "priorities": PRIORITIES,
        **extra,
    }


# -- actions (admins only: the admin API refuses team keys anyway) -----------------------------
async def _or_error(ctx: Ctx, call: Any, render: Any) -> Response | None:
    """Run an API call; on an API error, the page again with the error (and its status)."""
    try:
        await call
    except ApiError as exc:
        values = await render()
        return ctx.render(status=exc.status, error=exc.message, **values)
    return None


@action("teams.create", "/teams/create", who="admin", template="teams.html")
async def create_team(ctx: Ctx) -> Response:
    assert ctx.api is not None
    body: dict[str, Any] = {"name": ctx.field("name")}
    if ctx.field("priority") in PRIORITIES:
        body["priority"] = ctx.field("priority")
    failed = await _or_error(ctx, ctx.api.post("/admin/v1/teams", json=body), lambda: teams(ctx))
    return failed or ctx.redirect("team", team=body["name"], notice="team-created")


@action("team.update", "/teams/{team}/update", who="admin", template="team.html")
async def update_team(ctx: Ctx) -> Response:
    assert ctx.api is not None
    team = team_of(ctx)
    body: dict[str, Any] = {}
    if ctx.field("priority"):
        body["priority"] = ctx.field("priority")
    if ctx.field("priority_order"):
        try:
            body["priority_order"] = int(ctx.field("priority_order"))
        except ValueError:
            values = await _team_detail(ctx, team)
            return ctx.render(status=400, error="The priority order is a whole number.", **values)
    call = ctx.api.patch(f"/admin/v1/teams/{seg(team)}", json=body)
    failed = await _or_error(ctx, call, lambda: _team_detail(ctx, team))
    return failed or ctx.redirect("team", team=team, notice="team-updated")


@action("team.delete", "/teams/{team}/delete", who="admin", template="team.html")
async def delete_team(ctx: Ctx) -> Response:
    assert ctx.api is not None
    team = team_of(ctx)
    call = ctx.api.delete(f"/admin/v1/teams/{seg(team)}")
    failed = await _or_error(ctx, call, lambda: _team_detail(ctx, team))
    return failed or ctx.redirect("teams", notice="team-deleted")


@action("team.grant", "/teams/{team}/grant", who="admin", template="team.html")
async def grant(ctx: Ctx) -> Response:
    assert ctx.api is not None
    team, model = team_of(ctx), ctx.field("model")
    call = ctx.api.put(f"/admin/v1/teams/{seg(team)}/grants/{seg(model)}")
    failed = await _or_error(ctx, call, lambda: _team_detail(ctx, team))
    return failed or ctx.redirect("team", team=team, notice="granted")


@action("team.ungrant", "/teams/{team}/ungrant", who="admin", template="team.html")
async def ungrant(ctx: Ctx) -> Response:
    assert ctx.api is not None
    team, model = team_of(ctx), ctx.field("model")
    call = ctx.api.delete(f"/admin/v1/teams/{seg(team)}/grants/{seg(model)}")
    failed = await _or_error(ctx, call, lambda: _team_detail(ctx, team))
    return failed or ctx.redirect("team", team=team, notice="ungranted")


@action("team.quota", "/teams/{team}/quota", who="admin", template="team.html")
async def set_quota(ctx: Ctx) -> Response:
    assert ctx.api is not None
    team, metric = team_of(ctx), ctx.field("metric")
    window = "-" if metric in ("concurrency", "storage_bytes") else ctx.field("window")
    try:
        amount = int(ctx.field("limit").replace(",", "").replace("_", ""))
    except ValueError:
        values = await _team_detail(ctx, team)
        return ctx.render(status=400, error="The limit is a whole number.", **values)
    limit: dict[str, Any] = {"metric": metric, "window": window, "limit": amount}
    body: dict[str, Any] = {"limits": [limit]}
    if ctx.field("key_id"):
        body["key_id"] = int(ctx.field("key_id")) if ctx.field("key_id").isdigit() else ctx.field("key_id")
    call = ctx.api.put(f"/admin/v1/teams/{seg(team)}/quotas", json=body)
    failed = await _or_error(ctx, call, lambda: _team_detail(ctx, team))
    return failed or ctx.redirect("team", team=team, notice="quota-set")


@action("team.quota.clear", "/teams/{team}/quota/clear", who="admin", template="team.html")
async def clear_quota(ctx: Ctx) -> Response:
    assert ctx.api is not None
    team = team_of(ctx)
    params = {"metric": ctx.field("metric") or None, "key_id": ctx.field("key_id") or None}
    call = ctx.api.delete(
        f"/admin/v1/teams/{seg(team)}/quotas", params={k: v for k, v in params.items() if v is not None}
    )
    failed = await _or_error(ctx, call, lambda: _team_detail(ctx, team))
    return failed or ctx.redirect("team", team=team, notice="quota-cleared")


def _key_body(ctx: Ctx, team: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": ctx.field("name"), "role": "member" if team else "admin"}
    if team:
        body["team"] = team
    if ctx.field("priority") in PRIORITIES:
        body["priority"] = ctx.field("priority")
    days = ctx.field("expires_in_days")
    if days:
        try:
            body["expires_in_days"] = float(days)
        except ValueError:
            body["expires_in_days"] = days  # the API says what is wrong with it
    return body


@action("team.key", "/teams/{team}/keys/create", who="admin", template="team.html")
async def create_team_key(ctx: Ctx) -> Response:
    """A member key of the team; the answer is the team's page with the key on it, this once."""
    assert ctx.api is not None
    team = team_of(ctx)
    try:
        made = await ctx.api.post("/admin/v1/keys", json=_key_body(ctx, team))
    except ApiError as exc:
        return ctx.render(status=exc.status, error=exc.message, **await _team_detail(ctx, team))
    return ctx.render(status=201, new_key=made, **await _team_detail(ctx, team))


@action("keys.create", "/keys/create", who="admin", template="keys.html")
async def create_key(ctx: Ctx) -> Response:
    """A key (an admin key when no team is chosen); shown once on the page that answers."""
    assert ctx.api is not None
    team = ctx.field("team") or None
    try:
        made = await ctx.api.post("/admin/v1/keys", json=_key_body(ctx, team))
    except ApiError as exc:
        return ctx.render(status=exc.status, error=exc.message, **await _keys_page(ctx))
    return ctx.render(status=201, new_key=made, **await _keys_page(ctx))


@action("keys.revoke", "/keys/revoke", who="admin", template="keys.html")
async def revoke_key(ctx: Ctx) -> Response:
    assert ctx.api is not None
    key_id = ctx.field("key_id")
    back = ctx.field("back")
    try:
        await ctx.api.delete(f"/admin/v1/keys/{seg(key_id)}")
    except ApiError as exc:
        return ctx.render(status=exc.status, error=exc.message, **await _keys_page(ctx))
    if key_id.isdigit() and ctx.console.sessions is not None:  # its console sessions end now
        await ctx.console.sessions.end_for_key(int(key_id))
    if back:  # the team page the form was on
        return ctx.redirect("team", team=back, notice="key-revoked")
    return ctx.redirect("keys", notice="key-revoked")
