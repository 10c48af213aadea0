"""m2a as the MCP gateway: agents reach tools only through m2a, and only those their manifest allows.

**The endpoint.** ``/mcp`` is an MCP server (streamable HTTP, stateless, JSON answers: each POST
stands alone, no session to keep) for agent tokens only. No or a bad bearer is 401, and a valid
API key without an agent (a team's key, the admin key) is 403 ``agent_token_required``, both in
OpenAI's error shape before anything of MCP is read: a key has no manifest, so it has no tools.
What one agent sees there is its own: the endpoint is one per agent by its token.

- ``tools/list`` gives the tools of the agent's manifest (``Manifest.tools``: a server and tool
  names) that the server registered under that name offers (``tools/list`` upstream, cached),
  each named ``<server>__<tool>`` (``SEPARATOR``; a server's name never holds it, so the first
  ``__`` splits). A server that is down, or a manifest tool its server does not offer, is left out.
- ``tools/call`` checks the manifest again (the version the token names, re-read) and refuses a
  tool outside it, or on a server not registered, with the JSON-RPC error ``-32602`` "not
  available to this agent" — the same answer as for a tool that exists nowhere, and nothing is
  sent to any server. An allowed call goes to the server with m2a's headers for it,
  ``x-m2a-agent: <SPIFFE id>`` and the ``execute_tool`` span's ``traceparent`` (never the agent's
  token), bounded by the server's timeout. Its result is passed on as the server gave it; a
  server that hangs, fails or answers garbage gives an error *result* (``isError``, its text
  says why): the agent's call never hangs past the timeout and never sees a gateway error.
- Arguments RFC 8785 cannot canonicalize (integers past 2**53, not a JSON object) are refused
  with ``-32602`` before anything is recorded or sent.

**What every call leaves** (``ToolGateway.call``, shared with the Responses ``mcp`` tool of
``mcp_tool.py``):

- a ``tool_calls`` row: agent (SPIFFE id, id, version), team, server, tool, sha256 of the RFC
  8785 canonical arguments, status ``ok`` / ``error`` (the server's own error result counts) /
  ``denied`` / ``timeout``, duration, trace id, and the response id for Responses calls;
- a usage-ledger row (``store/ledger.py``, through its journal): route ``/mcp``, model
  ``tool:<server>/<tool>``, zero tokens and cost, the agent's team and key columns, ``agent`` its
  SPIFFE id; status ``ok``, else ``error`` with the HTTP status that stands for it (502 error,
  504 timeout, 403 denied);
- an ``execute_tool {tool}`` span (OpenTelemetry GenAI conventions: ``gen_ai.operation.name``,
  ``gen_ai.tool.name``, ``gen_ai.tool.call.id``, ``gen_ai.tool.type`` ``extension``,
  ``gen_ai.agent.id`` (the SPIFFE id) / ``name`` / ``version``) in the caller's trace: under its
  ``traceparent`` on ``/mcp``, under the response's span for the Responses API.

A tool call costs no tokens and counts against no quota here; a failure to write its records is
logged and does not fail the call (it has run by then).

**Trusted execution** (``trust_wiring.py``, on by default): an allowed call then takes the trusted
path of ``trust/actions.py`` instead of going straight to the server — the tool rail of the agent's
guardrails, a Cedar decision, a person's approval for a destructive tool, a signed intent that the
``mcp`` executor (``mcp_executor.py``) admits once before it calls the server (which also receives
the intent as ``x-m2a-intent``), a signed receipt and the audit log. A refusal there is an error
*result* naming why (the agent knows the tool exists: its manifest grants it), a destructive call
waiting for approval one naming the approval (status ``pending``). The server ``actions`` is m2a's
own: its tools are the configured ``trust.actions`` (HTTP endpoints, sandboxed commands).

``ToolsExtension`` plugs this into the gateway (through the agents layer's extension): the
``/mcp`` route, the admin API of ``tools_api.py`` and the Responses ``mcp`` tool type.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from m2a.agents.manifest import Manifest, parse_manifest
from m2a.agents.tools import ACTIONS_SERVER, SEPARATOR, ToolFailure, ToolRegistry, UpstreamTool
from m2a.gateway.errors import GatewayError
from m2a.principal import AgentRef, Principal
from m2a.store.ledger import Ledger
from m2a.store.schema import AgentRow, AgentVersionRow
from m2a.store.tools import ServerRecord, ToolStore
from m2a.trust.verify import args_digest  # the one digest of a call's arguments (intents use it too)

log = logging.getLogger("m2a.agents.mcp")

MCP_PATH = "/mcp"
LEDGER_ROUTE = "/mcp"
PRINCIPAL_KEY = "m2a.principal"  # where the endpoint leaves the caller in the ASGI scope
MANIFEST_TTL_S = 2.0
HTTP_STATUS = {"ok": 200, "error": 502, "timeout": 504, "denied": 403, "pending": 202}
_PROPAGATOR = TraceContextTextMapPropagator()


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


# -- what an agent may call ----------------------------------------------------------------------


class Manifests:
    """The manifest of the version an agent's token names, re-read (briefly cached): a revoked agent
    or version has no manifest, so no tools (fail closed)."""

    def __init__(self, engine: AsyncEngine, ttl_s: float = MANIFEST_TTL_S) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._cache: dict[tuple[int, int], tuple[float, Manifest | None]] = {}

    async def of(self, agent: AgentRef) -> Manifest | None:
        if agent.version_id is None:
            return None
        key = (agent.agent_id, agent.version_id)
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        q = (
            select(
                AgentVersionRow.manifest,
                AgentVersionRow.stage,
                AgentVersionRow.revoked_at,
                AgentRow.revoked_at,
            )
            .join(AgentRow, AgentRow.id == AgentVersionRow.agent_id)
            .where(AgentVersionRow.id == agent.version_id, AgentVersionRow.agent_id == agent.agent_id)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        manifest = None
        if row is not None and row[1] != "revoked" and row[2] is None and row[3] is None:
            try:
                manifest = parse_manifest(json.loads(row[0]))
            except ValueError:  # a stored manifest this m2a cannot read: no tools, rather than all
                log.warning("agent %s version %s: unreadable manifest", agent.spiffe_id, agent.version_id)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (time.monotonic(), manifest)
        return manifest


@dataclass
class CallOutcome:
    """How one call ended: ``result`` is the server's (ok, or its own error result), else ``error``."""

    status: str  # ok, error, denied, timeout, pending (waits for a person's approval: ``approval``)
    result: types.CallToolResult | None
    error: str | None
    duration_ms: float
    call_id: str
    approval: Any = None  # the ApprovalRecord a pending call waits for
    receipt: str | None = None  # the signed receipt (a JWS) of what ran, under trusted execution
    refused_by: str | None = None  # denied: "manifest" (not this agent's tool) or "trust" (policy, intent)

    def text(self) -> str:
        """The result as text for a model: its text contents (or its structured content), or the error."""
        if self.result is None:
            return self.error or "the tool call failed"
        parts = [c.text for c in self.result.content if isinstance(c, types.TextContent)]
        if not parts and self.result.structured_content is not None:
            parts = [json.dumps(self.result.structured_content)]
        if not parts and self.result.content:
            parts = [json.dumps([c.model_dump(mode="json", exclude_none=True) for c in self.result.content])]
        return "\n".join(parts)


