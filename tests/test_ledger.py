"""The usage ledger (journal, flush, crash recovery, rotation) and reading it, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.store import ledger as ledger_mod
from m2a.store.ledger import Ledger, read_journal
from m2a.store.schema import Team, Usage
from m2a.store.usage import UsageRow, usage_rows
from tests import db_fixtures
from tests.db_fixtures import Database

pytestmark = pytest.mark.asyncio(loop_scope="session")

database = db_fixtures.database  # each test runs on SQLite and on PostgreSQL

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC).timestamp()
BEGIN = {
    "team": "research",
    "team_id": 3,
    "key_id": 7,
    "key_prefix": "m2a-abcdefgh",
    "model": "smollm2",
    "route": "chat",
    "priority": "standard",
    "stream": True,
    "agent": "spiffe://m2a.local/team/research/agent/support-bot",  # the agent whose token it was
}
END = {
    "status": "ok",
    "http_status": 200,
    "replica": "smollm2-0",
    "input_tokens": 12,
    "output_tokens": 30,
    "cached_tokens": 4,
    "ttft_ms": 15.5,
    "duration_ms": 250.25,
    "cost": 0.0125,
}
COLUMNS = ("request_id", "status", "http_status", "input_tokens", "output_tokens", "cached_tokens", "team")


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The ledger's wall clock, fixed and settable (monotonic time stays real)."""
    import time

    fake = SimpleNamespace(now=T0, monotonic=time.monotonic)
    fake.time = lambda: fake.now
    monkeypatch.setattr(ledger_mod, "time", fake)
    return fake


