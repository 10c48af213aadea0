"""The MCP gateway end to end: an agent's MCP client against the gateway's ``/mcp`` (uvicorn on a
loopback port, the real app with the agents extension), the demo ERP of ``examples/erp`` (its MCP
server in process, and once as the script it is) and tool servers that hang or answer garbage.

What an agent sees is what its manifest allows; what a tool server sees is m2a's credential and the
agent's SPIFFE id, never the agent's token; every call leaves a ``tool_calls`` row, a ledger row and
an ``execute_tool`` span. Nothing asserts on wall-clock times; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import rfc8785
from mcp import types
from mcp.shared.exceptions import MCPError

from m2a.store.identity import IdentityStore
from m2a.store.tools import ToolStore
from tests import gateway_fixtures
from tests.agents.mcp_fixtures import (
    ERP_SECRET,
    ROOT,
    TIMEOUT,
    Gateway,
    ToolServer,
    erp_server,
    gateway,
    ledger_rows,
    make_agent,
    mcp_session,
    register,
    rude_server,
)
from tests.conftest import free_port
from tests.openai_shape import assert_openai_error

pytestmark = pytest.mark.asyncio(loop_scope="session")

store = gateway_fixtures.store  # a fresh, migrated SQLite identity store per test
ERP_TOOLS = [{"server": "erp", "tools": ["lookup_order", "invoice_status"]}]


def digest(arguments: dict) -> str:
    return hashlib.sha256(rfc8785.dumps(arguments)).hexdigest()


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest_asyncio.fixture(loop_scope="session")
async def erp(tmp_path: Path) -> AsyncIterator[ToolServer]:
    async with erp_server(tmp_path) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def gw(store: IdentityStore, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with gateway(store, tmp_path / "home") as g:
        yield g


async def test_list_shows_only_the_manifest_tools(gw: Gateway, store: IdentityStore, erp: ToolServer) -> None:
    await register(gw, "erp", erp.url, headers={"Authorization": f"Bearer {ERP_SECRET}"})
    agent = await make_agent(
        gw, store, "sales", "order-bot", [*ERP_TOOLS, {"server": "crm", "tools": ["find_lead"]}]
    )  # crm is not registered: its tool is not listed
    other = await make_agent(
        gw, store, "sales", "invoice-bot", [{"server": "erp", "tools": ["invoice_status", "no_such_tool"]}],
        new_team=False,
    )  # fmt: skip
    async with mcp_session(gw.url, agent.token) as session:
        listed = await session.list_tools()
    names = sorted(t.name for t in listed.tools)
    assert names == ["erp__invoice_status", "erp__lookup_order"]  # the ERP offers five
    lookup = next(t for t in listed.tools if t.name == "erp__lookup_order")
    assert "order" in (lookup.description or "") and "order_id" in lookup.input_schema["properties"]
    async with mcp_session(gw.url, other.token) as session:
        assert [t.name for t in (await session.list_tools()).tools] == ["erp__invoice_status"]
    assert not erp.calls()


async def test_allowed_call_reaches_the_server_as_m2a(
    gw: Gateway, store: IdentityStore, erp: ToolServer
) -> None:
    await register(gw, "erp", erp.url, headers={"Authorization": f"Bearer {ERP_SECRET}"})
    agent = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
    parent_trace = "0af7651916cd43dd8448eb211c80319c"
    traceparent = f"00-{parent_trace}-b7ad6b7169203331-01"
    async with mcp_session(gw.url, agent.token, {"traceparent": traceparent}) as session:
        result = await session.call_tool("erp__lookup_order", {"order_id": "SO-1001"})
    assert not result.is_error
    answer = json.loads(text_of(result))
    assert answer["item"] == "cordless drill" and answer["customer"] == "Acme Tools GmbH"

    (call,) = erp.calls()
    assert call["tool"] == "lookup_order"
    assert (
        call["headers"]["x-m2a-agent"] == agent.spiffe_id == "spiffe://m2a.local/team/sales/agent/order-bot"
    )
    assert call["headers"]["authorization"] == f"Bearer {ERP_SECRET}"  # m2a's own credential
    for request in erp.seen:  # the agent's token reached the server nowhere, in no request
        assert all(agent.token not in v for v in request["headers"].values())
    assert call["headers"]["traceparent"].split("-")[1] == parent_trace  # the tool joins the trace

    (row,) = await ToolStore(store.engine).list_calls()
    assert (row.agent, row.version, row.server, row.tool, row.status, row.via) == (
        agent.spiffe_id, 1, "erp", "lookup_order", "ok", "mcp",
    )  # fmt: skip
    assert row.args_sha256 == digest({"order_id": "SO-1001"})
    assert row.team_id == agent.principal.team_id and row.duration_ms > 0
    assert row.trace_id == parent_trace

    (usage,) = await ledger_rows(store)
    assert (usage.model, usage.agent, usage.team, usage.status, usage.http_status) == (
        "tool:erp/lookup_order", agent.spiffe_id, "sales", "ok", 200,
    )  # fmt: skip
    assert (usage.input_tokens, usage.output_tokens, usage.cost) == (0, 0, 0.0)
    assert usage.key_prefix == agent.principal.key_prefix

    (span,) = gw.spans()
    assert span.name == "execute_tool lookup_order"
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.operation.name"] == "execute_tool"
    assert attrs["gen_ai.tool.name"] == "lookup_order"
    assert attrs["gen_ai.tool.call.id"] == row.call_id
    assert attrs["gen_ai.agent.id"] == agent.spiffe_id
    assert attrs["gen_ai.agent.name"] == "order-bot" and attrs["gen_ai.agent.version"] == "1"
    assert format(span.context.trace_id, "032x") == parent_trace
    assert span.parent is not None and format(span.parent.span_id, "016x") == "b7ad6b7169203331"
    assert call["headers"]["traceparent"].split("-")[2] == format(span.context.span_id, "016x")


async def test_a_tool_outside_the_manifest_is_refused_and_never_sent(
    gw: Gateway, store: IdentityStore, erp: ToolServer
) -> None:
    await register(gw, "erp", erp.url, headers={"Authorization": f"Bearer {ERP_SECRET}"})
    agent = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
    async with mcp_session(gw.url, agent.token) as session:
        before = len(erp.seen)
        for name in (
            "erp__customer_orders",  # the ERP offers it; the manifest does not list it
            "erp__find_customer",
            "crm__find_lead",  # no such server
            "lookup_order",  # no server part
            "erp__",
            "__lookup_order",
        ):
            with pytest.raises(MCPError) as refused:
                await session.call_tool(name, {"customer_id": "C001"})
            assert refused.value.error.code == types.INVALID_PARAMS
            assert "not available to this agent" in refused.value.error.message
        with pytest.raises(MCPError) as bad_args:  # not canonicalizable: refused before anything
            await session.call_tool("erp__lookup_order", {"order_id": 2**60})
        assert bad_args.value.error.code == types.INVALID_PARAMS
        assert len(erp.seen) == before  # nothing reached the server: not even a handshake
    calls = await ToolStore(store.engine).list_calls()
    assert [c.status for c in calls] == ["denied"] * 3  # the well-formed names are recorded
    assert {c.tool for c in calls} == {"customer_orders", "find_customer", "find_lead"}
    rows = await ledger_rows(store, count=3)
    assert {(r.status, r.http_status) for r in rows} == {("error", 403)}
    assert all(s.attributes["m2a.tool.status"] == "denied" for s in gw.spans())


async def test_api_keys_are_refused_in_openai_shape(gw: Gateway, store: IdentityStore) -> None:
    agent = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
    list_tools = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    accept = {"accept": "application/json, text/event-stream"}
    for bearer, status, code in (
        (None, 401, "missing_api_key"),
        ("sk-wrong", 401, "invalid_api_key"),
        (agent.team_key, 403, "agent_token_required"),  # a key has no manifest: no tools
        ("sk-tools-admin-" + "t" * 24, 403, "agent_token_required"),  # not even the admin key
    ):
        headers = {**accept, **({"authorization": f"Bearer {bearer}"} if bearer else {})}
        resp = await gw.http.post("/mcp", json=list_tools, headers=headers)
        assert_openai_error(resp, status, code)
        if status == 401:
            assert resp.headers["www-authenticate"].startswith("Bearer")


async def test_a_hanging_server_is_bounded_by_its_timeout(gw: Gateway, store: IdentityStore) -> None:
    agent = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
    async with rude_server("hang") as hang:
        await register(gw, "erp", hang.url, timeout_s=1)
        async with mcp_session(gw.url, agent.token) as session:
            async with asyncio.timeout(TIMEOUT):  # bounded by the server's 1 s, far below this
                listed = await session.list_tools()
                result = await session.call_tool("erp__lookup_order", {"order_id": "SO-1001"})
        assert listed.tools == []  # a server that cannot say what it offers offers nothing
        assert result.is_error and "did not answer within 1s" in text_of(result)
    (row,) = await ToolStore(store.engine).list_calls()
    assert row.status == "timeout" and row.error is not None
    (usage,) = await ledger_rows(store)
    assert (usage.status, usage.http_status) == ("error", 504)


@pytest.mark.parametrize("mode", ["html", "status500", "badresult", "huge"])
async def test_a_garbage_answer_is_an_error_result(gw: Gateway, store: IdentityStore, mode: str) -> None:
    agent = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
    async with rude_server(mode) as rude:
        await register(gw, "erp", rude.url, timeout_s=10)
        async with mcp_session(gw.url, agent.token) as session, asyncio.timeout(TIMEOUT):
            result = await session.call_tool("erp__lookup_order", {"order_id": "SO-1001"})
            again = await session.call_tool("erp__lookup_order", {"order_id": "SO-1002"})
    for r in (result, again):  # an error result the agent can read, never a gateway error
        assert r.is_error and "MCP server 'erp'" in text_of(r)
    assert rude.seen  # it was asked
    rows = await ToolStore(store.engine).list_calls()
    assert [r.status for r in rows] == ["error", "error"]
    if mode == "huge":
        assert "bytes" in (rows[0].error or "")


async def test_a_revoked_version_has_no_tools(gw: Gateway, store: IdentityStore, erp: ToolServer) -> None:
    from m2a.agents.registry import Registry

    await register(gw, "erp", erp.url, headers={"Authorization": f"Bearer {ERP_SECRET}"})
    agent = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
    async with mcp_session(gw.url, agent.token) as session:
        assert len((await session.list_tools()).tools) == 2
    await Registry(store.engine).revoke_version("sales", "order-bot", 1, by_key=None)
    list_tools = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"authorization": f"Bearer {agent.token}", "accept": "application/json, text/event-stream"}
    async with asyncio.timeout(TIMEOUT):  # the token stops within the identity poll (half a second)
        while (resp := await gw.http.post("/mcp", json=list_tools, headers=headers)).status_code == 200:
            await asyncio.sleep(0.1)
    assert_openai_error(resp, 401)
    # and the tools' own check fails closed for a principal still naming that version
    await asyncio.sleep(2.1)  # past the manifest cache (MANIFEST_TTL_S)
    tools = gw.tools.gateway
    assert await tools.available(agent.principal) == []
    outcome = await tools.call(agent.principal, "erp", "lookup_order", {"order_id": "SO-1001"}, via="mcp")
    assert outcome.status == "denied" and outcome.result is None
    assert not erp.calls()


async def test_the_erp_example_runs_as_a_script(gw: Gateway, store: IdentityStore, tmp_path: Path) -> None:
    """``python examples/erp/erp_server.py --port N`` as the README says, behind the gateway."""
    port = free_port()
    log = tmp_path / "erp-requests.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "erp" / "erp_server.py"), "--port", str(port),
         "--db", str(tmp_path / "erp.db"), "--token", ERP_SECRET, "--log", str(log)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(trust_env=False) as http:
            while True:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                try:
                    await http.get(f"http://127.0.0.1:{port}/mcp", timeout=2)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the ERP example did not start"
                    await asyncio.sleep(0.2)
        url = f"http://127.0.0.1:{port}/mcp"
        await register(gw, "erp", url, headers={"Authorization": f"Bearer {ERP_SECRET}"})
        tools = await gw.admin("GET", "/tools/erp/tools")
        assert sorted(t["name"] for t in tools.json()) == [
            "cancel_order", "customer_orders", "find_customer", "invoice_status", "lookup_order",
        ]  # fmt: skip
        agent = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
        async with mcp_session(gw.url, agent.token) as session:
            result = await session.call_tool("erp__invoice_status", {"invoice_id": "INV-5002"})
        assert json.loads(text_of(result))["status"] == "open"
        seen = [json.loads(line) for line in log.read_text().splitlines()]
        called = [s for s in seen if s["method"] == "tools/call"]
        assert [c["tool"] for c in called] == ["invoice_status"]
        assert called[0]["headers"]["x-m2a-agent"] == agent.spiffe_id
        assert all(agent.token not in json.dumps(s) for s in seen)
    finally:
        proc.terminate()
        proc.wait(10)
