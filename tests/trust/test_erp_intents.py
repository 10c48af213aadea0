"""The demo ERP (``examples/erp``) as a third-party executor of m2a's signed intents: it checks each
``tools/call``'s ``x-m2a-intent`` itself, offline, against the gateway's real JWKS URL
(``m2a.trust.verify``), once (``SQLiteReplayCache`` beside its database), and runs nothing else.

The gateway (the real app, agents extension, trusted execution, the example's Cedar policies) and
the ERP run on loopback ports with a SQLite store; the agent is granted agent.yaml's tools. Requests
sent straight to the ERP (no intent, a forged one, a replayed one, one for other arguments, another
tool, another agent, an unapproved cancellation) are answered 403 and change nothing in the ERP's
database; ``cancel_order`` waits for an admin's approval, runs once, and the audit log verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from mcp import types

from m2a.config import TrustConfig
from m2a.store.identity import IdentityStore
from m2a.trust.intents import IntentIssuer
from m2a.trust.replay import SQLiteReplayCache
from m2a.trust.verify import JwksSource, args_digest, verify_intent
from tests import gateway_fixtures
from tests.agents.mcp_fixtures import (
    ERP_SECRET,
    ROOT,
    TIMEOUT,
    Agent,
    Gateway,
    ToolServer,
    gateway,
    load_erp,
    make_agent,
    mcp_session,
    register,
)
from tests.conftest import free_port
from tests.live_app import live

pytestmark = pytest.mark.asyncio(loop_scope="session")

store = gateway_fixtures.store  # a fresh, migrated SQLite identity store per test
EXAMPLE = ROOT / "examples" / "erp"
TOOLS = yaml.safe_load((EXAMPLE / "agent.yaml").read_text())["tools"]  # the example agent's grants
AUDIENCE = "m2a:executor:mcp"
CANCEL = {"order_id": "SO-1003", "reason": "the customer ordered twice"}  # SO-1003 is processing
POLICY = {"id": "test", "version": "1", "mode": "enforce"}


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def statuses(db: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute("SELECT id, status FROM orders"))


def cancellations(db: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            return list(conn.execute("SELECT order_id, reason FROM cancellations"))
        except sqlite3.OperationalError:  # no cancellation yet: the table is made by the first
            return []


@dataclass
class Demo:
    gw: Gateway
    erp: ToolServer
    db: Path
    agent: Agent

    def calls(self, tool: str) -> list[dict[str, Any]]:
        return [c for c in self.erp.calls() if c["tool"] == tool]

    async def mint(self, tool: str, arguments: dict[str, Any], tier: str = "read") -> str:
        """A genuine intent signed with m2a's own keys, as the trusted path would sign it (but
        without asking the policy): what a request straight to the ERP could at best carry."""
        trust = self.gw.tools.trust
        assert self.agent.principal.agent is not None
        signed = await IntentIssuer(trust.keys, trust.issuer).issue(
            audience=AUDIENCE, agent=self.agent.principal.agent, server="erp", tool=tool,
            arguments=arguments, tier=tier, policy=POLICY,  # type: ignore[arg-type]
        )  # fmt: skip
        return signed.token


@contextlib.asynccontextmanager
async def demo(store: IdentityStore, tmp: Path) -> AsyncIterator[Demo]:
    """The gateway with the example's policies, the ERP checking intents against the gateway's
    JWKS URL, registered with cancel_order destructive, and the agent."""
    erp = load_erp()
    db = tmp / "erp.db"
    async with gateway(store, tmp / "home", trust=TrustConfig(policy_dir=EXAMPLE / "policies")) as gw:
        replay = SQLiteReplayCache(erp.replay_path(db))
        check = erp.IntentCheck(gw.url + "/.well-known/jwks.json", gw.tools.trust.issuer, replay=replay)
        seen: list[dict[str, Any]] = []
        try:
            async with live(erp.build_app(db, seen=seen, token=ERP_SECRET, verify_intents=check)) as url:
                server = ToolServer(url + "/mcp", seen)
                await register(
                    gw, "erp", server.url, headers={"Authorization": f"Bearer {ERP_SECRET}"},
                    tiers={"cancel_order": "destructive"},
                )  # fmt: skip
                agent = await make_agent(gw, store, "sales-ops", "erp-assistant", TOOLS)
                yield Demo(gw, server, db, agent)
        finally:
            replay.close()


async def post_call(
    http: httpx.AsyncClient,
    url: str,
    tool: str,
    arguments: dict[str, Any],
    intent: str | None = None,
    **headers: str,
) -> httpx.Response:
    """A ``tools/call`` sent straight to the ERP (with m2a's bearer: only the intent is missing)."""
    sent = {
        "authorization": f"Bearer {ERP_SECRET}",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2025-06-18",
        **({"x-m2a-intent": intent} if intent else {}),
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    return await http.post(url, json=body, headers=sent)


def refused(resp: httpx.Response, code: str) -> None:
    assert resp.status_code == 403, resp.text
    body = resp.json()
    assert body["error"]["data"] == {"intent": code}, body
    assert body["id"] == 7 and code in body["error"]["message"]


def result_of(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    result = resp.json()["result"]
    assert not result.get("isError"), result
    return result["structuredContent"]


def forged(kid: str, issuer: str, tool: str, arguments: dict[str, Any]) -> str:
    """An intent with every claim right, signed by a key that is not m2a's (under m2a's kid)."""
    now = int(time.time())
    claims = {
        "iss": issuer, "aud": AUDIENCE, "sub": "spiffe://m2a.local/team/sales-ops/agent/erp-assistant",
        "jti": "f" * 32, "iat": now, "exp": now + 30,
        "agent": {"id": 1, "name": "erp-assistant", "team": "sales-ops", "version": 1, "version_id": 1},
        "act": None, "tool": {"server": "erp", "name": tool},
        "args_sha256": args_digest(arguments),
        "tier": "destructive", "policy": POLICY, "guardrails": [], "approval": "mcpr_forged",
        "trace_id": None,
    }  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid, "typ": "m2a-intent+jwt"})


async def test_the_erp_runs_a_call_only_on_a_valid_intent_used_once(
    store: IdentityStore, tmp_path: Path
) -> None:
    async with demo(store, tmp_path) as d:
        async with mcp_session(d.gw.url, d.agent.token) as session:
            names = {t.name for t in (await session.list_tools()).tools}
            assert "erp__cancel_order" in names  # agent.yaml grants it
            result = await session.call_tool("erp__lookup_order", {"order_id": "SO-1001"})
        assert not result.is_error, text_of(result)
        assert json.loads(text_of(result))["item"] == "cordless drill"
        (call,) = d.calls("lookup_order")
        assert call["intent"]["accepted"] is True and call["intent"]["sub"] == d.agent.spiffe_id
        assert call["intent"]["tier"] == "read"  # the server's readOnlyHint: no tier set by the admin
        captured = call["headers"]["x-m2a-intent"]  # what the ERP saw: m2a's signed intent
        trust = d.gw.tools.trust
        jwks = await trust.keys.jwks()
        intent = verify_intent(
            captured, jwks, audience=AUDIENCE, issuer=trust.issuer, arguments={"order_id": "SO-1001"}
        )
        assert intent.tool.name == "lookup_order" and intent.jti == call["intent"]["jti"]

        before = statuses(d.db)
        signer = await trust.keys.signer()
        async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as http:
            url = d.erp.url
            refused(await post_call(http, url, "cancel_order", CANCEL), "missing")
            refused(await post_call(http, url, "lookup_order", {"order_id": "SO-1003"}), "missing")
            fake = forged(signer.kid, trust.issuer, "cancel_order", CANCEL)
            refused(await post_call(http, url, "cancel_order", CANCEL, fake), "bad_signature")
            # the captured intent, played back: as it was, for other arguments, for another tool
            refused(await post_call(http, url, "lookup_order", {"order_id": "SO-1001"}, captured), "replayed")
            refused(
                await post_call(http, url, "lookup_order", {"order_id": "SO-1003"}, captured), "args_mismatch"
            )
            refused(
                await post_call(http, url, "cancel_order", {"order_id": "SO-1001"}, captured), "wrong_tool"
            )

            # a genuine, unused intent of m2a's: refused for other arguments or another agent...
            fresh = await d.mint("lookup_order", {"order_id": "SO-1002"})
            refused(
                await post_call(http, url, "lookup_order", {"order_id": "SO-1003"}, fresh), "args_mismatch"
            )
            other = "spiffe://m2a.local/team/sales-ops/agent/someone-else"
            swapped = await post_call(
                http, url, "lookup_order", {"order_id": "SO-1002"}, fresh, x_m2a_agent=other
            )
            refused(swapped, "wrong_agent")
            # ...which consumed nothing: it runs once for its own call, then never again
            ran = await post_call(http, url, "lookup_order", {"order_id": "SO-1002"}, fresh)
            assert result_of(ran)["item"] == "safety goggles"
            refused(await post_call(http, url, "lookup_order", {"order_id": "SO-1002"}, fresh), "replayed")

            # the ERP's own rule: a cancellation m2a signed without a person's approval does not run
            unapproved = await d.mint("cancel_order", CANCEL, tier="write")
            refused(await post_call(http, url, "cancel_order", CANCEL, unapproved), "not_approved")
        assert statuses(d.db) == before and cancellations(d.db) == []
        refusals = [c["intent"]["code"] for c in d.erp.calls() if not c["intent"]["accepted"]]
        assert refusals == [
            "missing", "missing", "bad_signature", "replayed", "args_mismatch", "wrong_tool",
            "args_mismatch", "wrong_agent", "replayed", "not_approved",
        ]  # fmt: skip


async def test_a_replay_fails_in_another_erp_process(store: IdentityStore, tmp_path: Path) -> None:
    """``erp_server.py --jwks-url ...`` as the README runs it, sharing the database (and so the used
    intents beside it) with the ERP the gateway calls: an intent used there is refused here."""
    async with demo(store, tmp_path) as d:
        async with mcp_session(d.gw.url, d.agent.token) as session:
            result = await session.call_tool("erp__lookup_order", {"order_id": "SO-1004"})
        assert not result.is_error, text_of(result)
        (call,) = d.calls("lookup_order")
        captured = call["headers"]["x-m2a-intent"]
        port = free_port()
        log = tmp_path / "second.jsonl"
        argv = [
            sys.executable, str(EXAMPLE / "erp_server.py"), "--port", str(port), "--db", str(d.db),
            "--token", ERP_SECRET, "--log", str(log), "--jwks-url", d.gw.url + "/.well-known/jwks.json",
            "--issuer", d.gw.tools.trust.issuer,
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            url = f"http://127.0.0.1:{port}/mcp"
            async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as http:
                async with asyncio.timeout(60):
                    while True:
                        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                        try:
                            await http.get(url, timeout=2)
                            break
                        except httpx.TransportError:
                            await asyncio.sleep(0.1)
                again = await post_call(http, url, "lookup_order", {"order_id": "SO-1004"}, captured)
                refused(again, "replayed")
                fresh = await d.mint("lookup_order", {"order_id": "SO-1004"})
                assert result_of(await post_call(http, url, "lookup_order", {"order_id": "SO-1004"}, fresh))[
                    "item"
                ] == "cold-room shelving"  # fmt: skip
                refused(await post_call(http, url, "cancel_order", CANCEL), "missing")
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert [e["intent"]["code"] for e in lines if "intent" in e and not e["intent"]["accepted"]] == [
            "replayed", "missing",
        ]  # fmt: skip
        assert b"replayed" in err and b"missing" in err  # and it said why on its log
        assert statuses(d.db)["SO-1003"] == "processing"


async def test_cancel_order_waits_for_an_admin_then_runs_once(store: IdentityStore, tmp_path: Path) -> None:
    async with demo(store, tmp_path) as d:
        gw = d.gw
        async with mcp_session(gw.url, d.agent.token) as session:
            no_reason = await session.call_tool("erp__cancel_order", {"order_id": "SO-1003", "reason": ""})
            assert no_reason.is_error and "refused by policy" in text_of(no_reason)  # policies/erp.cedar
            first = await session.call_tool("erp__cancel_order", CANCEL)
            assert first.is_error and "waits for a person's approval" in text_of(first)
        assert not d.calls("cancel_order") and statuses(d.db)["SO-1003"] == "processing"
        (pending,) = (await gw.admin("GET", "/approvals?status=pending")).json()
        aid = pending["id"]
        assert aid.startswith("mcpr_") and aid in text_of(first) and pending["tier"] == "destructive"

        team_try = await gw.admin("POST", f"/approvals/{aid}/approve", key=d.agent.team_key)
        assert team_try.status_code == 403 and team_try.json()["error"]["code"] == "approver_not_allowed"
        assert not d.calls("cancel_order") and statuses(d.db)["SO-1003"] == "processing"
        ok = await gw.admin("POST", f"/approvals/{aid}/approve", json={"reason": "duplicate order"})
        assert ok.status_code == 200, ok.text

        async with mcp_session(gw.url, d.agent.token) as session:
            ran = await session.call_tool("erp__cancel_order", CANCEL)
            assert not ran.is_error, text_of(ran)
            assert json.loads(text_of(ran))["previous_status"] == "processing"
            once_more = await session.call_tool("erp__cancel_order", CANCEL)
            assert once_more.is_error and "waits for a person's approval" in text_of(once_more)
        (call,) = d.calls("cancel_order")
        assert call["intent"]["accepted"] is True and call["intent"]["tier"] == "destructive"
        assert call["intent"]["approval"] == aid  # the ERP saw whose approval it ran on
        assert statuses(d.db)["SO-1003"] == "cancelled"
        assert cancellations(d.db) == [("SO-1003", CANCEL["reason"])]

        (again,) = (await gw.admin("GET", "/approvals?status=pending")).json()
        assert again["id"] != aid and again["id"] in text_of(once_more)  # a new approval, not the used one
        ok = await gw.admin("POST", f"/approvals/{again['id']}/approve")
        assert ok.status_code == 200, ok.text
        async with mcp_session(gw.url, d.agent.token) as session:
            twice = await session.call_tool("erp__cancel_order", CANCEL)
        assert twice.is_error and "SO-1003 is cancelled" in text_of(twice)  # the ERP's own answer
        assert len(d.calls("cancel_order")) == 2 and cancellations(d.db) == [("SO-1003", CANCEL["reason"])]

        trust = gw.tools.trust
        kinds = [r["kind"] for r in await trust.audit.show(limit=1000)]
        assert kinds.count("receipt") == 2 and "approval_used" in kinds
        report = await trust.audit.verify(await trust.keys.jwks())
        assert report.ok, report.problems


async def test_the_check_fails_closed(tmp_path: Path) -> None:
    """A JWKS that cannot be read admits nothing; a body a parser could read two ways, or a batch,
    is refused; what runs no tool (initialize, tools/list) needs no intent."""
    erp = load_erp()
    check = erp.IntentCheck(JwksSource("http://127.0.0.1:9/.well-known/jwks.json"), "http://127.0.0.1:9")
    seen: list[dict[str, Any]] = []
    db = tmp_path / "erp.db"
    async with (
        live(erp.build_app(db, seen=seen, token=ERP_SECRET, verify_intents=check)) as base,
        httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as http,
    ):
        url = base + "/mcp"
        token = forged("k1", "http://127.0.0.1:9", "cancel_order", CANCEL)
        refused(await post_call(http, url, "cancel_order", CANCEL, token), "unknown_key")
        headers = {
            "authorization": f"Bearer {ERP_SECRET}",
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            "x-m2a-intent": token,
        }
        twice = (
            b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "cancel_order",'
            b' "arguments": {"order_id": "SO-1003", "reason": "x", "order_id": "SO-1004"}}}'
        )
        dup = await http.post(url, content=twice, headers=headers)
        assert dup.status_code == 403 and dup.json()["error"]["data"] == {"intent": "malformed"}
        batch = [{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "cancel_order"}}]
        assert (await http.post(url, json=batch, headers=headers)).status_code == 403
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
        listed = await http.post(url, json=listing, headers={**headers, "mcp-protocol-version": "2025-06-18"})
        assert listed.status_code == 200, listed.text
        tools = {t["name"]: t for t in listed.json()["result"]["tools"]}
        assert tools["cancel_order"]["annotations"]["destructiveHint"] is True
        assert tools["lookup_order"]["annotations"]["readOnlyHint"] is True
        unauthorized = await post_call(http, url, "cancel_order", CANCEL, token, authorization="Bearer nope")
        assert unauthorized.status_code == 401  # the bearer first: no intent is even looked at
    assert statuses(db)["SO-1003"] == "processing"
    assert [e.get("intent", {}).get("code") for e in seen] == [
        "unknown_key",
        "malformed",
        "malformed",
        None,
        None,
    ]


async def test_cancel_rules(tmp_path: Path) -> None:
    """Only an order not yet shipped is cancelled, with a reason; the others are error results."""
    erp = load_erp()
    db = erp.create_database(tmp_path / "erp.db")
    desk = erp.ERP(db)
    from mcp.server.mcpserver.exceptions import ToolError

    for order_id, reason, why in [
        ("SO-1001", "x", "SO-1001 is shipped"),
        ("SO-1002", "x", "SO-1002 is delivered"),
        ("SO-1005", "x", "SO-1005 is cancelled"),
        ("SO-9999", "x", "no order"),
        ("SO-1003", "   ", "needs a reason"),
    ]:
        with pytest.raises(ToolError, match=why):
            desk.cancel(order_id, reason)
    assert statuses(db)["SO-1003"] == "processing" and cancellations(db) == []
    done = desk.cancel(" so-1003 ", " duplicate ")
    assert done["status"] == "cancelled" and done["previous_status"] == "processing"
    assert statuses(db)["SO-1003"] == "cancelled" and cancellations(db) == [("SO-1003", "duplicate")]
    assert desk.order("SO-1003")["status"] == "cancelled"
