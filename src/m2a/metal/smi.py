"""AMD and Intel GPUs through their command-line tools' JSON: amd-smi (else rocm-smi) and xpu-smi.

Only tools found on PATH are run, each with a timeout; a missing tool, a failure or output that
does not parse means no devices of that vendor, never an exception. What does not change while a
process lives (names, drivers, UUIDs, memory sizes) is asked once; the live numbers on every read.
The parsers take the tools' text, so tests feed them recorded outputs.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import re
import shutil
import subprocess
from typing import Any

from m2a.metal.readings import DeviceReading

log = logging.getLogger("m2a.metal.smi")

UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}
ROCM_SMI_ARGS = [
    "--showuse", "--showmemuse", "--showpower", "--showtemp", "--showmeminfo", "vram",
    "--showproductname", "--showdriverversion", "--showuniqueid", "--json",
]  # fmt: skip
XPU_DUMP_METRICS = "0,1,3,18"  # utilization %, power W, core temperature C, memory used MiB


def run_tool(args: list[str], timeout_s: float = 10.0) -> str | None:
    """A tool's standard output; None when it is missing, fails or hangs."""
    exe = shutil.which(args[0])
    if not exe:
        return None
    try:
        done = subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=timeout_s)
    except (subprocess.SubprocessError, OSError) as exc:
        log.debug("%s failed: %s", args[0], exc)
        return None
    return done.stdout if done.returncode == 0 else None


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def number(value: Any) -> float | None:
    """A number from ``12``, ``"12.5"``, ``"140 W"`` or amd-smi's ``{"value": 140, "unit": "W"}``."""
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = re.match(r"\s*(-?\d+(?:\.\d+)?)", value)
        return float(m.group(1)) if m else None
    return None


def size_bytes(value: Any, default_unit: str = "MB") -> int | None:
    """Bytes from amd-smi's ``{"value": 196592, "unit": "MB"}`` (its MB are MiB), or a bare count."""
    n = number(value)
    if n is None:
        return None
    unit = value.get("unit", default_unit) if isinstance(value, dict) else default_unit
    return int(n * UNITS.get(str(unit).upper(), 1 << 20))


def _by_gpu(doc: Any) -> dict[int, dict[str, Any]]:
    """amd-smi's per-GPU objects by index: a list, or ``{"gpu_data": [...]}`` in newer releases."""
    if isinstance(doc, dict):
        doc = doc.get("gpu_data", [])
    if not isinstance(doc, list):
        return {}
    return {int(d["gpu"]): d for d in doc if isinstance(d, dict) and str(d.get("gpu", "")).isdigit()}


def parse_amd_smi(metric: str, static: str | None = None, listing: str | None = None) -> list[DeviceReading]:
    """Readings from ``amd-smi metric --json``, named by ``static --asic --driver --json`` and ``list``."""
    info, ids = _by_gpu(_json(static)), _by_gpu(_json(listing))
    out = []
    for index, m in sorted(_by_gpu(_json(metric)).items()):
        usage = m.get("usage") if isinstance(m.get("usage"), dict) else {}
        power = m.get("power") if isinstance(m.get("power"), dict) else {}
        temps = m.get("temperature") if isinstance(m.get("temperature"), dict) else {}
        mem = m.get("mem_usage") if isinstance(m.get("mem_usage"), dict) else {}
        asic = (info.get(index) or {}).get("asic") or {}
        driver = (info.get(index) or {}).get("driver") or {}
        gfx = number(usage.get("gfx_activity"))
        temp = number(temps.get("edge"))
        if temp is None:  # MI300-class boards have no edge sensor: the hotspot is what they report
            temp = number(temps.get("hotspot"))
        name = asic.get("market_name") if isinstance(asic, dict) else None
        out.append(
            DeviceReading(
                vendor="amd",
                index=index,
                name=name if isinstance(name, str) and name != "N/A" else "AMD GPU",
                uuid=(ids.get(index) or {}).get("uuid") or None,
                memory_total_bytes=size_bytes(mem.get("total_vram")),
                memory_used_bytes=size_bytes(mem.get("used_vram")),
                utilization=gfx / 100 if gfx is not None else None,
                power_watts=number(power.get("socket_power")),
                temperature_c=temp,
                driver=driver.get("version") if isinstance(driver, dict) else None,
            )
        )
    return out


def _field(card: dict[str, Any], *names: str) -> Any:
    """A rocm-smi field by any of its names across releases, case-insensitively."""
    lowered = {k.lower(): v for k, v in card.items()}
    return next((lowered[n.lower()] for n in names if n.lower() in lowered), None)


