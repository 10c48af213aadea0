"""NVIDIA GPUs: live readings through NVML (the `nvidia-ml-py` package), else through nvidia-smi.

``pynvml`` is imported lazily and NVML initialised once per process; a missing package, library or
driver (any import error or ``NVMLError``) means no NVML, never an exception, and the result of that
first try is kept (a driver loaded later is seen by a new process). A field a GPU does not support
(power on some boards, utilization under MIG) reads as None instead of hiding the whole GPU.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from collections.abc import Callable
from typing import Any

from m2a.metal.readings import DeviceReading

log = logging.getLogger("m2a.metal.nvidia")

MIB = 1 << 20
SMI_FIELDS = (
    "index,name,uuid,memory.total,memory.used,utilization.gpu,power.draw,temperature.gpu,driver_version"
)

_lock = threading.Lock()
_nvml: Any = None  # the initialised pynvml module
_nvml_tried = False


def nvml() -> Any | None:
    """The ``pynvml`` module with NVML initialised, or None where NVML cannot be used here."""
    global _nvml, _nvml_tried
    with _lock:
        if not _nvml_tried:
            _nvml_tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
                _nvml = pynvml
            except Exception as exc:  # ImportError, pynvml.NVMLError (no driver), OSError
                log.debug("NVML unavailable: %s", exc)
                _nvml = None
        return _nvml


def reset_nvml() -> None:
    """Forget the first try, so the next call imports and initialises again (for tests)."""
    global _nvml, _nvml_tried
    with _lock:
        _nvml, _nvml_tried = None, False


def _ask(fn: Callable[..., Any], *args: Any) -> Any:
    """One NVML query; None when it fails (not supported, no permission, GPU lost...)."""
    try:
        return fn(*args)
    except Exception:
        return None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return None if value is None else str(value)


def nvml_readings() -> list[DeviceReading] | None:
    """Every NVIDIA GPU as NVML sees it; None where NVML is not available."""
    nv = nvml()
    if nv is None:
        return None
    count = _ask(nv.nvmlDeviceGetCount)
    if count is None:
        return None
    driver = _text(_ask(nv.nvmlSystemGetDriverVersion))
    out = []
    for i in range(count):
        handle = _ask(nv.nvmlDeviceGetHandleByIndex, i)
        if handle is None:
            continue
        mem = _ask(nv.nvmlDeviceGetMemoryInfo, handle)
        rates = _ask(nv.nvmlDeviceGetUtilizationRates, handle)
        milliwatts = _ask(nv.nvmlDeviceGetPowerUsage, handle)
        temp = _ask(nv.nvmlDeviceGetTemperature, handle, getattr(nv, "NVML_TEMPERATURE_GPU", 0))
        out.append(
            DeviceReading(
                vendor="nvidia",
                index=i,
                name=_text(_ask(nv.nvmlDeviceGetName, handle)) or "NVIDIA GPU",
                uuid=_text(_ask(nv.nvmlDeviceGetUUID, handle)),
                memory_total_bytes=int(mem.total) if mem is not None else None,
                memory_used_bytes=int(mem.used) if mem is not None else None,
                utilization=rates.gpu / 100 if rates is not None else None,
                power_watts=milliwatts / 1000 if milliwatts is not None else None,
                temperature_c=float(temp) if temp is not None else None,
                driver=driver,
            )
        )
    return out


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def parse_nvidia_smi(text: str) -> list[DeviceReading]:
    """Readings from ``nvidia-smi --query-gpu=SMI_FIELDS --format=csv,noheader,nounits``."""
    out = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 9 or not parts[0].isdigit():
            continue
        total, used, util, power, temp = (_number(p) for p in parts[3:8])
        out.append(
            DeviceReading(
                vendor="nvidia",
                index=int(parts[0]),
                name=parts[1],
                uuid=parts[2] or None,
                memory_total_bytes=int(total * MIB) if total is not None else None,
                memory_used_bytes=int(used * MIB) if used is not None else None,
                utilization=util / 100 if util is not None else None,
                power_watts=power,
                temperature_c=temp,
                driver=parts[8] or None,
            )
        )
    return out


def smi_readings(timeout_s: float = 10.0) -> list[DeviceReading]:
    """Readings through the nvidia-smi tool; empty where it is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return parse_nvidia_smi(out)


def read_nvidia() -> list[DeviceReading]:
    """NVIDIA GPUs: NVML where it works, else nvidia-smi, else none."""
    readings = nvml_readings()
    return readings if readings is not None else smi_readings()
