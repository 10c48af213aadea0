"""The sandbox for local commands, attacked: every escape a command tries is refused and nothing of
it reaches the host; limits end runaway commands and nothing they started survives.

Each test runs on every backend that works here (bwrap, unshare), skipped with detect()'s reason
where one does not. Real processes, real sockets, real kernel namespaces.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import psutil
import pytest

from m2a.trust import landlock
from m2a.trust.sandbox import (
    BwrapBackend,
    Limits,
    Network,
    NoneBackend,
    SandboxUnavailable,
    UnshareBackend,
    detect,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")
REPO = Path(__file__).resolve().parents[2]
QUICK = Limits(timeout_s=30, cpu_s=10, memory_mb=512, max_procs=32, max_output_bytes=1 << 20)


@pytest.fixture(params=["bwrap", "unshare"], scope="module")
def backend(request):
    try:
        return detect(request.param)
    except SandboxUnavailable as e:
        pytest.skip(str(e))


def py(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def leftovers(marker: str) -> list[psutil.Process]:
    """Processes anywhere on the host whose command line carries ``marker``."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


class Sampler:
    """Counts, in the background, the most processes carrying ``marker`` seen at one time."""

    def __init__(self, marker: str) -> None:
        self.marker, self.most, self._stop = marker, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.most = max(self.most, len(leftovers(self.marker)))

    def __enter__(self) -> Sampler:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


# -- it runs, and only in its scratch folder ------------------------------------------------------


async def test_runs_with_stdin_exit_code_and_a_scratch_folder(backend, tmp_path):
    scratch = tmp_path / "kept"
    scratch.mkdir()
    code = (
        "import json, os, sys\n"
        "args = json.load(sys.stdin)\n"
        "open('out.txt', 'w').write(args['word'] * 2)\n"
        "print(os.getcwd(), os.getuid(), flush=True)\n"
        "sys.exit(3)"
    )
    res = await backend.run(
        py(code), stdin=json.dumps({"word": "ab"}).encode(), limits=QUICK, scratch=scratch
    )
    assert res.exit_code == 3, res.stderr
    cwd, uid = res.stdout.decode().split()
    assert cwd == "/scratch" and int(uid) != 0
    assert (scratch / "out.txt").read_text() == "abab"  # a kept scratch folder keeps what was written
    assert (scratch / "out.txt").stat().st_uid == os.getuid()  # and is the caller's again
    assert res.backend == backend.name and not res.timed_out and res.killed is None


async def test_fresh_scratch_is_removed(backend):
    res = await backend.run(["sh", "-c", "echo x > f; pwd"], limits=QUICK)
    assert res.exit_code == 0
    assert not any(backend.scratch_root.iterdir())  # nothing left of the run's scratch folder


async def test_writes_outside_scratch_fail_and_never_reach_the_host(backend, tmp_path):
    name = f"m2a-probe-{uuid.uuid4().hex}"
    targets = {
        f"/etc/{name}": Path("/etc") / name,
        f"/root/{name}": Path("/root") / name,
        str(REPO / name): REPO / name,
        str(Path(sys.prefix) / name): Path(sys.prefix) / name,
        f"/usr/{name}": Path("/usr") / name,
        f"/{name}": Path("/") / name,
        str(tmp_path / name): tmp_path / name,
    }
    code = (
        "import sys, json\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        open(p, 'w').write('pwned')\n"
        "        out[p] = 'written'\n"
        "    except OSError as e:\n"
        "        out[p] = e.strerror\n"
        "try:\n"
        "    open('/tmp/' + sys.argv[1].rsplit('/', 1)[1], 'w').write('inside')\n"
        "    out['/tmp'] = 'written'\n"
        "except OSError as e:\n"
        "    out['/tmp'] = e.strerror\n"
        "open('/scratch/ok', 'w').write('fine')\n"
        "print(json.dumps(out))"
    )
    res = await backend.run(py(code, *targets), limits=QUICK)
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    for inside, host in targets.items():
        assert out[inside] != "written", inside
        assert not host.exists(), host
    assert out["/tmp"] == "written"  # the sandbox's own /tmp, a tmpfs...
    assert not (Path("/tmp") / name).exists()  # ...that is not the host's


