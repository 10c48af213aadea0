"""A registry of plugins by name: what guardrail detectors and vector-store backends are made from.

``Registry(kind, load_builtins, unknown)``: ``register(name)`` is the class decorator (instances get
``.name``), ``known()`` lists the names, ``build(name, params)`` makes one from its keyword
arguments. The built-in plugins are imported on first use (``load_builtins``), so a plugin module
is only loaded when something asks for it. Neutral: it imports nothing of m2a.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Registry:
    def __init__(
        self, kind: str, load_builtins: Callable[[], None], unknown: type[ValueError] = ValueError
    ) -> None:
        self.kind = kind
        self._load = load_builtins
        self._unknown = unknown
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Register a class (or factory) under ``name``; a class gets ``.name`` = name."""

        def deco(factory: T) -> T:
            self._factories[name] = factory  # type: ignore[assignment]
            if isinstance(factory, type):
                factory.name = name  # type: ignore[attr-defined]
            return factory

        return deco

    def known(self) -> list[str]:
        self._load()
        return sorted(self._factories)

    def build(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """A new plugin registered as ``name``, built with ``params`` (its keyword arguments)."""
        self._load()
        factory = self._factories.get(name)
        if factory is None:
            known = ", ".join(sorted(self._factories))
            raise self._unknown(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}")
        try:
            made = factory(**(params or {}))
        except TypeError as exc:
            raise ValueError(f"bad params for {self.kind} {name!r}: {exc}") from exc
        if not getattr(made, "name", None):
            made.name = name
        return made
