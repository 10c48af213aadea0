"""Jinja2 filters and globals every console template may use (numbers, times, sizes, static URLs).

``{{ x|num }}`` 12,345 · ``{{ x|num(2) }}`` 1.50 · ``{{ x|pct }}`` 42% (x in 0-1) · ``{{ x|ms }}``
120 ms · ``{{ x|money }}`` $1.23 · ``{{ x|bytes }}`` 1.5 GiB · ``{{ t|dt }}`` 2025-01-31 12:00 UTC
(a datetime or ISO text) · ``{{ static('console.css') }}`` the URL of a static file. A missing
value (None) prints as an en dash everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment

DASH = "–"
STATIC_URL = "/console/static/"


def num(value: Any, digits: int = 0) -> str:
    if value is None or value == "":
        return DASH
    try:
        return f"{float(value):,.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def pct(value: Any, digits: int = 0) -> str:
    if value is None:
        return DASH
    try:
        return f"{float(value) * 100:.{digits}f}%"
    except (TypeError, ValueError):
        return str(value)


def ms(value: Any) -> str:
    if value is None:
        return DASH
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{v / 1000:.2f} s" if v >= 10_000 else f"{v:,.0f} ms"


def money(value: Any, digits: int = 2) -> str:
    if value is None:
        return DASH
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"-${-v:,.{digits}f}" if v < 0 else f"${v:,.{digits}f}"


def size(value: Any) -> str:
    if value is None:
        return DASH
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return DASH  # pragma: no cover


def dt(value: Any) -> str:
    if value is None or value == "":
        return DASH
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def static(path: str) -> str:
    return STATIC_URL + path.lstrip("/")


def install(env: Environment) -> None:
    env.filters.update(num=num, pct=pct, ms=ms, money=money, bytes=size, dt=dt)
    env.globals["static"] = static
