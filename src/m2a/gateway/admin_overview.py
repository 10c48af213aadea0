"""``GET /admin/v1/overview``: the served models and their replicas now, and the machine's devices.

Per replica: engine, health (and the supervisor's state where m2a runs it), the device it runs on,
requests in flight, the engine's waiting queue and KV-cache use (from its metrics, as the router
reads them: ``router/load.py``) and its prefix-cache hit rate since it started (vLLM's
``prefix_cache_hits`` over ``prefix_cache_queries``). Any valid key may ask: a team key sees the
models its team may use and nothing of the devices; admins see every model and the devices (GPU
use, memory, power, temperature; the host's CPU and memory). Traffic numbers are the usage API's.
(No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.)
"""

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from m2a.gateway.admin_access import caller
from m2a.principal import Principal
from m2a.router.pool import Endpoint, Pool

HITS, QUERIES = b"vllm:prefix_cache_hits", b"vllm:prefix_cache_queries"
DEVICES_MAX_AGE_S = 2.0


class ReplicaOut(BaseModel):
    id: str
    engine: str
    healthy: bool
    state: str | None  # the supervisor's (starting, ready, restarting...) where m2a runs the engine
    device: str | None
    inflight: int
    max_inflight: int | None
    waiting: float | None
    kv_usage: float | None  # 0-1
    cache_hit_rate: float | None  # 0-1, since the engine started


class ModelOut(BaseModel):
    name: str
    task: str | None
    replicas: list[ReplicaOut]
    healthy_replicas: int


class DeviceOut(BaseModel):
    label: str
    name: str
    utilization: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    power_watts: float | None
    temperature_c: float | None


class HostOut(BaseModel):
    cpu_count: int
    cpu_utilization: float | None
    memory_used_bytes: int
    memory_total_bytes: int
    load1: float | None


class OverviewOut(BaseModel):
    at: datetime
    models: list[ModelOut]
    devices: list[DeviceOut] | None  # None: not shown to this key
    host: HostOut | None


def _sum_series(text: bytes, name: bytes) -> float | None:
    total, seen = 0.0, False
    for line in text.split(b"\n"):
        if not line.startswith(name) or line.startswith(b"#"):
            continue
        rest = line[len(name) :]
        if rest[:1] not in (b"{", b" ", b"_"):
            continue
        if rest.startswith(b"_") and not rest.startswith(b"_total"):
            continue  # _created and the like
        try:
            total += float(line.rsplit(b" ", 1)[-1])
            seen = True
        except ValueError:
            continue
    return total if seen else None


def cache_hit_rate(page: bytes | None) -> float | None:
    """Prefix-cache hits over queries (tokens) in one replica's metrics page; None if unknown."""
    if not page:
        return None
    hits, queries = _sum_series(page, HITS), _sum_series(page, QUERIES)
    if hits is None or not queries:
        return None
    return max(0.0, min(1.0, hits / queries))


def device_of(ep: Endpoint, status: Mapping[str, Any] | None) -> str | None:
    if status is not None and status.get("device"):
        return str(status["device"])
    return "remote" if ep.engine == "remote" else None


class Overview:
    """What the endpoint reads: the pool, the engines' last metrics pages, the supervisor's status."""

    def __init__(
        self,
        pool: Pool,
        pages: Mapping[str, bytes],
        replica_status: Callable[[], list[dict[str, object]]] | None = None,
        read_devices: Callable[[], tuple[list[Any], Any]] | None = None,
    ) -> None:
        self.pool = pool
        self.pages = pages
        self.replica_status = replica_status
        self._read_devices = read_devices or _read_devices
        self._devices: tuple[float, list[DeviceOut], HostOut | None] | None = None
        self._lock = asyncio.Lock()

    async def devices(self) -> tuple[list[DeviceOut], HostOut | None]:
        async with self._lock:
            if self._devices is None or time.monotonic() - self._devices[0] > DEVICES_MAX_AGE_S:
                try:
                    found, host = await asyncio.to_thread(self._read_devices)
                except Exception:  # a failing vendor tool: no devices, never a failed page
                    found, host = [], None
                devices = [
                    DeviceOut(
                        label=d.label,
                        name=d.name,
                        utilization=d.utilization,
                        memory_used_bytes=d.memory_used_bytes,
                        memory_total_bytes=d.memory_total_bytes,
                        power_watts=d.power_watts,
                        temperature_c=d.temperature_c,
                    )  # fmt: skip
                    for d in found
                ]
                host_out = None
                if host is not None:
                    host_out = HostOut(
                        cpu_count=host.cpu_count, cpu_utilization=host.cpu_utilization,
                        memory_used_bytes=host.memory_used_bytes, memory_total_bytes=host.memory_total_bytes,
                        load1=host.load_average[0] if host.load_average else None,
                    )  # fmt: skip
                self._devices = (time.monotonic(), devices, host_out)
            return self._devices[1], self._devices[2]

    async def read(self, principal: Principal) -> OverviewOut:
        statuses = {str(s.get("replica")): s for s in (self.replica_status() if self.replica_status else [])}
        models = []
        for name in self.pool.models():
            if not principal.may_use(name):
                continue
            replicas = [
                ReplicaOut(
                    id=ep.id,
                    engine=ep.engine,
                    healthy=ep.healthy,
                    state=str(statuses[ep.id]["state"]) if ep.id in statuses else None,
                    device=device_of(ep, statuses.get(ep.id)),
                    inflight=ep.inflight,
                    max_inflight=ep.max_inflight,
                    waiting=ep.waiting,
                    kv_usage=ep.kv_usage,
                    cache_hit_rate=cache_hit_rate(self.pages.get(ep.id)),
                )  # fmt: skip
                for ep in self.pool.endpoints(name)
            ]
            healthy = sum(r.healthy for r in replicas)
            models.append(
                ModelOut(name=name, task=self.pool.task(name), replicas=replicas, healthy_replicas=healthy)
            )
        devices: list[DeviceOut] | None = None
        host = None
        if principal.is_admin:
            devices, host = await self.devices()
        return OverviewOut(at=datetime.now(UTC), models=models, devices=devices, host=host)


def _read_devices() -> tuple[list[Any], Any]:
    from m2a.metal.devices import read_devices, read_host

    return read_devices(), read_host()


def overview_router(overview: Overview) -> APIRouter:
    router = APIRouter()
    Caller = Annotated[Principal, Depends(caller)]

    @router.get("/v1/overview", response_model=OverviewOut)
    async def get_overview(p: Caller) -> OverviewOut:
        """Models and replicas now (a team key: its team's models only), devices for admins."""
        return await overview.read(p)

    return router
