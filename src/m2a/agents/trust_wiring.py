"""Trusted execution wired into the agents layer: what the MCP gateway calls for every tool call.

``Trust`` builds the room ``trust/`` describes from ``trust`` (config), the store and m2a's signing
keys (the agent tokens' keys, so intents, receipts and checkpoints verify against the one JWKS at
``/.well-known/jwks.json``):

- the action path (``trust/actions.py``) with its executors: ``mcp`` (``mcp_executor.py``), ``http``
  and ``command`` for the configured actions, which agents see as the tools of the built-in server
  ``actions`` (``/mcp`` lists ``actions__<name>`` when the manifest grants them);
- a tool's tier: the admin's (``m2a tools add --tier T=destructive``), else the server's MCP
  annotations, else write (``agents/tools.py: tier_of``); an action's from its config;
- the egress proxy (``trust/egress.py``): agents authenticate with their token and reach only their
  manifest's ``egress``; sandboxed commands get a socket of their own (``command_executor.py``);
  each connection is an ``egress`` audit record;
- who may approve a waiting call (``may_approve``: Cedar's ``approve`` action, checked by the
  approvals API, the Responses API and the CLI);
- the policies admin API (``/admin/v1/policies``) and, in the background, audit checkpoints, the
  pruning of consumed intents, the re-reading of policies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry.trace import Span
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.agents.mcp_executor import McpExecutor
from m2a.agents.tools import ToolRegistry, UpstreamTool, tier_of
from m2a.config import TrustConfig
from m2a.principal import AgentRef, Principal
from m2a.store.schema import Team
from m2a.store.tools import ApprovalRecord, ServerRecord, ToolStore
from m2a.trust.actions import ActionCall, ActionOutcome, ActionPath, decided_item
from m2a.trust.allowlist import AllowList
from m2a.trust.audit import AuditLog
from m2a.trust.egress import EgressEvent, EgressIdentity, EgressProxy
from m2a.trust.executors import ACTIONS_SERVER, Executor
from m2a.trust.http_action import HttpActionExecutor
from m2a.trust.intents import IntentIssuer
from m2a.trust.policy import ApproveRequest, Decision, PolicyEngine
from m2a.trust.replay import StoreReplay

log = logging.getLogger("m2a.agents.trust")

EVERY_S = 5.0  # checkpoints, intent pruning, policy re-reads


async def _maybe_await(value: Any) -> None:
    if asyncio.iscoroutine(value):
        await value


class Trust:
    def __init__(
        self,
        cfg: TrustConfig,
        db: AsyncEngine,
        keys: Any,
        issuer: str,
        registry: ToolRegistry,
        store: ToolStore,
        manifests: Any,
        *,
        home: Path | None,
        tracer: Any = None,
        approval_timeout_s: float = 3600.0,
        tokens: Callable[[str], Awaitable[Principal]] | None = None,
        guards: Any = None,
    ) -> None:
        self.cfg = cfg
        self.db = db
        self.keys = keys
        self.issuer = issuer
        self.registry = registry
        self.manifests = manifests
        self.tokens = tokens
        self.guards = guards  # the gateway's Guards: the caller's profile's tool rail over the arguments
        self.actions = {a.name: a for a in cfg.actions}
        policy_dir = cfg.policy_dir or (home / "policies" if home is not None else None)
        self.policy = PolicyEngine(db, policy_dir, cfg.mode)
        self.audit = AuditLog(
            db, keys, issuer=issuer, checkpoint_every=cfg.checkpoint_every,
            checkpoint_interval_s=cfg.checkpoint_interval_s,
        )  # fmt: skip
        self.replay = StoreReplay(
            db, hold=True
        )  # one held connection: under 1 ms a consume (bench/intents.py)
        self.proxy = EgressProxy(
            authenticate=self._egress_identity, on_connection=self._egress_event, tracer=tracer
        )
        executors: dict[str, Executor] = {
            "mcp": McpExecutor(keys, issuer, self.replay, registry),
            "http": HttpActionExecutor(keys, issuer, self.replay, cfg.actions),
        }
        if any(a.kind == "command" for a in cfg.actions):
            from m2a.trust.sandbox import SandboxUnavailable

            try:
                executors["command"] = self._command_executor(home)
            except SandboxUnavailable as exc:  # the gateway runs; every command action is refused
                log.error("no sandbox here, so command actions are refused: %s", exc)
        self.executors = executors
        self.path = ActionPath(
            policy=self.policy, issuer=IntentIssuer(keys, issuer, cfg.intent_ttl_s), audit=self.audit,
            approvals=store, executors=executors, keys=keys, iss=issuer,
            approval_timeout_s=approval_timeout_s, tracer=tracer,
        )  # fmt: skip
        now = datetime.now(UTC)
        self.actions_record = ServerRecord(
            ACTIONS_SERVER, "m2a:actions", {}, max((a.timeout_s for a in cfg.actions), default=30.0),
            "m2a's own actions (trust.actions)", now, now, {a.name: a.tier for a in cfg.actions},
        )  # fmt: skip
        self._task: asyncio.Task[None] | None = None

    def _command_executor(self, home: Path | None) -> Executor:
        from m2a.trust.command import CommandRunner
        from m2a.trust.command_executor import CommandExecutor
        from m2a.trust.sandbox import detect

        scratch = (home / "scratch") if home is not None else Path("/tmp/m2a-scratch")
        scratch.mkdir(parents=True, exist_ok=True)
        runner = CommandRunner(detect(self.cfg.sandbox), scratch)
        return CommandExecutor(
            self.keys, self.issuer, self.replay, self.cfg.actions, runner, self.proxy, self._agent_egress
        )

    def routes(self, access: Any, docs: bool = True) -> list[Any]:
        """``/admin/v1/policies`` (``trust/policies_api.py``) and ``/admin/v1/audit`` (``audit_api.py``)."""
        from m2a.agents.extension import Under  # the extension imports this module
        from m2a.store.policies import PolicyStore
        from m2a.trust.audit_api import PREFIX as AUDIT
        from m2a.trust.audit_api import create_audit_api
        from m2a.trust.policies_api import PREFIX, create_policies_api

        return [
            Under(PREFIX, create_policies_api(self.policy, PolicyStore(self.db), access, docs)),
            Under(AUDIT, create_audit_api(self.audit, access)),  # /admin/v1/audit (read only)
        ]

    # -- the MCP gateway's questions -------------------------------------------------------------

    def has_action(self, name: str) -> bool:
        return name in self.actions

    def action_tools(self) -> list[UpstreamTool]:
        out = []
        for a in self.actions.values():
            hints = {"readOnlyHint": a.tier == "read", "destructiveHint": a.tier == "destructive"}
            out.append(UpstreamTool(a.name, a.description, a.input_schema, hints))
        return out

    async def tier(self, record: ServerRecord, tool: str) -> str:
        if record.name == ACTIONS_SERVER:
            return self.actions[tool].tier
        if tool in record.tiers:
            return record.tiers[tool]
        try:
            offered = {t.name: t for t in await self.registry.tools(record)}
        except Exception:  # the server cannot list its tools now: the call will say so; tier unknown → write
            offered = {}
        return tier_of(record, offered.get(tool), tool)

    async def run(
        self,
        principal: Principal,
        record: ServerRecord,
        tool: str,
        arguments: dict[str, Any],
        *,
        call_id: str,
        span: Span | None,
        carrier: dict[str, str],
        response_id: str | None = None,
        approval: ApprovalRecord | None = None,
        arguments_text: str | None = None,
    ) -> ActionOutcome:
        executor = self.actions[tool].kind if record.name == ACTIONS_SERVER else "mcp"
        guardrails, blocked = await self._tool_rail(principal, arguments)
        call = ActionCall(
            principal=principal, server=record.name, tool=tool, arguments=arguments,
            tier=await self.tier(record, tool), executor=executor, call_id=call_id, granted=True,
            arguments_text=arguments_text, response_id=response_id, approval=approval,
            guardrails=guardrails, blocked=blocked,
        )  # fmt: skip
        hints = {
            "carrier": carrier,
            **({"traceparent": carrier["traceparent"]} if "traceparent" in carrier else {}),
        }
        try:
            return await self.path.run(call, span, hints)
        except Exception:  # fail closed: nothing ran that was not recorded
            log.exception("the trusted path failed for %s/%s (call %s)", record.name, tool, call_id)
            return ActionOutcome("error", "m2a could not run this action through its trusted path")

    async def _tool_rail(
        self, principal: Principal, arguments: dict[str, Any]
    ) -> tuple[tuple[tuple[str, str], ...], str | None]:
        """The caller's guardrail profile's ``tool`` rules over the arguments (as JSON text): the
        findings as (detector, action), and why it refuses (a ``block`` finding), or None."""
        if self.guards is None:
            return (), None
        try:
            policies = self.guards.for_request(principal, "")
        except Exception as exc:  # a profile that is attached but missing: fail closed
            return (), f"guardrail profile unavailable: {getattr(exc, 'message', exc)}"
        text = json.dumps(arguments, ensure_ascii=False)
        found: list[tuple[str, str]] = []
        blocked = None
        for policy in policies:
            if not policy.applies("tool"):
                continue
            verdict = await policy.acheck("tool", text)
            found += [(f.detector, "block") for f in verdict.blocked]
            found += [(f.detector, "redact") for f in verdict.redacted]
            found += [(f.detector, "flag") for f in verdict.flagged]
            if verdict.decision == "deny" and blocked is None:
                blocked = verdict.reason or "denied"
        return tuple(dict.fromkeys(found)), blocked

    async def may_approve(self, approver: Principal, approval: ApprovalRecord) -> Decision:
        """Whether this key may decide this approval (Cedar's ``approve``; always enforced)."""
        team = approver.team
        if approver.is_admin or team is None:
            team = await self._team_name(approval.team_id)
        decision = await self.policy.decide_approve(
            ApproveRequest(
                key_id=approver.key_id,
                key_team=approver.team,
                admin=approver.is_admin,
                agent_team=team or "",
                server=approval.server,
                tool=approval.tool,
                tier=approval.tier or "write",
            )  # fmt: skip
        )
        await self.audit.append(
            "approval_check",
            {"approval": approval.id, "key_id": approver.key_id, "allowed": decision.allowed,
             "policy_ids": list(decision.policy_ids), "tier": approval.tier},
            agent=approval.agent, team_id=approval.team_id,
        )  # fmt: skip
        return decision

    async def record_decision(self, decided: ApprovalRecord, approve: bool) -> None:
        """An approval decided (through the API): its audit record."""
        await self.audit.append_many([decided_item(decided, approve)])

    async def _team_name(self, team_id: int | None) -> str | None:
        if team_id is None:
            return None
        async with self.db.connect() as conn:
            return await conn.scalar(select(Team.name).where(Team.id == team_id))

    # -- egress ----------------------------------------------------------------------------------

    async def _agent_egress(self, intent: Any) -> list[str]:
        """The ``egress`` of the manifest the intent's agent version has (none: revoked, unknown)."""
        a = intent.agent
        ref = AgentRef(intent.sub, a.id, a.name, a.version, a.version_id)
        manifest = await self.manifests.of(ref)
        return list(manifest.egress) if manifest is not None else []

    async def _egress_identity(self, token: str) -> EgressIdentity | None:
        if self.tokens is None:
            return None
        try:
            principal = await self.tokens(token)
        except Exception:  # a bad token is a refusal (407), never an error
            return None
        if principal.agent is None:
            return None
        manifest = await self.manifests.of(principal.agent)
        allow = list(manifest.egress) if manifest is not None else []
        return EgressIdentity(
            subject=principal.agent.spiffe_id, team=principal.team, allow=AllowList(allow), tool=None
        )

    async def _egress_event(self, e: EgressEvent) -> None:
        try:
            await self.audit.append(
                "egress",
                {"host": e.host, "port": e.port, "address": e.address, "allowed": e.allowed,
                 "reason": e.reason, "status": e.status, "tool": e.tool, "bytes_up": e.bytes_up,
                 "bytes_down": e.bytes_down, "duration_ms": e.duration_ms},
                agent=e.subject,
            )  # fmt: skip
        except Exception:
            log.exception("could not audit an egress connection to %s:%s", e.host, e.port)

    # -- life ------------------------------------------------------------------------------------

    async def start(self) -> None:
        host, _, port = self.cfg.egress_listen.rpartition(":")
        bound = await self.proxy.start(host.strip("[]") or "127.0.0.1", int(port or 0))
        log.info("egress proxy (HTTP CONNECT) for agents at %s:%s", *bound)
        await self.policy.reload()
        self._task = asyncio.create_task(self._background())

    async def _background(self) -> None:
        while True:
            await asyncio.sleep(EVERY_S)
            for work in (self.audit.maybe_checkpoint, self.replay.prune, self.policy.reload):
                try:
                    await work()
                except Exception:
                    log.exception("trusted execution: %s failed", getattr(work, "__name__", work))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):  # the last records under a signed checkpoint before leaving
            await self.audit.checkpoint()
        for ex in self.executors.values():
            await ex.close()
        await self.proxy.stop()
        await _maybe_await(self.replay.close())
