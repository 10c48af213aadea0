"""A remote OpenAI-compatible server someone already runs (a vLLM fleet, Ollama, a NIM...).

Nothing is started; the supervisor only health-checks it.
"""

from __future__ import annotations

from m2a.catalog.store import Manifest
from m2a.config import ModelConfig
from m2a.engines.base import EngineSpec
from m2a.metal.inventory import Inventory


class RemoteEngine:
    name = "remote"
    needs_format = None

    def unavailable(self) -> str | None:
        return None

    def spec(
        self, cfg: ModelConfig, manifest: Manifest | None, port: int, replica: int, inventory: Inventory
    ) -> EngineSpec:
        url = cfg.urls[replica % len(cfg.urls)] if cfg.urls else cfg.url
        assert url
        base = url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        root = base.removesuffix("/v1")
        return EngineSpec(
            replica_id=f"{cfg.name}#{replica}",
            model=cfg.name,
            engine=self.name,
            task=cfg.task or "chat",
            base_url=base,
            health_url=f"{base}/models",
            metrics_url=f"{root}/metrics",
            api_key=cfg.api_key,
            max_inflight=cfg.max_inflight_per_replica,
            tokenizer=cfg.tokenizer,
            kv_events=cfg.kv_events[replica % len(cfg.kv_events)] if cfg.kv_events else None,
            takes_priority=cfg.priority_scheduling,
        )
