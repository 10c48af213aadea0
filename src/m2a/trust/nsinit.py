"""The unshare sandbox's side inside the namespaces (started by ``sandbox.UnshareBackend``).

It reads a JSON spec from a file descriptor, then:

1. enters new mount, network, pid, IPC and UTS namespaces, and a new user namespace whose uid 65534
   is the caller's uid (not as root: as root it creates the namespaces directly and the command
   runs as a dedicated unprivileged host uid instead, so that RLIMIT_NPROC holds);
2. forks the sandbox's pid 1, which makes every mount private, builds a fresh root on a tmpfs
   (read-only binds of the visible paths, a new ``/proc``, a small ``/dev``, tmpfs ``/tmp``, the
   scratch folder bound read-write), pivots into it, remounts it read-only and brings ``lo`` up;
3. pid 1 forks the command's process, which starts a session, drops to the sandbox uid, sets its
   resource limits, confines its writes with Landlock where the kernel has it, sets no_new_privs,
   closes every other descriptor and executes the command; pid 1 reaps and exits with the
   command's status (128 + signal when a signal ended it), which ends every process left in the
   pid namespace.

It reports on the status descriptor, one JSON document a line: ``{"child-pid": N}`` (pid 1 as the
host sees it, so the caller can kill the whole namespace), ``{"exec": true}`` just before the
command is executed (setup done), or ``{"error": "..."}`` when setup failed. Standard library only:
it runs as ``python -I -S``, before anything else is imported.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import platform
import resource
import select
import socket
import struct
import sys

from m2a.trust import landlock

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217, "armv7l": 218}
_RLIMITS = {
    "cpu": resource.RLIMIT_CPU,
    "as": resource.RLIMIT_AS,
    "nproc": resource.RLIMIT_NPROC,
    "fsize": resource.RLIMIT_FSIZE,
    "core": resource.RLIMIT_CORE,
}
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class SetupError(Exception):
    pass


def _check(res: int, what: str) -> None:
    if res != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def _mount(src: str | None, dest: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    res = _libc.mount(
        None if src is None else src.encode(),
        dest.encode(),
        None if fstype is None else fstype.encode(),
        ctypes.c_ulong(flags),
        None if data is None else data.encode(),
    )
    _check(res, f"mount {src or fstype} on {dest}")


def _mounts_under(path: str) -> list[str]:
    """Mount points at or beneath ``path`` (from /proc/self/mountinfo), outermost first."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = line.split()[4]
            point = point.encode().decode("unicode_escape") if "\\" in point else point
            if point == path or point.startswith(path.rstrip("/") + "/"):
                found.append(point)
    return found


def _remount_ro(path: str) -> None:
    """Make the mount at ``path`` and every mount beneath it read-only, keeping the flags the kernel
    locked on them (nosuid, nodev, noexec, atime) as a user namespace must."""
    keep = {
        os.ST_NOSUID: MS_NOSUID,
        os.ST_NODEV: MS_NODEV,
        os.ST_NOEXEC: MS_NOEXEC,
        os.ST_NOATIME: MS_NOATIME,
        os.ST_NODIRATIME: MS_NODIRATIME,
        os.ST_RELATIME: MS_RELATIME,
    }
    for point in _mounts_under(path):
        try:
            st = os.statvfs(point)
        except OSError:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for st_bit, ms_bit in keep.items():
            if st.f_flag & st_bit:
                flags |= ms_bit
        _mount(None, point, None, flags)


