"""Live device readings: NVML through a recorded stand-in for ``pynvml``, and the vendor tools
(nvidia-smi, amd-smi, rocm-smi, xpu-smi) as stand-in executables on PATH that print recorded
outputs (``tests/smi_samples.py``), so the real subprocess and parsing code runs; host readings.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from m2a.metal import devices, inventory, nvidia, smi
from tests import smi_samples as rec

H100_MEMORY = 85520809984  # NVML's total for an H100 80GB HBM3: 81559 MiB


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value


class NVMLError_NotSupported(NVMLError):  # noqa: N801  (pynvml's own class name)
    def __init__(self) -> None:
        super().__init__(3)


def recorded_pynvml(calls: list[str], gpus: int = 2, init_error: int | None = None) -> types.ModuleType:
    """A ``pynvml`` answering as NVML did for H100 SXM boards (bytes names, milliwatts, percent);
    GPU 1 does not support power readings. Every call is appended to ``calls``."""
    nv = types.ModuleType("pynvml")
    nv.NVMLError = NVMLError
    nv.NVML_TEMPERATURE_GPU = 0

    def call(name: str, answer):  # type: ignore[no-untyped-def]
        def fn(*args):  # type: ignore[no-untyped-def]
            calls.append(name)
            return answer(*args) if callable(answer) else answer

        setattr(nv, name, fn)

    def init() -> None:
        if init_error is not None:
            raise NVMLError(init_error)

    def power(h: int) -> int:
        if h == 1:
            raise NVMLError_NotSupported()
        return 684120

    call("nvmlInit", init)
    call("nvmlDeviceGetCount", gpus)
    call("nvmlSystemGetDriverVersion", "570.124.06")
    call("nvmlDeviceGetHandleByIndex", lambda i: i)
    call("nvmlDeviceGetName", b"NVIDIA H100 80GB HBM3")
    call("nvmlDeviceGetUUID", lambda h: f"GPU-5c1d9a3e-8f7b-4a1c-9e2d-3b4a5c6d7e8{h}")
    call(
        "nvmlDeviceGetMemoryInfo", lambda h: types.SimpleNamespace(total=H100_MEMORY, used=(61234 << 20) >> h)
    )
    call("nvmlDeviceGetUtilizationRates", lambda h: types.SimpleNamespace(gpu=97 - 97 * h, memory=40))
    call("nvmlDeviceGetPowerUsage", power)
    call("nvmlDeviceGetTemperature", lambda h, sensor: 63 if sensor == 0 else None)
    return nv


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No real NVML or tool: an empty PATH, pynvml not importable, nothing remembered."""
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv("M2A_DEVICE", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    nvidia.reset_nvml()
    smi._amd_static.cache_clear()
    smi._xpu_known.clear()
    yield
    nvidia.reset_nvml()
    smi._amd_static.cache_clear()
    smi._xpu_known.clear()


def install_tool(tmp_path: Path, name: str, answers: dict[str, str]) -> Path:
    """An executable ``name`` on PATH printing ``answers[arguments]`` (exit 1 for others); returns
    the file where it logs each call's arguments."""
    bin_dir, log = tmp_path / "bin", tmp_path / f"{name}.calls"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / f"{name}.json").write_text(json.dumps(answers))
    tool = bin_dir / name
    tool.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"answers = json.load(open({str(tmp_path / f'{name}.json')!r}))\n"
        "key = ' '.join(sys.argv[1:])\n"
        f"open({str(log)!r}, 'a').write(key + '\\n')\n"
        "sys.exit(1) if key not in answers else sys.stdout.write(answers[key])\n"
    )
    tool.chmod(0o755)
    return log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


