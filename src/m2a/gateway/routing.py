"""What the routing pipeline needs from a request: its session and expected size for every model,
and its prompt as tokens for models with several replicas (a single replica leaves nothing to
prefer, so its requests are never tokenized).

Tokenizers are loaded in the background at start (transformers is a slow import); until a model's
is ready, or when it cannot read a prompt, the router routes on load alone. The replicas' KV-cache
events, where their engines publish them, are subscribed to here too (``router.kvevents``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from m2a.protocol.tokens import Tokenizer, load_tokenizer, prompt_tokens
from m2a.router.kvevents import KVEventSubscriber
from m2a.router.pipeline import Router
from m2a.router.plugins import RouteRequest
from m2a.router.pool import Pool

log = logging.getLogger("m2a.gateway.routing")


class RouteRequests:
    def __init__(self, pool: Pool, router: Router) -> None:
        self.pool = pool
        self.router = router
        self.tokenizers: dict[str, Tokenizer] = {}  # per model with several replicas, once loaded
        multi = [e for m in pool.models() if len(pool.endpoints(m)) > 1 for e in pool.endpoints(m)]
        self.kv_events = KVEventSubscriber(router.kv_index, {e.id: e.kv_events for e in multi if e.kv_events})
        self._loading: asyncio.Task[None] | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="m2a-tokenize")

    def start(self) -> None:
        self._loading = asyncio.create_task(self.load())
        self.kv_events.start()

    async def close(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
        await self.kv_events.close()
        self._worker.shutdown(wait=False, cancel_futures=True)

    async def load(self) -> None:
        """Load each multi-replica model's tokenizer, off the event loop."""
        for model in self.pool.models():
            eps = self.pool.endpoints(model)
            ref = next((e.tokenizer for e in eps if e.tokenizer), None)
            if len(eps) < 2 or ref is None:
                continue
            try:
                tok = load_tokenizer(ref)
                await asyncio.to_thread(tok.encode, "warm up")
                self.tokenizers[model] = tok
            except Exception:  # prefix affinity is lost for this model; routing still works
                log.warning("cannot load tokenizer %s for %s", ref, model, exc_info=True)

    async def build_async(
        self, model: str, payload: dict[str, Any], headers: Mapping[str, str]
    ) -> RouteRequest | None:
        """``build``, with the chat template and tokenizer run in a worker thread (milliseconds for
        a long prompt: never on the event loop)."""
        if len(self.pool.endpoints(model)) < 2:  # one replica: nothing to prefer, no tokens needed
            return self.router.request(model, payload, None, headers)
        tokens = None
        if model in self.tokenizers:  # one worker thread: a tokenizer is not used by two at once
            loop = asyncio.get_running_loop()
            tokens = await loop.run_in_executor(self._worker, self._tokens, model, payload)
        return self.router.request(model, payload, tokens, headers)

    def build(self, model: str, payload: dict[str, Any], headers: Mapping[str, str]) -> RouteRequest | None:
        """The pipeline's view of a request (without tokens for single-replica models)."""
        if len(self.pool.endpoints(model)) < 2:
            return self.router.request(model, payload, None, headers)
        return self.router.request(model, payload, self._tokens(model, payload), headers)

    def _tokens(self, model: str, payload: dict[str, Any]) -> list[int] | None:
        """The prompt as the model's tokens, after its chat template (None: no tokenizer, or it
        cannot render this prompt, so the router routes on load alone)."""
        tok = self.tokenizers.get(model)
        if tok is None:
            return None
        try:
            return prompt_tokens(tok, payload)
        except Exception:  # a template the tokenizer cannot render
            return None


class RoutingMetrics(Collector):
    """Prometheus view of what routing knows: tokenizers loaded, KV events and the index per replica."""

    def __init__(self, routing: RouteRequests) -> None:
        self.routing = routing

    def collect(self) -> Iterator[Metric]:
        tok = GaugeMetricFamily(
            "m2a_router_tokenizer_ready",
            "1 once a model's tokenizer is loaded for routing.",
            labels=["model"],
        )
        for model in self.routing.pool.models():
            if len(self.routing.pool.endpoints(model)) > 1:
                tok.add_metric([model], float(model in self.routing.tokenizers))
        sub = self.routing.kv_events
        events = CounterMetricFamily(
            "m2a_kv_events", "KV-cache events received, by replica.", labels=["replica"]
        )
        gaps = CounterMetricFamily(
            "m2a_kv_event_gaps", "Event sequence gaps and engine restarts, by replica.", labels=["replica"]
        )
        bad = CounterMetricFamily(
            "m2a_kv_event_errors", "Event frames that did not decode.", labels=["replica"]
        )
        blocks = GaugeMetricFamily(
            "m2a_kv_index_blocks", "Blocks the router knows each replica holds.", labels=["replica"]
        )
        for rid, st in sub.stats.items():
            events.add_metric([rid], st.events)
            gaps.add_metric([rid], st.gaps)
            bad.add_metric([rid], st.bad)
            blocks.add_metric([rid], sub.index.blocks(rid))
        yield from (tok, events, gaps, bad, blocks)
