"""The supervisor with real child processes: tests/fake_proc_engine.py stands in for an engine.

Each test builds ``EngineSpec`` s by hand (argv runs the fake engine on a free loopback port), runs a
``Supervisor`` with small intervals, and watches what it reports through ``on_change`` / ``on_event``
and ``status()``, and what happens to the processes (checked with psutil; a zombie counts as gone).

Every wait polls with a generous timeout that fails the test instead of hanging it; nothing asserts
on how long something took, so the tests hold on a slow, loaded two-core machine. Processes a test
saw are killed at teardown whatever happened, so a failing test leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from m2a.config import SupervisorConfig
from m2a.engines.base import EngineSpec
from m2a.engines.supervisor import PROGRESS_EVERY_S, Supervisor
from tests.fake_engine import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(Path(__file__).resolve().parent / "fake_proc_engine.py")
TIMEOUT = 60.0  # for anything that should happen "soon"; generous for a loaded two-core machine
READY_TIMEOUT = 120.0


# ---------------------------------------------------------------------------- helpers
def small_config(**over: float) -> SupervisorConfig:
    values: dict[str, float] = {
        "health_interval_s": 0.2,
        "restart_backoff_s": 0.2,
        "stop_grace_s": 3,
        "ready_timeout_s": 30,
    }
    values.update(over)
    return SupervisorConfig(**values)


def fake_spec(
    port: int, *options: str, replica_id: str = "fake#0", env: dict[str, str] | None = None
) -> EngineSpec:
    base = f"http://127.0.0.1:{port}"
    return EngineSpec(
        replica_id=replica_id,
        model=replica_id.partition("#")[0],
        engine="fake",
        task="chat",
        base_url=f"{base}/v1",
        health_url=f"{base}/health",
        argv=[sys.executable, SCRIPT, str(port), *options],
        env=env or {},
    )


@dataclass
class Recorder:
    """What the supervisor reported, in order."""

    changes: list[tuple[str, bool]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def on_change(self, spec: EngineSpec, healthy: bool) -> None:
        self.changes.append((spec.replica_id, healthy))

    def on_event(self, msg: str) -> None:
        self.events.append(msg)


async def wait_until(pred: Callable[[], object], what: str, rec: Recorder | None = None, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.1)
    detail = f"\nchanges: {rec.changes}\nevents:\n  " + "\n  ".join(rec.events) if rec else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")


def gone(p: psutil.Process) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_gone(procs: list[psutil.Process], timeout: float = 20) -> list[psutil.Process]:
    """The processes still alive after up to ``timeout`` seconds (polled; zombies count as gone)."""
    deadline = time.monotonic() + timeout
    alive = procs
    while time.monotonic() < deadline:
        alive = [p for p in alive if not gone(p)]
        if not alive:
            return []
        await asyncio.sleep(0.1)
    return alive


@pytest.fixture
def reaper() -> Iterator[list[psutil.Process]]:
    """Processes a test saw; any still alive at teardown are killed (with their children)."""
    seen: list[psutil.Process] = []
    yield seen
    for p in seen:
        with contextlib.suppress(psutil.Error):
            for c in p.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    c.kill()
            p.kill()


def engine_process(sup: Supervisor, reaper: list[psutil.Process]) -> psutil.Process:
    """The running engine of the (only) replica, and its children, remembered for the reaper."""
    pid = sup.status()[0]["pid"]
    assert isinstance(pid, int), sup.status()
    proc = psutil.Process(pid)
    reaper.append(proc)
    reaper.extend(proc.children(recursive=True))
    return proc


@contextlib.asynccontextmanager
async def supervised(
    specs: list[EngineSpec], tmp_path: Path, cfg: SupervisorConfig | None = None
) -> AsyncIterator[tuple[Supervisor, Recorder]]:
    rec = Recorder()
    sup = Supervisor(specs, cfg or small_config(), tmp_path / "logs", rec.on_change, rec.on_event)
    await sup.start()
    try:
        yield sup, rec
    finally:
        await asyncio.wait_for(sup.stop(), TIMEOUT)


# ---------------------------------------------------------------------------- start, crash, restart
async def test_start_reports_ready_with_a_pid(tmp_path: Path, reaper: list[psutil.Process]) -> None:
    spec = fake_spec(free_port(), env={"M2A_FAKE_MARK": "from-spec"})
    async with supervised([spec], tmp_path) as (sup, rec):
        assert await sup.wait_ready(READY_TIMEOUT), rec.events
        engine = engine_process(sup, reaper)
        assert rec.changes == [("fake#0", True)]
        (st,) = sup.status()
        assert st["state"] == "ready"
        assert st["replica"] == "fake#0" and st["model"] == "fake" and st["engine"] == "fake"
        assert st["url"] == spec.base_url
        assert st["restarts"] == 0 and st["last_error"] is None
        assert isinstance(st["ready_after_s"], float)
        assert sup.child_pids() == [engine.pid]
        # The spec's environment reaches the engine, on top of ours.
        assert engine.environ().get("M2A_FAKE_MARK") == "from-spec"
        assert "PATH" in engine.environ()
        # The engine's output goes to its log file.
        log = Path(str(st["log"]))
        await wait_until(lambda: "loading weights" in log.read_text(), "the engine's output in its log")
        assert "=== m2a: starting" in log.read_text()
        assert any("fake#0: starting fake" in e for e in rec.events)
        assert any("fake#0: ready" in e for e in rec.events)
    assert sup.status()[0]["state"] == "stopped"
    assert rec.changes == [("fake#0", True), ("fake#0", False)]


async def test_killed_engine_is_reported_and_restarted(tmp_path: Path, reaper: list[psutil.Process]) -> None:
    async with supervised([fake_spec(free_port())], tmp_path) as (sup, rec):
        assert await sup.wait_ready(READY_TIMEOUT), rec.events
        first = engine_process(sup, reaper)
        first.send_signal(signal.SIGKILL)
        await wait_until(lambda: ("fake#0", False) in rec.changes, "the replica reported unhealthy", rec)
        assert rec.changes == [("fake#0", True), ("fake#0", False)]
        await wait_until(lambda: len(rec.changes) == 3, "the replica back in the pool", rec)
        assert rec.changes == [("fake#0", True), ("fake#0", False), ("fake#0", True)]
        (st,) = sup.status()
        assert st["state"] == "ready"
        assert st["restarts"] == 1
        assert isinstance(st["pid"], int) and st["pid"] != first.pid
        assert "exited with code -9" in str(st["last_error"])
        engine_process(sup, reaper)
        assert any("restart 1" in e for e in rec.events)


async def test_crashed_engine_leaves_no_worker_behind(tmp_path: Path, reaper: list[psutil.Process]) -> None:
    """A worker in a session of its own outlives a SIGKILLed engine unless the supervisor remembered it."""
    async with supervised([fake_spec(free_port(), "--grandchild-own-session")], tmp_path) as (sup, rec):
        assert await sup.wait_ready(READY_TIMEOUT), rec.events
        engine = engine_process(sup, reaper)
        (worker,) = engine.children()
        await wait_until(lambda: sup.replicas[0].family, "the supervisor noting the engine's worker", rec)
        engine.send_signal(signal.SIGKILL)
        await wait_until(lambda: sup.status()[0]["restarts"] == 1, "the restart", rec)
        assert await wait_gone([worker]) == []


async def test_unhealthy_engine_is_dropped_then_restarted(
    tmp_path: Path, reaper: list[psutil.Process]
) -> None:
    """An engine that stays up but fails its health checks is taken out, then restarted."""
    sick = tmp_path / "sick"
    async with supervised([fake_spec(free_port(), "--sick-file", str(sick))], tmp_path) as (sup, rec):
        assert await sup.wait_ready(READY_TIMEOUT), rec.events
        first = engine_process(sup, reaper)
        sick.touch()
        await wait_until(lambda: ("fake#0", False) in rec.changes, "the replica reported unhealthy", rec)
        await wait_until(lambda: sup.status()[0]["restarts"] == 1, "a restart", rec)
        assert await wait_gone([first]) == [], "the sick engine was not stopped"
        sick.unlink()
        await wait_until(lambda: len(rec.changes) == 3, "the replica back in the pool", rec)
        assert rec.changes == [("fake#0", True), ("fake#0", False), ("fake#0", True)]
        (st,) = sup.status()
        assert st["state"] == "ready" and st["pid"] != first.pid
        assert "health check failed" in str(st["last_error"])
        engine_process(sup, reaper)


async def test_engine_that_exits_at_once_is_restarted_with_growing_backoff(tmp_path: Path) -> None:
    """An engine that fails differently each time is retried, with backoff (the same failure twice
    in a row before readiness gives it up: see the next tests)."""
    port = free_port()
    spec = fake_spec(port)
    spec.argv = [
        sys.executable,
        "-c",
        "import sys, time; print(f'boom: bad flag {time.time_ns()}', flush=True); sys.exit(3)",
    ]
    cfg = small_config(restart_backoff_s=1.0, restart_backoff_max_s=2.0)
    async with supervised([spec], tmp_path, cfg) as (sup, rec):
        await wait_until(lambda: sup.status()[0]["restarts"] >= 4, "four restarts", rec)
        (st,) = sup.status()
        assert str(st["last_error"]).startswith("engine exited with code 3: boom: bad flag")
        assert st["ready_after_s"] is None and st["state"] != "failed"
        restarts = [e for e in rec.events if re.search(r"fake#0: .* restart \d+ in", e)]
        # The wait doubles from restart_backoff_s up to restart_backoff_max_s.
        waits = [re.search(r"restart (\d+) in (\d+)s", e).groups() for e in restarts[:4]]  # type: ignore[union-attr]
        assert waits == [("1", "1"), ("2", "2"), ("3", "2"), ("4", "2")], restarts
        assert all("exited with code 3" in e for e in restarts)
        assert "boom: bad flag" in restarts[0]  # no error line: the end of the log, to say why
        assert not await sup.wait_ready(0.5)
        assert rec.changes == []
    assert sup.status()[0]["state"] == "stopped"
    assert sup.status()[0]["pid"] is None
    assert rec.changes == []
    assert all(t.done() for t in sup._tasks)


# ---------------------------------------------------------------------------- stop
@pytest.mark.parametrize("option", ["--grandchild", "--grandchild-own-session"])
async def test_stop_ends_the_engine_and_its_children(
    tmp_path: Path, reaper: list[psutil.Process], option: str
) -> None:
    async with supervised([fake_spec(free_port(), option)], tmp_path) as (sup, rec):
        assert await sup.wait_ready(READY_TIMEOUT), rec.events
        engine = engine_process(sup, reaper)
        grandchildren = engine.children()
        assert len(grandchildren) == 1 and grandchildren[0].name() == "sleep"
        proc = sup.replicas[0].proc
        assert proc is not None
        await asyncio.wait_for(sup.stop(), TIMEOUT)
        assert proc.returncode == -signal.SIGTERM
        assert await wait_gone([engine, *grandchildren]) == []
        (st,) = sup.status()
        assert st["state"] == "stopped" and st["pid"] is None
        assert sup.child_pids() == []
        assert rec.changes == [("fake#0", True), ("fake#0", False)]
        assert "stopping 1 engine (fake#0): SIGTERM, SIGKILL after 3s" in rec.events
        assert not any("killed" in e for e in rec.events)


async def test_stop_kills_an_engine_that_ignores_sigterm(
    tmp_path: Path, reaper: list[psutil.Process]
) -> None:
    spec = fake_spec(free_port(), "--ignore-sigterm", "--grandchild")
    async with supervised([spec], tmp_path) as (sup, rec):
        assert await sup.wait_ready(READY_TIMEOUT), rec.events
        engine = engine_process(sup, reaper)
        grandchildren = engine.children()
        proc = sup.replicas[0].proc
        assert proc is not None
        await asyncio.wait_for(sup.stop(), TIMEOUT)
        assert proc.returncode == -signal.SIGKILL  # SIGTERM was ignored; SIGKILL after stop_grace_s
        assert await wait_gone([engine, *grandchildren]) == []
        assert sup.status()[0]["state"] == "stopped"
        # Both said, so that the wait does not look like a hang.
        assert "stopping 1 engine (fake#0): SIGTERM, SIGKILL after 3s" in rec.events
        assert "fake#0: still running 3s after SIGTERM: killed (SIGKILL)" in rec.events


# ---------------------------------------------------------------------------- remote
async def test_remote_replica_is_health_checked_only(tmp_path: Path, reaper: list[psutil.Process]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    spec = EngineSpec(
        replica_id="remote#0",
        model="remote",
        engine="remote",
        task="chat",
        base_url=base,
        health_url=f"{base}/models",
        argv=None,
        api_key="remote-secret",  # the fake answers 401 without it
    )

    def serve() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, SCRIPT, str(port), "--key", "remote-secret"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        reaper.append(psutil.Process(proc.pid))
        return proc

    server = serve()
    try:
        async with supervised([spec], tmp_path) as (sup, rec):
            assert await sup.wait_ready(READY_TIMEOUT), rec.events
            assert rec.changes == [("remote#0", True)]
            (st,) = sup.status()
            assert st["state"] == "ready" and st["pid"] is None and st["log"] is None
            assert sup.child_pids() == []
            assert not any("starting" in e for e in rec.events)  # nothing is launched

            server.kill()
            server.wait()
            await wait_until(lambda: ("remote#0", False) in rec.changes, "the remote reported down", rec)
            await wait_until(lambda: sup.status()[0]["state"] == "unhealthy", "state unhealthy", rec)
            assert [e for e in rec.events if "unhealthy" in e] == [
                "remote#0: unhealthy (health check failed): out of the pool"
            ]

            server = serve()
            await wait_until(
                lambda: len(rec.changes) == 3 or server.poll() is not None, "the remote back", rec
            )
            assert server.poll() is None, "the fake remote could not serve on its port again"
            assert rec.changes == [("remote#0", True), ("remote#0", False), ("remote#0", True)]
            (st,) = sup.status()
            assert st["state"] == "ready" and st["restarts"] == 0
            await wait_until(lambda: "healthy again" in rec.events[-1], "the recovery said", rec)
            assert rec.events[-1] == "remote#0: healthy again: back in the pool"
    finally:
        server.kill()
        server.wait()


# ---------------------------------------------------------------------------- parent death
PARENT = """
import asyncio, sys
from pathlib import Path
from m2a.config import SupervisorConfig
from m2a.engines.base import EngineSpec
from m2a.engines.supervisor import Supervisor

