"""Supervise engine replicas: start, wait for readiness, health-check, restart with backoff, stop.

Each managed replica runs in its own process group (so an engine's own workers are stopped with
it) with a parent-death signal (so a SIGKILLed m2a does not leave engines behind). Remote replicas
are only health-checked. Every health change is reported through ``on_change`` so the router's pool
can add or drop the replica, and as a line through ``on_event``, with start-up progress (the
engine's stage, read from its log) and the error an engine exited with.

A replica that fails the same way twice before it was ever ready (a bad flag, a context that does
not fit) is marked ``failed`` and not started again: retrying cannot help. One that was ready before
is restarted with exponential backoff however it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

from m2a.config import SupervisorConfig
from m2a.engines.base import EngineSpec
from m2a.engines.enginelog import START_MARK, StageReader, error_line, message, run_lines, tail

log = logging.getLogger("m2a.supervisor")

# A busy engine may answer a health check late: one miss keeps it in the pool, two in a row take it
# out, three restart it (a process that exits is noticed at once, without waiting for checks).
HEALTH_FAILURES_BEFORE_DROP = 2
HEALTH_FAILURES_BEFORE_RESTART = 3
HEALTH_TIMEOUT_S = 10
PROGRESS_EVERY_S = 5.0
# Identical failures (same error line) before the first readiness after which a replica is given up.
SAME_FAILURES_BEFORE_GIVING_UP = 2


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Replica:
    spec: EngineSpec
    log_path: Path
    state: str = "pending"  # pending, starting, ready, unhealthy, restarting, failed, stopped
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)
    ready_after_s: float | None = None
    last_error: str | None = None
    stage: str | None = None  # while starting: what the engine's log says it is doing
    failures: list[str] = field(default_factory=list)  # error lines of the starts that never got ready
    stages: StageReader | None = None
    family: list[psutil.Process] = field(default_factory=list)  # descendants seen while it ran

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.returncode is None else None

    def status(self) -> dict[str, object]:
        return {
            "replica": self.spec.replica_id,
            "model": self.spec.model,
            "engine": self.spec.engine,
            "state": self.state,
            "url": self.spec.base_url,
            "pid": self.pid,
            "restarts": self.restarts,
            "ready_after_s": self.ready_after_s,
            "last_error": self.last_error,
            "stage": self.stage,
            "log": str(self.log_path) if self.spec.managed else None,
            "device": device_of(self.spec),
        }


def device_of(spec: EngineSpec) -> str:
    """Where a replica runs, for the console: ``nvidia:0``, ``gpu``, ``cpu (cores 0-1)``, ``remote``."""
    if not spec.managed:
        return "remote"
    gpus = spec.env.get("CUDA_VISIBLE_DEVICES")
    if gpus:
        return ", ".join(f"nvidia:{g.strip()}" for g in gpus.split(",") if g.strip())
    if "--n_gpu_layers" in (spec.argv or []):
        return "gpu"
    cores = spec.env.get("VLLM_CPU_OMP_THREADS_BIND")
    return f"cpu (cores {cores})" if cores and cores not in ("auto", "all") else "cpu"


class Supervisor:
    def __init__(
        self,
        specs: list[EngineSpec],
        cfg: SupervisorConfig,
        log_dir: Path,
        on_change: Callable[[EngineSpec, bool], None] = lambda spec, healthy: None,
        on_event: Callable[[str], None] = lambda msg: None,
    ) -> None:
        self.cfg = cfg
        log_dir.mkdir(parents=True, exist_ok=True)
        self.replicas = [
            Replica(s, log_dir / f"{s.replica_id.replace('/', '--').replace('#', '-')}.log") for s in specs
        ]
        self._change_cb = on_change
        self._event_cb = on_event
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S))
        self._tasks = [asyncio.create_task(self._run(r), name=r.spec.replica_id) for r in self.replicas]

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until every replica is ready once (True), or the timeout passes or a replica that was
        never ready is given up while the others have been ready (False: see ``failed``)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.cfg.ready_timeout_s)
        while time.monotonic() < deadline and not self._stopping.is_set():
            if all(r.ready_after_s is not None for r in self.replicas):
                return True
            if all(r.ready_after_s is not None or r.state == "failed" for r in self.replicas):
                return False
            await asyncio.sleep(0.2)
        return all(r.ready_after_s is not None for r in self.replicas)

    def failed(self) -> list[Replica]:
        """Replicas given up after failing the same way before they were ever ready."""
        return [r for r in self.replicas if r.state == "failed"]

    async def stop(self) -> None:
        """Stop every replica: SIGTERM to each process group, SIGKILL after the grace period."""
        self._stopping.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = [r for r in self.replicas if r.pid]
        if running:
            self._on_event(
                f"stopping {len(running)} engine{'s' if len(running) > 1 else ''} "
                f"({', '.join(r.spec.replica_id for r in running)}): SIGTERM, "
                f"SIGKILL after {self.cfg.stop_grace_s:.0f}s"
            )
        await asyncio.gather(*(self._kill(r) for r in self.replicas), return_exceptions=True)
        for r in self.replicas:
            self._set(r, "stopped")
        if self._session:
            await self._session.close()

    def status(self) -> list[dict[str, object]]:
        return [r.status() for r in self.replicas]

    def child_pids(self) -> list[int]:
        return [r.pid for r in self.replicas if r.pid]

    # -- one replica ---------------------------------------------------------------------------

    def _on_change(self, spec: EngineSpec, healthy: bool) -> None:
        try:
            self._change_cb(spec, healthy)
        except Exception:  # a broken listener must not end the replica's supervision
            log.exception("on_change callback failed for %s", spec.replica_id)

    def _on_event(self, message: str) -> None:
        try:
            self._event_cb(message)
        except Exception:
            log.exception("on_event callback failed: %s", message)

    def _set(self, r: Replica, state: str, error: str | None = None) -> None:
        was_ready = r.state == "ready"
        r.state = state
        if error:
            r.last_error = error
        if (state == "ready") != was_ready:
            self._on_change(r.spec, state == "ready")
            if state == "unhealthy":  # stopped and restarting say so themselves
                self._on_event(f"{r.spec.replica_id}: unhealthy ({r.last_error}): out of the pool")

    async def _run(self, r: Replica) -> None:
        backoff = self.cfg.restart_backoff_s
        while not self._stopping.is_set():
            if r.spec.managed:
                await self._launch(r)
            if await self._wait_healthy(r):
                first = r.ready_after_s is None
                if first:
                    r.ready_after_s = round(time.monotonic() - r.started_at, 1)
                r.stage = None
                self._set(r, "ready")
                took = f" after {time.monotonic() - r.started_at:.0f}s" if r.spec.managed else ""
                self._on_event(
                    f"{r.spec.replica_id}: ready ({r.spec.engine}, {r.spec.base_url}){took}"
                    if first
                    else f"{r.spec.replica_id}: healthy again{took}: back in the pool"
                )
                backoff = self.cfg.restart_backoff_s
                await self._watch(r)
            if self._stopping.is_set():
                return
            if r.spec.managed:
                self._set(r, "restarting")
                await self._kill(r)
                if self._give_up(r):
                    return
                r.restarts += 1
                self._on_event(
                    f"{r.spec.replica_id}: {r.last_error}; restart {r.restarts} in {backoff:.0f}s"
                    f" (log: {r.log_path})"
                )
            else:
                self._set(r, "unhealthy")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(backoff * 2, self.cfg.restart_backoff_max_s)

    def _give_up(self, r: Replica) -> bool:
        """After a failed start: give the replica up when it failed the same way again before ever
        being ready (the error line of each failure is in ``last_error``)."""
        if r.ready_after_s is not None:
            return False
        r.failures.append(r.last_error or "")
        same = r.failures[-SAME_FAILURES_BEFORE_GIVING_UP:]
        if len(same) < SAME_FAILURES_BEFORE_GIVING_UP or len(set(same)) != 1:
            return False
        self._set(r, "failed")
        self._on_event(
            f"{r.spec.replica_id}: failed: {r.last_error} — the same error {len(same)} times before it "
            f"was ever ready, so it is not restarted; fix the cause and start again (log: {r.log_path})"
        )
        return True

    def _exit_error(self, r: Replica, what: str) -> str:
        """``what`` happened to the engine, with the error line its log ends the run with."""
        found = error_line(run_lines(r.log_path))
        if found is None:  # no error line: the last line or two (without pids and times), to say something
            found = "; ".join(message(ln) for ln in tail(r.log_path, 2))[-300:] or None
        return f"{what}: {found[:500]}" if found else what

    async def _launch(self, r: Replica) -> None:
        assert r.spec.argv is not None
        self._set(r, "starting")
        r.started_at = time.monotonic()
        with r.log_path.open("ab") as log:
            log.write(f"\n{START_MARK} {' '.join(r.spec.argv)}\n".encode())
            log.flush()
            r.stage = "starting"
            r.stages = StageReader(r.log_path, r.spec.engine)
            r.proc = await asyncio.create_subprocess_exec(
                *r.spec.argv,
                env={**os.environ, **r.spec.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self._on_event(f"{r.spec.replica_id}: starting {r.spec.engine} (pid {r.proc.pid}, log {r.log_path})")

    async def _healthy(self, r: Replica, live: bool = False) -> bool:
        assert self._session is not None
        headers = {"Authorization": f"Bearer {r.spec.api_key}"} if r.spec.api_key else {}
        url = (r.spec.live_url or r.spec.health_url) if live else r.spec.health_url
        try:
            async with self._session.get(url, headers=headers) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    def _exited(self, r: Replica) -> bool:
        if r.proc is not None and r.proc.returncode is not None:
            r.last_error = self._exit_error(r, f"engine exited with code {r.proc.returncode}")
            return True
        return False

    async def _wait_healthy(self, r: Replica) -> bool:
        """Poll until healthy. Managed replicas give up when the process exits or start-up times out.

        While a managed engine starts, a progress line says its stage (from its log) and for how
        long: at once when the stage changes, else every PROGRESS_EVERY_S."""
        started = stage_since = time.monotonic()
        next_progress = started + PROGRESS_EVERY_S
        while not self._stopping.is_set():
            if r.spec.managed and self._exited(r):
                return False
            if await self._healthy(r):
                return True
            now = time.monotonic()
            if r.spec.managed and now - started > self.cfg.ready_timeout_s:
                stage = f" (last stage: {r.stage})" if r.stage else ""
                r.last_error = f"not ready after {self.cfg.ready_timeout_s:.0f}s{stage}"
                return False
            if r.spec.managed and r.stages is not None:
                stage = r.stages.poll()
                if stage != r.stage:
                    r.stage, stage_since, next_progress = stage, now, now
                if now >= next_progress:
                    self._remember_family(r)
                    changed = stage_since > started and now - stage_since >= 1  # else: since start
                    in_stage = f" for {now - stage_since:.0f}s" if changed else ""
                    since = f"{now - started:.0f}s since start"
                    self._on_event(f"{r.spec.replica_id}: {r.stage}{in_stage} ({since})")
                    next_progress = now + PROGRESS_EVERY_S
            await asyncio.sleep(0.5)
        return False

    async def _watch(self, r: Replica) -> None:
        """Return when a ready replica stops being healthy (process exit or repeated failed checks)."""
        failures = 0
        exit_wait = asyncio.create_task(r.proc.wait()) if r.spec.managed and r.proc else None
        try:
            while not self._stopping.is_set():
                sleeper = asyncio.create_task(asyncio.sleep(self.cfg.health_interval_s))
                waiters: list[asyncio.Task[object]] = [sleeper]  # type: ignore[list-item]
                if exit_wait:
                    waiters.append(exit_wait)  # type: ignore[arg-type]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                sleeper.cancel()
                if r.spec.managed and self._exited(r):
                    self._set(r, "unhealthy")
                    return
                self._remember_family(r)
                if await self._healthy(r, live=True):
                    if r.state != "ready":
                        self._set(r, "ready")
                        self._on_event(f"{r.spec.replica_id}: healthy again: back in the pool")
                    failures = 0
                    continue
                failures += 1
                r.last_error = "health check failed"
                if failures >= HEALTH_FAILURES_BEFORE_DROP:
                    self._set(r, "unhealthy")
                if failures >= HEALTH_FAILURES_BEFORE_RESTART:
                    r.last_error = f"health check failed {failures} times"
                    return
        finally:
            if exit_wait and not exit_wait.done():
                exit_wait.cancel()

    def _remember_family(self, r: Replica) -> None:
        """Note the engine's descendants while it lives: after a crash they can no longer be listed."""
        if r.proc is None or r.proc.returncode is not None:
            return
        try:
            kids = psutil.Process(r.proc.pid).children(recursive=True)
        except psutil.Error:
            return
        known = {p.pid for p in r.family}
        r.family += [p for p in kids if p.pid not in known]

    async def _kill(self, r: Replica) -> None:
        proc = r.proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the leader's pid is the group id
        self._remember_family(r)
        family = r.family
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.cfg.stop_grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                await proc.wait()
                self._on_event(
                    f"{r.spec.replica_id}: still running {self.cfg.stop_grace_s:.0f}s after SIGTERM: "
                    f"killed (SIGKILL)"
                )
        # Workers left in the group, or ones that moved to a group of their own.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        for p in family:
            with contextlib.suppress(psutil.Error):
                p.kill()
        r.proc = None
        r.family = []