async def test_host_secrets_are_not_readable(backend, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t-value")
    code = (
        "import sys\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        print(p, open(p).read())\n"
        "    except OSError as e:\n"
        "        print(p, 'refused', e.strerror)\n"
    )
    res = await backend.run(py(code, str(secret), "/etc/shadow", "/root/.bash_history"), limits=QUICK)
    assert res.exit_code == 0, res.stderr
    assert b"s3cr3t-value" not in res.stdout
    assert res.stdout.count(b"refused") == 3


async def test_the_gateways_environment_is_not_visible(backend, monkeypatch):
    monkeypatch.setenv("M2A_ADMIN_KEY", "sk-admin-must-not-leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-must-not-leak")
    res = await backend.run(py("import os; print(dict(os.environ))"), limits=QUICK, env={"GREETING": "hi"})
    assert res.exit_code == 0, res.stderr
    assert b"must-not-leak" not in res.stdout and b"M2A_ADMIN_KEY" not in res.stdout
    assert b"'GREETING': 'hi'" in res.stdout
    with pytest.raises(ValueError, match="LD_PRELOAD"):
        await backend.run(["true"], limits=QUICK, env={"LD_PRELOAD": "/scratch/evil.so"})


# -- network --------------------------------------------------------------------------------------


@pytest.fixture
async def host_server():
    """A real TCP server on the host's loopback that answers one line and counts connections."""
    seen = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(1)
        await reader.readuntil(b"\r\n\r\n")
        body = b"hello from the host"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield port, seen
    server.close()
    await server.wait_closed()


CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3)\n"
    "    print('host port: connected')\n"
    "except OSError as e:\n"
    "    print('host port: refused', e.strerror)\n"
    "try:\n"
    "    socket.create_connection(('1.1.1.1', 53), timeout=3)\n"
    "    print('outside: connected')\n"
    "except OSError as e:\n"
    "    print('outside: refused', e.strerror)\n"
    "try:\n"
    "    socket.getaddrinfo('example.com', 443)\n"
    "    print('dns: resolved')\n"
    "except OSError as e:\n"
    "    print('dns: refused', e)\n"
)


async def test_no_network_without_one(backend, host_server):
    port, seen = host_server
    res = await backend.run(py(CONNECT, str(port)), limits=QUICK)
    assert res.exit_code == 0, res.stderr
    out = res.stdout.decode()
    assert "host port: refused" in out and "outside: refused" in out and "dns: refused" in out, out
    assert not seen  # the host's server never saw a connection


@pytest.fixture
async def egress_standin(tmp_path):
    """A stand-in for m2a's egress proxy: a Unix socket that answers CONNECT host:port with 200 and
    pipes the connection to that TCP address on the host (the real proxy has its own tests)."""
    requests = []

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        finally:
            w.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0].decode()
        requests.append(line)
        method, target, _ = line.split(" ")
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            writer.close()
            return
        host, port = target.rsplit(":", 1)
        up_r, up_w = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer), return_exceptions=True)

    path = tmp_path / "egress.sock"
    server = await asyncio.start_unix_server(handle, str(path))
    yield path, requests
    server.close()
    await server.wait_closed()


THROUGH_PROXY = (
    "import http.client, os, sys, urllib.parse\n"
    "proxy = urllib.parse.urlsplit(os.environ['HTTPS_PROXY'])\n"
    "conn = http.client.HTTPConnection(proxy.hostname, proxy.port, timeout=10)\n"
    "conn.set_tunnel('127.0.0.1', int(sys.argv[1]))\n"
    "conn.request('GET', '/')\n"
    "print(conn.getresponse().read().decode())\n"
    "print('NO_PROXY=' + repr(os.environ['NO_PROXY']))\n"
)


async def test_network_only_through_the_egress_proxy(backend, host_server, egress_standin):
    port, seen = host_server
    sock, requests = egress_standin
    net = Network(proxy_socket=sock)
    res = await backend.run(py(THROUGH_PROXY, str(port)), limits=QUICK, network=net)
    assert res.exit_code == 0, res.stderr
    assert "hello from the host" in res.stdout.decode()
    assert "NO_PROXY=''" in res.stdout.decode()
    assert [r.rsplit(" ", 1)[0] for r in requests] == [f"CONNECT 127.0.0.1:{port}"] and len(seen) == 1
    # with the bridge up, the host's port itself is still out of reach, and so is the outside
    res = await backend.run(py(CONNECT, str(port)), limits=QUICK, network=net)
    out = res.stdout.decode()
    assert "host port: refused" in out and "outside: refused" in out and "dns: refused" in out, out
    assert len(seen) == 1


# -- limits ---------------------------------------------------------------------------------------

FORK_LIMITS = Limits(timeout_s=4, cpu_s=4, memory_mb=256, max_procs=24, max_output_bytes=1 << 16)


