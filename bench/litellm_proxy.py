"""LiteLLM's proxy in a child process, for the side-by-side rows of `gateway_mock.py`.

It runs from its own virtual environment, `bench/.venv-litellm` (made by `bench/litellm_env.sh`),
never from the project's `.venv`. The deployment is LiteLLM's default except for these settings:

- `litellm --config CFG --host 127.0.0.1 --port PORT --num_workers 1`: one worker process (m2a's
  gateway is one process too), uvicorn with uvloop as LiteLLM picks by default;
- the config holds only `model_list`: the name "mock" routed to `openai/mock` with `api_base` the
  mock's /v1 URL and a dummy `api_key`; no `litellm_settings`, `general_settings` or callbacks;
- no database (`DATABASE_URL` is removed from the environment): no spend logs, no key table, no UI
  logins; requests are authenticated against the master key alone;
- `LITELLM_MASTER_KEY`: a random key per run (`sk-` + `secrets.token_urlsafe`);
- `LITELLM_LOCAL_MODEL_COST_MAP=True`: use the cost map shipped in the package instead of fetching it
  from GitHub at start-up (this machine has no route there; the fetch retries and then falls back to
  the same local copy);
- logging is left at its default: uvicorn writes one access line per request (to a file in the temp
  dir). m2a runs without an access log, but `LITELLM_LOG=ERROR`, which turns it off, changed
  nothing measurable here (2 x 3 s rounds, 2 cores: 82 vs 83 req/s JSON c=1, 160 vs 159 c=16);
- telemetry is left at its default: with no database and no `LITELLM_TELEMETRY_ENDPOINT` it
  registers no callback (litellm/proxy/telemetry/runtime.py in 1.108.0).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import yaml
from proxy_process import ProxyProcess
from stack import free_port

LITELLM = Path(__file__).resolve().parent / ".venv-litellm" / "bin" / "litellm"


class LiteLLM(ProxyProcess):
    """LiteLLM's proxy routing "mock" to ``api_base``; `with LiteLLM(url) as ll:` gives ``ll.base_url``."""

    name = "LiteLLM"
    stop_grace_s = 30.0

    def __init__(self, api_base: str, timeout: float = 120.0, label: str = "litellm") -> None:
        super().__init__(timeout, label)
        self.api_base = api_base
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"
        self.key = "sk-" + secrets.token_urlsafe(24)

    def __enter__(self) -> LiteLLM:
        if not LITELLM.exists():
            raise SystemExit(f"{LITELLM} not found: run bench/litellm_env.sh first")
        self.tmp = tempfile.TemporaryDirectory(prefix="m2a-bench-litellm-")
        cfg = Path(self.tmp.name) / "config.yaml"
        model = {"model": "openai/mock", "api_base": self.api_base, "api_key": "sk-mock-unused"}
        cfg.write_text(yaml.safe_dump({"model_list": [{"model_name": "mock", "litellm_params": model}]}))
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH", "PYTHONHOME")}
        env["LITELLM_MASTER_KEY"] = self.key
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        cmd = [LITELLM, "--config", cfg, "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--num_workers", "1"]
        started = self.spawn(cmd, Path(self.tmp.name) / "litellm.log", env)
        print(f"[{self.label}] starting LiteLLM proxy on port {self.port}", flush=True)
        self.ready_or_stop(f"{self.root}/health/liveliness", started)
        return self
