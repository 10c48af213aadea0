"""`m2a metal` through typer's CliRunner with a hand-made inventory and readings: where one and two
replicas land on GPUs and on CPU cores, the JSON output, and the live replica states of a running
gateway (a real HTTP server answering ``/readyz`` on the configured port). The placement is also
checked against the environment the real vLLM adapter gives each replica.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from m2a.catalog.store import Manifest
from m2a.cli import app, metal_cmd
from m2a.config import ModelConfig, Settings
from m2a.engines import registry
from m2a.engines.placement import placement
from m2a.engines.vllm import VllmEngine
from m2a.metal import devices, inventory
from m2a.metal.inventory import Gpu, Inventory
from m2a.metal.readings import DeviceReading, HostReading

H100 = "NVIDIA H100 80GB HBM3"
GPU2 = Inventory(16, [Gpu("nvidia", 0, H100, 81559), Gpu("nvidia", 1, H100, 81559)])
CPU4 = Inventory(4)
HOST = HostReading(cpu_count=4, cpu_percent=[5.0] * 4, cpu_utilization=0.05, memory_total_bytes=16 << 30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Set the machine `m2a metal` sees (inventory, readings) and vLLM installed; returns a setter."""
    monkeypatch.setenv("M2A_HOME", str(tmp_path))
    monkeypatch.setattr(metal_cmd, "out", Console(width=200))  # CliRunner's terminal would wrap names
    for name, reason in (("vllm", None), ("llamacpp", None)):
        monkeypatch.setattr(registry.ENGINES[name], "unavailable", lambda reason=reason: reason)

    def use(inv: Inventory) -> None:
        readings = [
            DeviceReading(g.vendor, g.index, g.name, memory_total_bytes=g.memory_mib << 20) for g in inv.gpus
        ]
        monkeypatch.setattr(inventory, "detect", lambda: inv)
        monkeypatch.setattr(devices, "read_devices", lambda: readings)
        monkeypatch.setattr(devices, "read_host", lambda interval_s=None: HOST)

    return use


def run_metal(tmp_path: Path, models: list[dict[str, Any]], port: int | None = None, *args: str) -> Any:
    config = {"models": models, "gateway": {"port": port or free_port()}}
    path = tmp_path / "m2a.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["metal", "--config", str(path), *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


CHAT_AND_EMBED = [{"name": "chat", "source": "org/chat"}, {"name": "all-minilm-l6-v2"}]


@pytest.mark.parametrize(
    ("inv", "replicas", "expected"),
    [
        (GPU2, 1, {"nvidia:0": ["chat#0", "all-minilm-l6-v2#0"]}),
        (GPU2, 2, {"nvidia:0": ["chat#0", "all-minilm-l6-v2#0"], "nvidia:1": ["chat#1"]}),
        (CPU4, 1, {"cpu:0-3": ["chat#0"], "cpu:0": ["all-minilm-l6-v2#0"]}),
        (CPU4, 2, {"cpu:0-1": ["chat#0"], "cpu:2-3": ["chat#1"], "cpu:0": ["all-minilm-l6-v2#0"]}),
    ],
    ids=["gpu-1-replica", "gpu-2-replicas", "cpu-1-replica", "cpu-2-replicas"],
)
def test_placement_json(machine, tmp_path: Path, inv: Inventory, replicas: int, expected: dict) -> None:  # type: ignore[no-untyped-def]
    machine(inv)
    models = [{**CHAT_AND_EMBED[0], "replicas": replicas}, CHAT_AND_EMBED[1]]
    doc = run_metal(tmp_path, models, None, "--json")
    assert doc["placement"] == expected
    assert [(d["vendor"], d["index"], d["name"]) for d in doc["devices"]] == [
        ("nvidia", g.index, H100) for g in inv.gpus
    ]
    for d in doc["devices"]:
        assert d["placed"] == expected.get(f"nvidia:{d['index']}", [])
        assert d["memory_total_bytes"] == 81559 << 20
    assert doc["host"]["cpu_count"] == 4 and doc["gateway"] is None


