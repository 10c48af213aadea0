"""Stage ``admit``: the quota reservation and the priority slot, in one ``m2a.admission`` span.

Before forwarding it reserves the request's estimate against every limit of the caller (429 over
one; the output cap it reserved is what the engine will be told) and waits for a priority slot on
the model (503 past the deadline), giving the reservation back if the wait fails or the client
leaves. At the end it settles the reservation with the tokens counted, records the request's
metrics and frees the slot.
"""

from __future__ import annotations

import time

from m2a.gateway import tracing
from m2a.gateway.context import RequestContext
from m2a.gateway.errors import GatewayError
from m2a.gateway.pipeline import ClientGone
from m2a.gateway.quota import asked_output
from m2a.gateway.stages import Stage, stage
from m2a.gateway.upstream import unless_disconnected


@stage("admit")
class Admit(Stage):
    async def before(self, ctx: RequestContext) -> None:
        s, p = self.services, ctx.principal
        assert p is not None
        adm = None
        if ctx.span is not None and s.tracer is not None and ctx.span.is_recording():
            adm = tracing.child(
                s.tracer,
                ctx.span,
                "m2a.admission",
                **{
                    "m2a.priority": p.priority,
                    "m2a.priority.order": p.priority_order,
                    "m2a.quota.limits": len(p.limits),
                },
            )
        try:
            await self._admit(ctx)
        except ClientGone:
            if adm is not None:
                adm.set_attribute("m2a.admission.result", "client_disconnected")
                adm.end()
            raise
        except GatewayError as exc:
            if adm is not None:
                adm.set_attribute("m2a.admission.result", exc.code or str(exc.status))
                tracing.fail(adm, exc.status, exc.code, exc.message)
                adm.end()
            raise
        if adm is not None:
            adm.set_attribute("m2a.admission.result", "admitted")
            adm.end()
        # Engines that schedule by priority get the caller's team order (never the client's).
        if ctx.task == "chat" and s.cfg.priorities:
            ctx.priority = p.priority_order

    async def _admit(self, ctx: RequestContext) -> None:
        s, p, model = self.services, ctx.principal, ctx.model
        assert p is not None
        limit = s.pool.max_output(model) if ctx.task == "chat" else None
        asked = asked_output(ctx.payload) if limit is not None else None
        if limit is not None and asked is not None and asked > limit:  # unbounded consumption
            chat_cap = "prompt" not in ctx.payload and ctx.payload.get("max_completion_tokens") is not None
            field = "max_completion_tokens" if chat_cap else "max_tokens"
            raise GatewayError(
                400,
                f"{field} is {asked}, but '{model}' generates at most {limit} tokens per request.",
                param=field,
                code="max_tokens_too_large",
            )
        try:
            ctx.ticket = await s.quotas.admit(
                p, model, ctx.payload, ctx.request_id, ctx.task == "embed", ctx.input_estimate
            )
        except GatewayError as exc:
            s.metrics.quota_refusals.labels(s.metrics.team(p.team), exc.code or "").inc()
            raise
        if s.gate is None:
            return
        try:
            if not s.gate.try_enter(model, p.priority, p.priority_order):
                await self._wait(ctx)
        except BaseException:
            if ctx.ticket is not None:
                ctx.ticket.settle(0, 0, served=False)
            raise

    async def _wait(self, ctx: RequestContext) -> None:
        s, p, model = self.services, ctx.principal, ctx.model
        assert s.gate is not None and p is not None
        t0 = time.perf_counter()
        waiting = s.metrics.priority_waiting.labels(model)
        waiting.inc()
        try:
            wait = s.gate.wait(model, p.priority, p.priority_order)
            if await unless_disconnected(ctx.request, wait) is None:
                raise ClientGone
        except GatewayError:
            s.metrics.priority_shed.labels(model, p.priority).inc()
            raise
        finally:
            waiting.dec()
        s.metrics.priority_wait.labels(model, p.priority).observe(time.perf_counter() - t0)

    def end(self, ctx: RequestContext) -> None:
        s, o, p, model = self.services, ctx.outcome, ctx.principal, ctx.model
        assert o is not None and p is not None
        used_in, used_out, cached = ctx.tokens
        if ctx.ticket is not None:
            # A request refused by a later stage before any engine gives its request back too.
            ctx.ticket.settle(used_in, used_out, cached, served=o.code is None)
        m, team = s.metrics, s.metrics.team(p.team)
        if used_in or used_out:
            m.tokens.labels(model, team, "input").inc(used_in)
            m.tokens.labels(model, team, "output").inc(used_out)
        if o.replica is not None:
            m.outcomes.labels(model, team, p.priority, o.replica, o.state).inc()
            if o.ttft_s is not None:
                m.request_ttft.labels(model, team, p.priority, o.replica).observe(o.ttft_s)
                if used_out > 1 and o.status == 200 and not o.error:
                    m.tpot.labels(model, team, p.priority).observe((o.duration_s - o.ttft_s) / (used_out - 1))
        if s.gate is not None:
            s.gate.leave(model)
