"""The one path every side-effecting action of an agent takes: decide, approve, sign, execute, receipt.

``ActionPath.run(call)``, for an MCP tool call, an HTTP action or a local command alike:

1. **Decide** (``policy.py``): Cedar, default deny, over the agent, the tool and its tier, whether
   the manifest grants it, the on-behalf-of user, the arguments and the guardrails' findings. In
   ``enforce`` a deny stops here (status ``denied``); in ``log_only`` it is recorded and goes on.
2. **Approve** (destructive tier only): the call waits for a person. The first call makes a
   pending approval (``tool_approvals``, durable, with its timeout) and answers ``pending`` with its
   id; once someone allowed to approve (``PolicyEngine.decide_approve``, checked where the approval
   is decided) approves it, the *same* call (same agent, tool and arguments' digest) runs, once: the
   approval is claimed atomically. An approval the agent gave itself never counts for this tier.
3. **Sign** (``intents.py``): an intent naming the agent, its version, the user it acts for, the
   tool, the arguments' RFC 8785 digest, the tier, the deciding policies and their version, the
   guardrails' findings, the approval, the trace, for exactly one executor (``aud``), valid
   ``intent_ttl_s`` (at most 60 s).
4. **Execute** (``executors.py``): the executor admits the intent itself (signature, expiry,
   audience, digest of the arguments it is handed, single use across processes) and only then acts.
5. **Receipt** (``receipts.py``): signed — the intent's digest, the result's digest, status and
   timings — and appended to the audit log (``audit.py``) with every step before it: ``decision``,
   ``approval_requested`` / ``approval_used``, ``intent``, ``refused`` (an intent an executor did not
   admit), ``receipt``. Audit records hold digests and names, never the arguments or results.

Spans (children of the caller's ``execute_tool`` span): ``m2a.policy {tool}``, ``m2a.intent
{tool}``, ``m2a.execute {tool}``; the receipt's hash goes on the ``execute_tool`` span as
``m2a.receipt.hash``. A failure to write an audit record fails the action closed *before* it runs
(no decision record, no action) and is logged after it ran (the action happened; its receipt is
still returned).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from m2a.principal import Principal
from m2a.store.tools import ApprovalRecord, ToolStore, now
from m2a.trust.audit import AuditItem, AuditLog
from m2a.trust.executors import Execution, Executor
from m2a.trust.intents import IntentIssuer, SignedIntent, args_digest
from m2a.trust.policy import CallRequest, Decision, PolicyEngine
from m2a.trust.policy_schema import TIERS
from m2a.trust.receipts import SignedReceipt, result_digest, sign_receipt
from m2a.trust.verify import IntentError

log = logging.getLogger("m2a.trust.actions")



@dataclass(frozen=True)
class ActionCall:
    """One action an agent asks for. ``executor`` names the executor in the path (``mcp``, ``http``,
    ``command``); ``approval`` is an approval the caller already claimed for this call (the Responses
    API's continuation), else the path looks for one itself."""

    principal: Principal
    server: str
    tool: str
    arguments: dict[str, Any]
    tier: str
    executor: str
    call_id: str
    granted: bool = True
    guardrails: tuple[tuple[str, str], ...] = ()  # (detector, action) of the tool rail's findings
    blocked: str | None = None  # why a guardrail refused the call (then nothing is decided or run)
    arguments_text: str | None = None  # as the model wrote them, kept with a pending approval
    response_id: str | None = None
    approval: ApprovalRecord | None = None


@dataclass
class ActionOutcome:
    """``status``: ok, error, timeout (the executor's), denied (policy, or an intent refused),
    pending (waits for ``approval``)."""

    status: str
    error: str | None = None
    execution: Execution | None = None
    decision: Decision | None = None
    approval: ApprovalRecord | None = None
    intent: SignedIntent | None = None
    receipt: SignedReceipt | None = None


class ActionPath:
    def __init__(
        self,
        *,
        policy: PolicyEngine,
        issuer: IntentIssuer,
        audit: AuditLog,
        approvals: ToolStore,
        executors: dict[str, Executor],
        keys: Any,
        iss: str,
        approval_timeout_s: float,
        tracer: Tracer | None = None,
    ) -> None:
        self.policy = policy
        self.issuer = issuer
        self.audit = audit
        self.approvals = approvals
        self.executors = executors
        self.keys = keys
        self.iss = iss
        self.approval_timeout_s = approval_timeout_s
        self.tracer = tracer

    async def run(
        self, call: ActionCall, span: Span | None = None, hints: dict[str, Any] | None = None
    ) -> ActionOutcome:
        agent = call.principal.agent
        if agent is None:
            return ActionOutcome("denied", "only an agent's token acts through the trusted path")
        if call.tier not in TIERS:
            return ActionOutcome("denied", f"the tool's tier {call.tier!r} is not one of {', '.join(TIERS)}")
        executor = self.executors.get(call.executor)
        if executor is None:
            return ActionOutcome("denied", f"no executor '{call.executor}' runs here")
        digest = args_digest(call.arguments)
        where = dict(agent=agent.spiffe_id, team_id=call.principal.team_id, trace_id=_trace_id(span))
        base = {
            "call_id": call.call_id,
            "tool": {"server": call.server, "name": call.tool},
            "args_sha256": digest,
            "tier": call.tier,
        }

        if call.blocked is not None:  # 0. the tool rail refused the arguments: nothing to decide
            guard = [{"detector": d, "action": a} for d, a in call.guardrails]
            body = {**base, "guardrails": guard, "blocked": call.blocked}
            await self.audit.append("decision", body, **where)
            return ActionOutcome("denied", f"refused by guardrails ({call.blocked})")

        # 1. decide
        with self._child(span, f"m2a.policy {call.tool}") as s:
            decision = await self.policy.decide_call(
                CallRequest(
                    agent_spiffe=agent.spiffe_id,
                    agent_id=agent.agent_id,
                    agent_name=agent.name,
                    team=call.principal.team or "",
                    version=agent.version,
                    on_behalf_of=agent.subject,
                    server=call.server,
                    tool=call.tool,
                    tier=call.tier,
                    granted=call.granted,
                    arguments=call.arguments,
                    guardrails=tuple(sorted({d for d, _ in call.guardrails})),
                )
            )
            _decision_attrs(s, decision)
        # The decision's record goes with the intent's, in one write (before anything runs), or alone
        # when the path stops here or waits.
        decided: AuditItem | None = AuditItem(
            "decision", {**base, "decision": _decision_json(decision)}, **where
        )
        if not decision.allowed:
            await self.audit.append_many([decided])
            why = ", ".join(decision.policy_ids) or "no policy permits it"
            return ActionOutcome("denied", f"refused by policy ({why})", decision=decision)

        # 2. approve (destructive)
        approval: ApprovalRecord | None = None
        if call.tier == "destructive":
            await self.audit.append_many([decided])
            decided = None
            approval, waiting = await self._approval(call, digest, base, where)
            if waiting is not None:
                return ActionOutcome(
                    "pending",
                    "this action waits for a person's approval",
                    decision=decision,
                    approval=waiting,
                )

        # 3. sign
        with self._child(span, f"m2a.intent {call.tool}") as s:
            signed = await self.issuer.issue(
                audience=executor.audience,
                agent=agent,
                team=call.principal.team or None,
                server=call.server,
                tool=call.tool,
                arguments=call.arguments,
                tier=call.tier,
                policy={
                    "id": ",".join(decision.policy_ids)[:256] or "-",
                    "version": decision.policy_version,
                    "mode": decision.mode,
                },
                guardrails=[{"detector": d, "action": a} for d, a in call.guardrails],
                approval=approval.id if approval is not None else None,
                trace_id=_trace_id(span),
            )
            if s is not None:
                s.set_attribute("m2a.intent.jti", signed.claims.jti)
                s.set_attribute("m2a.intent.digest", signed.digest)
                s.set_attribute("m2a.intent.audience", executor.audience)
        intended = AuditItem(
            "intent",
            {
                **base,
                "jti": signed.claims.jti,
                "intent_sha256": signed.digest,
                "aud": executor.audience,
                "exp": signed.claims.exp,
                "approval": approval.id if approval else None,
            },
            **where,
        )
        await self.audit.append_many([i for i in (decided, intended) if i is not None])

        # 4. execute
        started = time.time()
        with self._child(span, f"m2a.execute {call.tool}") as s:
            try:
                execution = await executor.run(
                    signed.token, call.arguments, {**(hints or {}), "token": signed.token}
                )
            except IntentError as exc:
                _error(s, exc.code)
                await self._record(
                    "refused",
                    {**base, "jti": signed.claims.jti, "code": exc.code, "message": exc.message},
                    where,
                )
                return ActionOutcome(
                    "denied",
                    f"the executor refused the intent: {exc.code}: {exc.message}",
                    decision=decision,
                    approval=approval,
                    intent=signed,
                )
            finished = time.time()
            if s is not None:
                s.set_attribute("m2a.executor", executor.name)
                s.set_attribute("m2a.execution.status", execution.status)
                if execution.status != "ok":
                    _error(s, execution.status)

        # 5. receipt
        receipt = await sign_receipt(
            self.keys,
            issuer=self.iss,
            intent_jti=signed.claims.jti,
            intent_digest=signed.digest,
            executor=executor.audience,
            status=execution.status,
            result_digest=result_digest(
                execution.digest_of if execution.digest_of is not None else execution.result
            ),
            started_at=started,
            finished_at=finished,
            error=execution.error,
            extra=execution.detail or None,
        )
        if span is not None:
            span.set_attribute("m2a.receipt.hash", receipt.hash)
            span.set_attribute("m2a.intent.jti", signed.claims.jti)
        await self._record(
            "receipt",
            {
                **base,
                "jti": signed.claims.jti,
                "receipt_sha256": receipt.hash,
                "receipt": receipt.token,
                "status": execution.status,
            },
            where,
        )
        return ActionOutcome(
            execution.status, execution.error, execution, decision, approval, signed, receipt
        )

    # -- approvals -------------------------------------------------------------------------------

    async def _approval(
        self, call: ActionCall, digest: str, base: dict[str, Any], where: dict[str, Any]
    ) -> tuple[ApprovalRecord | None, ApprovalRecord | None]:
        """(the approval this run uses, None) — or (None, the approval it waits for)."""
        agent = call.principal.agent
        assert agent is not None
        given = call.approval
        if given is not None:  # claimed by the caller already: it must be this very call's
            ok = (
                given.status == "approved"
                and given.agent == agent.spiffe_id
                and given.server == call.server
                and given.tool == call.tool
                and given.args_sha256 == digest
                and _by_person(given)
            )
            if ok:
                await self.audit.append(
                    "approval_used", {**base, "approval": given.id, "decided_by": given.decided_by}, **where
                )
                return given, None
        for _ in range(3):  # claiming races another process: look again
            found = await self.approvals.find_open(agent.spiffe_id, call.server, call.tool, digest)
            if found is not None and found.status == "approved" and _by_person(found):
                if await self.approvals.claim(found.id):
                    await self.audit.append(
                        "approval_used",
                        {**base, "approval": found.id, "decided_by": found.decided_by},
                        **where,
                    )
                    return found, None
                continue
            if found is not None and found.status == "pending":
                return None, found
            break
        created = now()
        pending = await self.approvals.create_approval(
            id="mcpr_" + secrets.token_hex(12),
            agent=agent.spiffe_id,
            agent_id=agent.agent_id,
            version=agent.version,
            team_id=call.principal.team_id,
            server=call.server,
            tool=call.tool,
            args_sha256=digest,
            arguments=call.arguments_text or json.dumps(call.arguments),
            response_id=call.response_id,
            created_at=created,
            tier=call.tier,
            expires_at=created + timedelta(seconds=self.approval_timeout_s),
        )
        await self.audit.append(
            "approval_requested",
            {**base, "approval": pending.id, "expires_at": pending.expires_at.isoformat()},
            **where,
        )
        return None, pending

    # -- records and spans -----------------------------------------------------------------------

    async def _record(self, kind: str, body: dict[str, Any], where: dict[str, Any]) -> None:
        try:
            await self.audit.append(kind, body, **where)
        except Exception:  # the action ran (or was refused) already: say so loudly, don't hide its result
            log.exception("could not append the %s record of %s to the audit log", kind, body.get("call_id"))

    def _child(self, parent: Span | None, name: str) -> Any:
        if self.tracer is None or parent is None:
            return _NoSpan()
        return self.tracer.start_as_current_span(
            name, context=trace.set_span_in_context(parent), end_on_exit=True, record_exception=False
        )


class _NoSpan:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def decided_item(decided: ApprovalRecord, approve: bool) -> AuditItem:
    """The audit record of an approval decided (through the admin API, or by the CLI on the store)."""
    body = {
        "approval": decided.id,
        "approved": approve,
        "decided_by": decided.decided_by,
        "tool": {"server": decided.server, "name": decided.tool},
        "args_sha256": decided.args_sha256,
        "tier": decided.tier,
    }
    return AuditItem("approval_decided", body, decided.agent, decided.team_id)


def _by_person(a: ApprovalRecord) -> bool:
    """Decided by someone other than an agent (the Responses API's own ``mcp_approval_response`` is
    recorded as ``agent ...``): destructive actions need a person."""
    return bool(a.decided_by) and not str(a.decided_by).startswith("agent ")


def _trace_id(span: Span | None) -> str | None:
    if span is None:
        return None
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def _decision_json(d: Decision) -> dict[str, Any]:
    return {
        "allowed": d.allowed,
        "cedar_allowed": d.cedar_allowed,
        "mode": d.mode,
        "policy_ids": list(d.policy_ids),
        "policy_version": d.policy_version,
        "errors": list(d.errors),
    }


def _decision_attrs(span: Span | None, d: Decision) -> None:
    if span is None:
        return
    span.set_attribute("m2a.policy.decision", "allow" if d.cedar_allowed else "deny")
    span.set_attribute("m2a.policy.mode", d.mode)
    span.set_attribute("m2a.policy.version", d.policy_version)
    span.set_attribute("m2a.policy.ids", list(d.policy_ids))
    if not d.allowed:
        _error(span, "policy_denied")


def _error(span: Span | None, kind: str) -> None:
    if span is not None:
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, kind))
