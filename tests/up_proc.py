"""`m2a up` as a real child process for end-to-end tests: its own process group, always cleaned up.

Only the ``M2A_*`` variables a test passes reach the child (none leak in from the test's own
environment), so a test decides alone which database and which Redis the gateway uses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.conftest import ROOT, free_port

ADMIN_KEY = "sk-admin-" + "e" * 24


def child_env(**env: str) -> dict[str, str]:
    """This environment without any ``M2A_*`` variable, with ``env`` and the project importable."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("M2A_")}
    return {**clean, "PYTHONPATH": str(ROOT), **env}


def spawn(argv: list[str], out: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``python argv...`` from the project root, stdin closed, stdout and stderr to ``out``."""
    return subprocess.Popen(
        [sys.executable, *argv], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
        stdout=out.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


class UpProc:
    """One `m2a up` serving the given models; ``start``/``kill``/``close``, or ``with UpProc(...)``."""

    def __init__(self, home: Path, models: list[dict], env: dict[str, str] | None = None) -> None:
        self.home = home
        self.models = models
        self.extra_env = env or {}
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home.parent / f"{home.name}-up.log"
        self.starts = 0

    def start(self) -> UpProc:
        self.home.mkdir(parents=True, exist_ok=True)
        cfg = self.home / "test-config.yaml"
        cfg.write_text(yaml.safe_dump({"models": self.models}))
        env = child_env(M2A_HOME=str(self.home), M2A_ADMIN_KEY=ADMIN_KEY, **self.extra_env)
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"\n=== start {self.starts} on port {self.port}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "m2a", "up", "--config", str(cfg), "--port", str(self.port)],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: `close` takes everything in it
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 30) -> None:
        """Until /readyz says 200 (the ledger has recovered by then: it runs before the socket listens)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"m2a up exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.root}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"m2a up not ready after {timeout}s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the gateway process alone: no shutdown, no final ledger flush."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after a grace period."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # the leader of its own session
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)  # anything left in the group, leader included
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def __enter__(self) -> UpProc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_team_key(root: str, team: str, model: str) -> str:
    """A team with a grant on ``model`` and a member key of it, through the admin API; the key."""
    with httpx.Client(base_url=root, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10) as c:
        r = c.post("/admin/v1/teams", json={"name": team})
        assert r.status_code == 201, r.text
        r = c.put(f"/admin/v1/teams/{team}/grants/{model}")
        assert r.status_code == 200, r.text
        r = c.post("/admin/v1/keys", json={"team": team, "name": f"{team}-load"})
        assert r.status_code == 201, r.text
        return r.json()["key"]
