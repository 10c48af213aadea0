"""The Responses API's ``mcp`` tool type, run server-side through m2a's MCP gateway.

It plugs into the Responses layer through its hosted-tool seam (``gateway/responses_api.py``:
``register_hosted_tool``), registered by the tools extension at start: the gateway never imports
the agents layer. A tool ``{"type": "mcp", "server_label": ..., "allowed_tools": ...,
"require_approval": ...}`` in a ``/v1/responses`` request:

- is for **agents** only (an agent's token: its manifest says which tools it may call; an API key
  has none: 403 ``agent_token_required``). ``server_label`` names an MCP server registered in m2a
  (``m2a tools add``) that the manifest lists: one it does not list is 403 ``tool_not_allowed``
  (the same whether or not such a server exists), one it lists but nobody registered is 404
  ``tool_server_not_found``. ``server_url``, when given, must be the registered URL; ``headers``,
  ``authorization``, ``connector_id`` and ``tunnel_id`` are refused (400): m2a reaches only
  registered servers, with its own credentials for them, never with the caller's.
- ``allowed_tools`` (a list of names, or ``{"tool_names": [...], "read_only": bool}``) narrows the
  manifest's tools of that server; naming one the manifest does not allow is 403
  ``tool_not_allowed``.
- The model is offered the server's tools (``tools/list`` through the registry: cached, bounded by
  the server's timeout) as functions named ``<server_label>__<tool>``, and an ``mcp_list_tools``
  item comes first in the output (on a fresh conversation; not again on a continuation). A server
  that cannot list its tools gives an ``mcp_list_tools`` item with ``error`` and no tools: the
  model answers without them, the response does not fail.
- ``require_approval``: ``"always"`` (the default, as OpenAI's), ``"never"``, or ``{"never":
  {"tool_names": [...]}, "always": {"tool_names": [...]}}`` (a tool in neither needs approval).
  A call that needs approval does not run: the output gets an ``mcp_approval_request`` (its id
  ``mcpr_…``), the row is stored in ``tool_approvals`` with the arguments, and the response ends
  there (the model is not called again). The approval expires after ``agents.approval_timeout_s``
  (default 1 h).
- A call that may run goes through ``ToolGateway.call`` (``mcp_gateway.py``: the manifest checked
  again, the call recorded, counted in the ledger, an ``execute_tool`` span in the request's
  trace) and gives an ``mcp_call`` item with ``output``, or with ``error`` (OpenAI's shapes:
  ``mcp_tool_execution_error`` for the tool's own error result, ``http_error`` 504 for a server
  that hung, 502 for one that failed or answered garbage, ``mcp_protocol_error`` -32602 for
  arguments that are not a JSON object). The model reads the result, or the error, and goes on.

**Approvals.** A continuation (``previous_response_id``) with an ``mcp_approval_response`` input item
(``approval_request_id``, ``approve``, ``reason``) decides a pending approval, and an approval given
out of band (``/admin/v1/approvals/{id}/approve``, ``m2a approvals approve ID``) counts the same:
continuing the response that asked runs every approved call of its own before the model is called
(an ``mcp_call`` item with ``approval_request_id``; the model gets the result), and tells the model
of each denied one. A decision is final whoever made it first (the caller's ``approve`` cannot undo
an admin's denial; a caller may still decline to run an approved call). An approved call runs once:
a replayed approval response is 400 ``approval_used``; one for an expired approval is 400
``approval_expired``; one for an approval of another agent, or that does not exist, is 400
``approval_not_found``. Approvals live in the store, so they outlast a restart of the gateway.

Items sent back as input (``store: false`` clients replay their output): ``mcp_call`` becomes the
call and its result in the conversation; ``mcp_list_tools`` and ``mcp_approval_request`` add nothing.
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import timedelta
from typing import Any

from mcp import types
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from m2a.agents.mcp_gateway import (
    CallOutcome,
    ToolsExtension,
    args_digest,
    exposed_name,
    split_name,
    tools_of,
)
from m2a.agents.tools import ToolFailure
from m2a.gateway.errors import GatewayError
from m2a.gateway.responses_api import HostedResult, ToolContext, register_hosted_tool
from m2a.principal import Principal
from m2a.store.tools import ApprovalRecord, ServerRecord, ToolStoreError, now

log = logging.getLogger("m2a.agents.mcp_tool")

KIND = "mcp"
_PROPAGATOR = TraceContextTextMapPropagator()
_REFUSED_FIELDS = ("headers", "authorization", "connector_id", "tunnel_id")
_KNOWN_FIELDS = {
    "type", "server_label", "server_url", "server_description", "allowed_tools", "require_approval",
    "allowed_callers", "defer_loading", *_REFUSED_FIELDS,
}  # fmt: skip


def _id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _bad(param: str, message: str, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def _names(value: Any, param: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(n, str) and n for n in value) or len(value) > 256:
        raise _bad(param, "must be a list of tool names")
    return value


class McpToolset:
    """One ``mcp`` tool of one request: the functions offered, the calls run, the approvals asked."""

    def __init__(
        self,
        tools: ToolsExtension,
        principal: Principal,
        ctx: ToolContext,
        server: ServerRecord,
        offered: list[Any],  # UpstreamTool
        approval: tuple[str, set[str], set[str]],  # default (always/never), always names, never names
        listing: dict[str, Any] | None,
    ) -> None:
        self.tools = tools
        self.principal = principal
        self.ctx = ctx
        self.server = server
        self.label = server.name
        self.offered = {t.name: t for t in offered}
        self.approval = approval
        self._items = [listing] if listing is not None else []
        self.functions = [
            {
                "type": "function",
                "function": {
                    "name": exposed_name(self.label, t.name),
                    **({"description": t.description} if t.description else {}),
                    "parameters": t.input_schema or {"type": "object"},
                },
            }
            for t in offered
        ]
        self._parent = _PROPAGATOR.extract(dict(ctx.request.headers))

    def owns(self, name: str) -> bool:
        parts = split_name(name)
        return parts is not None and parts[0] == self.label and parts[1] in self.offered

    def items(self) -> list[dict[str, Any]]:
        return self._items

    def needs_approval(self, tool: str) -> bool:
        default, always, never = self.approval
        if tool in always:
            return True
        if tool in never:
            return False
        return default == "always"

    # -- a call the model makes ------------------------------------------------------------------

    async def call(self, call_id: str, name: str, arguments: str) -> HostedResult:
        parts = split_name(name)
        assert parts is not None and parts[0] == self.label
        tool = parts[1]
        try:
            args = json.loads(arguments) if arguments.strip() else {}
            if not isinstance(args, dict):
                raise ValueError("not a JSON object")
            args_digest(args)
        except (ValueError, RecursionError) as exc:
            error = {
                "type": "mcp_protocol_error",
                "code": types.INVALID_PARAMS,
                "message": f"bad arguments: {exc}",
            }
            item = self._call_item(tool, arguments, None, error)
            return HostedResult(
                item, f"The tool was not called: its arguments must be a JSON object ({exc})."
            )
        if self.needs_approval(tool):
            return self._waiting(tool, arguments, (await self._ask(tool, args, arguments)).id)
        outcome = await self._run(tool, args, arguments=arguments)
        if outcome.status == "pending" and outcome.approval is not None:  # destructive: a person decides
            return self._waiting(tool, arguments, outcome.approval.id)
        return HostedResult(self._outcome_item(tool, arguments, outcome), self._model_text(outcome))

    def _waiting(self, tool: str, arguments: str, approval_id: str) -> HostedResult:
        """The call does not run: an ``mcp_approval_request`` item, and the response ends there."""
        item = {
            "type": "mcp_approval_request",
            "id": approval_id,
            "server_label": self.label,
            "name": tool,
            "arguments": arguments,
        }
        return HostedResult(
            item, f"This call waits for a person's approval ({approval_id}); it has not run.", stop=True
        )

    async def _ask(self, tool: str, args: dict[str, Any], arguments: str) -> ApprovalRecord:
        agent = self.principal.agent
        assert agent is not None
        created = now()
        trust = self.tools.trust
        tier = await trust.tier(self.server, tool) if trust is not None else None
        return await self.tools.store.create_approval(
            tier=tier,
            id=_id("mcpr_"),
            agent=agent.spiffe_id,
            agent_id=agent.agent_id,
            version=agent.version,
            team_id=self.principal.team_id,
            server=self.label,
            tool=tool,
            args_sha256=args_digest(args),
            arguments=arguments,
            response_id=self.ctx.response_id,
            created_at=created,
            expires_at=created + timedelta(seconds=self.tools.approval_timeout_s),
        )

    async def _run(
        self, tool: str, args: dict[str, Any], item_id: str | None = None, approval: Any = None,
        arguments: str | None = None,
    ) -> CallOutcome:  # fmt: skip
        return await self.tools.gateway.call(
            self.principal, self.label, tool, args, via="responses", call_id=item_id or _id("mcp_"),
            parent=self._parent, response_id=self.ctx.response_id, approval=approval,
            arguments_text=arguments,
        )  # fmt: skip

    def _call_item(
        self, tool: str, arguments: str, output: str | None, error: dict[str, Any] | None, **extra: Any
    ) -> dict[str, Any]:
        return {
            "type": "mcp_call",
            "id": extra.pop("id", None) or _id("mcp_"),
            "server_label": self.label,
            "name": tool,
            "arguments": arguments,
            "output": output,
            "error": error,
            "status": "failed" if error is not None else "completed",
            **extra,
        }

    def _outcome_item(self, tool: str, arguments: str, o: CallOutcome, **extra: Any) -> dict[str, Any]:
        error: dict[str, Any] | None = None
        if o.status == "ok":
            return self._call_item(tool, arguments, o.text(), None, id=o.call_id, **extra)
        if o.result is not None:  # the tool's own error result
            content = [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in o.result.content]
            error = {"type": "mcp_tool_execution_error", "content": content}
        elif o.status == "timeout":
            error = {
                "type": "http_error",
                "code": 504,
                "message": o.error or "the tool server did not answer",
            }
        elif o.status == "denied":
            error = {"type": "http_error", "code": 403, "message": o.error or "not allowed"}
        elif o.status == "pending":
            aid = o.approval.id if o.approval is not None else "?"
            error = {"type": "http_error", "code": 403, "message": f"waits for a person's approval ({aid})"}
        else:
            error = {"type": "http_error", "code": 502, "message": o.error or "the tool server failed"}
        return self._call_item(tool, arguments, None, error, id=o.call_id, **extra)

    @staticmethod
    def _model_text(o: CallOutcome) -> str:
        if o.status == "ok":
            return o.text()
        return f"The tool call failed: {o.text() if o.result is not None else o.error}"

    # -- approvals answered: before the model's first round --------------------------------------

    async def resume(self) -> list[HostedResult]:
        agent = self.principal.agent
        assert agent is not None
        store = self.tools.store
        answered: dict[str, tuple[int, dict[str, Any], ApprovalRecord]] = {}
        for i, item in enumerate(self.ctx.input_items):
            if not isinstance(item, dict) or item.get("type") != "mcp_approval_response":
                continue
            rid = item["approval_request_id"]
            param = f"input.{i}.approval_request_id"
            found = await store.get_approval(rid)
            if found is None or found.agent != agent.spiffe_id or found.team_id != self.principal.team_id:
                raise _bad(param, f"No approval request with id '{rid}'.", "approval_not_found")
            if found.server != self.label:
                continue  # another mcp tool of this request answers it
            answered[rid] = (i, item, found)
        results: list[HostedResult] = []
        for rid, (i, item, found) in answered.items():
            param = f"input.{i}.approval_request_id"
            approve = item["approve"] is True
            if found.status == "pending" and approve and found.tier == "destructive":
                # trusted execution: a destructive call needs a person, never the agent's own yes
                results.append(self._not_run(found, (
                    f"The call {found.id} did not run: it is destructive and waits for a person's "
                    f"approval (m2a approvals approve {found.id}); the agent cannot approve it itself."
                )))  # fmt: skip
                continue
            if found.status == "pending":
                by = f"agent {agent.spiffe_id} (mcp_approval_response)"
                try:
                    found = await store.decide(rid, approve, by, item.get("reason"))
                except ToolStoreError:  # decided meanwhile (or expired): that decision stands
                    found = await store.get_approval(rid) or found
            if found.status == "expired":
                raise _bad(
                    param,
                    f"The approval request '{rid}' expired at {found.expires_at.isoformat()}; "
                    "ask again (the call did not run).",
                    "approval_expired",
                )
            if found.status == "approved" and approve:
                if found.used_at is not None or not await store.claim(rid):
                    raise _bad(
                        param,
                        f"The approval request '{rid}' was used already: an approved call runs once.",
                        "approval_used",
                    )
                results.append(await self._run_approved(found))
            else:
                why = (
                    "the caller declined to run it"
                    if found.status == "approved"
                    else f"it was denied ({found.decided_by}{': ' + found.reason if found.reason else ''})"
                )
                results.append(self._not_run(found, f"The call {found.id} did not run: {why}."))
        if self.ctx.previous_response_id is not None:  # decided out of band (admin API, CLI)
            for found in await store.list_approvals(
                response_id=self.ctx.previous_response_id, agent=agent.spiffe_id
            ):
                if found.id in answered or found.server != self.label or found.used_at is not None:
                    continue
                if found.status == "approved" and await store.claim(found.id):
                    results.append(await self._run_approved(found))
                elif found.status == "denied":
                    reason = f": {found.reason}" if found.reason else ""
                    results.append(
                        self._not_run(
                            found,
                            f"The call {found.id} did not run: it was denied ({found.decided_by}{reason}).",
                        )
                    )
        return results

    async def _run_approved(self, found: ApprovalRecord) -> HostedResult:
        try:
            args = json.loads(found.arguments)
        except ValueError:
            args = {}
        outcome = await self._run(found.tool, args if isinstance(args, dict) else {}, approval=found)
        item = self._outcome_item(found.tool, found.arguments, outcome, approval_request_id=found.id)
        text = self._model_text(outcome)
        return HostedResult(item, text, messages=self._messages(found, outcome.call_id, text))

    def _not_run(self, found: ApprovalRecord, text: str) -> HostedResult:
        return HostedResult(None, text, messages=self._messages(found, _id("call_"), text))

    def _messages(self, found: ApprovalRecord, call_id: str, text: str) -> list[dict[str, Any]]:
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": exposed_name(self.label, found.tool), "arguments": found.arguments},
        }
        return [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": text},
        ]


# -- reading the tool's spec ---------------------------------------------------------------------


def _approval_rule(value: Any, param: str) -> tuple[str, set[str], set[str]]:
    if value is None or value == "always":
        return "always", set(), set()
    if value == "never":
        return "never", set(), set()
    if isinstance(value, dict) and set(value) <= {"always", "never"}:
        sets: dict[str, set[str]] = {"always": set(), "never": set()}
        for key, spec in value.items():
            if spec is None:
                continue
            if not isinstance(spec, dict) or not set(spec) <= {"tool_names", "read_only"}:
                raise _bad(f"{param}.{key}", "must be an object with tool_names")
            sets[key] = set(_names(spec.get("tool_names") or [], f"{param}.{key}.tool_names"))
        return "always", sets["always"], sets["never"]
    raise _bad(
        param, "must be 'always', 'never' or {never: {tool_names: [...]}, always: {tool_names: [...]}}"
    )


async def mcp_tool(spec: dict[str, Any], ctx: ToolContext) -> McpToolset:
    """The hosted-tool factory for ``{"type": "mcp", ...}`` (see the module docstring)."""
    where = f"tools.{ctx.index}"
    tools = tools_of(ctx.request.app)
    if tools is None:
        raise _bad(f"{where}.type", "the tool type 'mcp' is not served by this gateway", "unsupported_tool")
    p = ctx.principal
    if p.agent is None:
        raise GatewayError(
            403,
            "The mcp tool is for agents: an API key has no manifest, so no tools. Use the agent's token.",
            param=where,
            code="agent_token_required",
        )
    unknown = sorted(set(spec) - _KNOWN_FIELDS)
    if unknown:
        raise _bad(f"{where}.{unknown[0]}", "unknown field of an mcp tool")
    for name in _REFUSED_FIELDS:
        if spec.get(name) is not None:
            raise _bad(
                f"{where}.{name}",
                f"'{name}' is not accepted: m2a reaches only MCP servers registered in it, with its own "
                "credentials for them",
                "unsupported_parameter",
            )
    label = spec.get("server_label")
    if not isinstance(label, str) or not label:
        raise _bad(f"{where}.server_label", "Missing required parameter: 'server_label'.", "missing_required")
    allowed = (await tools.gateway.grants(p)).get(label)
    if allowed is None:
        raise GatewayError(
            403, f"The MCP server '{label}' is not in this agent's manifest.",
            param=f"{where}.server_label", code="tool_not_allowed",
        )  # fmt: skip
    server = await tools.registry.find(label)
    if server is None:
        raise GatewayError(
            404, f"No MCP server named '{label}' is registered in m2a.",
            param=f"{where}.server_label", code="tool_server_not_found",
        )  # fmt: skip
    url = spec.get("server_url")
    if url is not None and url != server.url:
        raise _bad(
            f"{where}.server_url",
            f"'{label}' is registered at another URL: leave server_url out (m2a knows it), or give that one",
        )
    names = set(allowed)
    read_only = False
    chosen = spec.get("allowed_tools")
    if chosen is not None:
        if isinstance(chosen, dict):
            if not set(chosen) <= {"tool_names", "read_only"}:
                raise _bad(f"{where}.allowed_tools", "must be a list of names or {tool_names, read_only}")
            read_only = chosen.get("read_only") is True
            chosen = chosen.get("tool_names")
        if chosen is not None:
            asked = _names(chosen, f"{where}.allowed_tools")
            outside = sorted(set(asked) - names)
            if outside:
                raise GatewayError(
                    403, f"This agent's manifest does not allow {', '.join(outside)} on '{label}'.",
                    param=f"{where}.allowed_tools", code="tool_not_allowed",
                )  # fmt: skip
            names &= set(asked)
    approval = _approval_rule(spec.get("require_approval"), f"{where}.require_approval")
    listed_before = ctx.previous_response_id is not None or any(
        isinstance(i, dict) and i.get("type") == "mcp_list_tools" and i.get("server_label") == label
        for i in ctx.input_items
    )
    error: str | None = None
    try:
        upstream = await tools.registry.tools(server)
    except ToolFailure as exc:
        upstream, error = [], exc.message
    offered = [
        t for t in upstream
        if t.name in names and (not read_only or (t.annotations or {}).get("readOnlyHint") is True)
    ]  # fmt: skip
    listing = None
    if not listed_before or error is not None:
        listing = {
            "type": "mcp_list_tools",
            "id": _id("mcpl_"),
            "server_label": label,
            "tools": [
                {
                    "name": t.name,
                    "description": t.description,
                    "input_schema": t.input_schema,
                    "annotations": t.annotations,
                }
                for t in offered
            ],
            "error": error,
        }
    return McpToolset(tools, p, ctx, server, offered, approval, listing)


# -- items sent back as input --------------------------------------------------------------------


def _approval_response(item: dict[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(item.get("approval_request_id"), str) or not item["approval_request_id"]:
        raise _bad("input", "an mcp_approval_response needs approval_request_id", "missing_required")
    if not isinstance(item.get("approve"), bool):
        raise _bad("input", "an mcp_approval_response needs approve: true or false", "missing_required")
    reason = item.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 1000):
        raise _bad("input", "an mcp_approval_response's reason is text (at most 1000 characters)")
    return []  # the toolset's resume() runs (or not) the call it answers


def _replayed_call(item: dict[str, Any]) -> list[dict[str, Any]]:
    label, name = item.get("server_label"), item.get("name")
    if not isinstance(label, str) or not isinstance(name, str):
        raise _bad("input", "an mcp_call item needs server_label and name")
    arguments = item.get("arguments") if isinstance(item.get("arguments"), str) else "{}"
    call_id = item.get("id") if isinstance(item.get("id"), str) else _id("call_")
    output = item.get("output")
    text = output if isinstance(output, str) else f"The tool call failed: {json.dumps(item.get('error'))}"
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": exposed_name(label, name), "arguments": arguments},
    }
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": text},
    ]


def _nothing(item: dict[str, Any]) -> list[dict[str, Any]]:
    return []


def register() -> None:
    """Serve the ``mcp`` tool type in this process (idempotent)."""
    register_hosted_tool(
        KIND,
        mcp_tool,  # type: ignore[arg-type]
        {
            "mcp_approval_response": _approval_response,
            "mcp_call": _replayed_call,
            "mcp_list_tools": _nothing,
            "mcp_approval_request": _nothing,
        },
    )
