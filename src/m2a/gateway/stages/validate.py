"""Stage ``validate``: the body read within its size limit (413), parsed (400, nesting bounded) and
checked against the route's OpenAI schema (400 naming the field)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from m2a.gateway import schemas
from m2a.gateway.body import parse_json, read_body
from m2a.gateway.context import RequestContext
from m2a.gateway.errors import GatewayError
from m2a.gateway.stages import Stage, stage

VALIDATORS: dict[str, Callable[[object], Any]] = {
    "/v1/chat/completions": schemas.validate_chat,
    "/v1/completions": schemas.validate_completion,
    "/v1/embeddings": schemas.validate_embedding,
}


@stage("validate")
class Validate(Stage):
    async def before(self, ctx: RequestContext) -> None:
        ctx.body = await read_body(ctx.request, self.services.cfg.max_body_bytes)
        payload = parse_json(ctx.body)
        try:
            ctx.req = VALIDATORS[ctx.route](payload)
        except schemas.RequestError as exc:
            raise GatewayError(400, exc.message, param=exc.param, code="invalid_request") from exc
        ctx.payload = payload  # type: ignore[assignment]  # validated: a JSON object
