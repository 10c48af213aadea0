"""Device and host metrics for `/metrics`: a Prometheus collector over the metal readings.

Readings are cached for ``max_age_s`` so frequent scrapes stay cheap; a reading that fails yields
no samples for that device, never a failed scrape. Only the first scrape waits for a reading: after
that a stale cache is served while one worker thread reads afresh, because ``collect`` runs inside
the gateway's event loop and amd-smi or ``xpu-smi dump`` can take a second or more to answer.
"""

from __future__ import annotations

import logging
import threading
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
_HOST = (
    ("m2a_host_cpu_utilization", "Mean CPU busy share (0-1)"),
    ("m2a_host_memory_used_bytes", "Memory in use (total minus available)"),
    ("m2a_host_memory_total_bytes", "Memory in all"),
    ("m2a_host_load1", "Load average over one minute"),
)


class DeviceCollector(Collector):
    def __init__(
        self,
        devices: Callable[[], list[DeviceReading]] = read_devices,
        host: Callable[[], HostReading] = read_host,
        max_age_s: float = 1.0,
        *,
        background: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._devices, self._host, self.max_age_s = devices, host, max_age_s
        self.background, self._clock = background, clock
        self._at: float | None = None  # when the cached readings were taken; None: never
        self._cached: tuple[list[DeviceReading], HostReading | None] = ([], None)
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def refresh(self) -> None:
        """Read every device and the host now (blocking) and keep the result."""
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
        with self._lock:
            self._cached, self._at = (devices, host), self._clock()

    def _refresh_in_background(self) -> None:
        with self._lock:
            if self._worker is not None and self._worker.is_alive():
                return  # one reading at a time: scrapes meanwhile get the cached one
            self._worker = threading.Thread(target=self.refresh, name="m2a-device-readings", daemon=True)
            self._worker.start()

    def _read(self) -> tuple[list[DeviceReading], HostReading | None]:
        if self._at is None:
            self.refresh()
        elif self._clock() - self._at > self.max_age_s:
            if self.background:
                self._refresh_in_background()
            else:
                self.refresh()
        with self._lock:
            return self._cached

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families, without reading anything (registering never waits on a device tool)."""
        for name, doc, _ in _GPU:
            yield GaugeMetricFamily(name, doc, labels=["vendor", "index", "name"])
        for name, doc in _HOST:
            yield GaugeMetricFamily(name, doc)

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
        values = (
            host.cpu_utilization,
            host.memory_used_bytes,
            host.memory_total_bytes,
            host.load_average[0] if host.load_average else None,
        )
        for (name, doc), value in zip(_HOST, values, strict=True):
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=float(value))
