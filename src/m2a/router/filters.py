"""Filters: which replicas may take a request at all.

- ``healthy`` keeps replicas whose health check passes;
- ``not_overloaded`` drops replicas past a load limit — the engine reports more than ``max_waiting``
  queued requests or a KV cache fuller than ``max_kv_usage``, or the router already has
  ``max_inflight`` requests on it — unless that would drop every replica: then it keeps them all
  (the least bad one is picked by the scorers rather than refusing the request). Unknown metrics
  (None) never count as overloaded.

Session affinity is a scorer (scorers.py), not a filter: a session's replica should be preferred,
not required.
"""

from __future__ import annotations

from m2a.router.plugins import RouteRequest, register_filter
from m2a.router.pool import Endpoint


@register_filter("healthy")
class Healthy:
    def filter(self, req: RouteRequest, eps: list[Endpoint]) -> list[Endpoint]:
        return [e for e in eps if e.healthy]


@register_filter("not_overloaded")
class NotOverloaded:
    def __init__(self, max_waiting: float = 64, max_kv_usage: float = 0.98) -> None:
        self.max_waiting = max_waiting
        self.max_kv_usage = max_kv_usage

    def overloaded(self, e: Endpoint) -> bool:
        return (
            (e.waiting is not None and e.waiting > self.max_waiting)
            or (e.kv_usage is not None and e.kv_usage > self.max_kv_usage)
            or (e.max_inflight is not None and e.inflight >= e.max_inflight)
        )

    def filter(self, req: RouteRequest, eps: list[Endpoint]) -> list[Endpoint]:
        kept = [e for e in eps if not self.overloaded(e)]
        return kept or eps
