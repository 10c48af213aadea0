"""`m2a metal`: the accelerators and host this machine has, live readings, where `m2a up`
places each replica of the configured models, and the replicas' states when a gateway answers."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from m2a.config import Settings

out = Console()


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 30):.1f}"


def _read_key(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def gateway_url(settings: Settings) -> str:
    """The configured gateway's base URL (a wildcard listen address reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
        settings.gateway.host, settings.gateway.host
    )
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.gateway.port}"


def admin_key_of(settings: Settings) -> str | None:
    """The admin key: the configured one ($M2A_ADMIN_KEY), else the one `m2a up` keeps in $M2A_HOME."""
    return settings.admin_key or _read_key(settings.home / "admin.key")


def gateway_status(settings: Settings, timeout_s: float = 0.5) -> dict[str, Any] | None:
    """The running gateway's ``/readyz`` (ready, models, replicas with their states), or None."""
    url = f"{gateway_url(settings)}/readyz"
    request = urllib.request.Request(url)
    key = admin_key_of(settings)
    if key:  # replica detail is for admin keys only
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:  # 503 while warming up still carries the replicas
        body = exc.read()
    except (OSError, ValueError):  # nothing listening, or not reachable
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return {"url": url, **doc} if isinstance(doc, dict) else None


def metal(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Accelerators (vendor, model, memory, use, power, temperature, driver), host, and placement."""
    from m2a.cli import settings_or_exit
    from m2a.engines.placement import placement
    from m2a.metal.devices import read_devices, read_host
    from m2a.metal.inventory import detect

    settings = settings_or_exit(config)
    devices, host, inventory = read_devices(), read_host(interval_s=0.2), detect()
    placed = placement(settings, inventory)
    gateway = gateway_status(settings)
    if as_json:
        print(
            json.dumps(
                {
                    "devices": [
                        {**dataclasses.asdict(d), "placed": placed.get(d.label, [])} for d in devices
                    ],
                    "host": dataclasses.asdict(host),
                    "placement": placed,
                    "gateway": gateway,
                },
                indent=2,
            )
        )
        return
    table = Table(
        "device", "model", "memory GiB (used/total)", "use", "power W", "temp °C", "driver", "placed"
    )
    for d in devices:
        table.add_row(
            d.label,
            d.name,
            f"{_gib(d.memory_used_bytes)}/{_gib(d.memory_total_bytes)}",
            "-" if d.utilization is None else f"{d.utilization:.0%}",
            "-" if d.power_watts is None else f"{d.power_watts:.0f}",
            "-" if d.temperature_c is None else f"{d.temperature_c:.0f}",
            d.driver or "-",
            ", ".join(placed.get(d.label, [])) or "-",
        )
    cpu_placed = [
        f"{r} ({label[4:]})" for label, rs in placed.items() if label.startswith("cpu:") for r in rs
    ]
    table.add_row(
        "cpu",
        f"{host.cpu_count} logical CPUs",
        f"{_gib(host.memory_used_bytes)}/{_gib(host.memory_total_bytes)}",
        "-" if host.cpu_utilization is None else f"{host.cpu_utilization:.0%}",
        "-",
        "-",
        "-",
        ", ".join(cpu_placed) or "-",
    )
    out.print(table)
    if placed.get("remote"):
        out.print(f"remote: {', '.join(placed['remote'])}")
    if not devices:
        out.print("no GPU found (NVML, nvidia-smi, amd-smi, rocm-smi, xpu-smi): engines run on the CPU")
    if gateway is not None:
        _print_gateway(gateway)


def _print_gateway(gateway: dict[str, Any]) -> None:
    ready = "ready" if gateway.get("ready") else "not ready"
    out.print(f"gateway at {escape(gateway['url'])}: {ready}")
    replicas = gateway.get("replicas")
    if not isinstance(replicas, list) or not replicas:
        return
    table = Table("replica", "model", "engine", "state", "restarts", "last error")
    for r in replicas:
        if isinstance(r, dict):
            cells = (r.get(k) for k in ("replica", "model", "engine", "state", "restarts", "last_error"))
            table.add_row(*(escape("-" if c is None else str(c)) for c in cells))
    out.print(table)
