"""The sandbox local commands run in: isolation backends, resource limits, and one supervisor.

A command runs with a minimal read-only view of the machine (``/usr`` and the loader's folders, a
few files of ``/etc``, the Python it may need), a fresh ``/proc``, a small ``/dev``, a tmpfs
``/tmp``, and one scratch folder bound read-write at ``/scratch`` (its working directory); in its
own user (where needed), mount, pid, network, IPC and UTS namespaces, with no capabilities, no
new privileges, an explicit small environment, and resource limits (CPU seconds, address space,
processes, file size). Its network namespace has only ``lo``: no network at all, or with
:class:`Network`, one way out through m2a's egress proxy (``bridge.py`` inside forwards
``127.0.0.1:3128`` to the proxy's Unix socket, and the command gets ``HTTP(S)_PROXY``).

Backends, registered by name (``register_backend``) behind :class:`Backend`:

- ``bwrap``: bubblewrap;
- ``unshare``: m2a's own (``nsinit.py``: namespaces, a pivoted root, Landlock where the kernel has
  it, so that writes outside the scratch folder fail even without the read-only mounts);
- ``none``: refuses to run anything.

:func:`detect` picks the first that works on this machine (each is tried once) and fails closed:
no command ever runs unsandboxed. Run as root, the command runs as a dedicated unprivileged host uid
of its own (``HOST_UID_BASE`` + a random offset, per run), since the kernel does not hold
RLIMIT_NPROC for uid 0 and a fork bomb must stop; run as a user, it runs as uid 65534 in a user
namespace mapped to that user.

The supervisor (``Backend.run``, asyncio, never blocking the loop) learns the sandbox's pid 1 as the
host sees it and kills it for a wall-clock timeout or once the output passes its cap: the kernel
then ends every process of the pid namespace, and ``run`` returns only once they are all gone.

Standard library only (``nsinit.py`` and ``landlock.py`` run inside the sandbox as ``python -I -S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

SCRATCH = "/scratch"
EGRESS_SOCKET = "/run/m2a-egress.sock"
BRIDGE = "/run/m2a/bridge.py"
BRIDGE_PORT = 3128
SANDBOX_UID = 65534  # the command's uid inside a user namespace
HOST_UID_BASE = 0x7E000000  # as root: each run's own host uid is HOST_UID_BASE + randbelow(HOST_UID_SPAN)
HOST_UID_SPAN = 1 << 20
SYSTEM_PATHS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/os-release",
    "/etc/mime.types",
)
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": SCRATCH,
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "USER": "sandbox",
    "LOGNAME": "sandbox",
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIGNAL_KILLS = {signal.SIGXCPU: "cpu", signal.SIGXFSZ: "file_size"}
_MEMORY_HINTS = (b"MemoryError", b"Cannot allocate memory", b"out of memory", b"std::bad_alloc")
_GRACE_S = 10.0  # how long to wait for killed processes to be gone (never a busy wait)


class SandboxUnavailable(RuntimeError):
    """No sandbox can run commands here (or the configuration is ``none``); nothing was run."""


class SandboxError(RuntimeError):
    """The sandbox could not be set up for this run; the command did not start."""


@dataclass(frozen=True)
class Limits:
    """What one run may use. ``max_procs`` counts the command's processes and threads, itself
    included; ``max_output_bytes`` caps stdout and stderr each; ``max_scratch_mb`` caps each file
    written (RLIMIT_FSIZE) and sizes ``/tmp`` (a tmpfs, 256 MiB when unset)."""

    timeout_s: float = 30.0
    cpu_s: int = 10
    memory_mb: int = 512
    max_procs: int = 64
    max_output_bytes: int = 1 << 20
    max_scratch_mb: int | None = None

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_mb", "max_procs", "max_output_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"limits: {name} must be positive")
        if self.max_scratch_mb is not None and self.max_scratch_mb <= 0:
            raise ValueError("limits: max_scratch_mb must be positive")

    def rlimits(self, extra_procs: int = 0) -> dict[str, tuple[int, int]]:
        """Soft and hard limits by name (``nsinit``'s names), ``extra_procs`` added for the
        sandbox's own processes that count against the same uid."""
        fsize = (self.max_scratch_mb or 1024) << 20
        return {
            "cpu": (self.cpu_s, self.cpu_s + 1),  # SIGXCPU at the soft limit, SIGKILL one second on
            "as": (self.memory_mb << 20, self.memory_mb << 20),
            "nproc": (self.max_procs + extra_procs, self.max_procs + extra_procs),
            "fsize": (fsize, fsize),
            "core": (0, 0),
        }

    @property
    def tmp_bytes(self) -> int:
        return (self.max_scratch_mb or 256) << 20


@dataclass(frozen=True)
class Network:
    """The sandbox's one way out: the egress proxy's Unix socket (an HTTP CONNECT proxy)."""

    proxy_socket: Path


@dataclass(frozen=True)
class SandboxResult:
    """What happened. ``exit_code`` is the command's status (128 + n when signal n ended it), None
    when m2a killed it; ``killed`` says why it ended early: ``timeout``, ``output_limit``, ``cpu``
    (RLIMIT_CPU), ``file_size`` (RLIMIT_FSIZE), ``memory`` (an allocation failed under the
    address-space limit, as the command reported it), or ``signal:NAME``."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool
    killed: str | None
    duration_ms: float
    backend: str
    truncated: bool


@dataclass
class _Mount:
    kind: str  # ro, rw, symlink, file, tmpfs, proc, dev
    dest: str
    src: str | None = None
    target: str | None = None  # symlink
    data: str | None = None  # file
    mode: int = 0o755
    size: int = 0


@dataclass
class _Job:
    argv: list[str]
    env: dict[str, str]
    scratch: Path
    limits: Limits
    network: Network | None
    host_uid: int | None  # running as root: the command's own unprivileged host uid
    mounts: list[_Mount] = field(default_factory=list)


@dataclass
class _Launch:
    cmd: list[str]
    pass_fds: list[int]
    close_after_spawn: list[int]  # the child's ends
    status_fd: int  # ours: JSON documents, one a line
    block_fd: int | None = None  # ours: write one byte to let the sandbox go on (after limits)
    extra_procs: int = 0
    prlimit: bool = False  # the supervisor applies the limits to pid 1 before releasing it


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(name: str) -> Callable[[type[Backend]], type[Backend]]:
    def deco(cls: type[Backend]) -> type[Backend]:
        cls.name = name
        BACKENDS[name] = cls
        return cls

    return deco


def default_visible() -> list[str]:
    """The host paths a command sees read-only by default: the system's and Python's."""
    paths = [p for p in SYSTEM_PATHS if os.path.lexists(p)]
    for p in (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix):
        paths.append(os.path.realpath(p))
    exe = os.path.realpath(sys.executable)
    paths.append(os.path.dirname(os.path.dirname(exe)))
    return _dedupe(paths)


def _dedupe(paths: Iterable[str]) -> list[str]:
    """Absolute paths, each once, leaving out those already beneath a visible folder."""
    out: list[str] = []
    for p in paths:
        p = os.path.abspath(p)
        if p == "/" or any(p == q or p.startswith(q.rstrip("/") + "/") for q in out if not os.path.islink(q)):
            continue
        out = [q for q in out if not q.startswith(p.rstrip("/") + "/")]
        out.append(p)
    return out


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class Backend(ABC):
    """One way of isolating a command. Subclasses build the launch; the supervision is shared."""

    name: ClassVar[str] = "?"

    def __init__(
        self,
        *,
        scratch_root: Path | None = None,
        visible: Sequence[str | Path] = (),
        python: str | None = None,
    ) -> None:
        self.scratch_root = (
            Path(scratch_root)
            if scratch_root
            else Path(tempfile.gettempdir()) / f"m2a-sandbox-{os.geteuid()}"
        )
        self.visible = _dedupe([*default_visible(), *(os.path.realpath(p) for p in visible)])
        self.python = python or sys.executable  # runs the bridge inside; visible by default
        self._reason: str | None | bool = False  # False: not probed yet

    # -- availability -------------------------------------------------------------------------

    def unavailable(self) -> str | None:
        """Why this backend cannot run commands here (None: it can). Tries it once."""
        if self._reason is False:
            self._reason = self._precheck() or self._probe()
        return self._reason  # type: ignore[return-value]

    def _precheck(self) -> str | None:
        return None

    def _probe(self) -> str | None:
        box: dict[str, str | None] = {}

        def go() -> None:
            try:
                res = asyncio.run(self.run(["true"], limits=Limits(timeout_s=30, cpu_s=5, memory_mb=256)))
            except (SandboxError, SandboxUnavailable, OSError, ValueError) as e:
                box["r"] = str(e)
            else:
                err = res.stderr.decode(errors="replace").strip()[-400:]
                box["r"] = None if res.exit_code == 0 else f"a trial run failed ({res.exit_code}): {err}"

        t = threading.Thread(target=go, name=f"sandbox-probe-{self.name}")
        t.start()
        t.join()
        return box.get("r", "the trial run did not finish")

    # -- running ------------------------------------------------------------------------------

    async def run(
        self,
        argv: list[str],
        *,
        stdin: bytes = b"",
        limits: Limits,
        scratch: Path | None = None,
        env: dict[str, str] | None = None,
        network: Network | None = None,
    ) -> SandboxResult:
        """Run ``argv`` (no shell) in the sandbox and return what it did. ``scratch``: the folder
        bound at ``/scratch`` and kept; None: a fresh one under ``scratch_root``, removed after."""
        if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise ValueError("argv must be a non-empty list of strings without NUL")
        job_env = dict(BASE_ENV)
        for k, v in (env or {}).items():
            if not _ENV_NAME.match(k) or "\0" in v:
                raise ValueError(f"environment: bad variable {k!r}")
            if k.startswith("LD_"):
                raise ValueError(f"environment: {k} is not allowed (it changes what the loader runs)")
            job_env[k] = v
        host_uid = HOST_UID_BASE + secrets.randbelow(HOST_UID_SPAN) if os.geteuid() == 0 else None
        fresh = scratch is None
        if fresh:
            _private_dir(self.scratch_root)
            scratch = Path(tempfile.mkdtemp(prefix="m2a-scratch-", dir=self.scratch_root))
            if host_uid is not None:  # root enters it (to chdir) without CAP_DAC_OVERRIDE
                scratch.chmod(0o711)
        else:
            scratch = Path(scratch).resolve()
            if not scratch.is_dir():
                raise ValueError(f"scratch {scratch} is not a folder")
        job = _Job(list(argv), job_env, scratch, limits, network, host_uid)
        try:
            if host_uid is not None:
                _chown_tree(scratch, host_uid, host_uid, whole=not fresh)
                if network is not None:
                    os.chown(network.proxy_socket, host_uid, host_uid)
            self._plan(job)
            return await self._supervise(job, stdin)
        finally:
            if fresh:
                shutil.rmtree(scratch, ignore_errors=True)
            elif host_uid is not None:
                _chown_tree(scratch, os.getuid(), os.getgid(), whole=True)

    def _plan(self, job: _Job) -> None:
        """The sandbox's file system, in order, and the argv and environment with the bridge."""
        m = job.mounts
        m.append(_Mount("proc", "/proc"))
        m.append(_Mount("dev", "/dev"))
        m.append(_Mount("tmpfs", "/dev/shm", mode=0o1777, size=min(job.limits.tmp_bytes, 64 << 20)))
        m.append(_Mount("tmpfs", "/tmp", mode=0o1777, size=job.limits.tmp_bytes))
        for p in self.visible:  # after /tmp: a visible path beneath it stays visible
            if os.path.islink(p):
                m.append(_Mount("symlink", p, target=os.readlink(p)))
            elif os.path.exists(p):
                m.append(_Mount("ro", p, src=p))
        m.append(_Mount("rw", SCRATCH, src=str(job.scratch)))
        uid = job.host_uid if job.host_uid is not None else SANDBOX_UID
        m.append(
            _Mount(
                "file",
                "/etc/passwd",
                data=f"root:x:0:0::/:/sbin/nologin\nsandbox:x:{uid}:{uid}::{SCRATCH}:/bin/sh\n",
            )
        )
        m.append(_Mount("file", "/etc/group", data=f"root:x:0:\nsandbox:x:{uid}:\n"))
        if job.network is not None:
            m.append(_Mount("ro", EGRESS_SOCKET, src=str(job.network.proxy_socket)))
            m.append(_Mount("ro", BRIDGE, src=str(Path(__file__).with_name("bridge.py"))))
            proxy = f"http://127.0.0.1:{BRIDGE_PORT}"
            for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
                job.env[k] = proxy
            job.env["NO_PROXY"] = job.env["no_proxy"] = ""
            job.argv = [
                self.python, "-I", "-S", BRIDGE,
                "--socket", EGRESS_SOCKET, "--listen", str(BRIDGE_PORT), "--", *job.argv,
            ]  # fmt: skip
        else:
            for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
                job.env.pop(k, None)

    @abstractmethod
    def _launch(self, job: _Job) -> _Launch: ...

    async def _supervise(self, job: _Job, stdin: bytes) -> SandboxResult:
        launch = self._launch(job)
        limits = job.limits
        started = time.monotonic()
        deadline = started + limits.timeout_s
        status = _Status(launch.status_fd)
        proc: asyncio.subprocess.Process | None = None
        pidfd: int | None = None
        child = 0
        killed: str | None = None
        tasks: list[asyncio.Task] = []
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *launch.cmd,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    pass_fds=launch.pass_fds,
                    start_new_session=True,
                    env={"PATH": BASE_ENV["PATH"]},
                    umask=0o022,
                )
            finally:
                for fd in launch.close_after_spawn:
                    os.close(fd)
            out, err = _Capped(limits.max_output_bytes), _Capped(limits.max_output_bytes)
            tasks = [
                asyncio.create_task(out.read(proc.stdout)),
                asyncio.create_task(err.read(proc.stderr)),
                asyncio.create_task(status.read()),
            ]
            child = await status.child_pid(deadline)
            if child:
                with contextlib.suppress(OSError):
                    pidfd = os.pidfd_open(child)
                if launch.prlimit:
                    self._limit_pid1(child, limits, launch.extra_procs)
                if launch.block_fd is not None:
                    os.write(launch.block_fd, b"1")
            tasks.append(asyncio.create_task(_feed(proc.stdin, stdin)))
            waiter = asyncio.create_task(proc.wait())
            overflow = asyncio.create_task(_first(out.overflow, err.overflow))
            done, _ = await asyncio.wait(
                {waiter, overflow},
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if waiter not in done:
                killed = "output_limit" if overflow in done else "timeout"
                _kill(pidfd, child, proc)
                await _bounded(waiter)
            overflow.cancel()
            duration_ms = (time.monotonic() - started) * 1000
            await _bounded(asyncio.gather(*tasks[:3], return_exceptions=True))
            if pidfd is not None:
                await _gone(pidfd)
        except BaseException:
            if proc is not None and proc.returncode is None:
                _kill(pidfd, child, proc)
            raise
        finally:
            for t in tasks:
                t.cancel()
            for fd in (pidfd, launch.status_fd, launch.block_fd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        code = proc.returncode
        if killed is None and not status.started:
            reason = status.error or err.data.decode(errors="replace").strip()[-600:] or f"exit {code}"
            if not self._exec_failed(err.data):
                raise SandboxError(f"{self.name} sandbox: {reason}")
            code = 127  # the command could not be executed, as a shell would say
        if killed is None and code is not None and code > 128:
            sig = code - 128
            killed = _SIGNAL_KILLS.get(sig) or f"signal:{_signame(sig)}"
        if killed is None and code and any(h in err.data[-4096:] for h in _MEMORY_HINTS):
            killed = "memory"
        return SandboxResult(
            exit_code=None if killed in ("timeout", "output_limit") else code,
            stdout=bytes(out.data),
            stderr=bytes(err.data),
            timed_out=killed == "timeout",
            killed=killed,
            duration_ms=duration_ms,
            backend=self.name,
            truncated=out.truncated or err.truncated,
        )

    def _exec_failed(self, stderr: bytes) -> bool:
        """Whether a run that never reported its start failed only at executing the command (its
        error, reported as a result) rather than at setting the sandbox up."""
        return False

    @staticmethod
    def _limit_pid1(pid: int, limits: Limits, extra_procs: int) -> None:
        names = {"cpu": resource.RLIMIT_CPU, "as": resource.RLIMIT_AS, "nproc": resource.RLIMIT_NPROC}
        names |= {"fsize": resource.RLIMIT_FSIZE, "core": resource.RLIMIT_CORE}
        try:
            for name, value in limits.rlimits(extra_procs).items():
                resource.prlimit(pid, names[name], value)
        except OSError as e:
            raise SandboxError(f"cannot set the sandbox's resource limits: {e.strerror}") from e


class _Status:
    """The JSON documents a launcher writes on its status descriptor, one a line."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.docs: list[dict] = []
        self._changed = asyncio.Event()
        self.eof = False

    async def read(self) -> None:
        loop = asyncio.get_running_loop()
        os.set_blocking(self.fd, False)
        buf = b""
        while True:
            ready = loop.create_future()
            loop.add_reader(self.fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(self.fd)
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                with contextlib.suppress(ValueError):
                    self.docs.append(json.loads(line))
            self._changed.set()
        self.eof = True
        self._changed.set()

    async def child_pid(self, deadline: float) -> int:
        """pid 1 of the sandbox as the host sees it; 0 when the launcher ended without one."""
        while True:
            for d in self.docs:
                if "child-pid" in d:
                    return int(d["child-pid"])
            if self.eof or self.error:
                return 0
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                return 0

    @property
    def started(self) -> bool:
        return any(d.get("exec") or "exit-code" in d for d in self.docs)

    @property
    def error(self) -> str | None:
        return next((d["error"] for d in self.docs if "error" in d), None)


class _Capped:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.truncated = False
        self.overflow = asyncio.Event()

    async def read(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(65536):
            if self.truncated:
                continue  # past the cap (the command is being killed): drain to EOF, keep nothing
            room = self.cap - len(self.data)
            if len(chunk) > room:
                self.data += chunk[:room]
                self.truncated = True
                self.overflow.set()
            else:
                self.data += chunk


async def _feed(pipe: asyncio.StreamWriter | None, data: bytes) -> None:
    if pipe is None:
        return
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if data:
            pipe.write(data)
            await pipe.drain()
        pipe.close()


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _bounded(aw: asyncio.Future | asyncio.Task) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(aw), _GRACE_S)


async def _gone(pidfd: int) -> None:
    """Until the process behind ``pidfd`` has exited (pid 1: until its namespace is empty)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(pidfd, lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait_for(ready, _GRACE_S)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(pidfd)


def _kill(pidfd: int | None, child: int, proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the sandbox's pid 1 (the kernel then kills its whole pid namespace) and the
    launcher's process group."""
    with contextlib.suppress(OSError):
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        elif child:
            os.kill(child, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def _private_dir(path: Path) -> None:
    """Create ``path`` (0700) or check that it is ours: a real folder, not a link, no one else's."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.geteuid():
        raise SandboxError(f"the scratch root {path} is not a folder of this user's")
    if st.st_mode & 0o077:
        path.chmod(0o700)


def _chown_tree(root: Path, uid: int, gid: int, *, whole: bool) -> None:
    """chown ``root`` (and, with ``whole``, everything beneath it) never following a link."""
    os.chown(root, uid, gid, follow_symlinks=False)
    if whole:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                with contextlib.suppress(OSError):
                    os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


# -- bubblewrap -------------------------------------------------------------------------------


@register_backend("bwrap")
class BwrapBackend(Backend):
    """bubblewrap: as a user, in a user namespace (uid 65534 inside); as root, in namespaces it
    creates as root, the command dropping to its own unprivileged host uid through ``setpriv``."""

    def __init__(self, *, bwrap: str | None = None, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kw)
        self.bwrap = bwrap or shutil.which("bwrap")
        self.setpriv = shutil.which("setpriv")

    def _precheck(self) -> str | None:
        if not self.bwrap or not os.access(self.bwrap, os.X_OK):
            where = f" at {self.bwrap}" if self.bwrap else ""
            return f"bwrap is not installed{where} (Debian: apt-get install bubblewrap)"
        if os.geteuid() == 0 and not self.setpriv:
            return "running as root needs setpriv (util-linux) to drop to an unprivileged uid"
        return None

    def _launch(self, job: _Job) -> _Launch:
        if not self.bwrap:
            raise SandboxUnavailable(self._precheck() or "bwrap is not installed")
        root = job.host_uid is not None
        a: list[str] = []
        fds: list[int] = []
        if not root:
            a += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
        a += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        a += ["--hostname", "sandbox", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        if root:  # setpriv needs these to drop to the host uid; it keeps none of them
            a += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
        a += ["--clearenv"]
        for k, v in job.env.items():
            a += ["--setenv", k, v]
        made: set[str] = set()
        for m in job.mounts:
            # bwrap 0.8 makes missing parents 0700; make them 0755 first (--dir)
            parents = [str(p) for p in reversed(Path(m.dest).parents) if str(p) != "/"]
            for parent in parents:
                if parent not in made:
                    a += ["--dir", parent]
                    made.add(parent)
            made.add(m.dest)
            if m.kind == "ro":
                a += ["--ro-bind", m.src or "", m.dest]
            elif m.kind == "rw":
                a += ["--bind", m.src or "", m.dest]
            elif m.kind == "symlink":
                a += ["--symlink", m.target or "", m.dest]
            elif m.kind == "proc":
                a += ["--proc", m.dest]
            elif m.kind == "dev":
                a += ["--dev", m.dest]
            elif m.kind == "tmpfs":
                a += ["--perms", f"{m.mode:o}", "--size", str(m.size), "--tmpfs", m.dest]
            elif m.kind == "file":
                fd = _memfd("m2a-file", (m.data or "").encode())
                fds.append(fd)
                a += ["--perms", "0644", "--ro-bind-data", str(fd), m.dest]
        a += ["--remount-ro", "/", "--chdir", SCRATCH]
        status_r, status_w = os.pipe()
        block_r, block_w = os.pipe()
        a += ["--json-status-fd", str(status_w), "--block-fd", str(block_r)]
        argv = job.argv
        if root:
            uid = str(job.host_uid)
            argv = [
                self.setpriv or "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--", *argv,
            ]  # fmt: skip
        # options (the environment included) through a descriptor, off the host's process list;
        # the command itself must follow on the command line
        args_fd = _memfd("m2a-bwrap-args", b"".join(x.encode() + b"\0" for x in a))
        fds += [args_fd, status_w, block_r]
        return _Launch(
            cmd=[self.bwrap, "--args", str(args_fd), "--", *argv],
            pass_fds=fds,
            close_after_spawn=fds,
            status_fd=status_r,
            block_fd=block_w,
            extra_procs=0 if root else 1,  # a user's sandbox counts bwrap's pid 1 too
            prlimit=True,
        )

    def _exec_failed(self, stderr: bytes) -> bool:
        return b"bwrap: execvp " in stderr


# -- m2a's own namespaces ---------------------------------------------------------------------


@register_backend("unshare")
class UnshareBackend(Backend):
    """m2a's own namespaces (``nsinit.py``), with Landlock where the kernel has it.

    ``landlock``: ``try`` (default: used where present), ``require`` (fail closed without it) or
    ``off``. ``ro_mounts=False`` leaves the visible paths' binds writable so that a test can show
    that Landlock alone stops writes; never turn it off otherwise."""

    def __init__(self, *, landlock: str = "try", ro_mounts: bool = True, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kw)
        if landlock not in ("try", "require", "off"):
            raise ValueError("landlock must be try, require or off")
        self.landlock = landlock
        self.ro_mounts = ro_mounts

    @property
    def landlock_abi(self) -> int:
        """The Landlock ABI the command is confined with (0: none)."""
        from m2a.trust import landlock

        return 0 if self.landlock == "off" else landlock.abi()

    def _precheck(self) -> str | None:
        if not hasattr(os, "memfd_create") or not sys.platform.startswith("linux"):
            return "needs Linux"
        if self.landlock == "require" and self.landlock_abi == 0:
            return "Landlock is required but this kernel does not offer it"
        return None

    def _launch(self, job: _Job) -> _Launch:
        root = job.host_uid is not None
        status_r, status_w = os.pipe()
        mounts = []
        for m in job.mounts:
            d: dict[str, object] = {"kind": m.kind, "dest": m.dest}
            if m.kind in ("ro", "rw"):
                d |= {"src": m.src, "is_dir": os.path.isdir(m.src or "")}
            elif m.kind == "symlink":
                d["target"] = m.target
            elif m.kind == "file":
                d["data"] = m.data
            elif m.kind == "tmpfs":
                d |= {"mode": m.mode, "size": m.size}
            mounts.append(d)
        spec = {
            "argv": job.argv,
            "env": job.env,
            "userns": not root,
            "drop_to": job.host_uid,
            "parent": os.getpid(),
            "mounts": mounts,
            "chdir": SCRATCH,
            "writable": [SCRATCH, "/tmp", "/dev/shm"],
            "devices": ["/dev"],
            "landlock": self.landlock,
            "ro_mounts": self.ro_mounts,
            # counted against the same uid: nsinit and its pid 1 (a user's namespace), or nothing
            "rlimits": job.limits.rlimits(0 if root else 2),
            "status_fd": status_w,
        }
        spec_fd = _memfd("m2a-nsinit", json.dumps(spec).encode())
        src = str(Path(__file__).resolve().parents[2])
        boot = (
            f"import sys; sys.path.insert(0, {src!r}); "
            "from m2a.trust import nsinit; nsinit.main(int(sys.argv[1]))"
        )
        return _Launch(
            cmd=[sys.executable, "-I", "-S", "-B", "-c", boot, str(spec_fd)],
            pass_fds=[spec_fd, status_w],
            close_after_spawn=[spec_fd, status_w],
            status_fd=status_r,
        )


@register_backend("none")
class NoneBackend(Backend):
    """The ``sandbox: none`` configuration: no command runs at all."""

    def unavailable(self) -> str | None:
        return "the sandbox is configured as none: local commands are refused"

    async def run(self, argv: list[str], **kw) -> SandboxResult:  # type: ignore[override, no-untyped-def]
        raise SandboxUnavailable(self.unavailable())

    def _launch(self, job: _Job) -> _Launch:
        raise SandboxUnavailable(self.unavailable())


_DETECTED: dict[tuple[str, int], str | None] = {}


def detect(preference: str = "auto", **options: object) -> Backend:
    """The backend to run commands with: ``preference`` (``bwrap``, ``unshare``, ``none``) or, with
    ``auto``, the first of bwrap and unshare that works here (each tried once a process).
    ``options`` go to the backend's constructor. Raises :class:`SandboxUnavailable` with each
    backend's reason when none works: commands are never run unsandboxed."""
    if preference == "none":
        return NoneBackend(**options)  # type: ignore[arg-type]
    names = ["bwrap", "unshare"] if preference == "auto" else [preference]
    if any(n not in BACKENDS for n in names):
        raise ValueError(f"unknown sandbox {preference!r}: auto, bwrap, unshare or none")
    reasons = []
    for name in names:
        backend = BACKENDS[name](**options)  # type: ignore[arg-type]
        key = (name, os.geteuid())
        if key in _DETECTED and not options:
            backend._reason = _DETECTED[key]
        reason = backend.unavailable()
        if not options:
            _DETECTED[key] = reason
        if reason is None:
            return backend
        reasons.append(f"{name}: {reason}")
    raise SandboxUnavailable("no sandbox for local commands works here (" + "; ".join(reasons) + ")")
