"""Vector-store backends: the interface and registry (``base``) and the built-in ``sqlite`` backend."""

from m2a.data.stores.base import (
    ChunkRecord,
    DimensionMismatch,
    StoreNotFound,
    UnknownBackend,
    VectorBackend,
    build_backend,
    known_backends,
    register_backend,
)

__all__ = [
    "ChunkRecord",
    "DimensionMismatch",
    "StoreNotFound",
    "UnknownBackend",
    "VectorBackend",
    "build_backend",
    "known_backends",
    "register_backend",
]
