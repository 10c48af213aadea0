"""Where `m2a up` puts each replica, worked out from the configuration alone (nothing imported or
started): the GPU of a vLLM replica on an NVIDIA machine, the CPU cores of a CPU replica, nothing
local for a remote one. Mirrors the layout in ``vllm.py`` (CUDA_VISIBLE_DEVICES and core binding).
"""

from __future__ import annotations

from m2a.catalog.builtin import BUILTINS
from m2a.config import Settings
from m2a.engines.vllm import cpu_binding
from m2a.metal.inventory import Inventory


def placement(settings: Settings, inventory: Inventory) -> dict[str, list[str]]:
    """Device label ("nvidia:0", "cpu:0-1", "remote") → the replica ids placed there."""
    out: dict[str, list[str]] = {}
    gpus = [g.index for g in inventory.gpus if g.vendor == "nvidia"]
    for cfg in settings.models:
        builtin = BUILTINS.get(cfg.name)
        task = cfg.task or (builtin.task if builtin else "chat")
        for n in range(cfg.replicas):
            replica = f"{cfg.name}#{n}"
            if cfg.engine == "remote" or cfg.url or cfg.urls:
                label = "remote"
            elif gpus and cfg.engine != "llamacpp":
                label = f"nvidia:{gpus[n % len(gpus)]}"
            elif cfg.engine == "llamacpp":
                label = "cpu:all"
            else:
                label = f"cpu:{cpu_binding(cfg, n, inventory.cpus, task)}"
            out.setdefault(label, []).append(replica)
    return out