def test_table_names_devices_and_placements(machine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    machine(GPU2)
    text = run_metal(tmp_path, [{"name": "chat", "source": "org/chat", "replicas": 2}])
    assert H100 in text and "nvidia:1" in text and "chat#1" in text and "no GPU found" not in text
    machine(CPU4)
    text = run_metal(tmp_path, [{"name": "chat", "source": "org/chat", "replicas": 2}])
    assert "chat#0 (0-1)" in text and "chat#1 (2-3)" in text and "no GPU found" in text


def test_llama_cpp_and_the_auto_fallback(machine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    machine(GPU2)
    llama = [{"name": "g", "source": "/models/g.Q4.gguf", "engine": "llamacpp"}]
    assert run_metal(tmp_path, llama, None, "--json")["placement"] == {
        "nvidia:0": ["g#0"],
        "nvidia:1": ["g#0"],
    }
    machine(CPU4)
    monkeypatch.setattr(registry.ENGINES["vllm"], "unavailable", lambda: "vLLM is not installed")
    # auto picks llama.cpp for a GGUF source when vLLM is missing, as `m2a up` does
    assert run_metal(tmp_path, [{"name": "smollm2-135m-instruct"}], None, "--json")["placement"] == {
        "cpu:all": ["smollm2-135m-instruct#0"]
    }


class Readyz(BaseHTTPRequestHandler):
    body = {
        "ready": False,
        "models": {"chat": False},
        "replicas": [
            {"replica": "chat#0", "model": "chat", "engine": "vllm", "state": "ready", "restarts": 0},
            {"replica": "chat#1", "model": "chat", "engine": "vllm", "state": "restarting", "restarts": 2,
             "last_error": "exited with code 1"},
        ],
    }  # fmt: skip

    def do_GET(self) -> None:  # noqa: N802
        data = json.dumps(self.body).encode() if self.path == "/readyz" else b"{}"
        self.send_response(503 if self.path == "/readyz" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Readyz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_running_gateway_shows_its_replicas(machine, tmp_path: Path, gateway: int) -> None:  # type: ignore[no-untyped-def]
    machine(CPU4)
    models = [{"name": "chat", "source": "org/chat", "replicas": 2}]
    doc = run_metal(tmp_path, models, gateway, "--json")
    assert doc["gateway"]["url"] == f"http://127.0.0.1:{gateway}/readyz" and doc["gateway"]["ready"] is False
    assert [(r["replica"], r["state"]) for r in doc["gateway"]["replicas"]] == [
        ("chat#0", "ready"),
        ("chat#1", "restarting"),
    ]
    text = run_metal(tmp_path, models, gateway)
    assert "not ready" in text and "restarting" in text and "exited with code 1" in text


@pytest.mark.parametrize(("inv", "replicas"), [(GPU2, 1), (GPU2, 3), (CPU4, 1), (CPU4, 2)])
def test_placement_matches_the_vllm_adapter(machine, inv: Inventory, replicas: int) -> None:  # type: ignore[no-untyped-def]
    """What `m2a metal` says equals the devices in the env of the specs `m2a up` would start."""
    cfg = ModelConfig(name="chat", source="org/chat", replicas=replicas)
    hand_made = Manifest(
        name="chat", source="org/chat", origin="hub", task="chat", paths={"hf": "/nowhere/hf"},
        size_bytes={"hf": 1}, imported_at="2024-01-01T00:00:00+00:00",
    )  # fmt: skip
    from_specs: dict[str, list[str]] = {}
    for n in range(replicas):
        env = VllmEngine().spec(cfg, hand_made, 18100 + n, n, inv).env
        label = (
            f"nvidia:{env['CUDA_VISIBLE_DEVICES']}"
            if inv.has_nvidia
            else f"cpu:{env['VLLM_CPU_OMP_THREADS_BIND']}"
        )
        from_specs.setdefault(label, []).append(f"chat#{n}")
    assert placement(Settings(models=[cfg]), inv) == from_specs
