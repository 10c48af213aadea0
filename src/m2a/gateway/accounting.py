"""Admission and accounting of one request: quota, priority slot, and ledger record, tied together.

``admit`` runs after the request is validated and allowed: it reserves the quota estimate, waits
for a priority slot, and begins the ledger record, undoing what it did if a later step refuses.
It returns an ``Admitted``: the output cap the engine must be told (what was reserved) and the
callbacks the forwarder calls as a stream relays tokens and once when the request ends, which
settle the quota with the engine's usage, end the ledger record (priced) and free the slot.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from m2a.config import Price
from m2a.gateway.errors import GatewayError
from m2a.gateway.metrics import GatewayMetrics
from m2a.gateway.priority import PriorityGate
from m2a.gateway.proxy import Outcome
from m2a.gateway.quota import Quotas, estimate_input
from m2a.store.identity import Principal
from m2a.store.ledger import Ledger


def _state(o: Outcome) -> str:
    if o.error:
        return "error"
    return "ok" if o.status < 400 else "cancelled" if o.status == 499 else "error"


@dataclass
class Admitted:
    """What admission hands the forwarder for one request."""

    end: Callable[[Outcome], tuple[int, int, int]]  # once, at the end: the tokens counted
    progress: Callable[[int], None]  # output tokens relayed so far (streams)
    max_tokens: int | None  # the output cap per choice reserved; None: leave the request's own


class ClientGone(Exception):
    """The client disconnected while its request waited for a slot."""


Watch = Callable[[Awaitable[None]], Awaitable[object]]


class Accounting:
    def __init__(
        self, quotas: Quotas, gate: PriorityGate | None, ledger: Ledger | None, metrics: GatewayMetrics
    ) -> None:
        self.quotas = quotas
        self.gate = gate
        self.ledger = ledger
        self.metrics = metrics

    async def admit(
        self,
        p: Principal,
        model: str,
        route: str,
        payload: dict[str, Any],
        request_id: str,
        stream: bool,
        embed: bool,
        watch: Watch | None = None,
    ) -> Admitted:
        """Reserve, wait for a slot, begin the record; what the forwarder needs from here on.

        ``watch`` runs a wait so that it ends early (with None) if the client disconnects;
        ``ClientGone`` is raised then, and everything taken is given back.
        """
        team = self.metrics.team(p.team)
        price = self.quotas.prices.get(model) or Price()
        try:
            ticket = await self.quotas.admit(p, model, payload, request_id, embed)
        except GatewayError as exc:
            self.metrics.quota_refusals.labels(team, exc.code or "").inc()
            raise
        entered = False
        try:
            if self.gate is not None:
                entered = self.gate.try_enter(model, p.priority, p.priority_order)
                if not entered:
                    await self._wait(p, model, watch)
                    entered = True
            if self.ledger is not None:
                self.ledger.begin(
                    request_id,
                    team=p.team,
                    team_id=p.team_id,
                    input_estimate=estimate_input(payload),
                    price=[price.input_per_1m, price.output_per_1m],
                    key_id=p.key_id or None,
                    key_prefix=p.key_prefix,
                    model=model,
                    route=route,
                    priority=p.priority,
                    stream=stream,
                )
        except BaseException:
            if ticket is not None:
                ticket.settle(0, 0, served=False)
            if entered and self.gate is not None:
                self.gate.leave(model)
            raise

        def on_end(o: Outcome) -> tuple[int, int, int]:
            """Settle, record, free the slot; the tokens counted (input, output, cached)."""
            if o.usage is not None:
                used_in, used_out, cached = o.usage.input_tokens, o.usage.output_tokens, o.usage.cached_tokens
            elif o.replica is not None and (o.status == 200 or o.status == 499 or o.chunks):
                # The engine worked on it but sent no usage (cut off, or it cannot): our estimate,
                # and every content chunk relayed to the client counts as an output token.
                used_in, used_out, cached = estimate_input(payload), o.chunks, 0
            else:
                used_in = used_out = cached = 0
            if ticket is not None:
                ticket.settle(used_in, used_out, cached)
            if self.ledger is not None:
                self.ledger.end(
                    request_id,
                    status=_state(o),
                    http_status=o.status,
                    replica=o.replica,
                    input_tokens=used_in,
                    output_tokens=used_out,
                    cached_tokens=cached,
                    ttft_ms=None if o.ttft_s is None else round(o.ttft_s * 1000, 3),
                    duration_ms=round(o.duration_s * 1000, 3),
                    cost=price.cost(used_in, used_out, cached),
                )
            if used_in or used_out:
                self.metrics.tokens.labels(model, team, "input").inc(used_in)
                self.metrics.tokens.labels(model, team, "output").inc(used_out)
            if o.replica is not None:
                m = self.metrics
                m.outcomes.labels(model, team, p.priority, o.replica, _state(o)).inc()
                if o.ttft_s is not None:
                    m.request_ttft.labels(model, team, p.priority, o.replica).observe(o.ttft_s)
                    if used_out > 1 and o.status == 200 and not o.error:
                        m.tpot.labels(model, team, p.priority).observe(
                            (o.duration_s - o.ttft_s) / (used_out - 1)
                        )
            if self.gate is not None:
                self.gate.leave(model)
            return used_in, used_out, cached

        def progress(relayed: int) -> None:
            if self.ledger is not None:
                self.ledger.progress(request_id, relayed)

        return Admitted(on_end, progress, ticket.max_tokens if ticket is not None else None)

    async def _wait(self, p: Principal, model: str, watch: Watch | None) -> None:
        assert self.gate is not None
        t0 = time.perf_counter()
        waiting = self.metrics.priority_waiting.labels(model)
        waiting.inc()
        try:
            wait = self.gate.wait(model, p.priority, p.priority_order)
            if watch is None:
                await wait
            elif await watch(wait) is None:
                raise ClientGone
        except GatewayError:
            self.metrics.priority_shed.labels(model, p.priority).inc()
            raise
        finally:
            waiting.dec()
        self.metrics.priority_wait.labels(model, p.priority).observe(time.perf_counter() - t0)
