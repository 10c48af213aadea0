"""The command runner: a configured command action, run for real in the sandbox, arguments as JSON
on stdin (never in argv), the action's limits applied, text results, a fresh scratch per run."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from m2a.config import ActionConfig
from m2a.trust.command import CommandRunner, limits_of
from m2a.trust.sandbox import SandboxUnavailable, detect

pytestmark = pytest.mark.asyncio(loop_scope="session")

ECHO = (
    "import json, os, sys\n"
    "args = json.loads(sys.stdin.read())\n"
    "print(json.dumps({'args': args, 'argv': sys.argv[1:], 'cwd': os.getcwd()}, ensure_ascii=False))\n"
)


@pytest.fixture(scope="module")
def sandbox():
    try:
        return detect("auto")
    except SandboxUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def runner(sandbox, tmp_path):
    return CommandRunner(sandbox, tmp_path / "scratch")


def action(code: str, *args: str, **kw) -> ActionConfig:
    return ActionConfig(name="probe", kind="command", argv=[sys.executable, "-c", code, *args], **kw)


async def test_arguments_arrive_as_json_on_stdin_and_argv_is_as_configured(runner):
    import json

    before = time.time()
    hostile = {"text": "héllo $(touch /tmp/pwned) `id`; rm -rf /", "n": 3, "nested": {"ok": [1, None]}}
    res = await runner.run(action(ECHO, "{text}", "$HOME"), hostile, network=None)
    assert res.ok and res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["args"] == hostile
    assert out["argv"] == ["{text}", "$HOME"]  # nothing templated, no shell
    assert out["cwd"] == "/scratch"
    assert not Path("/tmp/pwned").exists()
    assert res.started_at >= before and res.duration_ms > 0 and res.backend == runner.backend.name
    assert not res.timed_out and res.killed is None and not res.truncated


async def test_output_is_text_with_invalid_bytes_replaced(runner):
    code = (
        "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end')\nsys.stderr.write('warn\\n')\nsys.exit(4)"
    )
    res = await runner.run(action(code), {}, network=None)
    assert res.exit_code == 4 and not res.ok
    assert res.stdout == "ok \ufffd\ufffd end" and res.stderr == "warn\n"


async def test_the_actions_limits_apply(runner):
    slow = await runner.run(action("import time; time.sleep(60)", timeout_s=1), {}, network=None)
    assert slow.timed_out and slow.killed == "timeout" and slow.exit_code is None
    loud = await runner.run(action("print('x' * 10_000_000)", max_output_bytes=2048), {}, network=None)
    assert loud.truncated and len(loud.stdout) == 2048 and loud.killed == "output_limit"
    hog = await runner.run(action("b = bytearray(1 << 30)", memory_mb=128), {}, network=None)
    assert hog.exit_code != 0 and hog.killed == "memory"
    lim = limits_of(action("pass", cpu_s=7, max_procs=9))
    assert (lim.cpu_s, lim.max_procs, lim.memory_mb) == (7, 9, 512)


async def test_each_run_has_a_fresh_scratch_removed_after(runner):
    code = "import os\nprint(sorted(os.listdir('.')))\nopen('left-behind', 'w').write('x')"
    first = await runner.run(action(code), {}, network=None)
    second = await runner.run(action(code), {}, network=None)
    assert first.stdout.strip() == second.stdout.strip() == "[]"
    assert list(runner.scratch_root.iterdir()) == []


async def test_refusals(runner, tmp_path):
    http = ActionConfig(name="h", kind="http", url="http://127.0.0.1:9/x")
    with pytest.raises(ValueError, match="not a command"):
        await runner.run(http, {}, network=None)
    with pytest.raises(ValueError, match="not JSON"):
        await runner.run(action("pass"), {"x": float("nan")}, network=None)
    with pytest.raises(ValueError, match="JSON object"):
        await runner.run(action("pass"), ["a"], network=None)  # type: ignore[arg-type]
    refused = CommandRunner(detect("none"), tmp_path / "none")
    with pytest.raises(SandboxUnavailable):
        await refused.run(action("pass"), {}, network=None)
