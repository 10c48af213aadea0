"""Find this machine's accelerators: NVIDIA GPUs (nvidia-smi), AMD GPUs (rocm-smi), or only CPUs."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Gpu:
    vendor: str
    index: int
    name: str
    memory_mib: int


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
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit():
            mem = int(float(parts[2])) if parts[2].replace(".", "").isdigit() else 0
            gpus.append(Gpu("nvidia", int(parts[0]), parts[1], mem))
    return gpus


def detect() -> Inventory:
    """Look at the machine. ``M2A_DEVICE=cpu`` hides GPUs (for testing the CPU path on a GPU box)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if os.environ.get("M2A_DEVICE", "").lower() == "cpu":
        return Inventory(cpus)
    return Inventory(cpus, _nvidia())
