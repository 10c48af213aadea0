"""Prometheus metrics of the gateway, in a registry of its own (several apps may live in one process)."""

from __future__ import annotations

from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
MAX_TEAMS = 200  # distinct team label values; later ones share "other" (bounded cardinality)


class _Memo:
    """A labelled metric whose ``labels(*values)`` remembers each child it returned.

    prometheus_client checks and converts the values and takes a lock on every call (3-4 µs, and
    a request makes about ten such calls); a dict lookup on the same values is a tenth of that.
    ``remove`` and ``clear`` forget the remembered children, so none outlives its series."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._memo: dict[tuple[Any, ...], Any] = {}

    def labels(self, *values: Any, **kw: Any) -> Any:
        if kw or not values:
            return super().labels(*values, **kw)  # type: ignore[misc]
        child = self._memo.get(values)
        if child is None:
            child = self._memo[values] = super().labels(*values)  # type: ignore[misc]
        return child

    def remove(self, *values: Any) -> None:
        self._memo.clear()
        super().remove(*values)  # type: ignore[misc]

    def clear(self) -> None:
        self._memo.clear()
        super().clear()  # type: ignore[misc]


class Counter(_Memo, prometheus_client.Counter):
    pass


class Histogram(_Memo, prometheus_client.Histogram):
    pass


class Gauge(_Memo, prometheus_client.Gauge):
    pass


class BoundedLabel:
    """Keeps a label's distinct values under a limit: values past it are reported as ``other``."""

    def __init__(self, limit: int = MAX_TEAMS) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        value = value or "-"
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit:
            return "other"
        self._seen.add(value)
        return value


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "m2a_requests", "Requests answered by the gateway", ["route", "model", "status"], registry=r
        )
        self.duration = Histogram(
            "m2a_request_duration_seconds",
            "Whole request time",
            ["route", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "m2a_time_to_first_byte_seconds",
            "Time to the first streamed byte from the engine",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("m2a_inflight_requests", "Requests in flight to engines", ["model"], registry=r)
        self.upstream_errors = Counter(
            "m2a_upstream_errors",
            "Engine calls that failed before answering",
            ["model", "replica"],
            registry=r,
        )
        self.cancelled = Counter(
            "m2a_client_disconnects",
            "Requests whose client went away; the engine call was cancelled",
            ["model"],
            registry=r,
        )
        self.team = BoundedLabel()
        self.request_ttft = Histogram(
            "m2a_request_time_to_first_token_seconds",
            "Time to the first streamed token, by model, team, priority and replica",
            ["model", "team", "priority", "replica"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "m2a_time_per_output_token_seconds",
            "Time per output token after the first, by model, team and priority",
            ["model", "team", "priority"],
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.outcomes = Counter(
            "m2a_request_outcomes",
            "Requests that reached an engine, by model, team, priority, replica and status",
            ["model", "team", "priority", "replica", "status"],
            registry=r,
        )
        self.route_decisions = Counter(
            "m2a_route_decisions",
            "Replica choices, by model, replica and policy",
            ["model", "replica", "policy"],
            registry=r,
        )
        self.replica_healthy = Gauge(
            "m2a_replica_healthy", "1 when a replica is in the pool", ["model", "replica"], registry=r
        )
        self.quota_refusals = Counter(
            "m2a_quota_refusals", "Requests refused by a quota (429)", ["team", "code"], registry=r
        )
        self.tokens = Counter(
            "m2a_tokens",
            "Tokens by model, team and kind (input, output)",
            ["model", "team", "kind"],
            registry=r,
        )
        self.priority_wait = Histogram(
            "m2a_priority_wait_seconds",
            "Time held at the gateway while the model was saturated",
            ["model", "priority"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.priority_shed = Counter(
            "m2a_priority_shed",
            "Requests refused because the model was saturated (503)",
            ["model", "priority"],
            registry=r,
        )
        self.guardrail_checks = Counter(
            "m2a_guardrail_checks",
            "Guardrail checks by direction (input, output, tool), profile, decision and team",
            ["direction", "profile", "decision", "team"],
            registry=r,
        )
        self.guardrail_findings = Counter(
            "m2a_guardrail_findings",
            "Guardrail findings acted on, by detector, category, action and team",
            ["detector", "category", "action", "team"],
            registry=r,
        )
        self.guardrail_errors = Counter(
            "m2a_guardrail_errors", "Detectors that failed or timed out", ["detector", "error"], registry=r
        )
        self.guardrail_seconds = Histogram(
            "m2a_guardrail_seconds",
            "Time spent in one guardrail check",
            ["direction"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5),
            registry=r,
        )
        self.priority_waiting = Gauge(
            "m2a_priority_waiting", "Requests held at the gateway now", ["model"], registry=r
        )
