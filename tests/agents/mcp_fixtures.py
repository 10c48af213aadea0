"""What the MCP gateway's tests share: the demo ERP on loopback, rude tool servers, an agent with a
manifest and a real token, and the gateway app (with the agents extension) on a real uvicorn port.

An agent is registered through the registry, its version 1 promoted to ``tested`` (with a passed
red-team report), given a client secret through the admin API and an access token at the gateway's
own token endpoint (OAuth client credentials): the same path a real agent takes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from m2a.agents.extension import agents_extension
from m2a.agents.manifest import parse_manifest
from m2a.agents.registry import RedteamReport, Registry
from m2a.config import AgentsConfig, GatewayConfig, TrustConfig
from m2a.gateway.app import create_app
from m2a.principal import AgentRef, Principal
from m2a.router.pool import Endpoint, Pool
from m2a.store.identity import IdentityStore
from m2a.store.ledger import Ledger
from m2a.store.schema import Usage
from tests.agents.helpers import report
from tests.live_app import live
from tests.scripted_engine import ScriptedEngine as BaseScriptedEngine
from tests.scripted_engine import message_text

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "sk-tools-admin-" + "t" * 24
MODEL = "alpha"
TIMEOUT = 30.0  # per HTTP call or wait; generous for a loaded two-core machine
ERP_SECRET = "erp-credential-" + "e" * 16  # m2a's own credential for the ERP server


def load_erp() -> Any:
    """examples/erp/erp_server.py as a module (the example is a script, not a package)."""
    name = "erp_server_example"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "erp" / "erp_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- tool servers
@dataclass
class ToolServer:
    url: str  # the MCP endpoint
    seen: list[dict[str, Any]]  # every request it got: method, tool, headers

    def calls(self) -> list[dict[str, Any]]:
        return [s for s in self.seen if s["method"] == "tools/call"]


@contextlib.asynccontextmanager
async def erp_server(tmp: Path, token: str | None = ERP_SECRET) -> AsyncIterator[ToolServer]:
    """The demo ERP (examples/erp) in process on a loopback port, refusing calls without ``token``."""
    seen: list[dict[str, Any]] = []
    app = load_erp().build_app(tmp / "erp.db", seen=seen, token=token)
    async with live(app, TIMEOUT) as url:
        yield ToolServer(url + "/mcp", seen)


@contextlib.asynccontextmanager
async def rude_server(mode: str) -> AsyncIterator[ToolServer]:
    """A tool server that misbehaves: ``hang`` (never answers), ``html`` (a web page), ``status500``,
    ``badresult`` (a proper handshake, then a tool result that is not one), ``huge`` (a 2 MB result)."""
    seen: list[dict[str, Any]] = []
    release = asyncio.Event()

    async def mcp(request: Request) -> Response:
        body = await request.body()
        try:
            message = json.loads(body)
        except ValueError:
            message = {}
        params = message.get("params") if isinstance(message, dict) else None
        seen.append(
            {
                "method": message.get("method") if isinstance(message, dict) else None,
                "tool": params.get("name") if isinstance(params, dict) else None,
                "headers": dict(request.headers),
            }
        )
        if mode == "hang":
            await release.wait()
            return Response(status_code=204)
        if mode == "html":
            return Response("<html><body>Welcome to our portal</body></html>", media_type="text/html")
        if mode == "status500":
            return Response("Internal Server Error", status_code=500)
        if not isinstance(message, dict) or "id" not in message:
            return Response(status_code=202)  # a notification
        rid = message["id"]
        if message.get("method") == "initialize":
            return JSONResponse(
                {
                    "jsonrpc": "2.0",
                    "id": rid,
                    "result": {
                        "protocolVersion": params.get("protocolVersion")
                        if isinstance(params, dict)
                        else None,
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "rude", "version": "1"},
                    },
                }
            )
        if message.get("method") == "tools/list":
            tool = {"name": "lookup_order", "inputSchema": {"type": "object"}}
            return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": {"tools": [tool]}})
        if mode == "huge":
            text = "x" * (2 << 20)
            return JSONResponse(
                {"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": text}]}}
            )
        return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": {"content": "this is not a list"}})

    app = Starlette(routes=[Route("/mcp", mcp, methods=["GET", "POST", "DELETE"])])
    try:
        async with live(app, TIMEOUT) as url:
            yield ToolServer(url + "/mcp", seen)
            release.set()
    finally:
        release.set()


# ---------------------------------------------------------------------------- the agent
def agent_manifest(tools: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "card": {"name": "Order bot", "description": "Looks orders up.", "version": "1.0.0"},
        "models": [MODEL],
        "system_prompt": "You answer questions about orders.",
        "tools": tools,
    }


@dataclass
class Agent:
    principal: Principal  # what the gateway makes of the token (as far as the tools' code reads it)
    token: str  # an access token from the gateway's token endpoint
    team_key: str  # a member key of the agent's team

    @property
    def spiffe_id(self) -> str:
        assert self.principal.agent is not None
        return self.principal.agent.spiffe_id


async def make_agent(
    gw: Gateway,
    store: IdentityStore,
    team: str,
    name: str,
    tools: list[dict[str, Any]],
    *,
    new_team: bool = True,
    extra: dict[str, Any] | None = None,
) -> Agent:
    """A team (with the model granted and a member key) and an agent with version 1 of a manifest,
    tested, with an access token from ``gw``'s token endpoint."""
    if new_team:
        await store.create_team(team)
        await store.grant(team, MODEL)
    key = (await store.create_key(team, f"{team}-key"))[0]
    registry = Registry(store.engine)
    manifest = parse_manifest({**agent_manifest(tools), **(extra or {})})  # extra: egress, data_scopes...
    info, version = await registry.create(team, name, ["owner@example.com"], manifest=manifest)
    assert version is not None
    gate = RedteamReport.model_validate(report(manifest))
    await registry.promote(team, name, version.number, "tested", redteam=gate)
    made = await gw.http.post(
        f"/admin/v1/agents/{team}/{name}/credentials",
        json={"type": "client_secret"},
        headers={"authorization": f"Bearer {key}"},
    )
    assert made.status_code == 201, made.text
    client_id, secret = (quote_plus(made.json()[k]) for k in ("client_id", "client_secret"))  # RFC 6749
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    issued = await gw.http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "agent_version": str(version.number)},
        headers={"authorization": f"Basic {basic}"},
    )
    assert issued.status_code == 200, issued.text
    base = await store.team_principal(info.team_id)
    assert base is not None
    principal = replace(
        base,
        key_prefix=f"agent:{info.id}",
        agent=AgentRef(info.spiffe_id, info.id, name, version.number, version.id),
    )
    return Agent(principal, issued.json()["access_token"], key)


