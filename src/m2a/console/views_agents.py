"""The agents' pages: agents, tools and approvals, policies, the audit log, guardrail profiles,
red-team runs and vector stores. Read-mostly: the one action is deciding a tool call's approval.

Each page reads m2a's own APIs as the signed-in principal (``ApiClient``), so each shows what that
key may see — a team key its own team's, an admin key every team's:

- **Agents** (``/admin/v1/agents``; one agent: its versions with their stages and red-team gate,
  and its events);
- **Tools and approvals** (``/admin/v1/tools`` for admins: the MCP servers; ``/admin/v1/approvals``:
  pending calls with approve/deny buttons, posted with the CSRF token to
  ``/admin/v1/approvals/{id}/approve|deny``; ``/admin/v1/tool-calls``: recent calls);
- **Policies** (``/admin/v1/policies``: the Cedar texts per scope);
- **Audit log** (``/admin/v1/audit``: filters by kind, agent and trace, paged back by seq);
- **Guardrails** (admins: ``/admin/v1/guardrails/profiles`` and ``/attachments``);
- **Red-team runs** (the gate reports attached to agent versions: ``/admin/v1/agents/{team}/{name}/
  versions``; a run's full results stay in the tester's ``redteam.db``);
- **Vector stores** (``/v1/vector_stores``: they belong to a team; an admin key has none).

Agents' own tokens may not call the admin APIs, so these pages (but vector stores) are for keys.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

from starlette.responses import Response

from m2a.console.api import ApiError
from m2a.console.pages import NOTICES, Ctx, action, page
from m2a.principal import Principal

AUDIT_PAGE = 100
MAX_AGENTS_SCANNED = 100  # the red-team page reads each agent's versions: a bounded number of calls

NOTICES["approval-approved"] = "Approved: the call runs once, when the agent's response continues."
NOTICES["approval-denied"] = "Denied: the agent is told the call was refused."


def key_holder(p: Principal) -> bool:
    """A key (admin or team), not an agent's token: the admin APIs refuse agents."""
    return p.agent is None