def _make_target(dest: str, is_dir: bool) -> None:
    if is_dir:
        os.makedirs(dest, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if not os.path.lexists(dest):
            os.close(os.open(dest, os.O_CREAT | os.O_WRONLY, 0o644))


def _inside(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _build_root(spec: dict, root: str, sources: dict[str, int]) -> None:
    ro = spec.get("ro_mounts", True)
    for i, op in enumerate(spec["mounts"]):
        kind, dest = op["kind"], _inside(root, op["dest"])
        if kind in ("ro", "rw"):
            fd = sources[str(i)]
            _make_target(dest, op["is_dir"])
            _mount(f"/proc/self/fd/{fd}", dest, None, MS_BIND | MS_REC)
            if kind == "ro" and ro:
                _remount_ro(dest)
        elif kind == "symlink":
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.symlink(op["target"], dest)
        elif kind == "file":
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "w", encoding="utf-8") as f:
                f.write(op["data"])
            os.chmod(dest, 0o644)
        elif kind == "tmpfs":
            os.makedirs(dest, exist_ok=True)
            opts = f"mode={op.get('mode', 0o755):o},size={op.get('size', 64 << 20)}"
            _mount("tmpfs", dest, "tmpfs", MS_NOSUID | MS_NODEV, opts)
        elif kind == "proc":
            os.makedirs(dest, exist_ok=True)
            _mount("proc", dest, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        elif kind == "dev":
            _make_dev(dest, sources, i)
        else:
            raise SetupError(f"unknown mount kind {kind!r}")


def _make_dev(dest: str, sources: dict[str, int], i: int) -> None:
    os.makedirs(dest, exist_ok=True)
    _mount("tmpfs", dest, "tmpfs", MS_NOSUID, "mode=755,size=1m")
    for name in DEVICES:
        fd = sources.get(f"{i}:{name}")
        if fd is None:
            continue
        _make_target(f"{dest}/{name}", False)
        _mount(f"/proc/self/fd/{fd}", f"{dest}/{name}", None, MS_BIND)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"{dest}/{name}")


def _open_sources(spec: dict) -> dict[str, int]:
    """O_PATH descriptors of every bind source (by mount index, and index:name for devices),
    opened before the host's paths are hidden."""
    fds: dict[str, int] = {}
    for i, op in enumerate(spec["mounts"]):
        if op["kind"] in ("ro", "rw"):
            try:
                fds[str(i)] = os.open(op["src"], os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                raise SetupError(f"{op['src']}: {e.strerror}") from e
        elif op["kind"] == "dev":
            for name in DEVICES:
                with contextlib.suppress(OSError):
                    fds[f"{i}:{name}"] = os.open(f"/dev/{name}", os.O_PATH | os.O_CLOEXEC)
    return fds


def _pivot(root: str) -> None:
    nr = _PIVOT_ROOT.get(platform.machine())
    if nr is None:
        raise SetupError(f"pivot_root: unknown architecture {platform.machine()}")
    os.chdir(root)
    _check(_libc.syscall(ctypes.c_long(nr), b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")


def _loopback_up() -> None:
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s, siocgifflags, struct.pack("16sH22x", b"lo", 0))
        flags = struct.unpack("16sH22x", got)[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def _drop_caps() -> None:
    """Give up every capability (effective, permitted, inheritable) for good."""
    header = struct.pack("=Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = bytes(24)  # two {effective, permitted, inheritable} words, all zero
    _check(_libc.capset(header, data), "capset")


def _report(fd: int, doc: dict) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(doc) + "\n").encode())


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _command(spec: dict, status_fd: int) -> None:
    """The command's process: drop privileges, limit, confine, execute. Never returns."""
    try:
        os.setsid()
        os.chdir(spec["chdir"])
        drop = spec.get("drop_to")
        if drop is not None:
            os.setgroups([])
            os.setresgid(drop, drop, drop)
            os.setresuid(drop, drop, drop)
        for name, (soft, hard) in spec["rlimits"].items():
            resource.setrlimit(_RLIMITS[name], (soft, hard))
        mode = spec.get("landlock", "try")
        if mode != "off":
            try:
                landlock.restrict(spec["writable"], spec["devices"])
            except OSError as e:
                if mode == "require":
                    raise SetupError(f"Landlock: {e.strerror}") from e
        _libc.prctl(38, 1, 0, 0, 0)  # no_new_privs (Landlock set it already where applied)
    except (OSError, SetupError) as e:
        _report(status_fd, {"error": f"command setup: {e}"})
        os._exit(125)
    _report(status_fd, {"exec": True})
    os.closerange(3, 65536)
    argv, env = spec["argv"], spec["env"]
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        os.write(2, f"m2a sandbox: cannot execute {argv[0]}: {e.strerror}\n".encode())
        os._exit(127 if e.errno in (errno.ENOENT, errno.ENOTDIR) else 126)


def _pid1(spec: dict, status_fd: int, lifeline: int) -> None:
    """The sandbox's pid 1: build the root, start the command, reap, exit with its status."""
    try:
        _check(_libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "prctl(PDEATHSIG)")
        if select.select([lifeline], [], [], 0)[0]:  # nsinit died before PDEATHSIG was set
            os._exit(125)
        os.close(lifeline)
        sources = _open_sources(spec)
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        root = "/tmp"
        _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=4m")
        _build_root(spec, root, sources)
        for fd in sources.values():
            os.close(fd)
        _pivot(root)
        _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        host = spec.get("hostname", "sandbox").encode()
        _check(_libc.sethostname(host, len(host)), "sethostname")
        _loopback_up()
    except (OSError, SetupError) as e:
        _report(status_fd, {"error": f"sandbox setup: {e}"})
        os._exit(125)
    userns = spec.get("drop_to") is None
    if userns:  # the command needs no capability: neither it nor pid 1 keeps any
        _drop_caps()
    pid = os.fork()
    if pid == 0:
        _command(spec, status_fd)
    os.close(status_fd)
    if not userns:
        _drop_caps()  # root: the command's process dropped to its uid with these; pid 1 only reaps
    code = 125
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if done == pid:
            code = _exit_code(status)
            break
    os._exit(code)  # pid 1 ends: the kernel kills whatever the command left behind


def main(spec_fd: int) -> None:
    with os.fdopen(spec_fd, "rb") as f:
        spec = json.loads(f.read())
    status_fd = spec["status_fd"]
    os.umask(0o022)
    os.set_inheritable(status_fd, True)
    try:
        _check(_libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0), "prctl(PDEATHSIG)")
        if os.getppid() != spec["parent"]:  # m2a died before PDEATHSIG was set
            os._exit(125)
        flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        userns = spec.get("userns", False)
        uid, gid = os.getuid(), os.getgid()
        _check(_libc.unshare(flags | (CLONE_NEWUSER if userns else 0)), "unshare")
        if userns:
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"65534 {uid} 1\n")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"65534 {gid} 1\n")
        # the command will have the same uid as this process and its pid 1 (which hold the
        # namespace's capabilities): not dumpable, it cannot ptrace them nor read their memory
        _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(DUMPABLE)")
    except (OSError, SetupError) as e:
        _report(status_fd, {"error": f"namespaces: {e}"})
        sys.exit(125)
    lifeline, keep = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(keep)
        _pid1(spec, status_fd, lifeline)
    os.close(lifeline)
    _report(status_fd, {"child-pid": pid})
    os.close(status_fd)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    os._exit(_exit_code(status))


if __name__ == "__main__":
    main(int(sys.argv[1]))
