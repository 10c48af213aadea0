"""Load scorers and session affinity. Each score is in [0, 1], higher is better.

- ``queue``: the engine's waiting queue, relative to the least-queued candidate:
  ``(min + floor) / (waiting + floor)`` — 1 for the least queued, 0.5 for a replica with one more
  waiting request than it (``floor`` 1), towards 0 for a long queue. Unknown (no or stale metrics):
  0.5; while any candidate's queue is unknown, the known ones are scored against an empty queue
  (``floor / (waiting + floor)``) instead, so that a long queue never looks best just because it is
  the only one known.
- ``kv_usage``: ``1 - usage`` of the engine's KV cache (absolute, not relative). Unknown: 0.5.
- ``inflight``: the router's own requests in flight (``Endpoint.inflight``, kept by the gateway) and
  in-flight tokens (``RouteRequest.est_tokens``, added by ``on_pick`` and removed by ``on_done``), each
  relative to the least-loaded candidate as for ``queue`` (floors 1 request and ``token_floor``
  tokens), averaged with ``request_share`` for requests. Always known.
- ``session``: 1 for the replica that served the request's session last, 0 for the others; 0.5 for
  every replica when there is no session, it is new, or its replica is not a candidate. A bounded
  LRU map (``max_sessions``) remembers sessions. The prefix guard applies (prefix.py): a session's
  replica loaded far above the others loses its affinity and the session moves.
"""

from __future__ import annotations

from collections import OrderedDict

from m2a.router.plugins import NEUTRAL, Hooks, RouteRequest, register_scorer
from m2a.router.pool import Endpoint
from m2a.router.prefix import cool


def relative(values: dict[str, float], floor: float, low: float | None = None) -> dict[str, float]:
    """``(low + floor) / (v + floor)`` for each value, ``low`` the smallest by default: 1 for it."""
    if not values:
        return {}
    low = (min(values.values()) if low is None else low) + floor
    return {k: low / (v + floor) for k, v in values.items()}


@register_scorer("queue")
class QueueScorer:
    def __init__(self, floor: float = 1.0) -> None:
        if floor <= 0:
            raise ValueError("floor must be positive")
        self.floor = floor

    def score(self, req: RouteRequest, eps: list[Endpoint]) -> dict[str, float]:
        known = {e.id: max(0.0, e.waiting) for e in eps if e.waiting is not None}
        scores = relative(known, self.floor, None if len(known) == len(eps) else 0.0)
        return {e.id: scores.get(e.id, NEUTRAL) for e in eps}


@register_scorer("kv_usage")
class KVUsageScorer:
    def score(self, req: RouteRequest, eps: list[Endpoint]) -> dict[str, float]:
        return {e.id: NEUTRAL if e.kv_usage is None else min(1.0, max(0.0, 1.0 - e.kv_usage)) for e in eps}


@register_scorer("inflight")
class InflightScorer(Hooks):
    def __init__(self, token_floor: float = 256.0, request_share: float = 0.5) -> None:
        if token_floor <= 0 or not 0 <= request_share <= 1:
            raise ValueError("token_floor must be positive and request_share in [0, 1]")
        self.token_floor = token_floor
        self.request_share = request_share
        self.tokens: dict[str, int] = {}

    def score(self, req: RouteRequest, eps: list[Endpoint]) -> dict[str, float]:
        reqs = relative({e.id: float(e.inflight) for e in eps}, 1.0)
        toks = relative({e.id: float(self.tokens.get(e.id, 0)) for e in eps}, self.token_floor)
        a = self.request_share
        return {k: a * reqs[k] + (1 - a) * toks[k] for k in reqs}

    def on_pick(self, req: RouteRequest, ep: Endpoint) -> None:
        self.tokens[ep.id] = self.tokens.get(ep.id, 0) + req.est_tokens

    def on_done(self, req: RouteRequest, ep: Endpoint) -> None:
        self.tokens[ep.id] = max(0, self.tokens.get(ep.id, 0) - req.est_tokens)


@register_scorer("session")
class SessionScorer(Hooks):
    def __init__(
        self,
        max_sessions: int = 100_000,
        max_load_ratio: float = 2.0,
        slack: float = 4.0,
        hot_factor: float = 0.0,
    ) -> None:
        self.max_sessions = max(1, max_sessions)
        self.max_load_ratio, self.slack, self.hot_factor = max_load_ratio, slack, hot_factor
        self.last: OrderedDict[str, str] = OrderedDict()

    def score(self, req: RouteRequest, eps: list[Endpoint]) -> dict[str, float]:
        where = self.last.get(req.session) if req.session is not None else None
        if where is None or not any(e.id == where for e in eps):
            return {e.id: NEUTRAL for e in eps}
        scores = {e.id: 1.0 if e.id == where else 0.0 for e in eps}
        cool(scores, eps, self.max_load_ratio, self.slack, self.hot_factor)
        return scores

    def on_pick(self, req: RouteRequest, ep: Endpoint) -> None:
        if req.session is None:
            return
        self.last[req.session] = ep.id
        self.last.move_to_end(req.session)
        while len(self.last) > self.max_sessions:
            self.last.popitem(last=False)
