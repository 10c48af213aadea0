"""The vector-store backend interface and the registry backends are built from.

A backend keeps the chunks of many vector stores, each chunk with its unit-length embedding and its
text, and each file's attributes, and answers searches over one store. A backend is a class
registered by name with ``@register_backend("name")`` and built with ``build_backend(name, **params)``,
as guardrail detectors and router scorers are. Its API is async; a backend whose driver blocks
(SQLite, numpy) runs that work in a thread.

Contract, for every backend:

- ``add(store_id, file_id, chunks, attributes)`` replaces the file's chunks atomically (a search
  sees all of the new ones or none of them) and creates the store if needed; a store's vectors all
  have the dimension of its first one;
- ``search(store_id, query_vector, query_text, k, filters, mode, score_threshold, weights)`` filters
  by file attributes before ranking (``weights``: hybrid's, ``None`` for ``search.auto_weights``),
  returns at most ``k`` ``Hit`` best first, never chunks of another store, and raises
  ``StoreNotFound`` for a store that does not exist or was deleted while it ran;
- ``usage_bytes(store_id)`` counts, per chunk, its text's UTF-8 bytes and its vector's float32 bytes,
  plus each file's attributes as JSON: a stable figure, independent of how the backend lays it out.

Backends ship with m2a: ``sqlite`` (``stores/sqlite.py``, the default) and ``postgres``
(``stores/postgres.py``: PostgreSQL with pgvector, for scale and several gateway processes); the same
tests run against both.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from m2a.data.filters import Filter
from m2a.data.search import DEFAULT_RESULTS, Hit
from m2a.plugins import Registry

T = TypeVar("T")


class StoreNotFound(LookupError):
    """No vector store by that id (never created, or deleted)."""

    def __init__(self, store_id: str) -> None:
        super().__init__(f"no vector store {store_id!r}")
        self.store_id = store_id


class DimensionMismatch(ValueError):
    """A vector whose dimension is not the store's."""


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """A chunk to store: its text, its span in the parsed file, its embedding."""

    index: int
    start: int
    end: int
    text: str
    vector: Sequence[float] | np.ndarray


def record_bytes(text: str, dim: int) -> int:
    """What one chunk adds to ``usage_bytes``."""
    return len(text.encode("utf-8")) + 4 * dim


def attributes_bytes(attributes: Mapping[str, Any]) -> int:
    return len(json.dumps(attributes, separators=(",", ":"), sort_keys=True).encode()) if attributes else 0


class VectorBackend(ABC):
    name: str  # set by the registry

    @abstractmethod
    async def create_store(self, store_id: str) -> None:
        """Make an empty store (nothing if it exists)."""

    @abstractmethod
    async def has_store(self, store_id: str) -> bool: ...

    @abstractmethod
    async def add(
        self,
        store_id: str,
        file_id: str,
        chunks: Sequence[ChunkRecord],
        attributes: Mapping[str, Any] | None = None,
    ) -> int:
        """Store a file's chunks (replacing any it had); returns the file's ``usage_bytes``."""

    @abstractmethod
    async def set_attributes(self, store_id: str, file_id: str, attributes: Mapping[str, Any]) -> bool:
        """Replace a file's attributes; False when the store has no such file."""

    @abstractmethod
    async def delete_file(self, store_id: str, file_id: str) -> bool:
        """Remove a file's chunks; False when the store has no such file."""

    @abstractmethod
    async def delete_store(self, store_id: str) -> bool:
        """Remove a store and all its chunks; False when there was none."""

    @abstractmethod
    async def search(
        self,
        store_id: str,
        query_vector: Sequence[float] | np.ndarray | None,
        query_text: str | None,
        k: int = DEFAULT_RESULTS,
        filters: Mapping[str, Any] | Filter | None = None,
        mode: str = "hybrid",
        score_threshold: float = 0.0,
        weights: tuple[float, float] | None = None,
    ) -> list[Hit]:
        """The best ``k`` chunks of the store for the query (see the module's docstring)."""

    @abstractmethod
    async def usage_bytes(self, store_id: str) -> int: ...

    @abstractmethod
    async def file_ids(self, store_id: str) -> list[str]: ...

    async def close(self) -> None:  # noqa: B027  (optional for a backend)
        """Release connections."""


class UnknownBackend(ValueError):
    pass


def _load_builtins() -> None:
    from m2a.data.stores import postgres, sqlite  # noqa: F401  (they register)


_BACKENDS = Registry("vector store backend", _load_builtins, UnknownBackend)
register_backend = _BACKENDS.register  # @register_backend("name") on a VectorBackend subclass
known_backends = _BACKENDS.known


def build_backend(name: str, **params: Any) -> VectorBackend:
    """A new backend registered as ``name``, built with ``params`` (its keyword arguments)."""
    return _BACKENDS.build(name, params)  # type: ignore[no-any-return]
