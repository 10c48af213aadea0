"""Live readings of every accelerator (NVIDIA through NVML or nvidia-smi, AMD through amd-smi or
rocm-smi, Intel through xpu-smi, each where present) and of the host's CPUs and memory (psutil)."""

from __future__ import annotations

import os

import psutil

from m2a.metal.nvidia import read_nvidia
from m2a.metal.readings import DeviceReading, HostReading
from m2a.metal.smi import read_amd, read_intel


def read_devices() -> list[DeviceReading]:
    """Every accelerator found; ``M2A_DEVICE=cpu`` hides them (as inventory does)."""
    if os.environ.get("M2A_DEVICE", "").lower() == "cpu":
        return []
    return [*read_nvidia(), *read_amd(), *read_intel()]


def read_host(interval_s: float | None = None) -> HostReading:
    """CPU use since the last call (or over ``interval_s``, blocking), memory and load."""
    per_cpu = psutil.cpu_percent(interval=interval_s, percpu=True)
    mem = psutil.virtual_memory()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return HostReading(
        cpu_count=psutil.cpu_count() or len(per_cpu),
        cpu_percent=list(per_cpu),
        cpu_utilization=sum(per_cpu) / len(per_cpu) / 100 if per_cpu else None,
        load_average=load,
        memory_total_bytes=int(mem.total),
        memory_used_bytes=int(mem.total - mem.available),
    )
