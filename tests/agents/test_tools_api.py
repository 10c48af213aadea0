"""The tools' admin API (``/admin/v1/tools``, ``/approvals``, ``/tool-calls``) and CLI (``m2a tools``,
``m2a approvals``) against a live gateway (uvicorn on loopback) on a fresh SQLite store: who may do
what, what is refused (in OpenAI's error shape), that m2a's credentials for a server are never shown
back, and that the CLI and the API see the same store. Nothing asserts on wall-clock times.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError
from typer.testing import CliRunner

from m2a.cli import app as cli_app
from m2a.store.identity import IdentityStore
from m2a.store.tools import ToolStore, ToolStoreError, now
from tests import gateway_fixtures
from tests.agents.mcp_fixtures import (
    ADMIN,
    ERP_SECRET,
    Gateway,
    ToolServer,
    erp_server,
    gateway,
    make_agent,
    mcp_session,
    register,
    rude_server,
)
from tests.conftest import free_port
from tests.db_fixtures import Database, database  # noqa: F401 (a fixture)
from tests.openai_shape import assert_openai_error

pytestmark = pytest.mark.asyncio(loop_scope="session")

store = gateway_fixtures.store
ERP_TOOLS = [{"server": "erp", "tools": ["lookup_order", "invoice_status"]}]


@pytest_asyncio.fixture(loop_scope="session")
async def erp(tmp_path: Path) -> AsyncIterator[ToolServer]:
    async with erp_server(tmp_path) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def gw(store: IdentityStore, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with gateway(store, tmp_path / "home") as g:
        yield g


async def test_register_list_show_remove(gw: Gateway, erp: ToolServer) -> None:
    made = await register(
        gw, "erp", erp.url, headers={"Authorization": f"Bearer {ERP_SECRET}", "X-Tenant": "acme"},
        timeout_s=5, description="The demo ERP.",
    )  # fmt: skip
    assert made["headers"] == {"Authorization": "***", "X-Tenant": "***"} and made["timeout_s"] == 5
    listed = await gw.admin("GET", "/tools")
    shown = await gw.admin("GET", "/tools/erp")
    offered = await gw.admin("GET", "/tools/erp/tools")
    for resp in (listed, shown, offered):
        assert resp.status_code == 200, resp.text
        assert ERP_SECRET not in resp.text and "acme" not in resp.text  # never shown back
    assert [s["name"] for s in listed.json()] == ["erp"] and shown.json()["url"] == erp.url
    assert sorted(t["name"] for t in offered.json()) == [
        "cancel_order", "customer_orders", "find_customer", "invoice_status", "lookup_order",
    ]  # fmt: skip
    assert erp.seen[-1]["headers"]["authorization"] == f"Bearer {ERP_SECRET}"  # used, though not shown
    assert_openai_error(
        await gw.admin("POST", "/tools", json={"name": "erp", "url": erp.url}), 409, "conflict"
    )
    resp = await gw.admin("DELETE", "/tools/erp")
    assert resp.status_code == 204
    assert_openai_error(await gw.admin("GET", "/tools/erp"), 404, "tool_server_not_found")
    assert_openai_error(await gw.admin("DELETE", "/tools/erp"), 404, "tool_server_not_found")
    assert (await gw.admin("GET", "/tools")).json() == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "Bad Name", "url": "http://127.0.0.1:1/mcp"}, "name"),
        ({"name": "a__b", "url": "http://127.0.0.1:1/mcp"}, "name"),  # __ separates server and tool
        ({"name": "x" * 64, "url": "http://127.0.0.1:1/mcp"}, "name"),
        ({"name": "erp", "url": "ftp://127.0.0.1/mcp"}, "url"),
        ({"name": "erp", "url": "http:///mcp"}, "url"),
        ({"name": "erp", "url": "http://user:secret@127.0.0.1/mcp"}, "url"),
        ({"name": "erp", "url": "http://127.0.0.1/mcp#frag"}, "url"),
        ({"name": "erp", "url": "http://127.0.0.1/mcp", "headers": {"x-m2a-agent": "forged"}}, "headers"),
        ({"name": "erp", "url": "http://127.0.0.1/mcp", "headers": {"Host": "evil"}}, "headers"),
        ({"name": "erp", "url": "http://127.0.0.1/mcp", "headers": {"traceparent": "x"}}, "headers"),
        ({"name": "erp", "url": "http://127.0.0.1/mcp", "headers": {"X-A": "a\r\nX-B: b"}}, "headers"),
        ({"name": "erp", "url": "http://127.0.0.1/mcp", "headers": {"bad name": "v"}}, "headers"),
        ({"name": "erp", "url": "http://127.0.0.1/mcp", "timeout_s": 0}, "timeout_s"),
        ({"name": "erp", "url": "http://127.0.0.1/mcp", "timeout_s": 10_000}, "timeout_s"),
        ({"name": "erp", "url": "http://127.0.0.1/mcp", "colour": "red"}, "colour"),
        ({"url": "http://127.0.0.1/mcp"}, "name"),
    ],
)
async def test_bad_registrations_are_400(gw: Gateway, body: dict[str, Any], param: str) -> None:
    err = assert_openai_error(await gw.admin("POST", "/tools", json=body), 400)
    assert err["param"] == param, err
    assert (await gw.admin("GET", "/tools")).json() == []


async def test_a_body_past_the_limit_is_413_chunked_too(gw: Gateway) -> None:
    big = {"name": "erp", "url": "http://127.0.0.1/mcp", "headers": {"X-Pad": "p" * (300 << 10)}}
    assert_openai_error(await gw.admin("POST", "/tools", json=big), 413, "body_too_large")

    async def chunked():  # no content-length: the limit must hold while reading
        for _ in range(3):
            yield b" " * (128 << 10)

    resp = await gw.http.post(
        "/admin/v1/tools", content=chunked(),
        headers={"authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
    )  # fmt: skip
    assert_openai_error(resp, 413, "body_too_large")
    assert (await gw.admin("GET", "/tools")).json() == []


async def test_who_may_use_the_api(gw: Gateway, store: IdentityStore, erp: ToolServer) -> None:
    await register(gw, "erp", erp.url)
    agent = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
    for method, path, body in (
        ("GET", "/tools", None),
        ("POST", "/tools", {"name": "crm", "url": "http://127.0.0.1:1/mcp"}),
        ("GET", "/tools/erp", None),
        ("GET", "/tools/erp/tools", None),
        ("DELETE", "/tools/erp", None),
    ):
        assert_openai_error(await gw.admin(method, path, key=None, json=body), 401)
        assert_openai_error(await gw.admin(method, path, key="sk-nope", json=body), 401)
        assert_openai_error(await gw.admin(method, path, key=agent.team_key, json=body), 403, "admin_only")
        assert_openai_error(
            await gw.admin(method, path, key=agent.token, json=body), 403, "agents_cannot_manage"
        )
    for path in ("/approvals", "/tool-calls"):  # any key but an agent's
        assert (await gw.admin("GET", path, key=agent.team_key)).status_code == 200
        assert_openai_error(await gw.admin("GET", path, key=agent.token), 403, "agents_cannot_manage")
        assert_openai_error(await gw.admin("GET", path, key=None), 401)
    assert [s["name"] for s in (await gw.admin("GET", "/tools")).json()] == ["erp"]  # nothing changed
    assert_openai_error(await gw.admin("GET", "/tools/erp/nothing"), 404)


async def test_listing_tools_of_a_dead_or_hanging_server(gw: Gateway) -> None:
    await register(gw, "dead", f"http://127.0.0.1:{free_port()}/mcp", timeout_s=2)
    assert_openai_error(await gw.admin("GET", "/tools/dead/tools"), 502, "tool_server_error")
    async with rude_server("hang") as hang:
        await register(gw, "slow", hang.url, timeout_s=1)
        assert_openai_error(await gw.admin("GET", "/tools/slow/tools"), 504, "tool_server_timeout")


async def test_tool_calls_are_listed_per_team(gw: Gateway, store: IdentityStore, erp: ToolServer) -> None:
    await register(gw, "erp", erp.url, headers={"Authorization": f"Bearer {ERP_SECRET}"})
    sales = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
    support = await make_agent(gw, store, "support", "helper", ERP_TOOLS)
    for agent, calls in ((sales, ["SO-1001", "SO-1002"]), (support, ["SO-1003"])):
        async with mcp_session(gw.url, agent.token) as session:
            for order in calls:
                await session.call_tool("erp__lookup_order", {"order_id": order})
            with pytest.raises(MCPError):  # outside the manifest: refused, recorded as denied
                await session.call_tool("erp__customer_orders", {"customer_id": "C001"})
    everyone = (await gw.admin("GET", "/tool-calls")).json()
    assert len(everyone) == 5 and [c["id"] for c in everyone] == sorted(
        (c["id"] for c in everyone), reverse=True
    )
    own = (await gw.admin("GET", "/tool-calls", key=sales.team_key)).json()
    assert {c["agent"] for c in own} == {sales.spiffe_id} and len(own) == 3
    assert {c["team_id"] for c in own} == {sales.principal.team_id}
    theirs = (await gw.admin("GET", f"/tool-calls?agent={support.spiffe_id}", key=sales.team_key)).json()
    assert theirs == []  # another team's agent: nothing, not an error
    denied = (await gw.admin("GET", "/tool-calls?status=denied")).json()
    assert sorted(c["agent"] for c in denied) == sorted([sales.spiffe_id, support.spiffe_id])
    assert all(c["tool"] == "customer_orders" and c["error"] for c in denied)
    page = (await gw.admin("GET", "/tool-calls?limit=2")).json()
    rest = (await gw.admin("GET", f"/tool-calls?limit=10&before={page[-1]['id']}")).json()
    assert [c["id"] for c in page + rest] == [c["id"] for c in everyone]
    assert_openai_error(await gw.admin("GET", "/tool-calls?status=sideways"), 400)
    assert_openai_error(await gw.admin("GET", "/tool-calls?limit=0"), 400)


async def test_approvals_api(gw: Gateway, store: IdentityStore) -> None:
    sales = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
    support = await make_agent(gw, store, "support", "helper", ERP_TOOLS)
    tools = ToolStore(store.engine)

    async def ask(agent: Any, n: int) -> str:
        a = agent.principal.agent
        made = await tools.create_approval(
            id=f"mcpr_test{n}", agent=a.spiffe_id, agent_id=a.agent_id, version=a.version,
            team_id=agent.principal.team_id, server="erp", tool="lookup_order", args_sha256="0" * 64,
            arguments=json.dumps({"order_id": f"SO-100{n}"}), response_id=None,
            expires_at=now().replace(year=now().year + 1),
        )  # fmt: skip
        return made.id

    mine, theirs = await ask(sales, 1), await ask(support, 2)
    listed = (await gw.admin("GET", "/approvals", key=sales.team_key)).json()
    assert [a["id"] for a in listed] == [mine] and listed[0]["arguments"] == {"order_id": "SO-1001"}
    assert sorted(a["id"] for a in (await gw.admin("GET", "/approvals")).json()) == [mine, theirs]
    assert_openai_error(
        await gw.admin("GET", f"/approvals/{theirs}", key=sales.team_key), 404, "approval_not_found"
    )
    assert_openai_error(await gw.admin("POST", f"/approvals/{theirs}/deny", key=sales.team_key), 404)
    assert_openai_error(await gw.admin("POST", "/approvals/mcpr_nothing/approve"), 404)
    assert_openai_error(await gw.admin("POST", f"/approvals/{mine}/approve", json={"colour": "red"}), 400)
    done = await gw.admin("POST", f"/approvals/{mine}/deny", key=sales.team_key, json={"reason": "no"})
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["status"], body["reason"], body["used"]) == ("denied", "no", False)
    assert body["decided_by"].startswith("key ") and "sales" in body["decided_by"]
    assert_openai_error(await gw.admin("POST", f"/approvals/{mine}/approve"), 409, "conflict")
    assert (await gw.admin("GET", "/approvals?status=pending")).json()[0]["id"] == theirs
    ok = await gw.admin("POST", f"/approvals/{theirs}/approve")
    assert ok.json()["status"] == "approved" and ok.json()["decided_by"].startswith("admin key")
    assert_openai_error(await gw.admin("GET", "/approvals?status=maybe"), 400)


async def test_cli(gw: Gateway, store: IdentityStore, erp: ToolServer, tmp_path: Path) -> None:
    """`m2a tools` and `m2a approvals` on the same store the gateway serves."""
    env = {"M2A_HOME": str(tmp_path / "home"), "COLUMNS": "200", "M2A_ADMIN_KEY": ADMIN}

    async def m2a(*args: str) -> Any:
        return await asyncio.to_thread(CliRunner().invoke, cli_app, list(args), env=env)

    added = await m2a("tools", "add", "erp", erp.url, "--header", f"Authorization=Bearer {ERP_SECRET}",
                      "--timeout", "5", "--description", "Demo ERP")  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "erp" in added.output and ERP_SECRET not in added.output
    assert [s["name"] for s in (await gw.admin("GET", "/tools")).json()] == ["erp"]  # the gateway sees it
    listed = await m2a("tools", "list", "--json")
    assert json.loads(listed.output)[0]["headers"] == {"Authorization": "***"}
    shown = await m2a("tools", "show", "erp")
    assert shown.exit_code == 0 and "lookup_order" in shown.output and ERP_SECRET not in shown.output
    bad = await m2a("tools", "add", "Bad Name", erp.url)
    assert bad.exit_code == 1 and "name" in bad.output
    bad = await m2a("tools", "add", "crm", erp.url, "--header", "no-equals-sign")
    assert bad.exit_code == 2
    dup = await m2a("tools", "add", "erp", erp.url)
    assert dup.exit_code == 1 and "already registered" in dup.output

    agent = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
    a = agent.principal.agent
    assert a is not None
    approval = await ToolStore(store.engine).create_approval(
        id="mcpr_cli1", agent=a.spiffe_id, agent_id=a.agent_id, version=a.version,
        team_id=agent.principal.team_id, server="erp", tool="lookup_order", args_sha256="0" * 64,
        arguments='{"order_id": "SO-1001"}', response_id=None, expires_at=now().replace(year=now().year + 1),
    )  # fmt: skip
    pending = await m2a("approvals", "list")
    assert pending.exit_code == 0 and approval.id in pending.output and "lookup_order" in pending.output
    approved = await m2a("approvals", "approve", approval.id, "--reason", "checked")
    assert approved.exit_code == 0, approved.output
    api = (await gw.admin("GET", f"/approvals/{approval.id}")).json()
    assert (
        api["status"] == "approved" and api["decided_by"].startswith("cli (") and api["reason"] == "checked"
    )
    again = await m2a("approvals", "deny", approval.id)
    assert again.exit_code == 1 and "approved, not pending" in again.output
    assert json.loads((await m2a("approvals", "list", "--all", "--json")).output)[0]["status"] == "approved"
    assert (await m2a("approvals", "approve", "mcpr_none")).exit_code == 1

    removed = await m2a("tools", "remove", "erp")
    assert removed.exit_code == 0 and (await gw.admin("GET", "/tools")).json() == []
    assert (await m2a("tools", "remove", "erp")).exit_code == 1


async def test_the_store_on_sqlite_and_postgres(database: Database) -> None:  # noqa: F811 (the fixture)
    """The tools' tables through ToolStore on both databases: conflicts, paging, one decision, one claim."""
    tools = ToolStore(await database.open())
    await tools.add_server("erp", "http://127.0.0.1:1/mcp", {"Authorization": "Bearer x"}, 5.0, "ERP")
    with pytest.raises(ToolStoreError) as dup:
        await tools.add_server("erp", "http://127.0.0.1:2/mcp", {}, 5.0)
    assert dup.value.kind == "conflict"
    got = await tools.get_server("erp")
    assert (
        got is not None and got.headers == {"Authorization": "Bearer x"} and got.created_at.tzinfo is not None
    )
    ids = [
        await tools.record_call(
            agent="spiffe://m2a.local/team/t/agent/a",
            agent_id=1,
            version=1,
            team_id=team,
            server="erp",
            tool="lookup_order",
            args_sha256="0" * 64,
            status=status,
            duration_ms=1.5,
            via="mcp",
        )  # fmt: skip
        for team, status in ((1, "ok"), (1, "denied"), (2, "timeout"), (1, "error"))
    ]
    assert [c.id for c in await tools.list_calls(team_id=1)] == [ids[3], ids[1], ids[0]]
    assert [c.id for c in await tools.list_calls(before=ids[2])] == [ids[1], ids[0]]
    assert [c.status for c in await tools.list_calls(status="timeout")] == ["timeout"]
    with pytest.raises(ValueError):
        await tools.record_call(agent="a", server="erp", tool="t", args_sha256="", status="weird",
                                duration_ms=0, via="mcp")  # fmt: skip

    def approval(n: int, expires: Any) -> dict[str, Any]:
        return dict(
            id=f"mcpr_{n}", agent="spiffe://m2a.local/team/t/agent/a", team_id=1, server="erp",
            tool="lookup_order", args_sha256="0" * 64, arguments="{}", response_id="resp_1",
            expires_at=expires,
        )  # fmt: skip

    later = now() + timedelta(hours=1)
    await tools.create_approval(**approval(1, later))
    results = await asyncio.gather(
        tools.decide("mcpr_1", True, "one"), tools.decide("mcpr_1", False, "two"), return_exceptions=True
    )
    assert sum(isinstance(r, ToolStoreError) for r in results) == 1  # one decision wins, the other is refused
    decided = await tools.get_approval("mcpr_1")
    assert decided is not None and decided.decided_by in ("one", "two")
    if decided.status == "approved":
        claims = await asyncio.gather(tools.claim("mcpr_1"), tools.claim("mcpr_1"))
        assert sorted(claims) == [False, True]  # it runs once
    else:
        assert await tools.claim("mcpr_1") is False  # a denied call is never claimed
    await tools.create_approval(**approval(2, now() - timedelta(seconds=1)))
    stale = await tools.get_approval("mcpr_2")
    assert stale is not None and stale.status == "expired"  # past its time, even before it is written
    with pytest.raises(ToolStoreError):
        await tools.decide("mcpr_2", True, "late")
    assert [a.id for a in await tools.list_approvals(status="expired")] == ["mcpr_2"]
    assert {a.id for a in await tools.list_approvals(response_id="resp_1")} == {"mcpr_1", "mcpr_2"}
    assert await tools.remove_server("erp") is True and await tools.remove_server("erp") is False
