"""The router: filters → weighted scorers → picker, composed per model from ``RouterConfig``.

Use from the gateway (one ``Router`` per gateway process)::

    router = Router(pool, {name: cfg.router for models with their own}, default=config.router)
    tokens = prompt_tokens(tokenizer, payload)             # tokens.py; a thread for long prompts
    req = router.request(model, payload, tokens, headers)  # session, block hashes, token estimate
    decision = router.pick(req, exclude=frozenset(tried))  # None: no candidate replica
    ...                                                    # send to decision.endpoint
    router.done(req, decision.endpoint)                    # finished, failed, or given up: once per pick

``pick`` calls the plugins' ``on_pick`` hooks (the prefix index learns the request's blocks, in-flight
tokens grow); ``done`` calls ``on_done``. The gateway keeps ``Endpoint.inflight`` itself, as with
``Pool.pick``. Combined score: the weighted mean of the scorers' scores (weights from the config,
a scorer of weight 0 is not run, a scorer that abstains is left out of the mean); with no scorer
every candidate scores 0.5 and the picker decides.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from m2a.config import RouterConfig
from m2a.protocol.tokens import block_hashes
from m2a.router.kvindex import KVBlockIndex
from m2a.router.plugins import NEUTRAL, Filter, Hooks, Picker, RouteRequest, Scorer, Shared, build
from m2a.router.pool import Endpoint, Pool

DEFAULT_MAX_TOKENS = 256  # expected output tokens when a request sets no max_tokens
SINGLE = "least_inflight"  # the picker named for a model's only replica (the least busy, trivially)


@dataclass
class Decision:
    endpoint: Endpoint
    scores: dict[str, dict[str, float]]  # scorer → replica id → score
    total: dict[str, float]  # replica id → combined score
    picker: str
    candidates: int

    def attributes(self) -> dict[str, Any]:
        """Span attributes: the chosen replica, its scores, and every candidate's combined score."""
        rid = self.endpoint.id
        attrs: dict[str, Any] = {
            "m2a.replica": rid,
            "m2a.route.picker": self.picker,
            "m2a.route.candidates": self.candidates,
            "m2a.route.score": round(self.total[rid], 4),
            "m2a.route.totals": [f"{k}={v:.4f}" for k, v in self.total.items()],
        }
        for name, by_replica in self.scores.items():
            attrs[f"m2a.route.score.{name}"] = round(by_replica.get(rid, NEUTRAL), 4)
        return attrs


class Pipeline:
    """One model's plugins, built from its ``RouterConfig``."""

    def __init__(self, config: RouterConfig, shared: Shared) -> None:
        self.config = config
        self.filters: list[Filter] = [build("filter", name) for name in config.filters]
        self.scorers: list[tuple[str, float, Scorer]] = []
        for sc in config.scorers:
            name = sc.name
            n = 2
            while any(name == s[0] for s in self.scorers):
                name, n = f"{sc.name}#{n}", n + 1
            self.scorers.append((name, sc.weight, build("scorer", sc.name, sc.params)))
        self.picker_name = config.picker
        self.picker: Picker = build("picker", config.picker)
        plugins: list[Any] = [*self.filters, *(s for _, _, s in self.scorers), self.picker]
        for p in plugins:
            if hasattr(p, "attach"):
                p.attach(shared)
        self.on_pick = [p.on_pick for p in plugins if _overrides(p, "on_pick")]
        self.on_done = [p.on_done for p in plugins if _overrides(p, "on_done")]
        self.active = [(n, w, s) for n, w, s in self.scorers if w > 0]
        prefix = next((s for s in config.scorers if s.name == "prefix"), None)
        self.block_size = int(prefix.params.get("block_size", 16)) if prefix else 16
        self.hash_blocks = prefix is not None and prefix.weight > 0  # else hashed on demand only


def _overrides(plugin: Any, hook: str) -> bool:
    """Whether ``plugin`` has ``hook`` other than ``Hooks``' no-op (no-ops are not called)."""
    method = getattr(type(plugin), hook, None)
    return callable(method) and method is not getattr(Hooks, hook)


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return value or None


