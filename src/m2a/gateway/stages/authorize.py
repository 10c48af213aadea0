"""Stage ``authorize``: the model exists, the caller may use it, and it serves this route.

A model the caller may not use is as unknown as any other name (404, no probing which exist),
unless the operator prefers a 403 that names the missing grant (``gateway.explain_ungranted``).
Once allowed, the request is described on its span.
"""

from __future__ import annotations

from m2a.gateway import tracing
from m2a.gateway.context import RequestContext
from m2a.gateway.errors import GatewayError
from m2a.gateway.stages import Stage, stage


@stage("authorize")
class Authorize(Stage):
    async def before(self, ctx: RequestContext) -> None:
        s, principal, model = self.services, ctx.principal, ctx.model
        assert principal is not None
        task = s.pool.task(model)
        if task is None or (not principal.may_use(model) and not s.cfg.explain_ungranted):
            names = ", ".join(m for m in s.pool.models() if principal.may_use(m)) or "none"
            raise GatewayError(
                404,
                f"The model '{model}' does not exist or you have no access to it. Served models: {names}.",
                param="model",
                code="model_not_found",
            )
        if not principal.may_use(model):
            raise GatewayError(
                403,
                f"Team '{principal.team}' may not use the model '{model}'. Ask an admin for a grant.",
                param="model",
                code="model_not_allowed",
            )
        if task != ctx.task:
            other = "/v1/embeddings" if task == "embed" else "/v1/chat/completions or /v1/completions"
            raise GatewayError(
                400,
                f"The model '{model}' is not served for {ctx.route}; use {other}.",
                param="model",
                code="wrong_endpoint",
            )
        if ctx.span is not None and ctx.span.is_recording():
            tracing.describe_request(ctx.span, model, ctx.payload, principal, s.record_content)
