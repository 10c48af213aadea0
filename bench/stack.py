"""Start and stop `m2a up` for a benchmark, with visible progress while engines warm up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

KEY = "sk-bench-" + "b" * 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Up:
    """`m2a up` in a child process with the given models; `with Up(models) as up:`."""

    def __init__(
        self,
        models: list[dict],
        home: Path,
        label: str = "m2a up",
        cpus: set[int] | None = None,
        extra: dict | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.env = env or {}  # more environment, e.g. M2A_DATABASE_URL
        self.models = models
        self.extra = extra or {}  # more config sections, e.g. {"gateway": {"priorities": False}}
        self.cpus = cpus  # pin `m2a up` (the gateway) to these cores
        self.home = home
        self.label = label
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Up:
        self.home.mkdir(parents=True, exist_ok=True)
        cfg = self.home / f"bench-{self.port}.yaml"
        cfg.write_text(
            yaml.safe_dump({"models": self.models, "supervisor": {"base_port": 21000}, **self.extra})
        )
        log = (self.home / f"bench-{self.port}.log").open("wb")
        env = {**os.environ, "M2A_HOME": str(self.home), "M2A_ADMIN_KEY": KEY, **self.env}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "m2a", "up", "--config", str(cfg), "--port", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        print(f"[{self.label}] starting (log {log.name})", flush=True)
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"m2a up exited with {self.proc.returncode}; see {log.name}")
            try:
                r = httpx.get(f"{self.root}/readyz", timeout=5)
                if r.status_code == 200:
                    break
                states = ", ".join(f"{x['replica']}={x['state']}" for x in r.json().get("replicas", []))
                print(f"[{self.label}] {time.monotonic() - self.started:.0f}s: {states}", flush=True)
            except httpx.HTTPError:
                pass
            time.sleep(5)
        print(f"[{self.label}] ready after {time.monotonic() - self.started:.0f}s", flush=True)
        return self

    def replicas(self) -> list[dict]:
        return httpx.get(f"{self.root}/readyz", timeout=5).json()["replicas"]

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(120)