# ---------------------------------------------------------------------------- NVIDIA
def test_nvml_inventory_carries_driver_and_uuid_and_starts_once(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setitem(sys.modules, "pynvml", recorded_pynvml(seen))
    first, again = inventory.detect(), inventory.detect()
    assert first == again and first.has_nvidia
    assert [(g.index, g.name, g.memory_mib) for g in first.gpus] == [
        (0, "NVIDIA H100 80GB HBM3", 81559),
        (1, "NVIDIA H100 80GB HBM3", 81559),
    ]
    assert first.gpus[1].driver == "570.124.06"
    assert first.gpus[1].uuid == "GPU-5c1d9a3e-8f7b-4a1c-9e2d-3b4a5c6d7e81"
    assert seen.count("nvmlInit") == 1 and seen.count("nvmlDeviceGetCount") == 2


def test_nvml_live_readings_and_an_unsupported_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", recorded_pynvml([]))
    busy, idle = devices.read_devices()
    assert (busy.utilization, busy.power_watts, busy.temperature_c) == (0.97, 684.12, 63.0)
    assert busy.memory_used_bytes == 61234 << 20 and busy.memory_total_bytes == H100_MEMORY
    assert idle.utilization == 0.0 and idle.power_watts is None  # NotSupported: None, GPU kept


def test_nvml_without_a_driver_means_no_nvidia_device(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setitem(sys.modules, "pynvml", recorded_pynvml(seen, init_error=9))  # Driver Not Loaded
    assert nvidia.nvml_readings() is None and nvidia.read_nvidia() == []
    assert inventory.detect().gpus == [] and devices.read_devices() == []
    assert seen.count("nvmlInit") == 1  # the failure is remembered, not retried on every scrape


def test_a_lost_gpu_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    nv = recorded_pynvml([], gpus=3)

    def handle(i: int) -> int:
        if i == 1:
            raise NVMLError(15)  # GPU is lost
        return i

    nv.nvmlDeviceGetHandleByIndex = handle
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    assert [r.index for r in devices.read_devices()] == [0, 2]


def test_without_nvml_nvidia_smi_answers(tmp_path: Path) -> None:
    log = install_tool(
        tmp_path,
        "nvidia-smi",
        {f"--query-gpu={nvidia.SMI_FIELDS} --format=csv,noheader,nounits": rec.NVIDIA_SMI},
    )
    gpus = inventory.detect().gpus
    assert [(g.index, g.memory_mib, g.driver) for g in gpus] == [
        (0, 81559, "570.124.06"),
        (1, 81559, "570.124.06"),
    ]
    first = devices.read_devices()[0]
    assert (first.utilization, first.power_watts, first.memory_used_bytes) == (0.97, 684.12, 61234 << 20)
    assert len(calls(log)) == 2


# ---------------------------------------------------------------------------- AMD
AMD_ANSWERS = {
    "metric --json": rec.AMD_METRIC,
    "static --asic --driver --json": rec.AMD_STATIC,
    "list --json": rec.AMD_LIST,
}


def test_amd_smi_readings_and_static_facts_asked_once(tmp_path: Path) -> None:
    log = install_tool(tmp_path, "amd-smi", AMD_ANSWERS)
    busy, idle = devices.read_devices()
    assert (busy.vendor, busy.index, busy.name, busy.driver) == ("amd", 0, "AMD Instinct MI300X", "6.8.5")
    assert busy.uuid == "4cff74a1-0000-1000-80e9-b1e3c8d6a2b0"
    assert busy.memory_total_bytes == 196592 << 20 and busy.memory_used_bytes == 151210 << 20
    assert (busy.utilization, busy.power_watts) == (0.87, 612.0)
    assert busy.temperature_c == 71.0  # no edge sensor ("N/A"): the hotspot
    assert (idle.utilization, idle.memory_used_bytes, idle.temperature_c) == (0.0, 283 << 20, 38.0)
    devices.read_devices()
    assert calls(log).count("metric --json") == 2 and calls(log).count("static --asic --driver --json") == 1


def test_amd_smi_newer_wrapper_and_plain_values() -> None:
    metric = {"gpu_data": [{"gpu": 3, "usage": {"gfx_activity": 5}, "mem_usage": {"total_vram": "1024 MB"}}]}
    [r] = smi.parse_amd_smi(json.dumps(metric))
    assert (r.index, r.name, r.utilization, r.memory_total_bytes) == (3, "AMD GPU", 0.05, 1 << 30)
    assert r.power_watts is None and r.uuid is None and r.driver is None


def test_rocm_smi_when_amd_smi_is_absent(tmp_path: Path) -> None:
    install_tool(tmp_path, "rocm-smi", {" ".join(smi.ROCM_SMI_ARGS): rec.ROCM_SMI})
    [r] = devices.read_devices()
    assert (r.vendor, r.index, r.name, r.driver) == ("amd", 0, "Navi 31 [Radeon Pro W7900]", "6.3.6")
    assert (r.memory_total_bytes, r.memory_used_bytes) == (34342961152, 4123656192)
    assert (r.utilization, r.power_watts, r.temperature_c, r.uuid) == (0.23, 61.0, 45.0, "0x7f4e1c2a5b6d8e90")


@pytest.mark.parametrize("metric", ["not json", "[]", '{"error": "amdgpu driver not loaded"}'])
def test_amd_tool_output_we_cannot_use_means_no_device(tmp_path: Path, metric: str) -> None:
    install_tool(tmp_path, "amd-smi", {**AMD_ANSWERS, "metric --json": metric})
    assert devices.read_devices() == []


def test_a_failing_amd_smi_falls_back_to_rocm_smi(tmp_path: Path) -> None:
    install_tool(tmp_path, "amd-smi", {})  # every call exits 1
    install_tool(tmp_path, "rocm-smi", {" ".join(smi.ROCM_SMI_ARGS): rec.ROCM_SMI})
    assert [r.name for r in devices.read_devices()] == ["Navi 31 [Radeon Pro W7900]"]


# ---------------------------------------------------------------------------- Intel
def test_xpu_smi_readings(tmp_path: Path) -> None:
    log = install_tool(
        tmp_path,
        "xpu-smi",
        {
            "discovery --json": rec.XPU_DISCOVERY,
            "discovery -d 0 --json": rec.XPU_DETAIL[0],
            "discovery -d 1 --json": rec.XPU_DETAIL[1],
            f"dump -d 0,1 -m {smi.XPU_DUMP_METRICS} -n 1": rec.XPU_DUMP,
        },
    )
    busy, idle = devices.read_devices()
    assert (busy.vendor, busy.index, busy.name) == ("intel", 0, "Intel(R) Data Center GPU Max 1100")
    assert busy.driver == "I915_23.10.72_PSB_231129.76" and busy.memory_total_bytes == 48 << 30
    assert (busy.utilization, busy.power_watts, busy.temperature_c) == (0.425, 187.31, 51.0)
    assert busy.memory_used_bytes == int(20480.25 * (1 << 20))
    assert idle.temperature_c is None and idle.memory_used_bytes == 24 << 20  # blank cell: unknown
    devices.read_devices()
    assert (
        calls(log).count("discovery --json") == 1
        and len([c for c in calls(log) if c.startswith("dump")]) == 2
    )


def test_xpu_smi_without_devices_is_asked_again(tmp_path: Path) -> None:
    log = install_tool(tmp_path, "xpu-smi", {"discovery --json": '{"device_list": []}'})
    assert devices.read_devices() == [] and devices.read_devices() == []
    assert calls(log).count("discovery --json") == 2  # the service may still be starting


# ---------------------------------------------------------------------------- all together, host
def test_every_vendor_in_one_reading(tmp_path: Path) -> None:
    install_tool(
        tmp_path,
        "nvidia-smi",
        {f"--query-gpu={nvidia.SMI_FIELDS} --format=csv,noheader,nounits": rec.NVIDIA_SMI},
    )
    install_tool(tmp_path, "amd-smi", AMD_ANSWERS)
    assert [r.label for r in devices.read_devices()] == ["nvidia:0", "nvidia:1", "amd:0", "amd:1"]


def test_host_reading_shape() -> None:
    host = devices.read_host(interval_s=0.05)
    assert host.cpu_count == psutil.cpu_count() and len(host.cpu_percent) == host.cpu_count
    assert all(0 <= p <= 100 for p in host.cpu_percent)
    assert host.cpu_utilization is not None and 0 <= host.cpu_utilization <= 1
    assert host.load_average is not None and len(host.load_average) == 3
    assert 0 < host.memory_used_bytes <= host.memory_total_bytes == psutil.virtual_memory().total
