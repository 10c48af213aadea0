"""The routing pipeline's plugin interface and registry: filters, scorers, pickers.

A request runs through filters (which replicas may take it), then scorers (how good each one is, a
number in [0, 1], combined with the configured weights), then a picker (which one, from the combined
scores). Each plugin is a small class registered by name; the config names them (``RouterConfig``)
and gives each scorer its ``params`` as keyword arguments.

Conventions every plugin keeps:

- a scorer returns a score for each replica it was given, in [0, 1], higher is better; where it has no
  data for a replica (no metrics yet, stale metrics, no prompt tokens) it gives the neutral 0.5, so an
  unknown replica is neither preferred nor shunned; a replica missing from its answer counts as 0.5;
  a scorer that knows nothing of any candidate may return None instead: it abstains, and its weight
  is left out of the combined score;
- plugins that learn from decisions (the prefix index, in-flight tokens, sessions) implement
  ``on_pick(req, ep)`` — called once the replica is chosen — and ``on_done(req, ep)`` — called when the
  request has finished or failed on that replica; both are optional;
- a plugin that needs state shared across the router (the KV-event block index) implements
  ``attach(shared)``, called once after construction.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from m2a.protocol.tokens import block_hashes
from m2a.router.pool import Endpoint

if TYPE_CHECKING:
    from m2a.router.kvindex import KVBlockIndex

NEUTRAL = 0.5


@dataclass(slots=True)
class RouteRequest:
    """What the router knows of one request."""

    model: str
    prompt_tokens: list[int] | None = None  # after the chat template; None when unknown
    block_hashes: list[int] = field(default_factory=list)  # chained hashes of full blocks (tokens.py)
    session: str | None = None  # the session header or the OpenAI ``user`` field
    est_tokens: int = 0  # prompt tokens plus the output expected (max_tokens or a default)
    block_size: int = 16  # the block size ``block_hashes`` were computed with
    _other: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def hashes(self, block_size: int) -> list[int]:
        """The request's block hashes for ``block_size`` (computed from the tokens once if needed)."""
        if block_size == self.block_size and (self.block_hashes or not self.prompt_tokens):
            return self.block_hashes
        if not self.prompt_tokens:
            return []
        got = self._other.get(block_size)
        if got is None:
            got = self._other[block_size] = block_hashes(self.prompt_tokens, block_size)
        return got


@dataclass
class Shared:
    """State shared by all of one router's plugins."""

    kv_index: KVBlockIndex


@runtime_checkable
class Filter(Protocol):
    def filter(self, req: RouteRequest, eps: list[Endpoint]) -> list[Endpoint]: ...


@runtime_checkable
class Scorer(Protocol):
    def score(self, req: RouteRequest, eps: list[Endpoint]) -> dict[str, float] | None: ...


@runtime_checkable
class Picker(Protocol):
    def pick(self, scored: list[tuple[Endpoint, float]], rng: random.Random) -> Endpoint: ...


class Hooks:
    """Optional base for plugins that learn: no-op hooks to override."""

    def on_pick(self, req: RouteRequest, ep: Endpoint) -> None:
        return None

    def on_done(self, req: RouteRequest, ep: Endpoint) -> None:
        return None

    def attach(self, shared: Shared) -> None:
        return None


class UnknownPlugin(ValueError):
    pass


_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {"filter": {}, "scorer": {}, "picker": {}}
T = TypeVar("T")


def _register(kind: str, name: str) -> Callable[[T], T]:
    def deco(factory: T) -> T:
        _REGISTRY[kind][name] = factory  # type: ignore[assignment]
        return factory

    return deco


def register_filter(name: str) -> Callable[[T], T]:
    return _register("filter", name)


def register_scorer(name: str) -> Callable[[T], T]:
    return _register("scorer", name)


def register_picker(name: str) -> Callable[[T], T]:
    return _register("picker", name)


def _load_builtins() -> None:
    from m2a.router import filters, kvindex, pickers, prefix, scorers  # noqa: F401  (they register)


def known(kind: str) -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY[kind])


def build(kind: str, name: str, params: dict[str, Any] | None = None) -> Any:
    """A new plugin of ``kind`` (filter, scorer, picker) registered as ``name``, built with ``params``."""
    _load_builtins()
    factory = _REGISTRY[kind].get(name)
    if factory is None:
        raise UnknownPlugin(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(_REGISTRY[kind]))}")
    try:
        return factory(**(params or {}))
    except TypeError as exc:
        raise ValueError(f"bad params for {kind} {name!r}: {exc}") from exc