# ---------------------------------------------------------------------------- the gateway
@dataclass
class Gateway:
    app: Any
    url: str
    http: httpx.AsyncClient
    exporter: InMemorySpanExporter

    async def admin(self, method: str, path: str, key: str | None = ADMIN, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return await self.http.request(method, f"/admin/v1{path}", headers=headers, **kw)

    @property
    def tools(self) -> Any:
        from m2a.agents.mcp_gateway import tools_of

        found = tools_of(self.app)
        assert found is not None
        return found

    def spans(self, name_prefix: str = "execute_tool") -> list[Any]:
        return [s for s in self.exporter.get_finished_spans() if s.name.startswith(name_prefix)]


def make_pool(engine_url: str) -> Pool:
    pool = Pool()
    pool.add(Endpoint(f"{MODEL}-0", MODEL, engine_url, task="chat", healthy=True))
    return pool


@contextlib.asynccontextmanager
async def gateway(
    store: IdentityStore,
    home: Path,
    engine_url: str = "http://127.0.0.1:9",
    agents: AgentsConfig | None = None,
    trust: TrustConfig | None = None,
    **app_kw: Any,
) -> AsyncIterator[Gateway]:
    """The gateway with the agents extension (and so the MCP gateway) on a loopback port."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    trust = trust or TrustConfig(policy_dir=home / "policies")  # never a user's own policy folder
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ledger = Ledger(store.engine, home / "ledger", flush_s=0.05)
    app = create_app(
        make_pool(engine_url),
        ADMIN,
        GatewayConfig(),
        identity=store,
        ledger=ledger,
        usage_store=store.engine,
        tracer=provider.get_tracer("test"),
        extensions=[agents_extension(agents, trust)],
        **app_kw,
    )
    async with (
        live(app, TIMEOUT) as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT, trust_env=False) as http,
    ):
        yield Gateway(app, url, http, exporter)


@contextlib.asynccontextmanager
async def mcp_session(
    url: str, token: str, headers: dict[str, str] | None = None
) -> AsyncIterator[ClientSession]:
    """An MCP client session with the gateway's ``/mcp``, as an agent (its token as the bearer)."""
    all_headers = {"authorization": f"Bearer {token}", **(headers or {})}
    async with (
        httpx2.AsyncClient(headers=all_headers, timeout=httpx2.Timeout(TIMEOUT), trust_env=False) as http,
        streamable_http_client(url + "/mcp", http_client=http) as (read, write),
        ClientSession(read, write, read_timeout_seconds=TIMEOUT) as session,
    ):
        await session.initialize()
        yield session


async def register(gw: Gateway, name: str, url: str, **body: Any) -> dict[str, Any]:
    resp = await gw.admin("POST", "/tools", json={"name": name, "url": url, **body})
    assert resp.status_code == 201, resp.text
    return resp.json()


async def ledger_rows(store: IdentityStore, route: str = "/mcp", count: int = 1) -> list[Usage]:
    """The ledger's rows of ``route`` once at least ``count`` are in the database (bounded wait)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            async with store.engine.connect() as conn:
                rows = (
                    await conn.execute(select(Usage).where(Usage.route == route).order_by(Usage.id))
                ).all()
            if len(rows) >= count:
                return rows  # type: ignore[return-value]
            await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------- a scripted chat engine
class ScriptedEngine(BaseScriptedEngine):
    """The scripted chat engine (tests/scripted_engine.py), choosing tools from the text: when the
    last message is the user's and tools are offered it calls the one whose name the text mentions,
    else the first, with the first JSON object in the text as its arguments; answers "Tool said:
    <result>" after a tool message, "Echo: <text>" otherwise."""

    def decide(self, body: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]], str]:
        messages = body["messages"]
        last = messages[-1]
        tools = body.get("tools") or []
        if tools and last["role"] == "user":
            text = message_text(last["content"])
            names = [t["function"]["name"] for t in tools]
            name = next((n for n in names if n in text), names[0])
            start, end = text.find("{"), text.rfind("}")
            arguments = text[start : end + 1] if 0 <= start < end else "{}"
            call = {
                "id": f"call_{len(self.requests)}",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            return None, [call], "tool_calls"
        if last["role"] == "tool":
            return f"Tool said: {message_text(last['content'])}", [], "stop"
        return f"Echo: {message_text(last['content'])}", [], "stop"
