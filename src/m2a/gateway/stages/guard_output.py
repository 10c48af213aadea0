"""Stage ``guard_output``: the answer through the request's guardrail policies.

Its ``before`` only decides whether the request needs it (a chat or completion with a policy that
checks outputs or tool calls); the work is in the answer hooks:

- a whole answer: each choice's content (or text) under the ``output`` rules and its tool calls'
  names and arguments under the ``tool`` rules, slow detectors included; denied, the client gets 400
  ``content_filter`` instead (the engine's tokens are still billed, the ledger says ``blocked``);
  redacted, the masked answer;
- a stream: a sliding window with a bounded hold-back (``gateway/stream_rail.py``), in-process
  detectors only (a model as judge cannot run per chunk); denied, the stream ends with
  ``finish_reason: "content_filter"`` and an error event.

Detectors that need the request's system prompt (system-prompt leakage) get it from the messages.
"""

from __future__ import annotations

import json
from typing import Any

from m2a.gateway.context import RequestContext, StreamBlocked
from m2a.gateway.guards import Guards, refusal
from m2a.gateway.stages import Stage, stage
from m2a.gateway.stream_rail import Blocked, StreamRail
from m2a.guardrails.base import Context
from m2a.guardrails.policy import Verdict
from m2a.guardrails.run import redact_messages


def system_prompt(payload: dict[str, Any]) -> str | None:
    """The system (and developer) messages' text, for detectors of its leakage."""
    parts: list[str] = []
    for m in payload.get("messages") or []:
        if isinstance(m, dict) and m.get("role") in ("system", "developer"):
            c = m.get("content")
            if isinstance(c, str):
                parts.append(c)
            elif isinstance(c, list):
                parts += [p["text"] for p in c if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return "\n".join(parts) or None


@stage("guard_output")
class GuardOutput(Stage):
    async def before(self, ctx: RequestContext) -> None:
        if ctx.route == "/v1/embeddings" or not ctx.policies:
            return
        mine = [p for p in ctx.policies if p.applies("output") or p.applies("tool")]
        if not ctx.stream:
            ctx.guard_answer = bool(mine)
            return
        policies = [p for p in mine if p.sync_applies("output") or p.sync_applies("tool")]
        if policies:
            hold = max(p.hold_chars for p in policies)
            ctx.rail = StreamRail(
                policies, self._context(ctx, "output"), hold, lambda v: self._record(ctx, v)
            )

    def active(self, ctx: RequestContext) -> bool:
        return ctx.guard_answer or ctx.rail is not None

    def _context(self, ctx: RequestContext, direction: str) -> Context:
        return Context(system_prompt=system_prompt(ctx.payload), direction=direction)

    def _record(self, ctx: RequestContext, v: Verdict) -> None:
        ctx.verdicts.append(v)
        s = self.services
        assert s.guards is not None
        s.guards.record(v, ctx.principal, s.metrics, s.tracer, ctx.span)

    # -- streams -------------------------------------------------------------------------------

    def on_chunk(self, ctx: RequestContext, data: bytes) -> bytes:  # type: ignore[override]
        rail = ctx.rail
        if rail is None:
            return data
        try:
            return rail.feed(data)
        except Blocked as b:
            raise self._blocked(ctx, rail, b.verdict) from None

    def on_stream_end(self, ctx: RequestContext) -> bytes:  # type: ignore[override]
        rail = ctx.rail
        if rail is None:
            return b""
        try:
            return rail.finish()
        except Blocked as b:
            raise self._blocked(ctx, rail, b.verdict) from None

    def _blocked(self, ctx: RequestContext, rail: StreamRail, v: Verdict) -> StreamBlocked:
        ctx.blocked = v
        return StreamBlocked(rail.blocked_tail(v, refusal(v, "answer")))

    # -- whole answers -------------------------------------------------------------------------

    async def on_answer(self, ctx: RequestContext, data: bytes) -> bytes:  # type: ignore[override]
        try:
            answer = json.loads(data)
        except (ValueError, RecursionError):
            return data  # not JSON: nothing we can read (an engine's odd answer passes as it came)
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list):
            return data
        chat = ctx.route == "/v1/chat/completions"
        outputs: list[dict[str, Any]] = []  # one pseudo-message per choice: its text
        tools: list[dict[str, Any]] = []  # and one with its tool calls
        for c in choices:
            msg = (c.get("message") if chat else None) if isinstance(c, dict) else None
            text = (msg or {}).get("content") if chat else (c.get("text") if isinstance(c, dict) else None)
            outputs.append({"content": text if isinstance(text, str) else ""})
            calls = (msg or {}).get("tool_calls")
            calls = calls if isinstance(calls, list) else []
            names = [(c.get("function") or {}).get("name") for c in calls if isinstance(c, dict)]
            # the functions' names are checked (a deny list of tools) with their arguments
            tools.append({"content": "\n".join(n for n in names if isinstance(n, str)), "tool_calls": calls})
        changed = False
        for policy in ctx.policies:
            for direction, items in (("output", outputs), ("tool", tools)):
                if not policy.applies(direction) or not any(
                    i["content"] or i.get("tool_calls") for i in items
                ):
                    continue
                v = await policy.acheck(
                    direction, items, self._context(ctx, direction), Guards.scope(ctx.principal)
                )
                self._record(ctx, v)
                if v.decision == "deny":
                    ctx.blocked = v
                    raise refusal(v, "answer")
                if v.redacted:
                    items[:] = redact_messages(items, v.redacted)
                    changed = True
        if not changed:
            return data
        for c, out, tool in zip(choices, outputs, tools, strict=True):
            if not isinstance(c, dict):
                continue
            if chat and isinstance(c.get("message"), dict):
                if isinstance(c["message"].get("content"), str):
                    c["message"]["content"] = out["content"]
                if tool["tool_calls"]:
                    c["message"]["tool_calls"] = tool["tool_calls"]
            elif not chat and isinstance(c.get("text"), str):
                c["text"] = out["content"]
        return json.dumps(answer).encode()
