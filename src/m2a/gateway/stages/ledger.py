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


def _price(services: Services, model: str) -> Price:
    return services.quotas.prices.get(model) or Price()


def begin(services: Services, ctx: RequestContext) -> None:
    """Open the request's record (in the journal at once)."""
    ledger, p = services.ledger, ctx.principal
    assert ledger is not None and p is not None
    price = _price(services, ctx.model)
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
        agent=p.agent.spiffe_id if p.agent is not None else None,  # an agent's token: its SPIFFE id
    )


def record_refused(services: Services, ctx: RequestContext, status: str, http_status: int) -> None:
    """A record for a request refused before the ledger stage (a guardrail's ``blocked``): no tokens."""
    if services.ledger is None or ctx.principal is None:
        return
    begin(services, ctx)
    services.ledger.end(
        ctx.request_id, status=status, http_status=http_status, replica=None, input_tokens=0,
        output_tokens=0, cached_tokens=0, ttft_ms=None, duration_ms=0.0, cost=0.0,
    )  # fmt: skip


@stage("ledger")
class LedgerStage(Stage):
    def __init__(self, services: Services) -> None:
        super().__init__(services)
        if services.ledger is None:
            self.on_chunk = None  # type: ignore[assignment]  # nothing to note, no hook to call

    def _price(self, model: str) -> Price:
        return _price(self.services, model)

    async def before(self, ctx: RequestContext) -> None:
        if self.services.ledger is not None:
            begin(self.services, ctx)

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