class Router:
    def __init__(
        self,
        pool: Pool,
        configs: Mapping[str, RouterConfig] | None = None,
        default: RouterConfig | None = None,
        seed: int | None = None,
        kv_index: KVBlockIndex | None = None,
    ) -> None:
        self.pool = pool
        self.configs = dict(configs or {})
        self.default = default or RouterConfig()
        self.rng = random.Random(seed)
        self.kv_index = kv_index or KVBlockIndex()
        self._shared = Shared(kv_index=self.kv_index)
        self._pipelines: dict[str, Pipeline] = {}
        Pipeline(self.default, self._shared)  # unknown plugin names fail here, at start-up
        for model in self.configs:
            self.pipeline(model)

    def pipeline(self, model: str) -> Pipeline:
        p = self._pipelines.get(model)
        if p is None:
            p = self._pipelines[model] = Pipeline(self.configs.get(model, self.default), self._shared)
        return p

    def scorers(self, name: str) -> list[Any]:
        """Every scorer registered as ``name``, in the pipelines of the pool's models (e.g. to size the
        prefix LRUs of replicas from their engines' KV-cache sizes)."""
        for model in self.pool.models():
            self.pipeline(model)
        return [s for p in self._pipelines.values() for n, _, s in p.scorers if n.split("#")[0] == name]

    def request(
        self,
        model: str,
        payload: Mapping[str, Any] | None = None,
        tokens: list[int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> RouteRequest:
        """A ``RouteRequest`` from a request body, its prompt tokens and its headers: the session from
        the configured header or the OpenAI ``user`` field; block hashes at the prefix scorer's block
        size; expected tokens = prompt + ``max_completion_tokens``/``max_tokens`` (or 256; 0 for
        embeddings)."""
        p = self.pipeline(model)
        body = payload or {}
        session = _header(headers, p.config.session_header)
        if session is None and isinstance(body.get("user"), str) and body["user"]:
            session = body["user"]
        out = body.get("max_completion_tokens") or body.get("max_tokens")
        if not isinstance(out, int):
            out = 0 if "input" in body and "messages" not in body else DEFAULT_MAX_TOKENS
        hashes = block_hashes(tokens, p.block_size) if tokens and p.hash_blocks else []
        return RouteRequest(
            model=model,
            prompt_tokens=tokens,
            block_hashes=hashes,
            session=session,
            est_tokens=(len(tokens) if tokens else 0) + out,
            block_size=p.block_size,
        )

    def pick(self, req: RouteRequest, exclude: frozenset[str] = frozenset()) -> Decision | None:
        """The replica for ``req`` among the model's replicas not in ``exclude`` (tried already)."""
        p = self.pipeline(req.model)
        eps = [e for e in self.pool.endpoints(req.model) if e.id not in exclude]
        for f in p.filters:
            if not eps:
                break
            eps = f.filter(req, eps)
        if not eps:
            return None
        if len(eps) == 1 and len(self.pool.endpoints(req.model)) == 1:  # the only replica: no scoring
            for hook in p.on_pick:
                hook(req, eps[0])
            return Decision(eps[0], {}, {eps[0].id: NEUTRAL}, SINGLE, 1)
        scores: dict[str, dict[str, float]] = {}
        total = dict.fromkeys((e.id for e in eps), 0.0)
        weight_sum = 0.0
        for name, weight, scorer in p.active:
            got = scorer.score(req, eps)
            if got is None:  # the scorer abstains: it knows nothing of these replicas
                continue
            scores[name] = got
            weight_sum += weight
            for rid in total:
                total[rid] += weight * got.get(rid, NEUTRAL)
        if weight_sum > 0:
            total = {rid: v / weight_sum for rid, v in total.items()}
        else:
            total = dict.fromkeys(total, NEUTRAL)
        chosen = p.picker.pick([(e, total[e.id]) for e in eps], self.rng)
        for hook in p.on_pick:
            hook(req, chosen)
        return Decision(chosen, scores, total, p.picker_name, len(eps))

    def done(self, req: RouteRequest, ep: Endpoint) -> None:
        """The request ``pick`` sent to ``ep`` has finished there (answered, failed or abandoned)."""
        for hook in self.pipeline(req.model).on_done:
            hook(req, ep)
