"""Find this machine's accelerators for placement: NVIDIA GPUs (NVML, else nvidia-smi), or only CPUs.

Live numbers (use, power, temperature) and other vendors' GPUs are in ``m2a.metal.devices``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from m2a.metal.nvidia import read_nvidia


@dataclass(frozen=True)
class Gpu:
    vendor: str
    index: int
    name: str
    memory_mib: int
    driver: str | None = None
    uuid: str | None = None


@dataclass(frozen=True)
class Inventory:
    cpus: int
    gpus: list[Gpu] = field(default_factory=list)

    @property
    def has_nvidia(self) -> bool:
        return any(g.vendor == "nvidia" for g in self.gpus)

    def describe(self) -> str:
        if not self.gpus:
            return f"{self.cpus} CPU cores, no GPU"
        names = ", ".join(f"{g.name} ({g.memory_mib // 1024} GiB)" for g in self.gpus)
        return f"{self.cpus} CPU cores, {len(self.gpus)} GPU: {names}"


def _nvidia() -> list[Gpu]:
    """NVIDIA GPUs through NVML where the `nvidia-ml-py` package and the driver work, else nvidia-smi."""
    return [
        Gpu("nvidia", r.index, r.name, (r.memory_total_bytes or 0) >> 20, r.driver, r.uuid)
        for r in read_nvidia()
    ]


def detect() -> Inventory:
    """Look at the machine. ``M2A_DEVICE=cpu`` hides GPUs (for testing the CPU path on a GPU box)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if os.environ.get("M2A_DEVICE", "").lower() == "cpu":
        return Inventory(cpus)
    return Inventory(cpus, _nvidia())
