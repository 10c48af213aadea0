"""The agents' console pages (``views_agents.py``) on a live gateway: agents, tools and approvals,
policies, the audit log, guardrail profiles, red-team runs and vector stores, each as an admin and
as team keys (a team sees its own, never another team's: not listed, and a crafted URL is 404),
agents' tokens kept out, approve/deny through the page (CSRF-checked), and everything escaped.

Agents, policies and vector stores are made through m2a's own HTTP APIs; a pending tool-call
approval is written with the tool store (making one for real takes an MCP round trip the MCP
gateway's tests cover), then decided through the console, which calls the approvals API."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from m2a.agents.manifest import parse_manifest
from m2a.principal import Principal
from m2a.store.tools import ToolStore
from tests.agents.helpers import manifest_data, report
from tests.console.conftest import Console, console_gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

XSS = "<script>window.__x=1</script>"


@dataclass
class World:
    gw: Console
    sales: str  # a member key of team sales
    support: str  # a member key of team support
    sales_id: int
    support_id: int
    tools: ToolStore


async def _agent(gw: Console, team: str, name: str, promote: bool = True) -> None:
    data = manifest_data(1, guardrails=None, system_prompt=f"You are {name}.")
    made = await gw.api("POST", "/admin/v1/agents", json={
        "name": name, "team": team, "sponsors": [f"owner@{team}.example"], "manifest": data,
    })  # fmt: skip
    assert made.status_code == 201, made.text
    if promote:
        body = {"to": "tested", "redteam": report(parse_manifest(data))}
        promoted = await gw.api("POST", f"/admin/v1/agents/{team}/{name}/versions/1/promote", json=body)
        assert promoted.status_code == 200, promoted.text


async def _approval(w: World, team_id: int, agent: str, tool: str = "delete_customer") -> str:
    args = json.dumps({"customer": XSS})
    record = await w.tools.create_approval(
        id="mcpr_" + uuid.uuid4().hex, agent=agent, agent_id=1, version=1, team_id=team_id, server="erp",
        tool=tool, args_sha256=hashlib.sha256(args.encode()).hexdigest(), arguments=args,
        expires_at=datetime.now(UTC) + timedelta(hours=1), tier="write",
    )  # fmt: skip
    return record.id


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with console_gateway(tmp_path_factory.mktemp("agent-pages") / "home") as gw:
        sales = await gw.team("sales")
        support = await gw.team("support")
        ids = {}
        for key in (sales, support):
            p = await gw.store.lookup(key)
            assert isinstance(p, Principal) and p.team is not None and p.team_id is not None
            ids[p.team] = p.team_id
        await _agent(gw, "sales", "order-bot")
        await _agent(gw, "support", "help-bot")
        yield World(gw, sales, support, ids["sales"], ids["support"], ToolStore(gw.store.engine))


async def test_agents_pages_show_each_team_its_own(world: World) -> None:
    admin = world.gw.browser()
    await admin.signin(world.gw.admin_key)
    page = await admin.get("/console/agents")
    assert page.status_code == 200
    assert "order-bot" in page.text and "help-bot" in page.text
    assert "spiffe://" in page.text and "tested: v1" in page.text
    only = await admin.get("/console/agents", params={"team": "support"})
    assert "help-bot" in only.text and "order-bot" not in only.text
    one = await admin.get("/console/agents/sales/order-bot")
    assert one.status_code == 200 and "You are order-bot." in one.text and "passed" in one.text

    sales = world.gw.browser()
    await sales.signin(world.sales)
    mine = await sales.get("/console/agents")
    assert "order-bot" in mine.text and "help-bot" not in mine.text
    assert (await sales.get("/console/agents", params={"team": "support"})).text.count("help-bot") == 0
    crafted = await sales.get("/console/agents/support/help-bot")
    assert crafted.status_code == 404 and "You are help-bot." not in crafted.text


async def test_redteam_page_lists_the_gate_runs_of_visible_agents(world: World) -> None:
    admin = world.gw.browser()
    await admin.signin(world.gw.admin_key)
    page = await admin.get("/console/redteam")
    assert page.status_code == 200
    assert "sales/order-bot" in page.text and "support/help-bot" in page.text
    assert "prompt_injection" in page.text and "10.0%" in page.text and "25.0%" in page.text
    sales = world.gw.browser()
    await sales.signin(world.sales)
    mine = await sales.get("/console/redteam")
    assert "sales/order-bot" in mine.text and "help-bot" not in mine.text


async def test_approvals_decided_through_the_page(world: World) -> None:
    sales_agent = "spiffe://m2a.local/team/sales/agent/order-bot"
    support_agent = "spiffe://m2a.local/team/support/agent/help-bot"
    mine = await _approval(world, world.sales_id, sales_agent, "refund_order")
    theirs = await _approval(world, world.support_id, support_agent, "close_ticket")

    sales = world.gw.browser()
    await sales.signin(world.sales)
    page = await sales.get("/console/tools")
    assert page.status_code == 200
    assert mine in page.text and "refund_order" in page.text
    assert theirs not in page.text and "close_ticket" not in page.text
    assert XSS not in page.text and "&lt;script&gt;" in page.text  # the arguments, escaped
    assert "MCP servers" not in page.text  # servers (and their credentials) are admins' only

    # without the CSRF token nothing is decided
    refused = await sales.post(f"/console/approvals/{mine}/approve", {"reason": "ok"}, csrf=False)
    assert refused.status_code == 403
    assert (await world.tools.get_approval(mine)).status == "pending"  # type: ignore[union-attr]
    # another team's approval: the API answers 404, as for one that does not exist
    other = await sales.post(f"/console/approvals/{theirs}/approve", {"reason": "mine now"})
    assert other.status_code == 404
    assert (await world.tools.get_approval(theirs)).status == "pending"  # type: ignore[union-attr]

    done = await sales.post(f"/console/approvals/{mine}/approve", {"reason": "looks right"})
    assert done.status_code == 303 and "notice=approval-approved" in done.headers["location"]
    decided = await world.tools.get_approval(mine)
    assert decided is not None and decided.status == "approved" and decided.reason == "looks right"
    assert decided.decided_by is not None and "team sales" in decided.decided_by
    again = await sales.post(f"/console/approvals/{mine}/deny", {})
    assert again.status_code == 409 and "Tools and approvals" in again.text  # decided once, shown inline

    admin = world.gw.browser()
    await admin.signin(world.gw.admin_key)
    listed = await admin.get("/console/tools")
    assert theirs in listed.text and "MCP servers" in listed.text
    denied = await admin.post(f"/console/approvals/{theirs}/deny", {"reason": XSS})
    assert denied.status_code == 303
    shown = await admin.get("/console/tools", params={"status": "denied"})
    assert "close_ticket" in shown.text and XSS not in shown.text


async def test_audit_page_filters_and_keeps_teams_apart(world: World) -> None:
    # decisions through the approvals API write audit records (approval_check, approval_decided)
    agent = "spiffe://m2a.local/team/support/agent/help-bot"
    approval = await _approval(world, world.support_id, agent, "audit_me")
    support = world.gw.browser()
    await support.signin(world.support)
    assert (await support.post(f"/console/approvals/{approval}/deny", {"reason": "no"})).status_code == 303

    page = await support.get("/console/audit")
    assert page.status_code == 200 and "approval_decided" in page.text and approval in page.text
    kinds = await support.get("/console/audit", params={"kind": "approval_check"})
    assert "approval_check" in kinds.text and "approval_decided" not in kinds.text
    bad = await support.get("/console/audit", params={"trace_id": "not-a-trace"})
    assert bad.status_code == 200 and 'role="alert"' in bad.text

    sales = world.gw.browser()
    await sales.signin(world.sales)
    theirs = await sales.get("/console/audit")
    assert approval not in theirs.text
    admin = world.gw.browser()
    await admin.signin(world.gw.admin_key)
    assert approval in (await admin.get("/console/audit")).text


async def test_policies_page(world: World) -> None:
    text = '@id("no-delete")\nforbid(principal, action == M2A::Action::"call", resource) ' \
        'when { resource.name == "delete_customer" };\n'  # fmt: skip
    for key, scope in ((world.sales, "team:sales"), (world.support, "team:support")):
        made = await world.gw.api("PUT", f"/admin/v1/policies/{scope}/limits", key, json={"text": text})
        assert made.status_code == 201, made.text
    sales = world.gw.browser()
    await sales.signin(world.sales)
    page = await sales.get("/console/policies")
    assert page.status_code == 200 and "team:sales / limits" in page.text
    assert "team:support" not in page.text and "delete_customer" in page.text
    assert "&#34;delete_customer&#34;" in page.text or "&quot;delete_customer&quot;" in page.text
    admin = world.gw.browser()
    await admin.signin(world.gw.admin_key)
    every = await admin.get("/console/policies")
    assert "team:sales / limits" in every.text and "team:support / limits" in every.text
    one = await admin.get("/console/policies", params={"scope": "team:support"})
    assert "team:support / limits" in one.text and "team:sales" not in one.text


async def test_guardrails_page_is_for_admins(world: World) -> None:
    admin = world.gw.browser()
    await admin.signin(world.gw.admin_key)
    page = await admin.get("/console/guardrails")
    assert page.status_code == 200 and "Guardrail profiles" in page.text and "builtin" in page.text
    sales = world.gw.browser()
    await sales.signin(world.sales)
    assert (await sales.get("/console/guardrails")).status_code == 403
    assert "/console/guardrails" not in (await sales.get("/console/")).text  # not in its navigation


async def test_vector_stores_page(world: World) -> None:
    made = await world.gw.api("POST", "/v1/vector_stores", world.sales, json={"name": XSS})
    assert made.status_code == 200, made.text
    store_id = made.json()["id"]
    sales = world.gw.browser()
    await sales.signin(world.sales)
    page = await sales.get("/console/vector-stores")
    assert page.status_code == 200 and store_id in page.text
    assert XSS not in page.text and "&lt;script&gt;window.__x=1&lt;/script&gt;" in page.text
    support = world.gw.browser()
    await support.signin(world.support)
    assert store_id not in (await support.get("/console/vector-stores")).text
    admin = world.gw.browser()
    await admin.signin(world.gw.admin_key)
    shown = await admin.get("/console/vector-stores")
    assert shown.status_code == 200 and "belong to a team" in shown.text


async def test_pages_refuse_what_their_apis_refuse(world: World) -> None:
    """No session: every page sends to sign-in; each page carries the strict headers."""
    anonymous = world.gw.browser()
    for path in ("/console/agents", "/console/tools", "/console/policies", "/console/audit",
                 "/console/guardrails", "/console/redteam", "/console/vector-stores"):  # fmt: skip
        resp = await anonymous.get(path)
        assert resp.status_code == 303 and resp.headers["location"].startswith("/console/signin")
    admin = world.gw.browser()
    await admin.signin(world.gw.admin_key)
    page = await admin.get("/console/audit")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    for html in admin.seen + anonymous.seen:
        assert world.gw.admin_key not in html
