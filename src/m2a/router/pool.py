"""The pool of replicas behind each served model, with health and in-flight counts."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass


@dataclass
class Endpoint:
    """One replica the gateway can send requests to."""

    id: str
    model: str
    base_url: str  # OpenAI base URL, ending in /v1
    task: str = "chat"
    engine: str = "remote"
    api_key: str | None = None
    metrics_url: str | None = None
    healthy: bool = False
    takes_priority: bool = False  # the engine schedules by a request's `priority` field (vLLM)
    inflight: int = 0
    max_inflight: int | None = None  # None: no limit known
    tokenizer: str | None = None  # how the router reads prompts ("hf:<folder>", "simple"); None: it cannot
    kv_events: str | None = None  # the engine's KV-event publisher (ZMQ endpoint); None: none
    max_output_tokens: int | None = None  # most output tokens a request may ask for; None: no limit known
    # From the engine's own metrics (None: unknown or stale); see router/load.py.
    waiting: float | None = None
    kv_usage: float | None = None
    kv_cache_tokens: int | None = None  # the engine's KV-cache size (vllm:cache_config_info)


class Pool:
    def __init__(self) -> None:
        self._by_model: dict[str, list[Endpoint]] = {}
        self._by_id: dict[str, Endpoint] = {}
        self._turn = itertools.count()
        self._reported: dict[str, bool] = {}  # health as its supervisor (or owner) last reported it
        self._ejected: dict[str, asyncio.TimerHandle] = {}

    def add(self, ep: Endpoint) -> None:
        self._by_model.setdefault(ep.model, []).append(ep)
        self._by_id[ep.id] = ep

    def set_healthy(self, endpoint_id: str, healthy: bool) -> None:
        ep = self._by_id.get(endpoint_id)
        if ep is not None:  # a health report is newer news than an ejection: it ends one
            self._reported[endpoint_id] = healthy
            timer = self._ejected.pop(endpoint_id, None)
            if timer is not None:
                timer.cancel()
            ep.healthy = healthy

    def eject(self, endpoint_id: str, seconds: float) -> bool:
        """Take a replica the gateway could not reach out of the pool for ``seconds`` at once,
        without waiting for its next health check; then it is back as its health says. True if
        it was in the pool until now."""
        ep = self._by_id.get(endpoint_id)
        if ep is None:
            return False
        was = ep.healthy
        self._reported.setdefault(endpoint_id, ep.healthy)
        ep.healthy = False
        old = self._ejected.pop(endpoint_id, None)
        if old is not None:
            old.cancel()

        def back() -> None:
            self._ejected.pop(endpoint_id, None)
            ep.healthy = self._reported.get(endpoint_id, False)

        self._ejected[endpoint_id] = asyncio.get_running_loop().call_later(seconds, back)
        return was

    def models(self) -> list[str]:
        return list(self._by_model)

    def endpoints(self, model: str) -> list[Endpoint]:
        return self._by_model.get(model, [])

    def task(self, model: str) -> str | None:
        eps = self._by_model.get(model)
        return eps[0].task if eps else None

    def max_output(self, model: str) -> int | None:
        """The most output tokens a request to ``model`` may ask for (the smallest of its replicas')."""
        limits = [e.max_output_tokens for e in self._by_model.get(model, []) if e.max_output_tokens]
        return min(limits) if limits else None

    def pick(self, model: str, exclude: frozenset[str] = frozenset()) -> Endpoint | None:
        """The healthy replica with the fewest requests in flight (rotating among equals)."""
        healthy = [e for e in self._by_model.get(model, []) if e.healthy and e.id not in exclude]
        if not healthy:
            return None
        start = next(self._turn) % len(healthy)
        rotated = healthy[start:] + healthy[:start]
        return min(rotated, key=lambda e: e.inflight)

    def all(self) -> list[Endpoint]:
        return list(self._by_id.values())