class ToolGateway:
    """The one path of every tool call an agent makes: manifest check, the call, its records."""

    def __init__(
        self,
        registry: ToolRegistry,
        store: ToolStore,
        manifests: Manifests,
        ledger: Ledger | None = None,
        tracer: Tracer | None = None,
        trust: Any = None,  # the agents layer's Trust (agents/trust_wiring.py): every call's trusted path
    ) -> None:
        self.registry = registry
        self.store = store
        self.manifests = manifests
        self.ledger = ledger
        self.tracer = tracer
        self.trust = trust

    async def grants(self, principal: Principal) -> dict[str, list[str]]:
        """Server → tool names the agent's manifest allows (none for a principal without an agent)."""
        if principal.agent is None:
            return {}
        manifest = await self.manifests.of(principal.agent)
        return {g.server: list(g.tools) for g in manifest.tools} if manifest is not None else {}

    async def available(
        self, principal: Principal, server: str | None = None
    ) -> list[tuple[ServerRecord, UpstreamTool]]:
        """The tools the agent may call that their servers offer now (``server``: only that one's)."""
        grants = [(n, a) for n, a in (await self.grants(principal)).items() if server in (None, n)]

        async def one(name: str, allowed: list[str]) -> list[tuple[ServerRecord, UpstreamTool]]:
            if name == ACTIONS_SERVER and self.trust is not None:  # m2a's own actions (trust.actions)
                return [
                    (self.trust.actions_record, t) for t in self.trust.action_tools() if t.name in allowed
                ]
            record = await self.registry.find(name)
            if record is None:
                return []
            try:
                offered = await self.registry.tools(record)
            except ToolFailure as exc:
                log.info("listing tools of %s failed: %s", name, exc.message)
                return []
            return [(record, t) for t in offered if t.name in allowed]

        # Servers are asked at once: a slow one costs its own timeout, not the sum of all of them.
        found = await asyncio.gather(*(one(n, a) for n, a in grants))
        return [pair for pairs in found for pair in pairs]

    async def call(
        self,
        principal: Principal,
        server: str,
        tool: str,
        arguments: dict[str, Any] | None,
        *,
        via: str,
        call_id: str | None = None,
        parent: otel_context.Context | None = None,
        response_id: str | None = None,
        approval: Any = None,
        arguments_text: str | None = None,
    ) -> CallOutcome:
        """Run one call if the manifest allows it (``args_digest`` must accept ``arguments``).

        Under trusted execution (``trust``), the call goes the trusted path (``trust/actions.py``:
        policy, approval for destructive tools, a signed intent its executor admits once, a signed
        receipt, the audit log); ``approval`` is one the caller claimed for it already."""
        digest = args_digest(arguments)
        call_id = call_id or new_call_id()
        agent = principal.agent
        allowed = agent is not None and tool in (await self.grants(principal)).get(server, [])
        record = await self._record_of(server, tool) if allowed else None
        ledger_id = self._ledger_begin(principal, server, tool)
        span = self._span(principal, server, tool, call_id, parent)
        started = time.perf_counter()
        result: types.CallToolResult | None = None
        pending, receipt = None, None
        if agent is None or record is None:
            status, error = "denied", f"the tool '{tool}' of '{server}' is not available to this agent"
        elif self.trust is not None:
            carrier = {}
            if span is not None:
                _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span, otel_context.Context()))
            done = await self.trust.run(
                principal, record, tool, arguments or {}, call_id=call_id, span=span, carrier=carrier,
                response_id=response_id, approval=approval, arguments_text=arguments_text,
            )  # fmt: skip
            status, error, pending = (
                done.status,
                done.error,
                done.approval if done.status == "pending" else None,
            )
            if pending is not None:
                error = (
                    f"This {tool} call is destructive and waits for a person's approval: {pending.id} "
                    f"(expires {pending.expires_at.isoformat()}). Call again with the same arguments "
                    "once it is approved."
                )
            receipt = done.receipt.token if done.receipt is not None else None
            if done.execution is not None and isinstance(done.execution.result, types.CallToolResult):
                result = done.execution.result
            elif done.execution is not None and done.execution.result is not None:
                result = _as_result(done.execution.result, done.status != "ok")
        else:
            carrier: dict[str, str] = {}
            if span is not None:
                _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span, otel_context.Context()))
            try:
                result = await self.registry.call(
                    record, tool, arguments, agent=agent.spiffe_id, traceparent=carrier
                )
                status = "error" if result.is_error else "ok"
                error = "the tool answered with an error" if result.is_error else None
            except ToolFailure as exc:
                status, error = exc.status, exc.message
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        trace_id = self._end_span(span, status, error, parent)
        self._ledger_end(ledger_id, status, duration_ms)
        try:
            await self.store.record_call(
                agent=agent.spiffe_id if agent is not None else "-",
                agent_id=agent.agent_id if agent is not None else None,
                version=agent.version if agent is not None else None,
                team_id=principal.team_id,
                server=server[:64],
                tool=tool[:256],
                args_sha256=digest,
                status=status,
                error=error[:1000] if error else None,
                duration_ms=duration_ms,
                via=via,
                call_id=call_id[:128],
                trace_id=trace_id,
                response_id=response_id,
            )
        except Exception:  # the call has run: its result still goes back; the failure is logged
            log.exception("could not record the tool call %s (%s/%s)", call_id, server, tool)
        refused_by = (
            None if status != "denied" else ("manifest" if agent is None or record is None else "trust")
        )
        return CallOutcome(status, result, error, duration_ms, call_id, pending, receipt, refused_by)

    async def _record_of(self, server: str, tool: str) -> ServerRecord | None:
        if server == ACTIONS_SERVER:  # never a registered server's name (tools.check_name refuses it)
            return (
                self.trust.actions_record if self.trust is not None and self.trust.has_action(tool) else None
            )
        return await self.registry.find(server)

    # -- its records ---------------------------------------------------------------------------

    def _ledger_begin(self, p: Principal, server: str, tool: str) -> str | None:
        if self.ledger is None:
            return None
        rid = str(uuid.uuid4())
        try:
            self.ledger.begin(
                rid, team=p.team, team_id=p.team_id, input_estimate=0, price=[0.0, 0.0],
                key_id=p.key_id or None, key_prefix=p.key_prefix[:16], model=f"tool:{server}/{tool}"[:256],
                route=LEDGER_ROUTE, priority=p.priority, stream=False,
                agent=p.agent.spiffe_id if p.agent is not None else None,
            )  # fmt: skip
        except OSError:
            log.exception("could not journal a tool call")
            return None
        return rid

    def _ledger_end(self, rid: str | None, status: str, duration_ms: float) -> None:
        if self.ledger is None or rid is None:
            return
        try:
            self.ledger.end(
                rid, status="ok" if status == "ok" else "error", http_status=HTTP_STATUS[status],
                replica=None, input_tokens=0, output_tokens=0, cached_tokens=0, ttft_ms=None,
                duration_ms=duration_ms, cost=0.0,
            )  # fmt: skip
        except OSError:
            log.exception("could not journal a tool call's end")

    def _span(
        self, p: Principal, server: str, tool: str, call_id: str, parent: otel_context.Context | None
    ) -> trace.Span | None:
        if self.tracer is None:
            return None
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.call.id": call_id,
            "gen_ai.tool.type": "extension",
            "mcp.method.name": "tools/call",
            "m2a.tool.server": server,
            "m2a.team": p.team or "-",
        }
        if p.agent is not None:
            attrs["gen_ai.agent.id"] = p.agent.spiffe_id
            attrs["gen_ai.agent.name"] = p.agent.name
            if p.agent.version is not None:
                attrs["gen_ai.agent.version"] = str(p.agent.version)
        return self.tracer.start_span(
            f"execute_tool {tool}", context=parent, kind=SpanKind.INTERNAL, attributes=attrs
        )

    @staticmethod
    def _end_span(
        span: trace.Span | None, status: str, error: str | None, parent: otel_context.Context | None
    ) -> str | None:
        """End the span; the call's trace id (hex), from the span or else the caller's context."""
        ctx = (
            span.get_span_context() if span is not None else trace.get_current_span(parent).get_span_context()
        )
        if span is not None:
            span.set_attribute("m2a.tool.status", status)
            if status != "ok":
                span.set_attribute("error.type", status)
                span.set_status(Status(StatusCode.ERROR, (error or status)[:200]))
            span.end()
        return format(ctx.trace_id, "032x") if ctx.is_valid else None