def parse_rocm_smi(text: str) -> list[DeviceReading]:
    """Readings from ``rocm-smi ROCM_SMI_ARGS`` (the older tool): ``{"card0": {...}, "system": {...}}``."""
    doc = _json(text)
    if not isinstance(doc, dict):
        return []
    driver = _field(doc.get("system") or {}, "Driver version")
    out = []
    for key, card in doc.items():
        m = re.fullmatch(r"card(\d+)", key)
        if not m or not isinstance(card, dict):
            continue
        use = number(_field(card, "GPU use (%)"))
        total = number(_field(card, "VRAM Total Memory (B)"))
        used = number(_field(card, "VRAM Total Used Memory (B)"))
        power = _field(
            card, "Current Socket Graphics Package Power (W)", "Average Graphics Package Power (W)"
        )
        temp = _field(card, "Temperature (Sensor edge) (C)", "Temperature (Sensor junction) (C)")
        out.append(
            DeviceReading(
                vendor="amd",
                index=int(m.group(1)),
                name=str(_field(card, "Card Series", "Card Model", "Card SKU") or "AMD GPU"),
                uuid=_field(card, "Unique ID"),
                memory_total_bytes=int(total) if total is not None else None,
                memory_used_bytes=int(used) if used is not None else None,
                utilization=use / 100 if use is not None else None,
                power_watts=number(power),
                temperature_c=number(temp),
                driver=str(driver) if driver else None,
            )
        )
    return sorted(out, key=lambda r: r.index)


@functools.cache
def _amd_static() -> tuple[str | None, str | None]:
    return run_tool(["amd-smi", "static", "--asic", "--driver", "--json"]), run_tool(
        ["amd-smi", "list", "--json"]
    )


def read_amd() -> list[DeviceReading]:
    """AMD GPUs through amd-smi, else rocm-smi, else none."""
    metric = run_tool(["amd-smi", "metric", "--json"])
    if metric is not None:
        return parse_amd_smi(metric, *_amd_static())
    text = run_tool(["rocm-smi", *ROCM_SMI_ARGS])
    return parse_rocm_smi(text) if text else []


def parse_xpu_discovery(listing: str | None, details: dict[int, str | None]) -> dict[int, dict[str, Any]]:
    """Device facts by id from ``xpu-smi discovery --json`` and each ``discovery -d N --json``."""
    doc = _json(listing)
    devices = doc.get("device_list", []) if isinstance(doc, dict) else []
    out: dict[int, dict[str, Any]] = {}
    for d in devices:
        if isinstance(d, dict) and isinstance(d.get("device_id"), int):
            detail = _json(details.get(d["device_id"]))
            out[d["device_id"]] = {**d, **(detail if isinstance(detail, dict) else {})}
    return out


def parse_xpu_dump(text: str | None) -> dict[int, list[float | None]]:
    """The last row per device of ``xpu-smi dump -m XPU_DUMP_METRICS``: values in metric order."""
    rows: dict[int, list[float | None]] = {}
    for row in csv.reader(io.StringIO(text or "")):
        cells = [c.strip() for c in row]
        if len(cells) < 2 or not cells[1].isdigit():
            continue  # the header, or a line of chatter
        rows[int(cells[1])] = [number(c) if c else None for c in cells[2:]]
    return rows


def intel_readings(
    facts: dict[int, dict[str, Any]], dump: dict[int, list[float | None]]
) -> list[DeviceReading]:
    out = []
    for i, f in sorted(facts.items()):
        util, power, temp, used_mib = (dump.get(i, []) + [None] * 4)[:4]
        total = number(f.get("memory_physical_size_byte"))
        out.append(
            DeviceReading(
                vendor="intel",
                index=i,
                name=str(f.get("device_name") or "Intel GPU"),
                uuid=f.get("uuid") or None,
                memory_total_bytes=int(total) if total is not None else None,
                memory_used_bytes=int(used_mib * (1 << 20)) if used_mib is not None else None,
                utilization=util / 100 if util is not None else None,
                power_watts=power,
                temperature_c=temp,
                driver=f.get("driver_version") or None,
            )
        )
    return out


_xpu_known: dict[int, dict[str, Any]] = {}


def _xpu_facts() -> dict[int, dict[str, Any]]:
    """Asked once; asked again while the tool has not listed any device yet (service starting)."""
    if not _xpu_known:
        listing = run_tool(["xpu-smi", "discovery", "--json"])
        ids = list(parse_xpu_discovery(listing, {}))
        details = {i: run_tool(["xpu-smi", "discovery", "-d", str(i), "--json"]) for i in ids}
        _xpu_known.update(parse_xpu_discovery(listing, details))
    return _xpu_known


def read_intel() -> list[DeviceReading]:
    """Intel GPUs through xpu-smi; none where it is missing."""
    if not shutil.which("xpu-smi"):
        return []
    facts = _xpu_facts()
    if not facts:
        return []
    ids = ",".join(str(i) for i in facts)
    dump = run_tool(["xpu-smi", "dump", "-d", ids, "-m", XPU_DUMP_METRICS, "-n", "1"], timeout_s=15.0)
    return intel_readings(facts, parse_xpu_dump(dump))
