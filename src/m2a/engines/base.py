"""The one small interface every engine adapter implements, and what an adapter produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from m2a.catalog.sources import Format
from m2a.catalog.store import Manifest
from m2a.config import ModelConfig
from m2a.metal.inventory import Inventory


class EngineConfigError(Exception):
    """A model configuration an engine would refuse; the message says why and what would work."""


@dataclass
class EngineSpec:
    """How to run (or reach) one replica of one model."""

    replica_id: str  # "<model>#<n>"
    model: str  # served model name
    engine: str  # "vllm", "llamacpp" or "remote"
    task: str  # "chat" or "embed"
    base_url: str  # OpenAI base URL, ending in /v1
    health_url: str
    metrics_url: str | None = None  # Prometheus text endpoint, for the router
    # Checked once ready, instead of health_url, for engines whose health route waits behind
    # running requests (llama-cpp-python's /v1/models takes the model lock).
    live_url: str | None = None
    argv: list[str] | None = None  # None: nothing to start (remote)
    env: dict[str, str] = field(default_factory=dict)
    api_key: str | None = None  # sent upstream as a bearer token
    max_inflight: int | None = None  # requests it runs at once before the gateway holds the rest
    tokenizer: str | None = None  # for the router's prefix affinity: "hf:<folder>" or "simple"
    kv_events: str | None = None  # ZMQ endpoint where the engine publishes KV-cache events
    takes_priority: bool = False  # it schedules by a request's `priority` field (the gateway sets it)
    notes: list[str] = field(default_factory=list)  # what the adapter chose for the user, to print

    @property
    def managed(self) -> bool:
        return self.argv is not None


class Engine(Protocol):
    """An engine adapter: a name, the model format it reads, and how to launch a replica."""

    name: str
    needs_format: Format | None

    def unavailable(self) -> str | None:
        """Why this engine cannot run here (missing package...), or None when it can."""

    def spec(
        self, cfg: ModelConfig, manifest: Manifest | None, port: int, replica: int, inventory: Inventory
    ) -> EngineSpec:
        """The command and endpoints of replica number ``replica`` listening on ``port``."""