async def stored(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    """Every usage row by request id, with timestamps made timezone-aware (SQLite drops the zone)."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(Usage))).mappings().all()
    out = {}
    for r in rows:
        row = dict(r)
        for f in ("started_at", "finished_at"):
            if row[f] is not None and row[f].tzinfo is None:
                row[f] = row[f].replace(tzinfo=UTC)
        row.pop("id")
        out[row["request_id"]] = row
    return out


def summary(rows: dict[str, dict[str, Any]]) -> dict[str, tuple]:
    return {rid: tuple(r[c] for c in COLUMNS) for rid, r in rows.items()}


def write_journal(
    directory: Path, lines: list[dict[str, Any] | bytes], name: str = "journal-999999-dead.jsonl"
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with path.open("wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n")
    return path


def b(rid: str, t: float = T0, **fields: Any) -> dict[str, Any]:
    return {"t": "b", "id": rid, "at": t, **BEGIN, **fields}


def e(rid: str, t: float = T0 + 1, **fields: Any) -> dict[str, Any]:
    return {"t": "e", "id": rid, "at": t, **END, **fields}


@pytest.fixture
def jdir(tmp_path: Path) -> Path:
    """The journal directory (apart from tmp_path/home, where the SQLite database lives)."""
    return tmp_path / "journals"


async def new_ledger(engine: AsyncEngine, directory: Path) -> Ledger:
    ledger = Ledger(engine, directory, flush_s=3600)  # flushes only when the test says so
    await ledger.start()
    return ledger


# -- writing -------------------------------------------------------------------------------------


async def test_begin_end_flush(database: Database, jdir: Path, clock: SimpleNamespace) -> None:
    engine = await database.open()
    ledger = Ledger(engine, jdir, flush_s=3600)
    assert await ledger.start() == 0
    ledger.begin("r1", **BEGIN)
    ledger.begin("r2", **{**BEGIN, "team": None, "key_id": None, "stream": False})
    assert ledger.in_flight == 2
    clock.now = T0 + 2.5
    ledger.end("r1", **END)
    ledger.end("never-begun", **END)  # ignored
    assert ledger.in_flight == 1
    assert await ledger.flush() == 1
    assert await ledger.flush() == 0
    rows = await stored(engine)
    assert rows == {
        "r1": {
            "request_id": "r1",
            "started_at": at(T0),
            "finished_at": at(T0 + 2.5),
            **BEGIN,
            **END,
        }
    }
    clock.now = T0 + 4
    await ledger.close()  # r2 is still open: interrupted
    rows = await stored(engine)
    assert rows["r2"] == {
        "request_id": "r2",
        "started_at": at(T0),
        "finished_at": at(T0 + 4),
        **BEGIN,
        "team": None,
        "key_id": None,
        "stream": False,
        **dict.fromkeys(END, None),
        "status": "interrupted",
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_tokens": 0,
    }
    assert rows["r1"]["status"] == "ok"
    assert list((jdir).iterdir()) == []  # a clean close leaves no journal


async def test_journal_lines_are_written_before_the_database(database: Database, jdir: Path) -> None:
    engine = await database.open()
    ledger = await new_ledger(engine, jdir)
    ledger.begin("r1", **BEGIN)
    ledger.end("r1", **END)
    ledger.begin("r2", **BEGIN)
    [path] = list(jdir.glob("journal-*.jsonl"))
    assert path.name.startswith(f"journal-{os.getpid()}-")
    lines = [json.loads(x) for x in path.read_bytes().splitlines()]
    assert [(x["t"], x["id"]) for x in lines] == [("b", "r1"), ("e", "r1"), ("b", "r2")]
    assert {k: lines[1][k] for k in END} == END
    assert await stored(engine) == {}
    await ledger.close()


async def test_flush_failure_keeps_the_records(
    database: Database, jdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await database.open()
    ledger = await new_ledger(engine, jdir)
    ledger.begin("r1", **BEGIN)
    ledger.end("r1", **END)

    async def down(rows: list[dict[str, Any]]) -> None:
        raise ConnectionError("database down")

    monkeypatch.setattr(ledger, "_upsert", down)
    with pytest.raises(ConnectionError):
        await ledger.flush()
    monkeypatch.undo()
    ledger.begin("r2", **BEGIN)
    ledger.end("r2", **END)
    assert await ledger.flush() == 2
    assert set(await stored(engine)) == {"r1", "r2"}
    await ledger.close()


async def test_background_flush(database: Database, jdir: Path) -> None:
    engine = await database.open()
    ledger = Ledger(engine, jdir, flush_s=0.01)
    await ledger.start()
    ledger.begin("r1", **BEGIN)
    ledger.end("r1", **END)
    for _ in range(1000):  # up to ~10 s: the loop writes it within a few ms
        if await stored(engine):
            break
        await asyncio.sleep(0.01)
    assert summary(await stored(engine)) == {"r1": ("r1", "ok", 200, 12, 30, 4, "research")}
    await ledger.close()


# -- recovery ------------------------------------------------------------------------------------


async def test_recover_a_dead_process_journal(database: Database, jdir: Path) -> None:
    path = write_journal(
        jdir,
        [b("a"), b("b", team="other"), e("a"), b("c"), e("b", status="error", http_status=500), b("d")],
    )
    engine = await database.open()
    ledger = Ledger(engine, jdir)
    assert await ledger.start() == 4
    assert not path.exists()
    rows = await stored(engine)
    assert summary(rows) == {
        "a": ("a", "ok", 200, 12, 30, 4, "research"),
        "b": ("b", "error", 500, 12, 30, 4, "other"),
        "c": ("c", "interrupted", None, 0, 0, 0, "research"),
        "d": ("d", "interrupted", None, 0, 0, 0, "research"),
    }
    assert rows["a"]["finished_at"] == at(T0 + 1)
    assert rows["c"]["finished_at"] is None
    assert rows["c"]["started_at"] == at(T0)
    await ledger.close()


async def test_replay_is_idempotent(database: Database, jdir: Path) -> None:
    lines: list[dict[str, Any] | bytes] = [b("a"), e("a"), b("b")]
    write_journal(jdir, lines)
    engine = await database.open()
    ledger = await new_ledger(engine, jdir)
    first = await stored(engine)
    write_journal(jdir, lines)  # the same journal again (say the unlink was lost in a crash)
    assert await ledger.recover() == 2
    assert await stored(engine) == first
    assert len(first) == 2
    # a later, fuller record of the same request replaces the interrupted one
    write_journal(jdir, [b("b"), e("b", output_tokens=99)])
    assert await ledger.recover() == 1
    assert summary(await stored(engine))["b"] == ("b", "ok", 200, 12, 99, 4, "research")
    await ledger.close()


async def test_recover_the_journal_of_a_killed_process(database: Database, jdir: Path) -> None:
    """A real process writes begin and end lines, then dies without closing its ledger."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from sqlalchemy.ext.asyncio import create_async_engine
        from m2a.store.ledger import Ledger
        ledger = Ledger(create_async_engine("sqlite+aiosqlite://"), Path(sys.argv[1]))
        ledger._open_journal()
        fields = {BEGIN!r}
        for rid in ("a", "b", "c"):
            ledger.begin(rid, **fields)
        ledger.end("a", status="ok", http_status=200, input_tokens=5, output_tokens=6)
        ledger.end("c", status="cancelled", http_status=499, input_tokens=5, output_tokens=1)
        os._exit(1)
        """
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(jdir)], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr.decode()
    [path] = list(jdir.glob("journal-*.jsonl"))
    engine = await database.open()
    ledger = Ledger(engine, jdir, flush_s=3600)
    assert await ledger.start() == 3
    assert not path.exists()
    assert summary(await stored(engine)) == {
        "a": ("a", "ok", 200, 5, 6, 0, "research"),
        "b": ("b", "interrupted", None, 0, 0, 0, "research"),
        "c": ("c", "cancelled", 499, 5, 1, 0, "research"),
    }
    await ledger.close()


async def test_a_locked_journal_is_left_alone(database: Database, jdir: Path) -> None:
    path = write_journal(jdir, [b("a"), e("a")], name="journal-1-alive.jsonl")
    engine = await database.open()
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # its process lives
        ledger = await new_ledger(engine, jdir)
        assert await ledger.recover() == 0
        assert path.exists()
        assert await stored(engine) == {}
    finally:
        os.close(fd)  # it dies
    assert await ledger.recover() == 1
    assert not path.exists()
    assert summary(await stored(engine)) == {"a": ("a", "ok", 200, 12, 30, 4, "research")}
    await ledger.close()


async def test_two_live_ledgers_do_not_take_each_others_journals(database: Database, jdir: Path) -> None:
    engine = await database.open()
    one = await new_ledger(engine, jdir)
    two = await new_ledger(engine, jdir)
    one.begin("r1", **BEGIN)
    assert await two.recover() == 0
    assert await one.recover() == 0
    assert len(list(jdir.glob("journal-*.jsonl"))) == 2
    one.end("r1", **END)
    await one.close()
    await two.close()
    assert summary(await stored(engine)) == {"r1": ("r1", "ok", 200, 12, 30, 4, "research")}


async def test_torn_last_line_is_tolerated(database: Database, jdir: Path) -> None:
    torn = json.dumps(e("b")).encode()[:25]  # killed while writing the end line of b
    path = write_journal(jdir, [b("a"), e("a"), b("b"), torn])
    assert [r["request_id"] for r in read_journal(path)] == ["a", "b"]
    engine = await database.open()
    ledger = Ledger(engine, jdir)
    assert await ledger.start() == 2
    assert summary(await stored(engine)) == {
        "a": ("a", "ok", 200, 12, 30, 4, "research"),
        "b": ("b", "interrupted", None, 0, 0, 0, "research"),
    }
    await ledger.close()


async def test_read_journal_rows(tmp_path: Path) -> None:
    path = write_journal(
        tmp_path, [b("a", key_prefix=None, stream=0), e("orphan"), b("b"), e("a", input_tokens=None)]
    )
    rows = {r["request_id"]: r for r in read_journal(path)}
    assert set(rows) == {"a", "b"}  # an end without its begin (rotated away) is no record
    assert rows["a"]["key_prefix"] == ""
    assert rows["a"]["stream"] is False
    assert rows["a"]["input_tokens"] == 0
    assert rows["a"]["status"] == "ok"
    assert rows["a"]["started_at"] == at(T0)
    assert rows["b"]["status"] == "interrupted"
    assert rows["b"]["finished_at"] is None


async def test_rotation_keeps_open_requests(
    database: Database, jdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_mod, "ROTATE_BYTES", 600)
    engine = await database.open()
    ledger = await new_ledger(engine, jdir)
    ledger.begin("open", **BEGIN)
    for i in range(3):
        ledger.begin(f"r{i}", **BEGIN)
        ledger.end(f"r{i}", **END)
    [before] = list(jdir.glob("journal-*.jsonl"))
    assert before.stat().st_size > 600
    assert await ledger.flush() == 3
    [after] = list(jdir.glob("journal-*.jsonl"))
    assert after != before  # rotated: the old journal is in the database and gone
    assert [(r["request_id"], r["status"]) for r in read_journal(after)] == [("open", "interrupted")]
    assert ledger.in_flight == 1

    # the process dies now: another one finds the open request in the new journal
    os.close(ledger._fd)  # drops the lock, as death would
    assert ledger._task is not None
    ledger._task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ledger._task
    other = Ledger(engine, jdir, flush_s=3600)
    assert await other.start() == 1
    rows = summary(await stored(engine))
    assert rows == {
        **{f"r{i}": (f"r{i}", "ok", 200, 12, 30, 4, "research") for i in range(3)},
        "open": ("open", "interrupted", None, 0, 0, 0, "research"),
    }
    await other.close()


async def test_rotation_then_the_open_request_ends(
    database: Database, jdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_mod, "ROTATE_BYTES", 100)
    engine = await database.open()
    ledger = await new_ledger(engine, jdir)
    ledger.begin("open", **BEGIN)
    ledger.begin("r0", **BEGIN)
    ledger.end("r0", **END)
    await ledger.flush()
    ledger.end("open", **{**END, "output_tokens": 77})
    [path] = list(jdir.glob("journal-*.jsonl"))
    assert [(r["request_id"], r["status"]) for r in read_journal(path)] == [("open", "ok")]
    assert await ledger.flush() == 1
    await ledger.close()
    assert summary(await stored(engine))["open"] == ("open", "ok", 200, 12, 77, 4, "research")
    assert list(jdir.iterdir()) == []


async def test_close_marks_open_requests_interrupted(database: Database, jdir: Path) -> None:
    engine = await database.open()
    ledger = await new_ledger(engine, jdir)
    ledger.begin("done", **BEGIN)
    ledger.begin("open-1", **BEGIN)
    ledger.begin("open-2", **BEGIN)
    ledger.end("done", **END)
    await ledger.close()
    assert ledger.in_flight == 0
    assert summary(await stored(engine)) == {
        "done": ("done", "ok", 200, 12, 30, 4, "research"),
        "open-1": ("open-1", "interrupted", None, 0, 0, 0, "research"),
        "open-2": ("open-2", "interrupted", None, 0, 0, 0, "research"),
    }
    assert list(jdir.iterdir()) == []


async def test_cut_off_streams_are_billed_for_what_was_relayed(database: Database, jdir: Path) -> None:
    """A gateway that dies (a journal with no end line) or stops mid-stream still bills the prompt
    estimate and the tokens the client received, at the prices the begin line carries."""
    engine = await database.open()
    priced = {**BEGIN, "input_estimate": 50, "price": [1.0, 4.0]}
    progress = [{"t": "p", "id": "dead", "out": n} for n in (1, 17)]
    write_journal(jdir, [b("dead", **priced), *progress])
    ledger = await new_ledger(engine, jdir)  # recovers the dead process's journal
    ledger.begin("stopping", **priced)
    ledger.progress("stopping", 5)
    ledger.progress("stopping", 3)  # never backwards
    ledger.begin("silent", **priced)  # nothing relayed: nothing billed
    await ledger.close()
    rows = await stored(engine)
    assert summary(rows) == {
        "dead": ("dead", "interrupted", None, 50, 17, 0, "research"),
        "stopping": ("stopping", "interrupted", None, 50, 5, 0, "research"),
        "silent": ("silent", "interrupted", None, 0, 0, 0, "research"),
    }
    assert rows["dead"]["cost"] == pytest.approx((50 * 1.0 + 17 * 4.0) / 1e6)
    assert rows["silent"]["cost"] is None


async def test_progress_is_written_at_most_every_so_often(
    database: Database, jdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast stream costs no extra journal write; what it relayed is still billed at a clean stop."""
    engine = await database.open()
    ledger = await new_ledger(engine, jdir)
    monkeypatch.setattr(ledger_mod, "PROGRESS_EVERY_S", 3600.0)
    ledger.begin("fast", **BEGIN)
    for n in range(1, 17):
        ledger.progress("fast", n)
    [path] = list(jdir.glob("journal-*.jsonl"))
    assert [json.loads(ln)["t"] for ln in path.read_bytes().splitlines()] == ["b"]
    monkeypatch.setattr(ledger_mod, "PROGRESS_EVERY_S", 0.0)
    ledger.progress("fast", 17)
    ledger.progress("unknown", 5)  # never begun: ignored
    assert [json.loads(ln).get("out") for ln in path.read_bytes().splitlines()] == [None, 17]
    await ledger.close()
    assert summary(await stored(engine))["fast"][4] == 17


async def test_a_flush_cancelled_at_shutdown_loses_nothing(
    database: Database, jdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background flush that overruns close()'s grace (a database that hangs) is cancelled in
    the middle of its write: the records it held must still reach the database (once a clean stop
    lost them all), and close() must not wait on it for ever (once it did, and CI hung)."""
    engine = await database.open()
    ledger = Ledger(engine, jdir, flush_s=0.01)
    ledger.close_grace_s = 0.05
    await ledger.start()
    writing = asyncio.Event()
    real = ledger._upsert

    async def slow_upsert(rows: list[dict[str, Any]]) -> None:
        if rows:
            writing.set()
            await asyncio.sleep(3600)  # cancelled here by close()
        await real(rows)

    monkeypatch.setattr(ledger, "_upsert", slow_upsert)
    ledger.begin("r1", **BEGIN)
    ledger.end("r1", **END)
    await asyncio.wait_for(writing.wait(), 10)
    monkeypatch.setattr(ledger, "_upsert", real)
    await ledger.close()
    assert summary(await stored(engine)) == {"r1": ("r1", "ok", 200, 12, 30, 4, "research")}
    assert list(jdir.iterdir()) == []


async def test_close_waits_for_a_flush_under_way(
    database: Database, jdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush that finishes within close()'s grace is left to finish, not cancelled (a flush cut
    off inside its SQLite transaction kept the write lock, and the final flush failed on it)."""
    engine = await database.open()
    ledger = Ledger(engine, jdir, flush_s=0.01)
    await ledger.start()
    writing = asyncio.Event()
    cancelled = False
    real = ledger._upsert

    async def slow_upsert(rows: list[dict[str, Any]]) -> None:
        nonlocal cancelled
        if rows:
            writing.set()
            try:
                await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                cancelled = True
                raise
        await real(rows)

    monkeypatch.setattr(ledger, "_upsert", slow_upsert)
    ledger.begin("r1", **BEGIN)
    ledger.end("r1", **END)
    await asyncio.wait_for(writing.wait(), 10)
    await ledger.close()
    assert not cancelled
    assert summary(await stored(engine)) == {"r1": ("r1", "ok", 200, 12, 30, 4, "research")}
    assert list(jdir.iterdir()) == []


# -- reading -------------------------------------------------------------------------------------


TEAM_IDS = {"research": 1, "ops": 2}


def usage(rid: str, started: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "request_id": rid,
        "started_at": started,
        "finished_at": started + timedelta(seconds=1),
        "team": "research",
        "team_id": TEAM_IDS[fields.get("team", "research")],
        "key_id": 7,
        "key_prefix": "m2a-aaaa",
        "model": "llama",
        "route": "chat",
        "replica": "llama-0",
        "priority": "standard",
        "stream": False,
        "status": "ok",
        "http_status": 200,
        "input_tokens": 10,
        "output_tokens": 20,
        "cached_tokens": 0,
        "ttft_ms": None,
        "duration_ms": 100.0,
        "cost": 0.0,  # stored with every record (see test_usage_costs_are_stored_with_each_record)
        **fields,
    }


D = datetime(2026, 3, 10, 12, 15, tzinfo=UTC)
ROWS = [
    usage("1", D, ttft_ms=10.0),
    usage("2", D + timedelta(minutes=10), ttft_ms=30.0, cached_tokens=5, duration_ms=300.0),
    usage(
        "3",
        D + timedelta(hours=1),
        model="qwen",
        status="error",
        http_status=500,
        input_tokens=1,
        output_tokens=0,
    ),
    usage(
        "4", D + timedelta(days=1), key_id=8, key_prefix="m2a-bbbb", status="interrupted", http_status=None
    ),
    usage(
        "5",
        D + timedelta(days=30),
        team="ops",
        key_id=9,
        key_prefix="m2a-cccc",
        status="cancelled",
        input_tokens=100,
        output_tokens=1,
    ),
    usage("6", D - timedelta(days=40), team="ops", key_id=9, key_prefix="m2a-cccc", input_tokens=1000),
]


@pytest.fixture
async def ledger_db(database: Database) -> AsyncEngine:
    engine = await database.open()
    async with engine.begin() as conn:
        await conn.execute(insert(Team), [team_row(name, i) for name, i in TEAM_IDS.items()])
        await conn.execute(insert(Usage), ROWS)
    return engine


def team_row(name: str, team_id: int, deleted: bool = False) -> dict[str, Any]:
    created = D - timedelta(days=400)
    return {
        "id": team_id,
        "name": f"{name}~deleted~{team_id}" if deleted else name,
        "priority": "standard",
        "priority_order": 100,
        "created_at": created,
        "deleted_at": created + timedelta(days=1) if deleted else None,
    }


def r(
    group: str | None,
    model: str,
    bucket: str | None,
    *counts: int,
    ttft: float | None = None,
    duration: float | None = 100.0,
) -> UsageRow:
    requests, errors, interrupted, inp, out, cached = counts
    return UsageRow(group, model, bucket, requests, errors, interrupted, inp, out, cached, ttft, duration)


async def test_usage_by_team(ledger_db: AsyncEngine) -> None:
    assert await usage_rows(ledger_db, "team") == [
        r("ops", "llama", None, 2, 0, 1, 1100, 21, 0),
        r("research", "llama", None, 3, 0, 1, 30, 60, 5, ttft=20.0, duration=500 / 3),
        r("research", "qwen", None, 1, 1, 0, 1, 0, 0),
    ]


async def test_usage_by_model_and_key(ledger_db: AsyncEngine) -> None:
    assert await usage_rows(ledger_db, "model") == [
        r("llama", "llama", None, 5, 0, 2, 1130, 81, 5, ttft=20.0, duration=700 / 5),
        r("qwen", "qwen", None, 1, 1, 0, 1, 0, 0),
    ]
    assert await usage_rows(ledger_db, "key") == [
        r("m2a-aaaa", "llama", None, 2, 0, 0, 20, 40, 5, ttft=20.0, duration=200.0),
        r("m2a-aaaa", "qwen", None, 1, 1, 0, 1, 0, 0),
        r("m2a-bbbb", "llama", None, 1, 0, 1, 10, 20, 0),
        r("m2a-cccc", "llama", None, 2, 0, 1, 1100, 21, 0),
    ]
    assert [(x.group, x.requests) for x in await usage_rows(ledger_db, "status")] == [
        ("cancelled", 1),
        ("error", 1),
        ("interrupted", 1),
        ("ok", 3),
    ]


async def test_usage_since_until_and_team(ledger_db: AsyncEngine) -> None:
    rows = await usage_rows(ledger_db, "team", since=D + timedelta(minutes=10))
    assert [(x.group, x.model, x.requests) for x in rows] == [
        ("ops", "llama", 1),
        ("research", "llama", 2),
        ("research", "qwen", 1),
    ]
    rows = await usage_rows(ledger_db, "team", since=D, until=D + timedelta(hours=1))
    assert [(x.group, x.model, x.requests) for x in rows] == [("research", "llama", 2)]
    rows = await usage_rows(ledger_db, "model", team="ops")
    assert [(x.group, x.requests, x.input_tokens) for x in rows] == [("llama", 2, 1100)]
    assert await usage_rows(ledger_db, "team", since=D + timedelta(days=365)) == []


async def test_usage_since_in_another_timezone(ledger_db: AsyncEngine) -> None:
    plus2 = timezone(timedelta(hours=2))
    since = (D + timedelta(minutes=10)).astimezone(plus2)  # the same instant as in the test above
    rows = await usage_rows(ledger_db, "team", since=since)
    assert [(x.group, x.model, x.requests) for x in rows] == [
        ("ops", "llama", 1),
        ("research", "llama", 2),
        ("research", "qwen", 1),
    ]


@pytest.mark.parametrize(
    ("bucket", "expect"),
    [
        (
            "hour",
            [
                ("2026-01-29T12:00", 1),
                ("2026-03-10T12:00", 2),
                ("2026-03-10T13:00", 1),
                ("2026-03-11T12:00", 1),
                ("2026-04-09T12:00", 1),
            ],
        ),
        ("day", [("2026-01-29", 1), ("2026-03-10", 3), ("2026-03-11", 1), ("2026-04-09", 1)]),
        ("month", [("2026-01", 1), ("2026-03", 4), ("2026-04", 1)]),
    ],
)
async def test_usage_buckets(ledger_db: AsyncEngine, bucket: str, expect: list[tuple[str, int]]) -> None:
    rows = await usage_rows(ledger_db, "team", bucket=bucket)
    totals: dict[str, int] = {}
    for x in rows:
        assert x.bucket is not None
        totals[x.bucket] = totals.get(x.bucket, 0) + x.requests
    assert sorted(totals.items()) == expect
    assert [x.bucket for x in rows] == sorted(x.bucket for x in rows)  # ordered by bucket first


async def test_usage_bucket_rows(ledger_db: AsyncEngine) -> None:
    rows = await usage_rows(ledger_db, "team", bucket="day", team="research")
    assert rows == [
        r("research", "llama", "2026-03-10", 2, 0, 0, 20, 40, 5, ttft=20.0, duration=200.0),
        r("research", "qwen", "2026-03-10", 1, 1, 0, 1, 0, 0),
        r("research", "llama", "2026-03-11", 1, 0, 1, 10, 20, 0),
    ]


async def test_usage_rejects_unknown_groups(ledger_db: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="by must be one of"):
        await usage_rows(ledger_db, "color")
    with pytest.raises(ValueError, match="bucket must be one of"):
        await usage_rows(ledger_db, "team", bucket="week")