def _as_result(value: Any, is_error: bool) -> types.CallToolResult:
    """An action's result (JSON: an HTTP answer, a command's output) as an MCP tool result."""
    return types.CallToolResult(
        content=[types.TextContent(text=json.dumps(value, ensure_ascii=False))],
        structured_content=value if isinstance(value, dict) else None, is_error=is_error,
    )  # fmt: skip


# -- the /mcp endpoint ---------------------------------------------------------------------------


def exposed_name(server: str, tool: str) -> str:
    return f"{server}{SEPARATOR}{tool}"


def split_name(name: str) -> tuple[str, str] | None:
    server, sep, tool = name.partition(SEPARATOR)
    return (server, tool) if sep and server and tool else None


def _principal_of(ctx: Any) -> Principal:
    request = getattr(ctx, "request", None)
    principal = request.scope.get(PRINCIPAL_KEY) if isinstance(request, Request) else None
    if not isinstance(principal, Principal) or principal.agent is None:  # never past the endpoint's check
        raise MCPError(types.INVALID_REQUEST, "no agent identity on this request")
    return principal


class McpEndpoint:
    """The ASGI app at ``/mcp``: the bearer checked in OpenAI's error shape, then MCP (stateless)."""

    def __init__(self, access: Any, gateway: ToolGateway, max_body_bytes: int = 4 << 20) -> None:
        self.access = access
        self.gateway = gateway
        self.server: Server[Any] = Server(
            "m2a", version="1", on_list_tools=self._list_tools, on_call_tool=self._call_tool,
            instructions="The tools this agent's manifest allows, named <server>__<tool>.",
        )  # fmt: skip
        # The SDK's own per-message spans would go to the global tracer: the gateway makes its own.
        self.server.middleware[:] = [
            m for m in self.server.middleware if type(m).__name__ != "OpenTelemetryMiddleware"
        ]
        self.manager = StreamableHTTPSessionManager(
            app=self.server, stateless=True, json_response=True, max_request_body_size=max_body_bytes
        )
        self._running: contextlib.AsyncExitStack | None = None

    async def start(self) -> None:
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(self.manager.run())
        self._running = stack

    async def close(self) -> None:
        if self._running is not None:
            stack, self._running = self._running, None
            await stack.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            principal = await self.access.principal(request)
            if principal.agent is None:
                raise GatewayError(
                    403,
                    "The MCP endpoint is for agent tokens: an API key has no manifest, so no tools. "
                    "Get a token for the agent at the token endpoint.",
                    code="agent_token_required",
                )
        except GatewayError as exc:
            if exc.status == 401:
                exc.headers.setdefault("www-authenticate", 'Bearer realm="m2a"')
            await exc.response()(scope, receive, send)
            return
        if self._running is None:
            await GatewayError(503, "The MCP endpoint is not running.", code="unavailable").response()(
                scope, receive, send
            )
            return
        await self.manager.handle_request({**scope, PRINCIPAL_KEY: principal}, receive, send)

    async def _list_tools(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        principal = _principal_of(ctx)
        tools = await self.gateway.available(principal)
        return types.ListToolsResult(tools=[t.as_mcp(exposed_name(s.name, t.name)) for s, t in tools])

    async def _call_tool(self, ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        principal = _principal_of(ctx)
        parts = split_name(params.name)
        refused = MCPError(types.INVALID_PARAMS, f"Tool '{params.name}' is not available to this agent.")
        if parts is None:
            raise refused
        try:
            args_digest(params.arguments)
        except ValueError as exc:
            raise MCPError(types.INVALID_PARAMS, str(exc)) from None
        parent = _PROPAGATOR.extract(dict(ctx.request.headers)) if isinstance(ctx.request, Request) else None
        outcome = await self.gateway.call(
            principal, parts[0], parts[1], params.arguments, via="mcp", parent=parent
        )
        if outcome.status == "denied" and outcome.refused_by != "trust":
            raise refused  # not this agent's tool: the same answer as for one that exists nowhere
        if outcome.result is not None:
            return outcome.result
        return types.CallToolResult(content=[types.TextContent(text=outcome.text())], is_error=True)


def mcp_route(endpoint: McpEndpoint) -> BaseRoute:
    return Route(MCP_PATH, endpoint=endpoint, methods=["GET", "POST", "DELETE"])


# -- the gateway extension -----------------------------------------------------------------------

DEFAULT_APPROVAL_TIMEOUT_S = 3600.0


class ToolsExtension:
    """The MCP gateway in the gateway (``gateway/extensions.py``): ``/mcp``, the tools' admin API
    (``tools_api.py``) and the Responses ``mcp`` tool type (``mcp_tool.py``). It needs the store
    (``host.db``); the agents extension makes one when there is one. ``approval_timeout_s``: how long
    an ``mcp_approval_request`` waits for its answer before it expires (``agents.approval_timeout_s``,
    default 1 h)."""

    def __init__(self, host: Any, approval_timeout_s: float = DEFAULT_APPROVAL_TIMEOUT_S) -> None:
        if host.db is None:
            raise ValueError("the MCP gateway needs the store (teams, agents): host.db is None")
        if not approval_timeout_s > 0:
            raise ValueError("approval_timeout_s must be positive")
        self.host = host
        self.approval_timeout_s = float(approval_timeout_s)
        self.trust: Any = None  # set by the agents extension when trusted execution is on
        self.store = ToolStore(host.db)
        self.registry = ToolRegistry(self.store)
        self.gateway = ToolGateway(self.registry, self.store, Manifests(host.db), host.ledger, host.tracer)
        self.endpoint = McpEndpoint(host.access, self.gateway, host.cfg.max_body_bytes)

    def routes(self) -> list[BaseRoute]:
        from m2a.agents.extension import Under  # the agents extension imports this module
        from m2a.agents.tools_api import PREFIXES, create_tools_api

        api = create_tools_api(self.registry, self.store, self.host.access, self.trust)
        return [mcp_route(self.endpoint), *(Under(prefix, api) for prefix in PREFIXES)]

    async def start(self) -> None:
        from m2a.agents.mcp_tool import register

        register()
        await self.endpoint.start()

    async def close(self) -> None:
        await self.endpoint.close()


def tools_of(app: Any) -> ToolsExtension | None:
    """The ``ToolsExtension`` of a gateway app (directly, or as the agents extension's ``tools``)."""
    for ext in getattr(getattr(app, "state", None), "extensions", None) or ():
        for candidate in (ext, getattr(ext, "tools", None)):
            if isinstance(candidate, ToolsExtension):
                return candidate
    return None


def tools_extension(approval_timeout_s: float = DEFAULT_APPROVAL_TIMEOUT_S) -> Any:
    """A factory for ``create_app(extensions=[...])`` (the agents extension includes it itself)."""
    return lambda host: ToolsExtension(host, approval_timeout_s)
