"""Stage ``trace``: the request's server span, from the first byte to the end (GenAI conventions).

It starts the span (continuing the caller's ``traceparent``) before anything else, so a request
refused at any later stage is traced too; the other stages add their child spans and attributes
to ``ctx.span``; at the end the span gets the outcome: status, tokens, finish reasons, replica.
"""

from __future__ import annotations

from m2a.gateway import tracing
from m2a.gateway.context import RequestContext
from m2a.gateway.stages import Stage, stage


@stage("trace")
class Trace(Stage):
    async def before(self, ctx: RequestContext) -> None:
        tracer = self.services.tracer
        if tracer is not None:
            ctx.span = tracing.start_request(tracer, ctx.request, ctx.route)

    def end(self, ctx: RequestContext) -> None:
        o, span = ctx.outcome, ctx.span
        if span is None or o is None:
            return
        if o.code is not None:  # refused (or left) before an engine
            tracing.fail(span, o.status, o.code, o.message)
            span.end()
            return
        used_in, used_out, cached = ctx.tokens
        tracing.finish(span, o.status, used_in, used_out, cached, o.finish_reasons, o.ttft_s, o.replica)
