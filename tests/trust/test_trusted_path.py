"""The trusted path end to end: an agent's MCP client against the gateway's ``/mcp`` (uvicorn on a
loopback port, the real app with the agents extension and trusted execution on), the demo ERP's MCP
server, an HTTP action endpoint and a sandboxed command. Every call is decided by Cedar, signed as
an intent its executor admits once, and leaves a signed receipt in the hash-chained audit log;
destructive calls wait for a person allowed to approve them. Each refusal runs nothing.
"""

from __future__ import annotations

import json
import secrets
import string
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_asyncio
from mcp import types
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from m2a.config import ActionConfig, TrustConfig
from m2a.store.identity import IdentityStore
from m2a.trust.audit import AuditLog
from m2a.trust.receipts import verify_receipt
from m2a.trust.verify import IntentError, verify_intent
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
)
from tests.live_app import live

pytestmark = pytest.mark.asyncio(loop_scope="session")

store = gateway_fixtures.store  # a fresh, migrated SQLite identity store per test
COUNT = "import json,sys; print(len(json.load(sys.stdin)['text']))"
ERP_TOOLS = [{"server": "erp", "tools": ["lookup_order", "invoice_status"]}]


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


@pytest_asyncio.fixture(loop_scope="session")
async def erp(tmp_path: Path) -> AsyncIterator[ToolServer]:
    async with erp_server(tmp_path) as server:
        yield server