@pytest.mark.parametrize(
    "argv",
    [
        # the shell waits, or its pid namespace would end the bomb at once when it returns
        ["bash", "-c", ":(){ :|:& };:; sleep 30 # {marker}"],
        ["sh", "-c", "b(){ b|b& };b; sleep 30 # {marker}"],
        [
            sys.executable,
            "-c",
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
            "{marker}",
        ],
    ],
    ids=["bash", "sh", "python"],
)
async def test_fork_bomb_is_bounded_and_nothing_survives(backend, argv):
    if not shutil.which(argv[0]):
        pytest.skip(f"{argv[0]} is not installed")
    marker = f"m2a-bomb-{uuid.uuid4().hex}"
    argv = [a.replace("{marker}", marker) for a in argv]
    with Sampler(marker) as sampler:
        res = await backend.run(argv, limits=FORK_LIMITS)
    assert res.killed in ("timeout", "output_limit") or res.exit_code is not None  # it ended
    assert 0 < sampler.most <= FORK_LIMITS.max_procs + 2, sampler.most
    assert leftovers(marker) == []
    # and the machine still answers: a normal run right after works
    ok = await backend.run(["true"], limits=QUICK)
    assert ok.exit_code == 0


async def test_memory_hog_is_stopped(backend):
    code = "x = bytearray(2 * 1024**3)\nprint('allocated', len(x))"
    res = await backend.run(py(code), limits=Limits(timeout_s=30, memory_mb=256))
    assert res.exit_code not in (0, None)
    assert b"allocated" not in res.stdout
    assert b"MemoryError" in res.stderr and res.killed == "memory"


async def test_cpu_spin_is_killed_at_its_cpu_seconds(backend):
    res = await backend.run(py("while True: pass"), limits=Limits(timeout_s=120, cpu_s=1))
    assert res.killed == "cpu" and not res.timed_out
    assert res.exit_code == 128 + 24  # SIGXCPU


async def test_sleep_past_the_timeout_is_killed_with_its_children(backend):
    marker = f"m2a-sleep-{uuid.uuid4().hex}"
    child = "import time; time.sleep(300)"
    code = (
        f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {child!r}, {marker!r}])\n"
        "time.sleep(300)"
    )
    res = await backend.run(py(code, marker), limits=Limits(timeout_s=1.5))
    assert res.timed_out and res.killed == "timeout" and res.exit_code is None
    assert leftovers(marker) == []


async def test_what_a_finished_command_left_running_is_ended(backend):
    marker = f"m2a-daemon-{uuid.uuid4().hex}"
    child = "import time; time.sleep(300)"
    code = (
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', {child!r}, {marker!r}], start_new_session=True)\n"
        "print('left')"
    )
    res = await backend.run(py(code), limits=QUICK)
    assert res.exit_code == 0 and res.stdout == b"left\n"
    assert leftovers(marker) == []


async def test_huge_output_is_truncated(backend):
    res = await backend.run(
        py("import sys\nwhile True: sys.stdout.write('x' * 65536)"), limits=Limits(max_output_bytes=100_000)
    )
    assert res.truncated and res.killed == "output_limit" and res.exit_code is None
    assert len(res.stdout) == 100_000 and set(res.stdout) == {ord("x")}


async def test_cancelling_a_run_kills_it(backend):
    marker = f"m2a-cancel-{uuid.uuid4().hex}"
    task = asyncio.create_task(backend.run(py("import time; time.sleep(300)", marker), limits=QUICK))
    for _ in range(200):
        if leftovers(marker):
            break
        await asyncio.sleep(0.05)
    assert leftovers(marker)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):  # SIGKILL is sent at once; give the kernel a moment to reap
        if not leftovers(marker):
            break
        await asyncio.sleep(0.05)
    assert leftovers(marker) == []


async def test_a_missing_program_is_a_result_not_an_error(backend):
    res = await backend.run(["/usr/bin/no-such-program-m2a"], limits=QUICK)
    assert res.exit_code == 127 and res.killed is None


# -- Landlock, detection, refusal -----------------------------------------------------------------


