"""A competing proxy in a child process, for the side-by-side rows of `gateway_mock.py`: started
in a session of its own, waited for with progress, its log's tail on failure, and its whole
process group ended on exit. `litellm_proxy.py` and `portkey_proxy.py` say how each is started."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx


class ProxyProcess:
    """The shared part: ``spawn`` a command logging to ``log``, then ``wait_ready`` on a health URL."""

    name = "proxy"  # for messages
    stop_grace_s = 10.0  # after SIGTERM, before SIGKILL

    def __init__(self, timeout: float, label: str) -> None:
        self.timeout = timeout
        self.label = label
        self.ready_after: float | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None

    def spawn(self, cmd: list, log: Path, env: dict[str, str], cwd: Path | None = None) -> float:
        """Start ``cmd``; when it started (monotonic)."""
        self.log = log
        started = time.monotonic()
        with log.open("wb") as out:
            # A session of its own: Ctrl-C does not reach it half-way, and stop() ends its whole group.
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return started

    def ready_or_stop(self, url: str, started: float) -> None:
        """``wait_ready``; if it fails (or is interrupted), stop the process and clean up first."""
        try:
            self.wait_ready(url, started)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
        tmp = getattr(self, "tmp", None)  # a subclass's temporary folder (config, log)
        if tmp is not None:
            tmp.cleanup()

    def wait_ready(self, url: str, started: float) -> None:
        """Until ``url`` answers 200 (progress every 5 s); SystemExit if the process dies or times out."""
        assert self.proc is not None
        last_note = started
        while True:
            elapsed = time.monotonic() - started
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise SystemExit(f"{self.name} exited with {code} before it was ready:\n{self.tail()}")
            if elapsed > self.timeout:
                raise SystemExit(f"{self.name} did not come up within {self.timeout:.0f} s:\n{self.tail()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - last_note >= 5:
                print(f"[{self.label}] {elapsed:.0f}s: not answering yet", flush=True)
                last_note = time.monotonic()
            time.sleep(0.25)
        self.ready_after = time.monotonic() - started
        print(f"[{self.label}] ready after {self.ready_after:.1f}s", flush=True)

    def tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after the grace period."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, grace in ((signal.SIGTERM, self.stop_grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(grace)
                break
            except subprocess.TimeoutExpired:
                print(f"[{self.label}] still running {grace:.0f} s after {sig.name}", flush=True)