class Endpoint:
    """An HTTP action's endpoint: what it was sent, on a real loopback port."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

        async def handle(request: Request) -> JSONResponse:
            raw = await request.body()
            self.seen.append({"headers": dict(request.headers), "body": json.loads(raw) if raw else None})
            return JSONResponse({"refunded": True})

        self.app = Starlette(routes=[Route("/refund", handle, methods=["GET", "POST"])])


@pytest_asyncio.fixture(loop_scope="session")
async def endpoint() -> AsyncIterator[tuple[Endpoint, str]]:
    ep = Endpoint()
    async with live(ep.app, 30.0) as url:
        yield ep, url


def trust_cfg(home: Path, url: str = "http://127.0.0.1:9", **kw: Any) -> TrustConfig:
    actions = [
        ActionConfig(
            name="refund",
            kind="http",
            url=f"{url}/refund",
            tier="write",
            input_schema={"type": "object", "properties": {"order_id": {"type": "string"}}},
        ),
        ActionConfig(
            name="count_chars",
            kind="command",
            tier="read",
            argv=[sys.executable, "-I", "-c", COUNT],
        ),
    ]
    return TrustConfig(policy_dir=home / "policies", actions=actions, **kw)


async def audit_kinds(gw: Gateway) -> list[str]:
    log: AuditLog = gw.tools.trust.audit
    return [r["kind"] for r in await log.show(limit=1000)]


async def test_a_call_is_decided_signed_executed_and_receipted(
    store: IdentityStore, tmp_path: Path, erp: ToolServer
) -> None:
    async with gateway(store, tmp_path / "home", trust=trust_cfg(tmp_path)) as gw:
        await register(gw, "erp", erp.url, headers={"Authorization": f"Bearer {ERP_SECRET}"})
        agent = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
        async with mcp_session(gw.url, agent.token) as session:
            result = await session.call_tool("erp__lookup_order", {"order_id": "SO-1001"})
        assert not result.is_error, text_of(result)
        assert json.loads(text_of(result))["item"] == "cordless drill"
        assert len(erp.calls()) == 1

        trust = gw.tools.trust
        records = await trust.audit.show(limit=100)
        kinds = [r["kind"] for r in records]
        assert kinds[-3:] == ["decision", "intent", "receipt"] or kinds[:3] == [
            "decision",
            "intent",
            "receipt",
        ]
        receipt_rec = next(r for r in records if r["kind"] == "receipt")
        body = (
            receipt_rec["body"] if isinstance(receipt_rec["body"], dict) else json.loads(receipt_rec["body"])
        )
        inner = body.get("body", body)
        claims = verify_receipt(inner["receipt"], await trust.keys.jwks())
        assert claims["status"] == "ok"
        report = await trust.audit.verify(await trust.keys.jwks())
        assert report.ok, report.problems

        (span,) = gw.spans("execute_tool")
        assert span.attributes["m2a.receipt.hash"] == inner["receipt_sha256"]
        children = {
            s.name
            for s in gw.exporter.get_finished_spans()
            if s.parent is not None and s.parent.span_id == span.context.span_id
        }
        assert {"m2a.policy lookup_order", "m2a.intent lookup_order", "m2a.execute lookup_order"} <= children


async def test_a_forbid_policy_refuses_and_nothing_runs(
    store: IdentityStore, tmp_path: Path, erp: ToolServer
) -> None:
    async with gateway(store, tmp_path / "home", trust=trust_cfg(tmp_path)) as gw:
        await register(gw, "erp", erp.url, headers={"Authorization": f"Bearer {ERP_SECRET}"})
        agent = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
        text = (
            'forbid(principal, action == M2A::Action::"call", resource) '
            'when { resource.name == "lookup_order" };'
        )
        put = await gw.admin(
            "PUT", "/policies/team:sales/no-lookups", key=agent.team_key, json={"text": text}
        )
        assert put.status_code in (200, 201), put.text
        await gw.tools.trust.policy.reload()
        async with mcp_session(gw.url, agent.token) as session:
            result = await session.call_tool("erp__lookup_order", {"order_id": "SO-1001"})
            allowed = await session.call_tool("erp__invoice_status", {"invoice_id": "INV-2001"})
        assert result.is_error and "refused by policy" in text_of(result)
        assert not allowed.is_error
        assert [c["tool"] for c in erp.calls()] == ["invoice_status"]  # the refused call reached nobody
        kinds = await audit_kinds(gw)
        assert kinds.count("decision") == 2 and kinds.count("receipt") == 1


async def test_log_only_lets_it_run_and_records_the_deny(
    store: IdentityStore, tmp_path: Path, erp: ToolServer
) -> None:
    async with gateway(store, tmp_path / "home", trust=trust_cfg(tmp_path, mode="log_only")) as gw:
        await register(gw, "erp", erp.url, headers={"Authorization": f"Bearer {ERP_SECRET}"})
        agent = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
        text = 'forbid(principal, action == M2A::Action::"call", resource);'
        put = await gw.admin("PUT", "/policies/global/deny-all", json={"text": text})
        assert put.status_code in (200, 201), put.text
        await gw.tools.trust.policy.reload()
        async with mcp_session(gw.url, agent.token) as session:
            result = await session.call_tool("erp__lookup_order", {"order_id": "SO-1001"})
        assert not result.is_error
        (decision,) = [r for r in await gw.tools.trust.audit.show(limit=100) if r["kind"] == "decision"]
        body = decision["body"] if isinstance(decision["body"], dict) else json.loads(decision["body"])
        d = body.get("body", body)["decision"]
        assert d["allowed"] is True and d["cedar_allowed"] is False and d["mode"] == "log_only"


async def test_destructive_waits_for_a_person_allowed_to_approve(
    store: IdentityStore, tmp_path: Path, erp: ToolServer
) -> None:
    async with gateway(store, tmp_path / "home", trust=trust_cfg(tmp_path)) as gw:
        await register(
            gw,
            "erp",
            erp.url,
            headers={"Authorization": f"Bearer {ERP_SECRET}"},
            tiers={"lookup_order": "destructive"},
        )
        agent = await make_agent(gw, store, "sales", "order-bot", ERP_TOOLS)
        args = {"order_id": "SO-1001"}
        async with mcp_session(gw.url, agent.token) as session:
            first = await session.call_tool("erp__lookup_order", args)
            assert first.is_error and "waits for a person's approval" in text_of(first)
            again = await session.call_tool("erp__lookup_order", args)  # still pending: the same approval
        assert not erp.calls()
        pending = (await gw.admin("GET", "/approvals?status=pending")).json()
        assert len(pending) == 1 and pending[0]["tier"] == "destructive"
        aid = pending[0]["id"]
        assert aid in text_of(first) and aid in text_of(again)

        team_try = await gw.admin("POST", f"/approvals/{aid}/approve", key=agent.team_key)
        assert team_try.status_code == 403 and team_try.json()["error"]["code"] == "approver_not_allowed"
        agent_try = await gw.admin("POST", f"/approvals/{aid}/approve", key=agent.token)
        assert agent_try.status_code == 403
        assert (await gw.admin("GET", f"/approvals/{aid}")).json()["status"] == "pending"
        assert not erp.calls()

        ok = await gw.admin("POST", f"/approvals/{aid}/approve", json={"reason": "checked"})
        assert ok.status_code == 200, ok.text
        async with mcp_session(gw.url, agent.token) as session:
            other_args = await session.call_tool("erp__lookup_order", {"order_id": "SO-1002"})
            assert other_args.is_error and "approval" in text_of(other_args)  # the approval is for SO-1001
            ran = await session.call_tool("erp__lookup_order", args)
            assert not ran.is_error, text_of(ran)
            once_more = await session.call_tool("erp__lookup_order", args)
            assert once_more.is_error  # an approval runs its call once
        assert [c["tool"] for c in erp.calls()] == ["lookup_order"]  # the approved call, once
        kinds = await audit_kinds(gw)
        assert "approval_requested" in kinds and "approval_used" in kinds and "approval_check" in kinds


async def test_http_action_gets_a_verifiable_intent_that_cannot_be_replayed(
    store: IdentityStore, tmp_path: Path, endpoint: tuple[Endpoint, str]
) -> None:
    ep, url = endpoint
    async with gateway(store, tmp_path / "home", trust=trust_cfg(tmp_path, url)) as gw:
        agent = await make_agent(gw, store, "sales", "refunder", [{"server": "actions", "tools": ["refund"]}])
        async with mcp_session(gw.url, agent.token) as session:
            names = [t.name for t in (await session.list_tools()).tools]
            assert names == ["actions__refund"]
            result = await session.call_tool("actions__refund", {"order_id": "SO-1001"})
        assert not result.is_error, text_of(result)
        (seen,) = ep.seen
        assert seen["body"] == {"order_id": "SO-1001"}
        token = seen["headers"]["x-m2a-intent"]
        trust = gw.tools.trust
        jwks = await trust.keys.jwks()
        intent = verify_intent(
            token, jwks, audience="m2a:executor:http", issuer=trust.issuer, arguments={"order_id": "SO-1001"}
        )
        assert intent.sub == agent.spiffe_id and intent.tool.name == "refund" and intent.tier == "write"
        executor = trust.executors["http"]
        with pytest.raises(IntentError) as replayed:  # the endpoint's copy, played back to m2a's executor
            await executor.run(token, {"order_id": "SO-1001"})
        assert replayed.value.code == "replayed"
        with pytest.raises(IntentError) as swapped:
            await executor.run(token, {"order_id": "SO-9999"})
        assert swapped.value.code == "args_mismatch"
        mcp_executor = trust.executors["mcp"]
        with pytest.raises(IntentError) as elsewhere:
            await mcp_executor.run(token, {"order_id": "SO-1001"})
        assert elsewhere.value.code == "wrong_audience"
        assert len(ep.seen) == 1  # none of the refused intents ran


async def test_forged_intent_runs_nothing(
    store: IdentityStore, tmp_path: Path, endpoint: tuple[Endpoint, str]
) -> None:
    ep, url = endpoint
    async with gateway(store, tmp_path / "home", trust=trust_cfg(tmp_path, url)) as gw:
        trust = gw.tools.trust
        signer = await trust.keys.signer()
        from cryptography.hazmat.primitives.asymmetric import ec

        forged_key = ec.generate_private_key(ec.SECP256R1())
        now = int(__import__("time").time())
        claims = {
            "iss": trust.issuer,
            "aud": "m2a:executor:http",
            "sub": "spiffe://m2a.local/team/x/agent/y",
            "jti": "0" * 32,
            "iat": now,
            "exp": now + 30,
            "agent": {"id": 1, "name": "y", "team": "x", "version": 1, "version_id": 1},
            "act": None,
            "tool": {"server": "actions", "name": "refund"},
            "args_sha256": __import__("hashlib").sha256(b"{}").hexdigest(),
            "tier": "write",
            "policy": {"id": "-", "version": "-", "mode": "enforce"},
            "guardrails": [],
            "approval": None,
            "trace_id": None,
        }
        token = jwt.encode(
            claims, forged_key, algorithm="ES256", headers={"kid": signer.kid, "typ": "m2a-intent+jwt"}
        )
        with pytest.raises(IntentError) as forged:
            await trust.executors["http"].run(token, {})
        assert forged.value.code == "bad_signature"
        assert not ep.seen


async def test_sandboxed_command_action(store: IdentityStore, tmp_path: Path) -> None:
    from m2a.trust.sandbox import SandboxUnavailable, detect

    try:
        detect("auto")
    except SandboxUnavailable as exc:
        pytest.skip(f"no sandbox here: {exc}")
    async with gateway(store, tmp_path / "home", trust=trust_cfg(tmp_path)) as gw:
        agent = await make_agent(
            gw, store, "ops", "counter", [{"server": "actions", "tools": ["count_chars"]}]
        )
        async with mcp_session(gw.url, agent.token) as session:
            result = await session.call_tool("actions__count_chars", {"text": "hello"})
        assert not result.is_error, text_of(result)
        out = json.loads(text_of(result))
        assert out["exit_code"] == 0 and out["stdout"].strip() == "5"


async def test_admin_key_is_not_needed_for_reads_but_policies_are_team_scoped(
    store: IdentityStore, tmp_path: Path
) -> None:
    async with gateway(store, tmp_path / "home", trust=trust_cfg(tmp_path)) as gw:
        a = await make_agent(gw, store, "sales", "bot-a", ERP_TOOLS)
        b = await make_agent(gw, store, "finance", "bot-b", ERP_TOOLS)
        text = 'forbid(principal, action == M2A::Action::"call", resource);'
        other = await gw.admin("PUT", "/policies/team:finance/x", key=a.team_key, json={"text": text})
        assert other.status_code == 404
        glob = await gw.admin("PUT", "/policies/global/x", key=a.team_key, json={"text": text})
        assert glob.status_code == 403
        assert b.token
        assert ADMIN


FETCH = (
    "import json,sys,urllib.request\n"
    "url=json.load(sys.stdin)['url']\n"
    "try:\n"
    "    print(urllib.request.urlopen(url, timeout=10).read().decode())\n"
    "except Exception as e:\n"
    "    print('refused', getattr(e, 'code', type(e).__name__)); sys.exit(3)\n"
)


async def test_a_sandboxed_command_reaches_only_its_allow_list_through_the_proxy(
    store: IdentityStore, tmp_path: Path, endpoint: tuple[Endpoint, str]
) -> None:
    from m2a.trust.sandbox import SandboxUnavailable, detect

    try:
        detect("auto")
    except SandboxUnavailable as exc:
        pytest.skip(f"no sandbox here: {exc}")
    ep, url = endpoint
    allowed = url.removeprefix("http://")  # 127.0.0.1:<port>
    blocked = Endpoint()
    async with live(blocked.app, 30.0) as other_url:
        action = ActionConfig(
            name="fetch",
            kind="command",
            tier="read",
            argv=[sys.executable, "-I", "-c", FETCH],
            egress=[allowed],
        )
        cfg = TrustConfig(policy_dir=tmp_path / "policies", actions=[action])
        async with gateway(store, tmp_path / "home", trust=cfg) as gw:
            agent = await make_agent(
                gw,
                store,
                "ops",
                "fetcher",
                [{"server": "actions", "tools": ["fetch"]}],
                extra={"egress": [allowed]},
            )
            async with mcp_session(gw.url, agent.token) as session:
                ok = await session.call_tool("actions__fetch", {"url": f"{url}/refund"})
                no = await session.call_tool("actions__fetch", {"url": f"{other_url}/refund"})
            records = await gw.tools.trust.audit.show(kind="egress", limit=100)
    assert not ok.is_error, text_of(ok)
    assert json.loads(text_of(ok))["exit_code"] == 0
    assert no.is_error and "refused 403" in json.loads(text_of(no))["stdout"]
    assert not blocked.seen  # the refused destination saw nothing
    egress = [
        r["body"].get("body", r["body"]) if isinstance(r["body"], dict) else json.loads(r["body"])
        for r in records
    ]
    assert {(e["port"], e["allowed"]) for e in egress} == {
        (int(allowed.rpartition(":")[2]), True),
        (int(other_url.rpartition(":")[2]), False),
    }
    assert all(r["agent"] == agent.spiffe_id for r in records)


async def test_the_tool_rail_refuses_a_secret_in_the_arguments_and_signs_its_findings(
    store: IdentityStore, tmp_path: Path, endpoint: tuple[Endpoint, str]
) -> None:
    ep, url = endpoint
    async with gateway(store, tmp_path / "home", trust=trust_cfg(tmp_path, url)) as gw:
        strict = await make_agent(
            gw,
            store,
            "sales",
            "careful",
            [{"server": "actions", "tools": ["refund"]}],
            extra={"guardrails": "strict"},
        )
        relaxed = await make_agent(
            gw,
            store,
            "sales",
            "relaxed",
            [{"server": "actions", "tools": ["refund"]}],
            new_team=False,
            extra={"guardrails": "default"},
        )
        leaked = {
            "order_id": "SO-1001",
            "note": "use the token ghp_" + "".join(secrets.choice(string.ascii_letters) for _ in range(36)),
        }
        async with mcp_session(gw.url, strict.token) as session:
            refused = await session.call_tool("actions__refund", leaked)
        assert refused.is_error and "refused by guardrails" in text_of(refused)
        assert not ep.seen  # nothing ran
        async with mcp_session(gw.url, relaxed.token) as session:  # the default profile masks, not refuses
            ran = await session.call_tool("actions__refund", leaked)
        assert not ran.is_error, text_of(ran)
        (seen,) = ep.seen
        intent = jwt.decode(seen["headers"]["x-m2a-intent"], options={"verify_signature": False})
        assert {"detector": "secrets", "action": "redact"} in intent["guardrails"]
