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
import subprocess
import tempfile
from pathlib import Path

from proxy_process import ProxyProcess
from stack import free_port

PORTKEY_DIR = Path(__file__).resolve().parent / ".portkey"
PORTKEY = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"


class Portkey(ProxyProcess):
    """Portkey's gateway in front of ``api_base``; `with Portkey(url) as pk:` gives ``pk.base_url``
    and ``pk.headers``, the headers each request carries."""

    name = "Portkey"

    def __init__(self, api_base: str, timeout: float = 60.0, label: str = "portkey") -> None:
        super().__init__(timeout, label)
        self.api_base = api_base
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"
        self.headers = {
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": api_base,
            "authorization": "Bearer sk-mock-unused",
        }

    def __enter__(self) -> Portkey:
        if not PORTKEY.exists():
            raise SystemExit(f"{PORTKEY} not found: run bench/portkey_env.sh first")
        node = shutil.which("node")
        if node is None:
            raise SystemExit("node not found on PATH: Portkey's gateway needs Node.js")
        self.tmp = tempfile.TemporaryDirectory(prefix="m2a-bench-portkey-")
        env = {k: v for k, v in os.environ.items() if k != "REDIS_CONNECTION_STRING"}
        cmd = [node, str(PORTKEY), f"--port={self.port}", "--headless"]
        started = self.spawn(cmd, Path(self.tmp.name) / "portkey.log", env, cwd=PORTKEY_DIR)
        version = subprocess.run(
            [node, "-p", "require('./node_modules/@portkey-ai/gateway/package.json').version"],
            cwd=PORTKEY_DIR, capture_output=True, text=True,
        ).stdout.strip()
        print(f"[{self.label}] starting Portkey gateway {version} on port {self.port}", flush=True)
        self.ready_or_stop(f"{self.root}/", started)  # "AI Gateway says hey!"
        return self
