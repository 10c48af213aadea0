"""The Responses API's ``mcp`` tool, run server-side through m2a's MCP gateway: the official ``openai``
client (as an agent, with its token) against a live gateway whose model is a scripted chat engine
that calls the tools it is offered (tests/agents/mcp_fixtures.py), and the demo ERP's MCP server.

Covered: ``mcp_list_tools`` and ``mcp_call`` items, the functions the model is offered (the manifest
narrowed by ``allowed_tools``), refusals in OpenAI's error shape, ``require_approval`` giving an
``mcp_approval_request`` that ends the response, approval by an ``mcp_approval_response`` item and by
the admin API after a restart of the gateway (the store keeps it), expiry, denial, and tool servers
that fail. Nothing asserts on wall-clock times; every wait is bounded.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from sqlalchemy import update

from m2a.config import AgentsConfig
from m2a.store.identity import IdentityStore
from m2a.store.schema import ToolApprovalRow
from m2a.store.tools import ToolStore, now
from tests import gateway_fixtures
from tests.agents.mcp_fixtures import (
    ERP_SECRET,
    MODEL,
    TIMEOUT,
    Agent,
    Gateway,
    ScriptedEngine,
    ToolServer,
    erp_server,
    gateway,
    ledger_rows,
    make_agent,
    register,
    rude_server,
)
from tests.db_fixtures import Database, database  # noqa: F401 (a fixture)
from tests.openai_shape import assert_openai_error

pytestmark = pytest.mark.asyncio(loop_scope="session")

store = gateway_fixtures.store
ERP_TOOLS = [{"server": "erp", "tools": ["lookup_order", "invoice_status"]}]
ASK = 'Where is my order? erp__lookup_order {"order_id": "SO-1001"}'


def mcp(**kw: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "erp", **kw}


def client(gw: Gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT)


async def post(gw: Gateway, key: str, body: dict[str, Any]) -> httpx.Response:
    return await gw.http.post("/v1/responses", json=body, headers={"authorization": f"Bearer {key}"})


@pytest_asyncio.fixture(loop_scope="session")
async def engine() -> AsyncIterator[ScriptedEngine]:
    e = ScriptedEngine()
    await e.start()
    yield e
    await e.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def erp(tmp_path: Path) -> AsyncIterator[ToolServer]:
    async with erp_server(tmp_path) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def gw(store: IdentityStore, tmp_path: Path, engine: ScriptedEngine) -> AsyncIterator[Gateway]:
    async with gateway(store, tmp_path / "home", engine.url) as g:
        yield g


async def agent_with_erp(gw: Gateway, store: IdentityStore, erp: ToolServer) -> Agent:
    await register(gw, "erp", erp.url, headers={"Authorization": f"Bearer {ERP_SECRET}"})
    agent = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
    return agent


async def test_list_and_call_items(
    gw: Gateway, store: IdentityStore, erp: ToolServer, engine: ScriptedEngine
) -> None:
    agent = await agent_with_erp(gw, store, erp)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"  # the agent's own trace: the model calls and the tool join it
    r = await client(gw, agent.token).responses.create(
        model=MODEL, input=ASK, tools=[mcp(require_approval="never")],
        extra_headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
    )  # fmt: skip
    assert [o.type for o in r.output] == ["mcp_list_tools", "mcp_call", "message"]
    listed, call, message = r.output
    assert listed.server_label == "erp"
    assert sorted(t.name for t in listed.tools) == ["invoice_status", "lookup_order"]  # the manifest's
    offered = sorted(t["function"]["name"] for t in engine.requests[0]["tools"])
    assert offered == ["erp__invoice_status", "erp__lookup_order"]
    assert (call.server_label, call.name, call.error, call.status) == (
        "erp",
        "lookup_order",
        None,
        "completed",
    )
    assert json.loads(call.arguments) == {"order_id": "SO-1001"}
    assert json.loads(call.output)["item"] == "cordless drill"
    assert r.output_text.startswith("Tool said: ") and "cordless drill" in r.output_text
    assert engine.requests[-1]["messages"][-1]["role"] == "tool"  # the model read the result

    (seen,) = erp.calls()
    assert seen["tool"] == "lookup_order" and seen["headers"]["x-m2a-agent"] == agent.spiffe_id
    assert all(agent.token not in v for s in erp.seen for v in s["headers"].values())
    (row,) = await ToolStore(store.engine).list_calls()
    assert (row.via, row.response_id, row.status, row.call_id) == ("responses", r.id, "ok", call.id)
    (usage,) = await ledger_rows(store)
    assert usage.model == "tool:erp/lookup_order" and usage.agent == agent.spiffe_id
    (span,) = gw.spans()
    assert span.attributes["gen_ai.tool.call.id"] == call.id
    chat_spans = [s for s in gw.exporter.get_finished_spans() if s.name.startswith("chat ")]
    assert len(chat_spans) == 2  # the model was called twice: for the call, and after it
    assert {format(s.context.trace_id, "032x") for s in [*chat_spans, span]} == {trace}
    assert row.trace_id == trace and seen["headers"]["traceparent"].split("-")[1] == trace
    # one span over the agent's request, the caller's span its parent; model rounds and tool under it
    (invoke,) = [s for s in gw.exporter.get_finished_spans() if s.name.startswith("invoke_agent ")]
    assert agent.principal.agent is not None
    assert invoke.name == f"invoke_agent {agent.principal.agent.name}"
    assert invoke.parent.span_id == 0x00F067AA0BA902B7
    assert invoke.attributes["gen_ai.agent.id"] == agent.spiffe_id
    assert invoke.attributes["gen_ai.agent.name"] == agent.principal.agent.name
    assert invoke.attributes["gen_ai.response.id"] == r.id == invoke.attributes["gen_ai.conversation.id"]
    assert {s.parent.span_id for s in [*chat_spans, span]} == {invoke.context.span_id}
    assert {s.attributes["gen_ai.agent.id"] for s in chat_spans} == {agent.spiffe_id}  # who, on each
    assert invoke.attributes["m2a.response.status"] == "completed"

    # a continuation does not list the tools again; the model still has them
    r2 = await client(gw, agent.token).responses.create(
        model=MODEL,
        previous_response_id=r.id,
        input='And the invoice? erp__invoice_status {"invoice_id": "INV-5001"}',
        tools=[mcp(require_approval="never")],
    )
    assert [o.type for o in r2.output] == ["mcp_call", "message"]
    assert json.loads(r2.output[0].output)["status"] == "paid"
    invokes = [s for s in gw.exporter.get_finished_spans() if s.name.startswith("invoke_agent ")]
    assert invokes[-1].attributes["gen_ai.response.id"] == r2.id
    assert invokes[-1].attributes["gen_ai.conversation.id"] == r.id  # the chain's first response


async def test_allowed_tools_narrow_and_refusals(
    gw: Gateway, store: IdentityStore, erp: ToolServer, engine: ScriptedEngine
) -> None:
    agent = await agent_with_erp(gw, store, erp)
    await make_agent(
        gw, store, "sales", "crm-bot", [{"server": "crm", "tools": ["find_lead"]}], new_team=False
    )
    r = await client(gw, agent.token).responses.create(
        model=MODEL,
        input="Is INV-5002 paid?",
        tools=[mcp(allowed_tools=["invoice_status"], require_approval="never")],
    )
    assert [t["function"]["name"] for t in engine.requests[-1]["tools"]] == ["erp__invoice_status"]
    assert r.output[1].name == "invoice_status"

    agent2 = await make_agent(
        gw,
        store,
        "sales",
        "two-servers",
        [*ERP_TOOLS, {"server": "crm", "tools": ["find_lead"]}],
        new_team=False,
    )
    before = len(erp.seen)
    for who, tool, status, code, param in (
        (agent, mcp(allowed_tools=["customer_orders"]), 403, "tool_not_allowed", "tools.0.allowed_tools"),
        (agent, mcp(allowed_tools={"tool_names": ["find_customer"]}), 403, "tool_not_allowed", None),
        (agent, mcp(server_label="crm"), 403, "tool_not_allowed", "tools.0.server_label"),  # not in manifest
        (
            agent2,
            mcp(server_label="crm"),
            404,
            "tool_server_not_found",
            "tools.0.server_label",
        ),  # unregistered
        (
            agent,
            mcp(headers={"Authorization": "Bearer mine"}),
            400,
            "unsupported_parameter",
            "tools.0.headers",
        ),
        (agent, mcp(server_url="http://evil.example/mcp"), 400, "invalid_request", "tools.0.server_url"),
        (agent, mcp(require_approval="sometimes"), 400, "invalid_request", "tools.0.require_approval"),
        (agent, {"type": "mcp"}, 400, "missing_required", "tools.0.server_label"),
    ):
        resp = await post(gw, who.token, {"model": MODEL, "input": ASK, "tools": [tool]})
        err = assert_openai_error(resp, status, code)
        if param is not None:
            assert err["param"] == param
    # an API key has no manifest: no MCP tools, whatever it asks
    resp = await post(gw, agent.team_key, {"model": MODEL, "input": ASK, "tools": [mcp()]})
    assert_openai_error(resp, 403, "agent_token_required")
    assert len(erp.seen) == before  # nothing of those reached the tool server
    # the registered URL may be named
    resp = await post(
        gw, agent.token, {"model": MODEL, "input": "no tool", "tools": [mcp(server_url=erp.url)]}
    )
    assert resp.status_code == 200, resp.text


async def test_approval_by_an_approval_response_item(
    gw: Gateway, store: IdentityStore, erp: ToolServer, engine: ScriptedEngine
) -> None:
    agent = await agent_with_erp(gw, store, erp)
    c = client(gw, agent.token)
    r1 = await c.responses.create(model=MODEL, input=ASK, tools=[mcp()])  # require_approval: always
    assert r1.status == "completed"
    assert [o.type for o in r1.output] == ["mcp_list_tools", "mcp_approval_request"]
    ask = r1.output[1]
    assert (ask.server_label, ask.name) == ("erp", "lookup_order") and ask.id.startswith("mcpr_")
    assert json.loads(ask.arguments) == {"order_id": "SO-1001"}
    assert not erp.calls() and len(engine.requests) == 1  # not run, and the model not called again
    pending = await ToolStore(store.engine).get_approval(ask.id)
    assert pending is not None and pending.status == "pending" and pending.response_id == r1.id
    assert pending.expires_at - pending.created_at == timedelta(hours=1)  # the default timeout

    answer = [{"type": "mcp_approval_response", "approval_request_id": ask.id, "approve": True}]
    r2 = await c.responses.create(model=MODEL, previous_response_id=r1.id, input=answer, tools=[mcp()])
    assert [o.type for o in r2.output] == ["mcp_call", "message"]
    call = r2.output[0]
    assert call.approval_request_id == ask.id and json.loads(call.output)["order_id"] == "SO-1001"
    assert "cordless drill" in r2.output_text
    assert len(erp.calls()) == 1
    done = await ToolStore(store.engine).get_approval(ask.id)
    assert done is not None and done.status == "approved" and done.used_at is not None
    assert done.decided_by is not None and agent.spiffe_id in done.decided_by

    # the same answer again: an approved call runs once
    resp = await post(gw, agent.token, {"model": MODEL, "previous_response_id": r1.id, "input": answer,
                                        "tools": [mcp()]})  # fmt: skip
    assert_openai_error(resp, 400, "approval_used")
    # another agent cannot answer it
    other = await make_agent(gw, store, "sales", "other-bot", ERP_TOOLS, new_team=False)
    resp = await post(gw, other.token, {"model": MODEL, "input": answer, "tools": [mcp()]})
    assert_openai_error(resp, 400, "approval_not_found")
    assert len(erp.calls()) == 1

    # streamed, the approval request is an output item event, and the response ends with it
    stream = await c.responses.create(model=MODEL, input=ASK, tools=[mcp()], stream=True)
    events = [e async for e in stream]
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert added == ["mcp_list_tools", "mcp_approval_request"]
    assert events[-1].type == "response.completed"
    assert len(erp.calls()) == 1


async def test_approval_by_the_admin_api_after_a_restart(
    database: Database,  # noqa: F811 (the fixture: SQLite and PostgreSQL)
    tmp_path: Path,
    erp: ToolServer,
    engine: ScriptedEngine,
) -> None:
    store = IdentityStore(await database.open())
    async with gateway(store, tmp_path / "home", engine.url) as gw1:
        agent = await agent_with_erp(gw1, store, erp)
        r1 = await client(gw1, agent.token).responses.create(model=MODEL, input=ASK, tools=[mcp()])
        ask = r1.output[-1]
        assert ask.type == "mcp_approval_request"
    async with gateway(store, tmp_path / "home", engine.url) as gw2:  # a new process, the same store
        other_team = await make_agent(gw2, store, "support", "helper", ERP_TOOLS)
        listed = await gw2.admin("GET", "/approvals?status=pending", key=agent.team_key)
        assert [a["id"] for a in listed.json()] == [ask.id]
        assert (await gw2.admin("GET", "/approvals", key=other_team.team_key)).json() == []
        assert_openai_error(
            await gw2.admin("POST", f"/approvals/{ask.id}/approve", key=other_team.team_key), 404
        )
        assert_openai_error(await gw2.admin("POST", f"/approvals/{ask.id}/approve", key=agent.token), 403)
        resp = await gw2.admin(
            "POST", f"/approvals/{ask.id}/approve", key=agent.team_key, json={"reason": "ok"}
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "approved" and resp.json()["used"] is False
        assert_openai_error(await gw2.admin("POST", f"/approvals/{ask.id}/deny"), 409)  # decided once
        assert not erp.calls()

        r2 = await client(gw2, agent.token).responses.create(
            model=MODEL, previous_response_id=r1.id, input="Go on.", tools=[mcp()]
        )
        assert [o.type for o in r2.output] == ["mcp_call", "message"]
        assert r2.output[0].approval_request_id == ask.id and "cordless drill" in r2.output_text
        assert len(erp.calls()) == 1
        assert (await gw2.admin("GET", f"/approvals/{ask.id}")).json()["used"] is True
        r3 = await client(gw2, agent.token).responses.create(  # continuing that one again: runs no more
            model=MODEL, previous_response_id=r1.id, input="Go on.", tools=[mcp()]
        )
        assert "mcp_call" not in [o.type for o in r3.output]
        assert len(erp.calls()) == 1


async def test_an_expired_approval_never_runs(
    store: IdentityStore, tmp_path: Path, erp: ToolServer, engine: ScriptedEngine
) -> None:
    async with gateway(store, tmp_path / "home", engine.url, AgentsConfig(approval_timeout_s=90)) as gw:
        await _expired_approval_never_runs(gw, store, erp)


async def _expired_approval_never_runs(gw: Gateway, store: IdentityStore, erp: ToolServer) -> None:
    agent = await agent_with_erp(gw, store, erp)
    c = client(gw, agent.token)
    r1 = await c.responses.create(model=MODEL, input=ASK, tools=[mcp()])
    ask = r1.output[-1]
    row = await ToolStore(store.engine).get_approval(ask.id)
    assert row is not None and row.expires_at - row.created_at == timedelta(seconds=90)
    async with store.engine.begin() as conn:  # ninety seconds later
        await conn.execute(
            update(ToolApprovalRow)
            .where(ToolApprovalRow.id == ask.id)
            .values(expires_at=now() - timedelta(seconds=1))
        )
    answer = [{"type": "mcp_approval_response", "approval_request_id": ask.id, "approve": True}]
    resp = await post(gw, agent.token, {"model": MODEL, "previous_response_id": r1.id, "input": answer,
                                        "tools": [mcp()]})  # fmt: skip
    assert_openai_error(resp, 400, "approval_expired")
    assert_openai_error(await gw.admin("POST", f"/approvals/{ask.id}/approve"), 409)
    assert (await gw.admin("GET", f"/approvals/{ask.id}")).json()["status"] == "expired"
    assert [a["id"] for a in (await gw.admin("GET", "/approvals?status=expired")).json()] == [ask.id]
    assert not erp.calls()


async def test_denied_calls_do_not_run(
    gw: Gateway, store: IdentityStore, erp: ToolServer, engine: ScriptedEngine
) -> None:
    agent = await agent_with_erp(gw, store, erp)
    c = client(gw, agent.token)
    # the caller declines
    r1 = await c.responses.create(model=MODEL, input=ASK, tools=[mcp()])
    no = [{"type": "mcp_approval_response", "approval_request_id": r1.output[-1].id, "approve": False,
           "reason": "not now"}]  # fmt: skip
    r2 = await c.responses.create(model=MODEL, previous_response_id=r1.id, input=no, tools=[mcp()])
    assert [o.type for o in r2.output] == ["message"]
    assert "did not run: it was denied" in r2.output_text and "not now" in r2.output_text
    # a person denies through the admin API: the caller's approval cannot undo it
    r3 = await c.responses.create(model=MODEL, input=ASK, tools=[mcp()])
    ask = r3.output[-1]
    resp = await gw.admin("POST", f"/approvals/{ask.id}/deny", json={"reason": "no ERP today"})
    assert resp.status_code == 200 and resp.json()["status"] == "denied"
    yes = [{"type": "mcp_approval_response", "approval_request_id": ask.id, "approve": True}]
    r4 = await c.responses.create(model=MODEL, previous_response_id=r3.id, input=yes, tools=[mcp()])
    assert "mcp_call" not in [o.type for o in r4.output] and "no ERP today" in r4.output_text
    assert not erp.calls()
    statuses = {a.id: a.status for a in await ToolStore(store.engine).list_approvals()}
    assert statuses == {r1.output[-1].id: "denied", ask.id: "denied"}


@pytest.mark.parametrize("mode", ["hang", "badresult"])
async def test_a_failing_tool_server_is_an_error_item(
    gw: Gateway, store: IdentityStore, engine: ScriptedEngine, mode: str
) -> None:
    agent = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
    async with rude_server(mode) as rude:
        await register(gw, "erp", rude.url, timeout_s=1)
        r = await client(gw, agent.token).responses.create(
            model=MODEL, input=ASK, tools=[mcp(require_approval="never")]
        )
    assert r.status == "completed"
    if mode == "hang":  # it cannot even list its tools: an error item, and the model answers without
        assert [o.type for o in r.output] == ["mcp_list_tools", "message"]
        assert r.output[0].error is not None and "did not answer" in r.output[0].error
        assert r.output_text.startswith("Echo:")
    else:
        assert [o.type for o in r.output] == ["mcp_list_tools", "mcp_call", "message"]
        call = r.output[1]
        assert call.status == "failed" and call.output is None
        assert call.error is not None and call.error.type == "http_error" and call.error.code == 502
        assert "The tool call failed" in r.output_text
        (row,) = await ToolStore(store.engine).list_calls()
        assert row.status == "error" and row.response_id == r.id