async def main():
    script, port, logs = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    base = f"http://127.0.0.1:{port}"
    spec = EngineSpec(replica_id="orphan#0", model="orphan", engine="fake", task="chat",
                      base_url=base + "/v1", health_url=base + "/health",
                      argv=[sys.executable, script, str(port)])
    sup = Supervisor([spec], SupervisorConfig(health_interval_s=0.2, ready_timeout_s=60), logs)
    await sup.start()
    if not await sup.wait_ready(120):
        sys.exit(f"not ready: {sup.status()}")
    print(sup.status()[0]["pid"], flush=True)
    await asyncio.sleep(1000)

asyncio.run(main())
"""


async def test_engine_dies_with_a_killed_parent(tmp_path: Path, reaper: list[psutil.Process]) -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PARENT,
        SCRIPT,
        str(free_port()),
        str(tmp_path / "logs"),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    reaper.append(psutil.Process(parent.pid))
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(parent.stdout.readline(), READY_TIMEOUT)
        assert line.strip().isdigit(), f"the parent program printed {line!r}"
        engine = psutil.Process(int(line))
        reaper.append(engine)
        assert engine.ppid() == parent.pid
        parent.kill()  # SIGKILL: the supervisor gets no chance to stop anything
        await parent.wait()
        assert await wait_gone([engine], timeout=20) == [], "the engine outlived its supervisor"
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


# ---------------------------------------------------------------------------- progress
async def test_warming_up_progress_while_waiting_for_health(
    tmp_path: Path, reaper: list[psutil.Process]
) -> None:
    # Ready well after the first progress line is due, with margin for a slow machine.
    ready_after = PROGRESS_EVERY_S + 3
    async with supervised([fake_spec(free_port(), "--ready-after", str(ready_after))], tmp_path) as (
        sup,
        rec,
    ):
        assert await sup.wait_ready(READY_TIMEOUT), rec.events
        engine_process(sup, reaper)
        warming = [i for i, e in enumerate(rec.events) if "since start" in e]
        ready = [i for i, e in enumerate(rec.events) if "fake#0: ready" in e]
        assert warming, rec.events
        assert warming[0] < ready[0]
        # The stage, not the engine's last log line: an engine this test's patterns do not know
        # stays "starting" whatever it prints ("... loading weights on port ...").
        assert re.fullmatch(r"fake#0: starting( for \d+s)? \(\d+s since start\)", rec.events[warming[0]])
        assert not any("loading weights" in e for e in rec.events)
        assert rec.changes == [("fake#0", True)]
        assert sup.status()[0]["restarts"] == 0


# ---------------------------------------------------------------------------- failures that repeat
KV_ERROR = (
    "To serve at least one request with the model's max seq len (8192), (0.18 GiB KV cache is needed, "
    "which is larger than the available KV cache memory (0.13 GiB). Based on the available memory, "
    "the estimated maximum model length is 6016."
)


async def test_engine_failing_the_same_way_before_ready_is_given_up(tmp_path: Path) -> None:
    """vLLM refusing its configuration fails identically every time: retrying forever cannot help."""
    spec = fake_spec(free_port(), "--crash", KV_ERROR)
    async with supervised([spec], tmp_path) as (sup, rec):
        await wait_until(lambda: sup.status()[0]["state"] == "failed", "the replica given up", rec)
        assert not await sup.wait_ready(READY_TIMEOUT)  # answers at once: nothing left to wait for
        assert [r.spec.replica_id for r in sup.failed()] == ["fake#0"]
        (st,) = sup.status()
        # The engine's own error line, not the log's last line (the API server's "see above").
        assert st["last_error"] == f"engine exited with code 1: ValueError: {KV_ERROR}"
        assert st["restarts"] == 1 and st["pid"] is None and st["ready_after_s"] is None
        restarts = [e for e in rec.events if "restart 1 in" in e]
        assert len(restarts) == 1 and f"ValueError: {KV_ERROR}" in restarts[0], rec.events
        assert not any("See root cause above" in e for e in rec.events)
        (failed,) = [e for e in rec.events if "failed:" in e]
        assert failed.startswith(f"fake#0: failed: engine exited with code 1: ValueError: {KV_ERROR}")
        assert "not restarted" in failed
        assert sup._tasks[0].done()  # supervision of it ended
        assert not any("restart 2" in e for e in rec.events)
        assert rec.changes == []


async def test_engine_that_was_ready_is_restarted_however_it_fails(
    tmp_path: Path, reaper: list[psutil.Process]
) -> None:
    """Once ready, a crash may be transient (memory, a bad request): it keeps the restart with backoff."""
    crash = tmp_path / "crash"
    spec = fake_spec(free_port(), "--crash-if-exists", str(crash), "--crash", KV_ERROR)
    cfg = small_config(restart_backoff_s=0.2, restart_backoff_max_s=0.4)
    async with supervised([spec], tmp_path, cfg) as (sup, rec):
        assert await sup.wait_ready(READY_TIMEOUT), rec.events
        crash.touch()
        engine_process(sup, reaper).send_signal(signal.SIGKILL)
        await wait_until(lambda: sup.status()[0]["restarts"] >= 4, "restarts after identical crashes", rec)
        (st,) = sup.status()
        assert st["state"] != "failed" and not sup.failed()
        assert st["last_error"] == f"engine exited with code 1: ValueError: {KV_ERROR}"
        crash.unlink()
        await wait_until(lambda: sup.status()[0]["state"] == "ready", "the replica back", rec)
        engine_process(sup, reaper)


# ---------------------------------------------------------------------------- stages and health
VLLM_START = [
    "(APIServer pid=11) INFO 05-02 10:00:01 [api_server.py:1] vLLM server version 0.32.0, serving model m",
    "(EngineCore_DP0 pid=12) INFO 05-02 10:00:09 [cpu_model_runner.py:68] Starting to load model /m/hf...",
    "(EngineCore_DP0 pid=12) WARNING 05-02 10:01:09 [shm_broadcast.py:1] No available shared memory "
    "broadcast block found in 60 seconds",
    "(EngineCore_DP0 pid=12) INFO 05-02 10:01:10 [default_loader.py:502] Loading weights took 1.20 seconds",
    "(EngineCore_DP0 pid=12) INFO 05-02 10:01:11 [cpu_model_runner.py:87] Warming up model for the "
    "compilation...",
    "'function' object has no attribute 'finalize_loading'",
    "(EngineCore_DP0 pid=12) INFO 05-02 10:01:20 [cpu_worker.py:260] Explicitly set (0.13/3.80) GiB for "
    "KV cache on node 0.",
    "(EngineCore_DP0 pid=12) INFO 05-02 10:01:21 [core.py:403] init engine (profile, create kv cache, warmup "
    "model) took 30.20 s",
]
STAGE_LINE = re.compile(r"fake#0: ([a-z /A-Z]+?)( for \d+s)? \(\d+s since start\)")


async def test_progress_says_the_engines_stage(tmp_path: Path, reaper: list[psutil.Process]) -> None:
    options = [arg for line in VLLM_START for arg in ("--log", line)]
    spec = fake_spec(free_port(), *options, "--log-every", "1.5")
    spec.engine = "vllm"  # read its log with vLLM's patterns
    async with supervised([spec], tmp_path) as (sup, rec):
        assert await sup.wait_ready(READY_TIMEOUT), rec.events
        engine_process(sup, reaper)
        progress = [e for e in rec.events if "since start" in e]
        stages = [m.group(1) for e in progress if (m := STAGE_LINE.fullmatch(e))]
        assert len(stages) == len(progress), progress  # every progress line names a stage, nothing else
        assert "loading weights" in stages, progress
        known = ["starting", "loading weights", "compiling / warming up", "allocating the KV cache"]
        known.append("starting the API server")
        seen = list(dict.fromkeys(stages))
        assert seen == [k for k in known if k in seen], progress  # in the order the engine went
        # Lines that name no stage are never shown (they stay in the log file).
        assert not any("shared memory" in e or "finalize_loading" in e for e in rec.events)
        assert "finalize_loading" in Path(str(sup.status()[0]["log"])).read_text()
        assert sup.status()[0]["stage"] is None  # ready


async def test_health_changes_of_a_running_engine_are_said(
    tmp_path: Path, reaper: list[psutil.Process], monkeypatch: pytest.MonkeyPatch
) -> None:
    from m2a.engines import supervisor

    monkeypatch.setattr(supervisor, "HEALTH_FAILURES_BEFORE_RESTART", 10**6)  # drop it, never restart
    sick = tmp_path / "sick"
    async with supervised([fake_spec(free_port(), "--sick-file", str(sick))], tmp_path) as (sup, rec):
        assert await sup.wait_ready(READY_TIMEOUT), rec.events
        engine_process(sup, reaper)
        sick.touch()
        await wait_until(lambda: ("fake#0", False) in rec.changes, "the replica reported unhealthy", rec)
        assert "fake#0: unhealthy (health check failed): out of the pool" in rec.events
        sick.unlink()
        await wait_until(lambda: len(rec.changes) == 3, "the replica back in the pool", rec)
        assert rec.events[-1] == "fake#0: healthy again: back in the pool"
        assert sup.status()[0]["restarts"] == 0


async def test_the_same_failure_without_a_traceback_is_recognised_across_pids(tmp_path: Path) -> None:
    """Each start prints its own pid: the comparison is on the message, without vLLM's line prefix."""
    spec = fake_spec(free_port())
    spec.argv = [
        sys.executable,
        "-c",
        "import os; print(f'(EngineCore_DP0 pid={os.getpid()}) INFO 05-02 10:00:0{os.getpid() % 10} "
        "[cpu_worker.py:1] not enough memory for the workers', flush=True); raise SystemExit(1)",
    ]
    async with supervised([spec], tmp_path) as (sup, rec):
        await wait_until(lambda: sup.status()[0]["state"] == "failed", "the replica given up", rec)
        assert sup.status()[0]["last_error"] == "engine exited with code 1: not enough memory for the workers"
        assert sup.status()[0]["restarts"] == 1
