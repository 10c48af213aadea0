"""Stage ``route``: the routing pipeline's view of the request (its prompt as the model's tokens,
for prefix affinity), made off the event loop where a tokenizer has work to do. The replica itself
is picked as the request is forwarded, so that a failed connection can pick again."""

from __future__ import annotations

from m2a.gateway.context import RequestContext
from m2a.gateway.stages import Stage, stage


@stage("route")
class Route(Stage):
    async def before(self, ctx: RequestContext) -> None:
        ctx.route_req = await self.services.routing.build_async(ctx.model, ctx.payload, ctx.request.headers)
