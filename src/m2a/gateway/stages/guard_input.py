"""Stage ``guard_input``: the prompt through the guardrail policies the caller and the model have.

Every message of a chat (tool results, role ``tool``, under the ``tool`` rules; the others under
``input``), a completion's prompt(s) and an embedding's input(s) are checked before anything is
reserved or sent. A denied check refuses the request with 400 ``content_filter`` (the category and
the detector named, the text never echoed) and the ledger records it as ``blocked``; a ``redact``
finding is masked in the body the engine receives; a ``flag`` finding is only counted and traced.
Token-id prompts are not text: they pass unchecked.
"""

from __future__ import annotations

import json
from typing import Any

from m2a.gateway.context import RequestContext
from m2a.gateway.guards import Guards, refusal
from m2a.gateway.stages import Stage, stage
from m2a.gateway.stages.ledger import record_refused
from m2a.guardrails.base import Context
from m2a.guardrails.policy import Verdict
from m2a.guardrails.run import redact, redact_messages

FIELDS = {"/v1/chat/completions": "messages", "/v1/completions": "prompt", "/v1/embeddings": "input"}


def texts(value: Any) -> list[str] | str | None:
    """A prompt or input as text: a string, or a list of strings (token ids: None)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


@stage("guard_input")
class GuardInput(Stage):
    async def before(self, ctx: RequestContext) -> None:
        guards = self.services.guards
        if guards is None:
            return
        assert ctx.principal is not None
        ctx.policies = guards.for_request(ctx.principal, ctx.model)
        if not ctx.policies:
            return
        field = FIELDS[ctx.route]
        changed = False
        for policy in ctx.policies:
            if field == "messages":
                changed |= await self._messages(ctx, policy)
            else:
                value = texts(ctx.payload.get(field))
                if value is None or not policy.applies("input"):
                    continue
                v = await self._check(ctx, policy, "input", value, field)
                if v.redacted:
                    ctx.payload[field] = (
                        redact(value, v.redacted)
                        if isinstance(value, str)
                        else redact_messages(value, v.redacted)
                    )
                    changed = True
        if changed:  # the engine gets the masked body
            ctx.body = json.dumps(ctx.payload).encode()

    async def _messages(self, ctx: RequestContext, policy: Any) -> bool:
        messages = ctx.payload["messages"]
        changed = False
        for direction in ("input", "tool"):
            if not policy.applies(direction):
                continue
            index = [
                i for i, m in enumerate(messages)
                if (m.get("role") in ("tool", "function")) == (direction == "tool")
            ]  # fmt: skip
            if not index:
                continue
            subset = [messages[i] for i in index]
            v = await self._check(ctx, policy, direction, subset, "messages")
            if v.redacted:
                for i, msg in zip(index, redact_messages(subset, v.redacted), strict=True):
                    messages[i] = msg
                changed = True
        return changed

    async def _check(
        self, ctx: RequestContext, policy: Any, direction: str, content: Any, param: str
    ) -> Verdict:
        s = self.services
        v = await policy.acheck(direction, content, Context(direction=direction), Guards.scope(ctx.principal))
        ctx.verdicts.append(v)
        assert s.guards is not None
        s.guards.record(v, ctx.principal, s.metrics, s.tracer, ctx.span)
        if v.decision == "deny":
            ctx.blocked = v
            error = refusal(v, "request", param)
            record_refused(s, ctx, "blocked", error.status)  # before the ledger stage: recorded here
            raise error
        return v
