"""Stage ``ledger``: the request's usage record, begun before it goes to an engine (in the
journal, so even a killed gateway loses nothing), noted as a stream relays tokens, and ended
before the client's last byte with its status, tokens and cost at the model's price."""

from __future__ import annotations

from typing import TYPE_CHECKING

from m2a.config import Price
from m2a.gateway.context import RequestContext
from m2a.gateway.stages import Stage, stage

if TYPE_CHECKING:
    from m2a.gateway.pipeline import Services



@stage("ledger")
class LedgerStage(Stage):
    def __init__(self, services: Services) -> None:
        super().__init__(services)
        if services.ledger is None:
            self.on_chunk = None  # type: ignore[assignment]  # nothing to note, no hook to call

    def _price(self, model: str) -> Price:
        return self.services.quotas.prices.get(model) or Price()

    async def before(self, ctx: RequestContext) -> None:
        ledger, p = self.services.ledger, ctx.principal
        if ledger is None:
            return
        assert p is not None
        price = self._price(ctx.model)
        ledger.begin(
            ctx.request_id,
            team=p.team,
            team_id=p.team_id,
            input_estimate=ctx.input_estimate,
            price=[price.input_per_1m, price.output_per_1m],
            key_id=p.key_id or None,
            key_prefix=p.key_prefix,
            model=ctx.model,
            route=ctx.route,
            priority=p.priority,
            stream=ctx.stream,
        )

    def on_chunk(self, ctx: RequestContext, data: bytes) -> bytes:  # type: ignore[override]
        assert self.services.ledger is not None
        self.services.ledger.progress(ctx.request_id, ctx.relayed)  # it decides when to write
        return data

    def end(self, ctx: RequestContext) -> None:
        ledger, o = self.services.ledger, ctx.outcome
        if ledger is None or o is None:
            return
        used_in, used_out, cached = ctx.tokens
        ledger.end(
            ctx.request_id,
            status=o.state,
            http_status=o.status,
            replica=o.replica,
            input_tokens=used_in,
            output_tokens=used_out,
            cached_tokens=cached,
            ttft_ms=None if o.ttft_s is None else round(o.ttft_s * 1000, 3),
            duration_ms=round(o.duration_s * 1000, 3),
            cost=self._price(ctx.model).cost(used_in, used_out, cached),
        )