def pretty(value: Any) -> str:
    """JSON for a <pre> block (escaped by the template like any text)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() and len(text) < 19 else None


# -- agents ------------------------------------------------------------------------------------------
@page("agents", "/agents", "Agents", "agents.html", who=key_holder, order=70)
async def agents(ctx: Ctx) -> dict[str, Any]:
    assert ctx.api is not None
    team = (ctx.query("team") or "").strip() or None
    found = await ctx.api.get("/admin/v1/agents", team=team if ctx.is_admin else None)
    return {"agents": found, "team": team}


@page("agent", "/agents/{team}/{agent}", "Agent", "agent.html", who=key_holder, nav=False)
async def agent(ctx: Ctx) -> dict[str, Any]:
    assert ctx.api is not None
    team, name = ctx.request.path_params["team"], ctx.request.path_params["agent"]
    base = f"/admin/v1/agents/{_seg(team)}/{_seg(name)}"
    info = await ctx.api.get(base)  # 404 for another team's agent: the error page says so
    versions, events = await asyncio.gather(ctx.api.get(base + "/versions"), ctx.api.get(base + "/events"))
    return {"agent": info, "versions": versions, "events": events, "pretty": pretty}


def _seg(text: str) -> str:
    """A path segment of an API URL, quoted."""
    return quote(text, safe="")


# -- tools and approvals -----------------------------------------------------------------------------
async def _tools_data(ctx: Ctx) -> dict[str, Any]:
    assert ctx.api is not None
    status = ctx.query("status") or None
    if status not in (None, "pending", "approved", "denied", "expired"):
        status = None

    async def servers() -> list[dict[str, Any]] | None:
        return await ctx.api.get("/admin/v1/tools") if ctx.is_admin else None  # type: ignore[union-attr]

    found_servers, pending, approvals, calls = await asyncio.gather(
        servers(),
        ctx.api.get("/admin/v1/approvals", status="pending", limit=100),
        ctx.api.get("/admin/v1/approvals", status=status, limit=50),
        ctx.api.get("/admin/v1/tool-calls", limit=50),
    )
    return {
        "servers": found_servers, "pending": pending, "approvals": approvals, "calls": calls,
        "status_filter": status, "pretty": pretty,
    }  # fmt: skip


@page("tools", "/tools", "Tools and approvals", "tools.html", who=key_holder, order=71)
async def tools(ctx: Ctx) -> dict[str, Any]:
    return await _tools_data(ctx)


async def _decide(ctx: Ctx, verdict: str) -> Response:
    assert ctx.api is not None
    approval_id = ctx.request.path_params["approval_id"]
    reason = ctx.field("reason")[:1000] or None
    try:
        await ctx.api.post(f"/admin/v1/approvals/{_seg(approval_id)}/{verdict}", json={"reason": reason})
    except ApiError as exc:  # 403 approver_not_allowed, 404 another team's, 409 decided already
        return ctx.render("tools.html", status=exc.status, error=exc.message, **await _tools_data(ctx))
    return ctx.redirect("tools", notice=f"approval-{verdict}d")


@action("approvals.approve", "/approvals/{approval_id}/approve", who=key_holder)
async def approve(ctx: Ctx) -> Response:
    return await _decide(ctx, "approve")


@action("approvals.deny", "/approvals/{approval_id}/deny", who=key_holder)
async def deny(ctx: Ctx) -> Response:
    return await _decide(ctx, "deny")


# -- policies ----------------------------------------------------------------------------------------
@page("policies", "/policies", "Policies", "policies.html", who=key_holder, order=72)
async def policies(ctx: Ctx) -> dict[str, Any]:
    assert ctx.api is not None
    scope = (ctx.query("scope") or "").strip() or None
    return {"policies": await ctx.api.get("/admin/v1/policies", scope=scope), "scope": scope}


# -- the audit log -----------------------------------------------------------------------------------
@page("audit", "/audit", "Audit log", "audit.html", who=key_holder, order=73)
async def audit(ctx: Ctx) -> dict[str, Any]:
    assert ctx.api is not None
    filters = {k: (ctx.query(k) or "").strip() or None for k in ("kind", "agent", "trace_id")}
    before = _int(ctx.query("before"))
    try:
        records = await ctx.api.get("/admin/v1/audit", limit=AUDIT_PAGE, before=before, **filters)
        error = None
    except ApiError as exc:
        if exc.status != 400:
            raise
        records, error = [], exc.message  # a filter the API refuses (a trace id that is not 32 hex)
    records = list(reversed(records))  # newest first on the page
    older = records[-1]["seq"] if len(records) == AUDIT_PAGE else None
    return {"records": records, "filters": filters, "older": older, "before": before,
            "error": error, "pretty": pretty}  # fmt: skip


# -- guardrail profiles ------------------------------------------------------------------------------
@page("guardrails", "/guardrails", "Guardrails", "guardrails.html", who="admin", order=74)
async def guardrails(ctx: Ctx) -> dict[str, Any]:
    assert ctx.api is not None
    profiles, attachments = await asyncio.gather(
        ctx.api.get("/admin/v1/guardrails/profiles"), ctx.api.get("/admin/v1/guardrails/attachments")
    )
    return {"profiles": profiles, "attachments": attachments, "pretty": pretty}


# -- red-team runs -----------------------------------------------------------------------------------
@page("redteam", "/redteam", "Red-team runs", "redteam.html", who=key_holder, order=75)
async def redteam(ctx: Ctx) -> dict[str, Any]:
    assert ctx.api is not None
    found = (await ctx.api.get("/admin/v1/agents"))[:MAX_AGENTS_SCANNED]
    lists = await asyncio.gather(
        *(ctx.api.get(f"/admin/v1/agents/{_seg(a['team'])}/{_seg(a['name'])}/versions") for a in found)
    )
    runs = [v for versions in lists for v in versions if v.get("redteam")]
    runs.sort(key=lambda v: str(v["redteam"].get("finished_at") or v["created_at"]), reverse=True)
    return {"runs": runs, "scanned": len(found), "capped": len(found) == MAX_AGENTS_SCANNED}


# -- vector stores -----------------------------------------------------------------------------------
@page("vector-stores", "/vector-stores", "Vector stores", "vector_stores.html", order=76)
async def vector_stores(ctx: Ctx) -> dict[str, Any]:
    assert ctx.api is not None
    try:
        found = await ctx.api.get("/v1/vector_stores", limit=100, order="desc")
    except ApiError as exc:
        if exc.code != "team_required":
            raise
        return {"stores": None, "team_required": True}
    return {"stores": found.get("data", []), "more": found.get("has_more", False), "team_required": False}
