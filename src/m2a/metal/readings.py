"""What one look at the hardware returns: a reading per accelerator and one for the host's CPUs.

Plain values only (no handles, no vendor objects), so readings can be cached, compared, printed
as JSON and turned into Prometheus samples. A field is None where the device or tool does not say.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeviceReading:
    """One accelerator as its vendor's management library or tool reports it right now."""

    vendor: str  # "nvidia", "amd" or "intel"
    index: int  # the vendor tool's own index (NVML / nvidia-smi: PCI bus order, as CUDA_VISIBLE_DEVICES)
    name: str
    uuid: str | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    utilization: float | None = None  # busy share of the last sample period, 0-1
    power_watts: float | None = None
    temperature_c: float | None = None
    driver: str | None = None

    @property
    def label(self) -> str:
        """How placements and tables name this device: ``nvidia:0``."""
        return f"{self.vendor}:{self.index}"


@dataclass(frozen=True)
class HostReading:
    """The host's CPUs and memory."""

    cpu_count: int  # logical CPUs
    cpu_percent: list[float] = field(default_factory=list)  # per logical CPU, 0-100
    cpu_utilization: float | None = None  # mean over all CPUs, 0-1
    load_average: tuple[float, float, float] | None = None  # 1, 5, 15 minutes; None where unknown
    memory_total_bytes: int = 0
    memory_used_bytes: int = 0  # total minus available: what programs hold, caches excluded
