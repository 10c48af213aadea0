"""Portkey's AI gateway in a child process, for the side-by-side rows of `gateway_mock.py`.

It runs from `bench/.portkey` (made by `bench/portkey_env.sh`: npm `@portkey-ai/gateway` 1.15.2 with
`@hono/node-server` 1.13.5 and `hono` 4.9.7, the versions of Portkey's own lockfile), on this
machine's Node.js. The deployment is Portkey's default except for these settings:

- `node build/start-server.js --port=PORT --headless`: one Node process (its only start-up options
  are the port and `--headless`, which leaves out the log-viewer UI at /public); it listens on every
  interface, 1.15.2 has no option for the address;
- no config file, no Redis (`REDIS_CONNECTION_STRING` is removed from the environment), no API
  key of Portkey's own: a plain proxy with no keys, quotas or usage ledger;
- each request names its upstream in headers, as Portkey's docs show for a self-hosted
  OpenAI-compatible server: `x-portkey-provider: openai`, `x-portkey-custom-host: <mock>/v1`, and
  `authorization: Bearer <dummy>` (passed on to the mock, which ignores it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from stack import free_port

PORTKEY_DIR = Path(__file__).resolve().parent / ".portkey"
PORTKEY = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"


class Portkey:
    """Portkey's gateway in front of ``api_base``; `with Portkey(url) as pk:` gives ``pk.base_url``
    and ``pk.headers``, the headers each request carries."""

    def __init__(self, api_base: str, timeout: float = 60.0, label: str = "portkey") -> None:
        self.api_base = api_base
        self.timeout = timeout
        self.label = label
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"
        self.headers = {
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": api_base,
            "authorization": "Bearer sk-mock-unused",
        }
        self.ready_after: float | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Portkey:
        if not PORTKEY.exists():
            raise SystemExit(f"{PORTKEY} not found: run bench/portkey_env.sh first")
        node = shutil.which("node")
        if node is None:
            raise SystemExit("node not found on PATH: Portkey's gateway needs Node.js")
        self.tmp = tempfile.TemporaryDirectory(prefix="m2a-bench-portkey-")
        self.log = Path(self.tmp.name) / "portkey.log"
        env = {k: v for k, v in os.environ.items() if k != "REDIS_CONNECTION_STRING"}
        cmd = [node, str(PORTKEY), f"--port={self.port}", "--headless"]
        started = time.monotonic()
        with self.log.open("wb") as log:
            # A session of its own: Ctrl-C does not reach it half-way, and __exit__ ends its whole group.
            self.proc = subprocess.Popen(
                cmd, env=env, cwd=PORTKEY_DIR, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        version = subprocess.run(
            [node, "-p", "require('./node_modules/@portkey-ai/gateway/package.json').version"],
            cwd=PORTKEY_DIR, capture_output=True, text=True,
        ).stdout.strip()
        print(f"[{self.label}] starting Portkey gateway {version} on port {self.port}", flush=True)
        try:
            self._wait_ready(started)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self, started: float) -> None:
        assert self.proc is not None
        last_note = started
        while True:
            elapsed = time.monotonic() - started
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise SystemExit(f"Portkey exited with {code} before it was ready:\n{self.tail()}")
            if elapsed > self.timeout:
                raise SystemExit(f"Portkey did not come up within {self.timeout:.0f} s:\n{self.tail()}")
            try:
                if httpx.get(f"{self.root}/", timeout=2).status_code == 200:  # "AI Gateway says hey!"
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
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(grace)
                    break
                except subprocess.TimeoutExpired:
                    print(f"[{self.label}] still running {grace} s after {sig.name}", flush=True)
        self.tmp.cleanup()
