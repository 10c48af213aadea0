"""Where `m2a up` puts each replica, worked out from the configuration alone (nothing imported or
started): the GPU of a vLLM replica on an NVIDIA machine, the CPU cores of a CPU replica, nothing
local for a remote one. Mirrors ``serve.plan`` (the engine ``auto`` picks) and the layout in
``vllm.py`` (CUDA_VISIBLE_DEVICES, core binding) and ``llamacpp.py`` (all layers on the GPUs).

It lives in engines because it needs the engines' own rules (``cpu_binding``, availability);
metal stays below them. The model's task and format come from the configuration, the built-in
list, or the catalog's manifest when the model was imported before; otherwise chat, not GGUF.
"""

from __future__ import annotations

from m2a.catalog.builtin import BUILTINS
from m2a.catalog.store import Catalog, Manifest
from m2a.config import ModelConfig, Settings
from m2a.engines.registry import ENGINES
from m2a.engines.vllm import cpu_binding
from m2a.metal.inventory import Inventory


def _task(cfg: ModelConfig, manifest: Manifest | None) -> str:
    builtin = BUILTINS.get(cfg.name)
    return cfg.task or (manifest.task if manifest else None) or (builtin.task if builtin else "chat")


def _is_gguf(cfg: ModelConfig, manifest: Manifest | None) -> bool:
    if manifest is not None:
        return manifest.path("gguf") is not None
    builtin = BUILTINS.get(cfg.name)
    source = cfg.source or (builtin.source if builtin else "")
    return source.lower().endswith(".gguf")


def engine_for(cfg: ModelConfig, task: str, gguf: bool) -> str:
    """The engine `m2a up` runs the model on (``registry.choose``'s rule); vLLM when none is
    installed yet, since that is what `m2a up` asks for."""
    if cfg.engine != "auto":
        return cfg.engine
    if cfg.url or cfg.urls:
        return "remote"
    if ENGINES["vllm"].unavailable() is None:
        return "vllm"
    if gguf and task != "embed" and ENGINES["llamacpp"].unavailable() is None:
        return "llamacpp"
    return "vllm"


def replica_devices(
    cfg: ModelConfig, engine: str, task: str, replica: int, inventory: Inventory
) -> list[str]:
    """The device labels one replica runs on: ``nvidia:N``, ``cpu:<cores>``, ``cpu:all``, ``remote``."""
    gpus = [g.index for g in inventory.gpus if g.vendor == "nvidia"]
    if engine == "remote":
        return ["remote"]
    if engine == "llamacpp":  # --n_gpu_layers -1 and every GPU visible: llama.cpp splits the layers
        return [f"nvidia:{i}" for i in gpus] or ["cpu:all"]
    if gpus:
        return [f"nvidia:{gpus[replica % len(gpus)]}"]
    return [f"cpu:{cpu_binding(cfg, replica, inventory.cpus, task)}"]


def placement(settings: Settings, inventory: Inventory) -> dict[str, list[str]]:
    """Device label ("nvidia:0", "cpu:0-1", "cpu:all", "remote") → the replica ids placed there."""
    out: dict[str, list[str]] = {}
    for cfg in settings.models:
        manifest = Catalog(settings.home).get(cfg.name)  # None: not imported yet (or unreadable)
        task = _task(cfg, manifest)
        engine = engine_for(cfg, task, _is_gguf(cfg, manifest))
        for n in range(cfg.replicas):
            for label in replica_devices(cfg, engine, task, n, inventory):
                out.setdefault(label, []).append(f"{cfg.name}#{n}")
    return out
