"""Device and host metrics for `/metrics`: a Prometheus collector over the metal readings.

Readings are cached for ``max_age_s`` so frequent scrapes stay cheap; a reading that fails yields
no samples for that device, never a failed scrape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from m2a.metal.devices import read_devices, read_host
from m2a.metal.readings import DeviceReading, HostReading

log = logging.getLogger("m2a.metal.prometheus")
_GPU = (
    ("m2a_gpu_utilization", "Busy share of the last sample period (0-1)", "utilization"),
    ("m2a_gpu_memory_used_bytes", "Device memory in use", "memory_used_bytes"),
    ("m2a_gpu_memory_total_bytes", "Device memory in all", "memory_total_bytes"),
    ("m2a_gpu_power_watts", "Power draw", "power_watts"),
    ("m2a_gpu_temperature_celsius", "Temperature", "temperature_c"),
)


class DeviceCollector(Collector):
    def __init__(
        self,
        devices: Callable[[], list[DeviceReading]] = read_devices,
        host: Callable[[], HostReading] = read_host,
        max_age_s: float = 1.0,
    ) -> None:
        self._devices, self._host, self.max_age_s = devices, host, max_age_s
        self._at = -1e9
        self._cached: tuple[list[DeviceReading], HostReading | None] = ([], None)

    def _read(self) -> tuple[list[DeviceReading], HostReading | None]:
        if time.monotonic() - self._at > self.max_age_s:
            try:
                devices = self._devices()
            except Exception:
                log.warning("device readings failed", exc_info=True)
                devices = []
            try:
                host: HostReading | None = self._host()
            except Exception:
                log.warning("host readings failed", exc_info=True)
                host = None
            self._cached, self._at = (devices, host), time.monotonic()
        return self._cached

    def collect(self) -> Iterator[GaugeMetricFamily]:
        devices, host = self._read()
        for name, doc, field in _GPU:
            family = GaugeMetricFamily(name, doc, labels=["vendor", "index", "name"])
            for d in devices:
                value = getattr(d, field)
                if value is not None:
                    family.add_metric([d.vendor, str(d.index), d.name], float(value))
            yield family
        if host is None:
            return
        for name, doc, value in (
            ("m2a_host_cpu_utilization", "Mean CPU busy share (0-1)", host.cpu_utilization),
            ("m2a_host_memory_used_bytes", "Memory in use (total minus available)", host.memory_used_bytes),
            ("m2a_host_memory_total_bytes", "Memory in all", host.memory_total_bytes),
            (
                "m2a_host_load1",
                "Load average over one minute",
                host.load_average[0] if host.load_average else None,
            ),
        ):
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=float(value))
