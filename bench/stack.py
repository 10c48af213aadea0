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

# Run as `python -c LAUNCH REPORT up ...`: the gateway process itself writes the file its `m2a`
# package was imported from to REPORT, then runs `m2a` as `python -m m2a` would.
LAUNCH = (
    "import runpy, sys, m2a; "
    "open(sys.argv.pop(1), 'w').write(m2a.__file__); "
    "runpy.run_module('m2a', run_name='__main__', alter_sys=True)"
)


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
        src: Path | None = None,
    ) -> None:
        self.env = env or {}  # more environment, e.g. M2A_DATABASE_URL
        # A source tree's `src` folder: m2a runs from it (first on PYTHONPATH), and `m2a up` stops
        # at once when the process imported m2a from anywhere else.
        self.src = src.resolve() if src is not None else None
        self.m2a_file: Path | None = None
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
        cmd = [sys.executable, "-m", "m2a"]
        report = self.home / f"bench-{self.port}.m2a-file"
        if self.src is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(self.src), *filter(None, [env.get("PYTHONPATH")])])
            report.unlink(missing_ok=True)
            cmd = [sys.executable, "-c", LAUNCH, str(report)]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [*cmd, "up", "--config", str(cfg), "--port", str(self.port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        print(f"[{self.label}] starting (log {log.name})", flush=True)
        while True:
            if self.src is not None and self.m2a_file is None and report.exists():
                self._check_source(Path(report.read_text()), log.name)
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
        if self.src is not None and self.m2a_file is None:
            self._check_source(Path(report.read_text()), log.name)
        print(f"[{self.label}] ready after {time.monotonic() - self.started:.0f}s", flush=True)
        return self

    def _check_source(self, m2a_file: Path, log: str) -> None:
        assert self.src is not None and self.proc is not None
        self.m2a_file = m2a_file.resolve()
        expected = self.src / "m2a" / "__init__.py"
        if self.m2a_file != expected:
            self.proc.kill()
            self.proc.wait()
            raise SystemExit(
                f"[{self.label}] WRONG SOURCE TREE: the gateway process imported m2a from {self.m2a_file},"
                f" not {expected} (PYTHONPATH={self.src}); see {log}"
            )
        pid = self.proc.pid
        print(f"[{self.label}] gateway process (pid {pid}) runs m2a from {self.m2a_file}", flush=True)

    @property
    def pid(self) -> int:
        """The `m2a up` process (the gateway runs in it)."""
        assert self.proc is not None
        return self.proc.pid

    def replicas(self) -> list[dict]:
        return httpx.get(f"{self.root}/readyz", timeout=5).json()["replicas"]

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(120)
