"""Stage ``forward``: the request goes to a replica and the answer comes back, streamed through
unbuffered (``gateway/proxy.py``); the request ends, for every stage, before the client's last
byte."""

from __future__ import annotations

from m2a.gateway.context import RequestContext
from m2a.gateway.proxy import Outgoing
from m2a.gateway.stages import Stage, stage


@stage("forward")
class Forward(Stage):
    async def before(self, ctx: RequestContext) -> None:
        on_chunk = None
        if ctx.chunk_hooks:

            def on_chunk(data: bytes, relayed: int) -> bytes:
                ctx.relayed = relayed
                return ctx.on_chunk(data)

        on_stream_end = on_answer = None
        if ctx.stream_end_hooks:
            on_stream_end = ctx.on_stream_end
        if ctx.answer_hooks:
            on_answer = ctx.on_answer
        out = Outgoing(
            route=ctx.route,
            model=ctx.model,
            engine_path=ctx.engine_path,
            body=ctx.body,
            payload=ctx.payload,
            stream=ctx.stream,
            request_id=ctx.request_id,
            priority=ctx.priority,
            max_tokens=ctx.max_tokens,
            count_usage=True,
            on_end=ctx.finish,
            on_chunk=on_chunk,
            on_stream_end=on_stream_end,
            on_answer=on_answer,
            span=ctx.span,
            route_req=ctx.route_req,
        )
        ctx.response = await self.services.forwarder.forward(ctx.request, out)
