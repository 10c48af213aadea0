"""llama.cpp through llama-cpp-python's OpenAI-compatible server: reads GGUF files, starts in seconds.

It answers one request at a time (no continuous batching; others wait their turn) and exposes no
Prometheus metrics.
"""

from __future__ import annotations

import importlib.util
import sys

from m2a.catalog.store import Manifest
from m2a.config import ModelConfig
from m2a.engines.base import EngineSpec
from m2a.metal.inventory import Inventory

DEFAULT_CONTEXT = 4096


class LlamaCppEngine:
    name = "llamacpp"
    needs_format = "gguf"

    def unavailable(self) -> str | None:
        for mod in ("llama_cpp", "sse_starlette", "starlette_context"):
            if importlib.util.find_spec(mod) is None:
                return "llama.cpp is not installed (pip install 'm2a[llamacpp]')"
        return None

    def spec(
        self, cfg: ModelConfig, manifest: Manifest | None, port: int, replica: int, inventory: Inventory
    ) -> EngineSpec:
        assert manifest is not None and manifest.path("gguf") is not None
        task = cfg.task or manifest.task
        threads = cfg.cpu_threads or max(1, inventory.cpus // cfg.replicas)
        argv = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(manifest.path("gguf")),
            "--model_alias",
            cfg.name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            str(cfg.max_model_len or DEFAULT_CONTEXT),
            "--n_threads",
            str(threads),
            # By default a new request cuts off the stream in progress; on a shared server they queue.
            "--interrupt_requests",
            "false",
        ]
        if inventory.has_nvidia:
            argv += ["--n_gpu_layers", "-1"]
        if task == "embed":
            argv += ["--embedding", "true"]
        argv += cfg.extra_args
        base = f"http://127.0.0.1:{port}"
        return EngineSpec(
            replica_id=f"{cfg.name}#{replica}",
            model=cfg.name,
            engine=self.name,
            task=task,
            base_url=f"{base}/v1",
            health_url=f"{base}/v1/models",
            live_url=f"{base}/docs",  # answered by the web server alone, even while generating
            metrics_url=None,
            argv=argv,
            max_inflight=cfg.max_inflight_per_replica or 1,  # it runs one request at a time
        )
