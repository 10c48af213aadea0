"""The metal layer's live readings (NVML with recorded answers, nvidia-smi text), the device
collector on /metrics, placement of replicas, and `m2a metal`."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from m2a.cli import app
from m2a.config import ModelConfig, Settings
from m2a.engines.placement import placement
from m2a.metal import nvidia
from m2a.metal.inventory import Gpu, Inventory
from m2a.metal.prometheus import DeviceCollector
from m2a.metal.readings import DeviceReading, HostReading


class NVMLError(Exception):
    pass


def fake_pynvml(gpus: int = 2, power_supported: bool = True) -> types.ModuleType:
    """A pynvml stand-in answering what NVML answered for an H100 80GB HBM3 (recorded values)."""
    nv = types.ModuleType("pynvml")
    nv.NVMLError = NVMLError
    nv.NVML_TEMPERATURE_GPU = 0
    nv.nvmlInit = lambda: None
    nv.nvmlDeviceGetCount = lambda: gpus
    nv.nvmlSystemGetDriverVersion = lambda: "570.124.06"
    nv.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nv.nvmlDeviceGetUUID = lambda h: f"GPU-6a1c2d3e-0000-0000-0000-00000000000{h[1]}"
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        total=85520809984, used=1048576 * (500 + h[1])
    )
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=37, memory=5)

    def power(h: object) -> int:
        if not power_supported:
            raise NVMLError("Not Supported")
        return 71234  # milliwatts

    nv.nvmlDeviceGetPowerUsage = power
    nv.nvmlDeviceGetTemperature = lambda h, sensor: 34
    return nv


@pytest.fixture
def nvml_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    nvidia.reset_nvml()
    yield
    nvidia.reset_nvml()


def test_nvml_readings_from_recorded_answers(monkeypatch: pytest.MonkeyPatch, nvml_module: None) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(gpus=2, power_supported=False))
    readings = nvidia.nvml_readings()
    assert readings is not None and [r.label for r in readings] == ["nvidia:0", "nvidia:1"]
    h100 = readings[1]
    assert h100.name == "NVIDIA H100 80GB HBM3" and h100.driver == "570.124.06"
    assert h100.memory_total_bytes == 85520809984 and h100.memory_used_bytes == 1048576 * 501
    assert h100.utilization == pytest.approx(0.37) and h100.temperature_c == 34.0
    assert h100.power_watts is None  # unsupported field: None, the GPU still listed


def test_no_nvml_falls_back_without_raising(monkeypatch: pytest.MonkeyPatch, nvml_module: None) -> None:
    broken = fake_pynvml()

    def fail() -> None:
        raise NVMLError("Driver Not Loaded")

    broken.nvmlInit = fail
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert nvidia.nvml_readings() is None
    monkeypatch.setattr(nvidia, "smi_readings", lambda: [])
    assert nvidia.read_nvidia() == []


def test_nvidia_smi_text() -> None:
    text = (
        "0, NVIDIA H100 80GB HBM3, GPU-abc, 81559, 512, 12, 69.51, 33, 570.124.06\n"
        "1, X, , 100, [N/A], [N/A], [N/A], 40, 1\n"
    )
    a, b = nvidia.parse_nvidia_smi(text)
    assert (a.memory_total_bytes, a.utilization, a.power_watts) == (81559 << 20, 0.12, 69.51)
    assert b.uuid is None and b.memory_used_bytes is None and b.power_watts is None


def test_device_collector_samples() -> None:
    gpu = DeviceReading(
        "nvidia", 0, "H100", memory_total_bytes=80, memory_used_bytes=8, utilization=0.5, power_watts=300
    )
    host = HostReading(
        cpu_count=2,
        cpu_utilization=0.25,
        load_average=(1.5, 1, 1),
        memory_total_bytes=100,
        memory_used_bytes=40,
    )
    registry = CollectorRegistry()
    registry.register(DeviceCollector(lambda: [gpu], lambda: host))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(generate_latest(registry).decode())
        for s in fam.samples
    }
    labels = (("index", "0"), ("name", "H100"), ("vendor", "nvidia"))
    assert samples[("m2a_gpu_utilization", labels)] == 0.5
    assert samples[("m2a_gpu_power_watts", labels)] == 300
    assert ("m2a_gpu_temperature_celsius", labels) not in samples  # unknown: no sample, not zero
    assert samples[("m2a_host_cpu_utilization", ())] == 0.25 and samples[("m2a_host_load1", ())] == 1.5


def test_a_failing_reading_never_breaks_the_scrape() -> None:
    def boom() -> list[DeviceReading]:
        raise RuntimeError("tool crashed")

    registry = CollectorRegistry()
    registry.register(DeviceCollector(boom, lambda: HostReading(cpu_count=1)))
    assert b"m2a_host_memory_total_bytes" in generate_latest(registry)


def test_placement_on_gpus_and_cpus() -> None:
    two_gpus = Inventory(16, [Gpu("nvidia", 0, "H100", 81559), Gpu("nvidia", 1, "H100", 81559)])
    settings = Settings(
        models=[ModelConfig(name="big", replicas=3), ModelConfig(name="far", url="http://x/v1")]
    )
    assert placement(settings, two_gpus) == {
        "nvidia:0": ["big#0", "big#2"],
        "nvidia:1": ["big#1"],
        "remote": ["far#0"],
    }
    cpu_only = Settings(models=[ModelConfig(name="chat", replicas=2), ModelConfig(name="all-minilm-l6-v2")])
    assert placement(cpu_only, Inventory(8)) == {
        "cpu:0-3": ["chat#0"],
        "cpu:4-7": ["chat#1"],
        "cpu:0": ["all-minilm-l6-v2#0"],
    }


def test_metal_command_json(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("M2A_HOME", str(tmp_path))
    monkeypatch.setenv("M2A_DEVICE", "cpu")
    result = CliRunner().invoke(app, ["metal", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["devices"] == [] and doc["host"]["cpu_count"] >= 1
    assert "smollm2-135m-instruct#0" in [r for rs in doc["placement"].values() for r in rs]
    table = CliRunner().invoke(app, ["metal"])
    assert table.exit_code == 0 and "no GPU found" in table.output
