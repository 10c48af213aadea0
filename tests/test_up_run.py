"""`m2a up`'s serving loop (``serve.run_up``) with real engine processes: what it says and when it stops.

Each test runs ``run_up`` in a child process (it owns SIGINT and SIGTERM) with replicas of
tests/fake_proc_engine.py, and reads what it printed: engines that fail to start, engines being
stopped, an engine killed after the grace period.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil

from tests.fake_engine import free_port
from tests.up_proc import child_env, spawn

ROOT = Path(__file__).resolve().parent.parent
ENGINE = str(Path(__file__).resolve().parent / "fake_proc_engine.py")

UP = """
import asyncio, json, sys
from pathlib import Path
from m2a.config import ModelConfig, Settings, SupervisorConfig
from m2a.engines.base import EngineSpec
from m2a.serve import listen_socket, run_up

home, engine, plan = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
specs = []
for name, port, options in plan:
    base = f"http://127.0.0.1:{port}"
    specs.append(EngineSpec(replica_id=f"{name}#0", model=name, engine="fake", task="chat",
                            base_url=base + "/v1", health_url=base + "/health",
                            argv=[sys.executable, engine, str(port), *options]))
settings = Settings(
    home=home, models=[ModelConfig(name=n) for n, _, _ in plan],
    supervisor=SupervisorConfig(health_interval_s=0.2, restart_backoff_s=0.2, stop_grace_s=2),
)
settings.telemetry.tracing = False
sock = listen_socket("127.0.0.1", 0)
sys.exit(asyncio.run(run_up(settings, specs, "k" * 32, lambda m: print(m, flush=True), sock)))
"""


def start(tmp_path: Path, plan: list[tuple[str, int, list[str]]]) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp_path / "up.out"
    argv = ["-c", UP, str(tmp_path / "home"), ENGINE, json.dumps(plan)]
    return spawn(argv, out, child_env()), out


def wait_for(out: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in out.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in:\n{out.read_text(errors='replace')}")


def test_up_stops_when_no_engine_can_start(tmp_path: Path) -> None:
    proc, out = start(tmp_path, [("bad", free_port(), ["--crash", "no such flag: --foo"])])
    try:
        assert proc.wait(120) == 1, out.read_text()
    finally:
        proc.kill()
    text = out.read_text()
    assert "bad#0: failed: engine exited with code 1: ValueError: no such flag: --foo" in text
    assert "no engine could start (see the errors above): stopping" in text
    assert "stopped: no engine left running" in text
    assert "restart 2" not in text


def test_up_serves_the_engines_that_started_and_names_the_ones_that_failed(tmp_path: Path) -> None:
    plan = [("good", free_port(), []), ("bad", free_port(), ["--crash", "no such flag: --foo"])]
    proc, out = start(tmp_path, plan)
    try:
        wait_for(out, "ready: ", proc)
        wait_for(out, "(Ctrl-C stops all)", proc)
        ready = next(ln for ln in out.read_text().splitlines() if ln.startswith("ready: "))
        assert ready.startswith("ready: good at http://") and "; not serving bad#0: failed to start" in ready
        # The address printed is the one bound (the system chose the port): it answers.
        url = ready.split(" at ", 1)[1].split(";", 1)[0]
        assert httpx.get(url.removesuffix("/v1") + "/healthz", timeout=10).status_code == 200
        assert proc.poll() is None  # still serving the model that started
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, out.read_text()
    finally:
        proc.kill()


def test_sigterm_during_warm_up_says_it_stops_and_kills_a_stubborn_engine(tmp_path: Path) -> None:
    port = free_port()
    info = tmp_path / "engine.json"
    options = ["--ready-after", "1000", "--ignore-sigterm", "--info-file", str(info)]
    proc, out = start(tmp_path, [("slow", port, options)])
    try:
        wait_for(out, "slow#0: starting fake", proc)
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        engine = psutil.Process(json.loads(info.read_text())["pid"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, out.read_text()
        text = out.read_text()
        lines = text.splitlines()
        assert "stopping 1 engine (slow#0): SIGTERM, SIGKILL after 2s" in lines, text
        assert "slow#0: still running 2s after SIGTERM: killed (SIGKILL)" in lines, text
        assert lines.index("slow#0: still running 2s after SIGTERM: killed (SIGKILL)") < lines.index(
            "stopped: no engine left running"
        )
        with contextlib.suppress(psutil.NoSuchProcess):
            assert not engine.is_running() or engine.status() == psutil.STATUS_ZOMBIE
    finally:
        proc.kill()