@pytest.fixture
def open_dir():
    """A world-writable folder outside /tmp (the sandbox may write beneath its own /tmp)."""
    if not Path("/var/tmp").is_dir():
        pytest.skip("no /var/tmp")
    path = Path(tempfile.mkdtemp(prefix="m2a-landlock-", dir="/var/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_unshare_applies_landlock(open_dir):
    """With the visible paths' binds left writable, Landlock alone stops a write that succeeds
    without it: it is applied, and it is what holds."""
    if landlock.abi() == 0:
        pytest.skip("this kernel has no Landlock")
    code = (
        "import sys\n"
        "try:\n"
        "    open(sys.argv[1] + '/x', 'w').write('x')\n"
        "    print('written')\n"
        "except OSError as e:\n"
        "    print('refused', e.errno)\n"
    )
    confined = UnshareBackend(visible=[open_dir], ro_mounts=False)
    assert confined.landlock_abi >= 1
    res = await confined.run(py(code, str(open_dir)), limits=QUICK)
    assert res.stdout.decode().strip() == "refused 13", res.stderr  # EACCES: Landlock, not EROFS
    assert not (open_dir / "x").exists()
    bare = UnshareBackend(visible=[open_dir], ro_mounts=False, landlock="off")
    res = await bare.run(py(code, str(open_dir)), limits=QUICK)
    assert res.stdout.decode().strip() == "written", res.stderr
    assert (open_dir / "x").exists()


async def test_none_refuses_and_detect_fails_closed():
    none = detect("none")
    assert isinstance(none, NoneBackend)
    with pytest.raises(SandboxUnavailable, match="none"):
        await none.run(["true"], limits=QUICK)
    with pytest.raises(SandboxUnavailable, match="bwrap is not installed"):
        detect("bwrap", bwrap="/nonexistent/bwrap")
    with pytest.raises(ValueError):
        detect("chroot")


async def test_detect_auto_prefers_bwrap():
    try:
        chosen = detect("auto")
    except SandboxUnavailable as e:
        pytest.skip(str(e))
    expected = "bwrap" if BwrapBackend().unavailable() is None else "unshare"
    assert chosen.name == expected


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists(), reason="needs root and /usr/bin/python3"
)
@pytest.mark.parametrize("name", ["bwrap", "unshare"])
async def test_as_an_unprivileged_user(name, open_dir):
    """The user-namespace path (what a user's machine runs): the test runs the sandbox as uid 65534
    with the system Python (the sandbox is standard library only) and attacks it the same way."""
    if name == "bwrap" and not shutil.which("bwrap"):
        pytest.skip("bwrap is not installed")
    marker = f"m2a-userbomb-{uuid.uuid4().hex}"
    script = open_dir / "as_user.py"
    script.write_text(
        "import asyncio, json, sys\n"
        f"sys.path.insert(0, {str(REPO / 'src')!r})\n"
        "from m2a.trust.sandbox import detect, Limits\n"
        "async def main():\n"
        f"    b = detect({name!r}, scratch_root='/tmp/m2a-sandbox-test-65534')\n"
        "    lim = Limits(timeout_s=4, cpu_s=4, memory_mb=256, max_procs=24)\n"
        "    r1 = await b.run(\n"
        "        ['sh', '-c', 'id -u; echo hi > /scratch/f; cat f; touch /etc/x 2>&1 || true'], limits=lim\n"
        "    )\n"
        f"    r2 = await b.run(['sh', '-c', 'b(){{ b|b& }};b; sleep 30 # {marker}'], limits=lim)\n"
        "    r3 = await b.run(['sh', '-c', 'ulimit -p'], limits=lim)\n"
        "    r4 = await b.run(['/usr/bin/no-such-program-m2a'], limits=lim)\n"
        "    r5 = await b.run(['grep', '-E', '^Cap(Prm|Eff)', '/proc/1/status'], limits=lim)\n"
        "    out = [r1.stdout.decode(), r1.exit_code, r2.killed, r3.stdout.decode(), r4.exit_code]\n"
        "    out.append(r5.stdout.decode())\n"
        "    print(json.dumps(out))\n"
        "asyncio.run(main())\n"
    )
    script.chmod(0o644)
    cmd = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "/usr/bin/python3",
        "-I",
        str(script),
    ]
    with Sampler(marker) as sampler:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"}
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    if proc.returncode != 0 and b"SandboxUnavailable" in stderr:
        pytest.skip(stderr.decode().strip().splitlines()[-1])
    assert proc.returncode == 0, stderr.decode()
    out, code, bomb, nproc, missing, pid1_caps = json.loads(stdout)
    assert missing == 127
    # the sandbox's pid 1 has the command's uid: it must hold no capability the command could take
    assert [line.split()[1] for line in pid1_caps.splitlines()] == ["0000000000000000"] * 2, pid1_caps
    assert out.splitlines()[:2] == ["65534", "hi"] and "Read-only file system" in out
    assert code == 0 and bomb == "timeout"
    assert int(nproc) == 24 + (1 if name == "bwrap" else 2)  # the sandbox's own pid 1 (and nsinit) count
    assert 0 < sampler.most <= 24 + 2
    assert leftovers(marker) == []
