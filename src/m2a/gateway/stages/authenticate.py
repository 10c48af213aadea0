"""Stage ``authenticate``: who is calling (an API key's principal), or 401."""

from __future__ import annotations

from m2a.gateway.context import RequestContext
from m2a.gateway.stages import Stage, stage


@stage("authenticate")
class Authenticate(Stage):
    async def before(self, ctx: RequestContext) -> None:
        ctx.principal = await self.services.access.principal(ctx.request)
