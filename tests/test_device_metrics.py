"""The device collector's Prometheus output, parsed back with the Prometheus text parser: families,
labels and values for several vendors, the reading cache (a fake clock, no sleeping), reads in a
worker thread once a first reading exists, and registration that reads nothing.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from m2a.metal.prometheus import DeviceCollector
from m2a.metal.readings import DeviceReading, HostReading

H100 = DeviceReading(
    "nvidia",
    0,
    "NVIDIA H100 80GB HBM3",
    uuid="GPU-5c1d9a3e",
    memory_total_bytes=85520809984,
    memory_used_bytes=64208502784,
    utilization=0.97,
    power_watts=684.12,
    temperature_c=63.0,
    driver="570.124.06",
)
MI300X = DeviceReading("amd", 0, "AMD Instinct MI300X", memory_total_bytes=196592 << 20, utilization=0.5)
HOST = HostReading(
    cpu_count=2,
    cpu_percent=[30.0, 10.0],
    cpu_utilization=0.2,
    load_average=(0.75, 0.5, 0.25),
    memory_total_bytes=8 << 30,
    memory_used_bytes=3 << 30,
)


class Readings:
    """Stand-in readers that count calls and return what the test sets."""

    def __init__(self, devices: list[DeviceReading], host: HostReading | None = HOST) -> None:
        self.devices, self.host, self.device_reads = devices, host, 0
        self.gate: threading.Event | None = None  # set: a read waits for it
        self.entered = threading.Event()  # a read has begun

    def read_devices(self) -> list[DeviceReading]:
        self.device_reads += 1
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        return list(self.devices)

    def read_host(self) -> HostReading:
        if self.host is None:
            raise OSError("no /proc")
        return self.host


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scrape(collector: DeviceCollector) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def gpu(vendor: str, name: str) -> frozenset[tuple[str, str]]:
    return frozenset({"vendor": vendor, "index": "0", "name": name}.items())


def test_every_family_with_labels_and_units() -> None:
    r = Readings([H100, MI300X])
    m = scrape(DeviceCollector(r.read_devices, r.read_host, background=False))
    nv, amd = gpu("nvidia", H100.name), gpu("amd", MI300X.name)
    assert m[("m2a_gpu_utilization", nv)] == 0.97 and m[("m2a_gpu_utilization", amd)] == 0.5
    assert m[("m2a_gpu_memory_used_bytes", nv)] == 64208502784
    assert m[("m2a_gpu_memory_total_bytes", nv)] == 85520809984
    assert m[("m2a_gpu_memory_total_bytes", amd)] == 196592 << 20
    assert m[("m2a_gpu_power_watts", nv)] == 684.12 and m[("m2a_gpu_temperature_celsius", nv)] == 63.0
    for unknown in ("m2a_gpu_power_watts", "m2a_gpu_temperature_celsius", "m2a_gpu_memory_used_bytes"):
        assert (unknown, amd) not in m  # unknown is absent, never a made-up zero
    host = frozenset()
    assert m[("m2a_host_cpu_utilization", host)] == 0.2 and m[("m2a_host_load1", host)] == 0.75
    assert m[("m2a_host_memory_used_bytes", host)] == 3 << 30
    assert m[("m2a_host_memory_total_bytes", host)] == 8 << 30


def test_a_cpu_only_machine_and_a_failing_host_reading() -> None:
    r = Readings([], host=None)
    m = scrape(DeviceCollector(r.read_devices, r.read_host, background=False))
    assert m == {}  # no GPU and no host reading: an empty but valid page


def test_readings_are_cached_for_max_age() -> None:
    r, clock = Readings([H100]), Clock()
    collector = DeviceCollector(r.read_devices, r.read_host, max_age_s=1.0, background=False, clock=clock)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    assert r.device_reads == 0  # registering reads nothing
    generate_latest(registry)
    clock.now += 0.5
    generate_latest(registry)
    assert r.device_reads == 1
    clock.now += 0.6
    r.devices = [MI300X]
    assert b'vendor="amd"' in generate_latest(registry) and r.device_reads == 2


def test_a_stale_cache_is_served_while_a_worker_reads() -> None:
    r, clock = Readings([H100]), Clock()
    collector = DeviceCollector(r.read_devices, r.read_host, max_age_s=1.0, clock=clock)
    assert ("m2a_gpu_utilization", gpu("nvidia", H100.name)) in scrape(collector)  # first: read here
    r.gate, r.devices = threading.Event(), [MI300X]
    r.entered.clear()
    clock.now += 5
    assert ("m2a_gpu_utilization", gpu("nvidia", H100.name)) in scrape(collector)  # stale, at once
    assert r.entered.wait(30)
    # The worker is now blocked inside the slow tool: scrapes answer at once with the old reading
    # and start no second worker.
    for _ in range(3):
        assert ("m2a_gpu_utilization", gpu("nvidia", H100.name)) in scrape(collector)
    assert r.device_reads == 2
    r.gate.set()
    assert collector._worker is not None
    collector._worker.join(30)
    m = scrape(collector)
    assert ("m2a_gpu_utilization", gpu("amd", MI300X.name)) in m
    assert ("m2a_gpu_utilization", gpu("nvidia", H100.name)) not in m
