"""The Overview page and ``GET /admin/v1/overview``: models and replicas (engine, device, health,
in flight, queue, KV-cache use and prefix-cache hit rate, read from simulated vLLM replicas' own
metrics), the devices (admins only), and traffic of the last minutes (a member: their team's)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from m2a.engines.base import EngineSpec
from m2a.engines.supervisor import device_of as spec_device
from m2a.gateway.admin_overview import Overview, cache_hit_rate
from m2a.metal.readings import DeviceReading, HostReading
from m2a.router.pool import Endpoint, Pool
from m2a.sim import SimParams, Simulator
from tests.console.conftest import MODEL, TIMEOUT, console_gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")
SIM = "beta"

PAGE = b"""# HELP vllm:prefix_cache_hits_total Prefix cache hits
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 30.0
vllm:prefix_cache_hits_created{engine="0",model_name="m"} 1.7e9
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 100.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 20.0
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7e9
"""


async def test_cache_hit_rate_from_a_metrics_page() -> None:
    assert cache_hit_rate(PAGE) == pytest.approx(0.25)
    assert cache_hit_rate(b"vllm:prefix_cache_hits 5\nvllm:prefix_cache_queries 10\n") == 0.5
    assert cache_hit_rate(b"vllm:prefix_cache_queries_total 0\nvllm:prefix_cache_hits_total 0\n") is None
    assert cache_hit_rate(b"vllm:num_requests_waiting 3\n") is None
    assert cache_hit_rate(None) is None


async def test_a_replica_s_device() -> None:
    def spec(**kw: object) -> EngineSpec:
        base = {
            "replica_id": "m#0",
            "model": "m",
            "engine": "vllm",
            "task": "chat",
            "base_url": "u",
            "health_url": "h",
        }
        return EngineSpec(**{**base, **kw})  # type: ignore[arg-type]

    assert spec_device(spec()) == "remote"
    assert spec_device(spec(argv=["x"], env={"CUDA_VISIBLE_DEVICES": "1"})) == "nvidia:1"
    assert spec_device(spec(argv=["x"], env={"VLLM_CPU_OMP_THREADS_BIND": "0-1"})) == "cpu (cores 0-1)"
    assert spec_device(spec(argv=["x", "--n_gpu_layers", "-1"])) == "gpu"
    assert spec_device(spec(argv=["x"])) == "cpu"


async def test_overview_reads_devices_for_admins_only() -> None:
    from m2a.gateway.access import BOOTSTRAP
    from m2a.principal import Principal

    pool = Pool()
    pool.add(
        Endpoint("a-0", "a", "http://127.0.0.1:9/v1", healthy=True, engine="vllm", kv_usage=0.5, waiting=2)
    )
    pool.add(Endpoint("b-0", "b", "http://127.0.0.1:9/v1", healthy=False))
    gpu = DeviceReading("nvidia", 0, "H200", memory_total_bytes=141 << 30, memory_used_bytes=10 << 30,
                        utilization=0.4, power_watts=300.0, temperature_c=55.0)  # fmt: skip
    host = HostReading(
        cpu_count=16, cpu_utilization=0.1, memory_total_bytes=1 << 37, memory_used_bytes=1 << 33
    )
    reads = []

    def read() -> tuple[list[DeviceReading], HostReading]:
        reads.append(1)
        return [gpu], host

    status = [{"replica": "a-0", "state": "ready", "device": "nvidia:0"}]
    overview = Overview(pool, {"a-0": PAGE}, lambda: status, read)  # type: ignore[arg-type]
    admin = await overview.read(BOOTSTRAP)
    assert [m.name for m in admin.models] == ["a", "b"]
    a = admin.models[0].replicas[0]
    assert (a.state, a.device, a.kv_usage, a.waiting, a.cache_hit_rate) == ("ready", "nvidia:0", 0.5, 2, 0.25)
    assert admin.models[1].healthy_replicas == 0
    assert (
        admin.devices is not None and admin.devices[0].label == "nvidia:0" and admin.devices[0].name == "H200"
    )
    assert admin.host is not None and admin.host.cpu_count == 16
    await overview.read(BOOTSTRAP)
    assert len(reads) == 1  # cached for a moment: one reading per DEVICES_MAX_AGE_S

    member = Principal(7, "m2a-x", "t", "member", "standard", 100, frozenset({"b"}), None, team_id=1)
    seen = await overview.read(member)
    assert [m.name for m in seen.models] == ["b"] and seen.devices is None and seen.host is None


async def test_the_overview_page_on_simulated_vllm_replicas(tmp_path: Path) -> None:
    params = SimParams(model=SIM, time_scale=0.02)
    async with Simulator(2, params=params) as sim:
        endpoints = [
            Endpoint(f"{SIM}-{i}", SIM, url, task="chat", engine="vllm", healthy=True, metrics_url=murl)
            for i, (url, murl) in enumerate(zip(sim.urls, sim.metrics_urls, strict=True))
        ]
        async with console_gateway(tmp_path / "home", endpoints=endpoints) as console:
            key = await console.team("research", models=(SIM,))
            await console.team("other", models=(MODEL,))
            prompt = "the same long prompt about the quarterly numbers " * 20
            for _ in range(4):  # repeated prompts: the replicas' prefix caches hit
                resp = await console.chat(key, prompt, model=SIM)
                assert resp.status_code == 200, resp.text
            other_key = (await console.store.create_key("other", "o"))[0]
            assert (await console.chat(other_key)).status_code == 200

            admin = console.browser()
            await admin.signin(console.admin_key)
            # The router polls the replicas' metrics every 0.1 s: wait for a hit rate to show.
            async with asyncio.timeout(TIMEOUT):
                while True:
                    data = (await console.api("GET", "/admin/v1/overview")).json()
                    beta = next(m for m in data["models"] if m["name"] == SIM)
                    rates = [r["cache_hit_rate"] for r in beta["replicas"]]
                    ledger = (await console.api("GET", "/admin/v1/usage", params={"by": "model"})).json()
                    if any(r for r in rates) and sum(r["requests"] for r in ledger) >= 5:
                        break
                    await asyncio.sleep(0.1)
            assert {m["name"] for m in data["models"]} == {MODEL, SIM}
            assert all(r["kv_usage"] is not None and r["waiting"] is not None for r in beta["replicas"])
            assert data["devices"] is not None and data["host"] is not None

            page = await admin.get("/console/")
            assert page.status_code == 200
            assert f"{SIM}-0" in page.text and f"{SIM}-1" in page.text and "vllm" in page.text
            assert "2 of 2 replicas healthy" in page.text
            assert "Devices" in page.text and "Host CPUs" in page.text
            assert "<dt>Requests</dt><dd>5</dd>" in page.text  # both teams' requests
            assert "%" in page.text  # KV cache use and hit rates
            assert 'data-autorefresh="10"' in page.text

            # A member: their team's models and numbers, no devices.
            member = console.browser()
            await member.signin(key)
            mine = (await console.api("GET", "/admin/v1/overview", key)).json()
            assert [m["name"] for m in mine["models"]] == [SIM] and mine["devices"] is None
            page = await member.get("/console/")
            assert page.status_code == 200
            assert f"{SIM}-0" in page.text and f"{MODEL}-0" not in page.text
            assert "<dt>Requests</dt><dd>4</dd>" in page.text  # their own four, not the other team's
            assert "Devices" not in page.text and "Host CPUs" not in page.text
            assert "(team research)" in page.text


async def test_a_member_whose_team_has_no_model(tmp_path: Path) -> None:
    async with console_gateway(tmp_path / "home") as console:
        key = await console.team("empty", models=())
        member = console.browser()
        await member.signin(key)
        page = await member.get("/console/")
        assert page.status_code == 200 and "is granted to your team yet" in page.text
