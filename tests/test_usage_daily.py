"""The daily usage rollup stays equal to summing the ledger: rows written through the real Ledger,
requests across midnight, replayed journals, a killed process, two processes writing at once, a
failed write, the migration's backfill, and reading it back. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.store import ledger as ledger_mod
from m2a.store import usage_daily
from m2a.store.db import MIGRATIONS, database_url, make_engine, migrate
from m2a.store.ledger import Ledger
from m2a.store.schema import ApiKey, Team, Usage, UsageDailyRow
from m2a.store.usage_daily import daily
from tests import db_fixtures
from tests.db_fixtures import Database

pytestmark = pytest.mark.asyncio(loop_scope="session")

database = db_fixtures.database  # each test runs on SQLite and on PostgreSQL

ROOT = Path(__file__).resolve().parent.parent
MIDNIGHT = datetime(2026, 3, 11, tzinfo=UTC).timestamp()
TEAMS = [("research", 1), ("ops", 2), (None, None)]  # None: an admin key's request
KEYS = [1, 2, 3]
MODELS = ["smollm2", "qwen"]
STATUSES = ["ok", "ok", "ok", "error", "cancelled", "interrupted"]
SUMS = usage_daily.SUMS


def totals_sql(dialect: str) -> str:
    """The reference: a GROUP BY over the ledger, by the rollup's rules (as migration 0012 has it)."""
    day = (
        "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        if dialect == "postgresql"
        else ("substr(started_at, 1, 10)")
    )
    keys = f"{day}, COALESCE(team_id, 0), COALESCE(key_id, 0), model"
    return (
        f"SELECT {keys}, COUNT(*), SUM(CASE WHEN status = 'ok' THEN 0 ELSE 1 END), SUM(input_tokens), "
        "SUM(output_tokens), SUM(cached_tokens), SUM(COALESCE(cost, 0)), SUM(COALESCE(duration_ms, 0)) "
        f"FROM usage GROUP BY {keys}"
    )


async def ledger_totals(engine: AsyncEngine) -> dict[tuple, tuple]:
    async with engine.connect() as conn:
        rows = (await conn.execute(text(totals_sql(engine.dialect.name)))).all()
    return {tuple(r[:4]): tuple(r[4:]) for r in rows}


async def rollup(engine: AsyncEngine) -> dict[tuple, tuple]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(UsageDailyRow.__table__))).mappings().all()
    return {(r["day"], r["team_id"], r["key_id"], r["model"]): tuple(r[c] for c in SUMS) for r in rows}


async def assert_equal(engine: AsyncEngine, requests: int | None = None) -> None:
    """The rollup is the ledger summed: the same groups, the same integers, the same dollars and
    milliseconds (sums of floats added in another order: equal to 1e-9)."""
    want, got = await ledger_totals(engine), await rollup(engine)
    assert set(got) == set(want)
    for key, row in want.items():
        assert got[key][:5] == tuple(int(x) for x in row[:5]), key
        assert got[key][5:] == pytest.approx(tuple(float(x) for x in row[5:]), rel=1e-9, abs=1e-9), key
    if requests is not None:
        assert sum(r[0] for r in got.values()) == requests


def counts(groups: dict[tuple, tuple]) -> tuple[int, int]:
    """Requests and errors over every group."""
    return sum(v[0] for v in groups.values()), sum(v[1] for v in groups.values())


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The ledger's wall clock, fixed and settable (monotonic time stays real)."""
    import time

    fake = SimpleNamespace(now=MIDNIGHT - 3600, monotonic=time.monotonic)
    fake.time = lambda: fake.now
    monkeypatch.setattr(ledger_mod, "time", fake)
    return fake


def fields(rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """A random request's begin and end fields."""
    team, team_id = rng.choice(TEAMS)
    begin = {
        "team": team,
        "team_id": team_id,
        "key_id": rng.choice(KEYS) if team else 9,
        "key_prefix": "m2a-abcdefgh",
        "model": rng.choice(MODELS),
        "route": "chat",
        "priority": "standard",
        "stream": rng.random() < 0.5,
        "price": [0.5, 1.5],
        "input_estimate": 7,
    }
    inp, out = rng.randint(0, 500), rng.randint(0, 300)
    end = {
        "status": rng.choice(STATUSES),
        "http_status": 200,
        "input_tokens": inp,
        "output_tokens": out,
        "cached_tokens": rng.randint(0, inp),
        "duration_ms": rng.choice([None, rng.random() * 1000]),
        "cost": rng.choice([None, (inp * 0.5 + out * 1.5) / 1e6]),
    }
    return begin, end


async def test_many_rows_through_the_ledger_across_midnight(
    database: Database, tmp_path: Path, clock: SimpleNamespace
) -> None:
    """600 requests over two hours around midnight, some finishing after it, flushed in batches of
    every size (one over the 500-row chunk): the rollup equals the GROUP BY after every flush."""
    engine = await database.open()
    ledger = Ledger(engine, tmp_path / "journal", flush_s=3600)
    await ledger.start()
    rng = random.Random(7)
    open_ids: list[str] = []
    written = 0
    for n, batch in enumerate([1, 3, 40, 520, 36]):
        for i in range(batch):
            rid = f"r{n}-{i}"
            begin, end = fields(rng)
            clock.now = MIDNIGHT - 3600 + rng.random() * 7200
            ledger.begin(rid, **begin)
            if rng.random() < 0.1:  # ends after midnight, though it began before: the day it began
                clock.now = MIDNIGHT - 1
                ledger.begin(rid + "-late", **begin)
                open_ids.append(rid + "-late")
            clock.now += rng.random() * 5
            ledger.end(rid, **end)
            written += 1
        clock.now = MIDNIGHT + 30
        for rid in open_ids:
            ledger.end(rid, status="ok", input_tokens=3, output_tokens=4, duration_ms=31000.0)
            written += 1
        open_ids.clear()
        assert await ledger.flush() > 0
        await assert_equal(engine, written)
    days = {k[0] for k in await rollup(engine)}
    assert days == {"2026-03-10", "2026-03-11"}
    late = await ledger_totals(engine)
    assert sum(v[0] for k, v in late.items() if k[0] == "2026-03-10") > 0
    await ledger.close()
    await assert_equal(engine, written)


async def test_a_replayed_journal_is_not_counted_twice(database: Database, tmp_path: Path) -> None:
    """Rows flushed, then the process killed before it unlinked its journal: the next start
    replays the whole journal, rows already stored included. And a later, fuller record of a
    request (interrupted, then ok) replaces the first in the rollup too."""
    jdir = tmp_path / "journal"
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        from pathlib import Path
        from m2a.store.db import open_store
        from m2a.store.ledger import Ledger

        async def main():
            engine = await open_store(sys.argv[2] or None, Path(sys.argv[3]))
            ledger = Ledger(engine, Path(sys.argv[1]), flush_s=3600)
            await ledger.start()
            begin = dict(team="research", team_id=1, key_id=1, key_prefix="m2a-x", model="smollm2",
                         route="chat", priority="standard", stream=True, price=[1.0, 2.0],
                         input_estimate=11)
            for i in range(30):
                ledger.begin(f"k{i}", **begin)
                ledger.end(f"k{i}", status="ok", input_tokens=10, output_tokens=i, cost=0.001,
                           duration_ms=5.0)
            await ledger.flush()  # in the database, and still in the journal
            for i in range(30, 40):
                ledger.begin(f"k{i}", **begin)
                ledger.end(f"k{i}", status="error", input_tokens=1, output_tokens=0)
            ledger.begin("cut", **begin)
            ledger.progress("cut", 5)
            ledger._write({"t": "p", "id": "cut", "out": 5})
            os._exit(1)  # killed: ten records only in the journal, one open stream

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(jdir), database.url or "", str(database.home)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr.decode()
    [journal] = list(jdir.glob("journal-*.jsonl"))
    kept = journal.read_bytes()
    engine = await database.open()
    await assert_equal(engine, 30)
    ledger = Ledger(engine, jdir, flush_s=3600)
    assert await ledger.start() == 41  # all of it replayed, the 30 stored ones too
    await assert_equal(engine, 41)
    journal.write_bytes(kept)  # the same journal once more (its unlink lost in a crash)
    assert await ledger.recover() == 41
    await assert_equal(engine, 41)
    assert counts(await rollup(engine)) == (41, 11)  # ten errors and the interrupted stream
    # the cut-off stream's fuller record arrives later: it replaces the interrupted one
    end = {"t": "e", "id": "cut", "at": 1.0e9 + 2, "status": "ok", "input_tokens": 11, "output_tokens": 50}
    begin_line = next(line for line in kept.splitlines() if b'"id":"cut"' in line and b'"t":"b"' in line)
    (jdir / "journal-1-again.jsonl").write_bytes(begin_line + b"\n" + json.dumps(end).encode())
    assert await ledger.recover() == 1
    await assert_equal(engine, 41)
    assert counts(await rollup(engine)) == (41, 10)
    await ledger.close()


async def test_a_row_moved_to_another_group_leaves_no_empty_group(database: Database, tmp_path: Path) -> None:
    """A replayed record whose team or day differs from the stored one (an old journal line format,
    say): the old group loses the row, and a group left with no request is gone."""
    engine = await database.open()
    ledger = Ledger(engine, tmp_path / "j", flush_s=3600)
    await ledger.start()
    begin = {
        "team": "ops",
        "team_id": 2,
        "key_id": 3,
        "key_prefix": "p",
        "model": "qwen",
        "route": "chat",
        "priority": "standard",
        "stream": False,
    }
    ledger.begin("m", **begin)
    ledger.end("m", status="ok", input_tokens=5, output_tokens=5)
    await ledger.flush()
    again = {"id": "m", "at": MIDNIGHT + 10, **begin, "team_id": 1, "team": "research"}
    moved = ledger_mod._row(
        again, {"at": MIDNIGHT + 11, "status": "ok", "input_tokens": 6, "output_tokens": 5}
    )
    await ledger._upsert([moved])
    got = await rollup(engine)
    assert list(got) == [("2026-03-11", 1, 3, "qwen")]
    await assert_equal(engine, 1)
    await ledger.close()


async def test_a_failed_write_leaves_both_tables_as_they_were(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger rows and the rollup go in one transaction: a rollup write that fails takes the
    ledger rows back too; the ledger keeps them and the next flush writes both."""
    engine = await database.open()
    ledger = Ledger(engine, tmp_path / "j", flush_s=3600)
    await ledger.start()
    rng = random.Random(3)
    for i in range(20):
        begin, end = fields(rng)
        ledger.begin(f"f{i}", **begin)
        ledger.end(f"f{i}", **end)
    real = usage_daily.add

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(usage_daily, "add", broken)
    with pytest.raises(RuntimeError):
        await ledger.flush()
    async with engine.connect() as conn:
        assert (await conn.execute(select(Usage.id))).all() == []
    monkeypatch.setattr(usage_daily, "add", real)
    assert await ledger.flush() == 20
    await assert_equal(engine, 20)
    await ledger.close()


WRITER = textwrap.dedent(
    """
    import asyncio, random, sys, time
    from pathlib import Path
    from m2a.store.db import open_store
    from m2a.store.ledger import Ledger

    async def main():
        jdir, url, home, seed, go = sys.argv[1:6]
        url, home, seed, go = url or None, Path(home), int(seed), Path(go)
        engine = await open_store(url, home)
        ledger = Ledger(engine, Path(jdir), flush_s=3600)
        await ledger.start()
        rng = random.Random(seed)
        while not go.exists():
            time.sleep(0.01)
        for n in range(60):
            for i in range(rng.randint(1, 12)):
                rid = f"w{seed}-{n}-{i}"
                team = rng.choice([("research", 1), ("ops", 2), ("infra", 3)])
                ledger.begin(rid, team=team[0], team_id=team[1], key_id=rng.randint(1, 4),
                             key_prefix="p", model=rng.choice(["a", "b", "c"]), route="chat",
                             priority="standard", stream=False)
                ledger.end(rid, status=rng.choice(["ok", "error"]), input_tokens=rng.randint(0, 99),
                           output_tokens=rng.randint(0, 99), cost=rng.random() / 1000,
                           duration_ms=rng.random())
            await ledger.flush()
        await ledger.close()
        await engine.dispose()

    asyncio.run(main())
    """
)


async def test_two_processes_writing_at_once(database: Database, tmp_path: Path) -> None:
    """Two gateway processes flush into the same rollup rows at the same time (in random group
    orders): no deadlock, no lost update, the rollup equals the ledger."""
    await database.open()  # migrated before the writers start
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(tmp_path / f"j{seed}"),
                database.url or "",
                str(database.home),
                str(seed),
                str(go),
            ],
            env=env,
            stderr=subprocess.PIPE,
        )
        for seed in (1, 2)
    ]
    await asyncio.sleep(1.0)
    go.touch()
    for p in procs:
        _, err = await asyncio.to_thread(p.communicate, timeout=240)
        assert p.returncode == 0, err.decode()
    engine = database.engines[0]
    async with engine.connect() as conn:
        (count,) = (await conn.execute(text("SELECT COUNT(*) FROM usage"))).one()
    assert count > 120
    await assert_equal(engine, count)


async def test_the_migration_fills_the_rollup_from_the_ledger(database: Database) -> None:
    """An existing ledger (rows written before 0012, interrupted ones without an end time
    included): the upgrade fills usage_daily with exactly its sums."""
    engine = make_engine(database_url(database.url, database.home))
    database.engines.append(engine)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))

    def to(revision: str) -> Any:
        def run(connection: Any) -> None:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)

        return run

    async with engine.begin() as conn:
        await conn.run_sync(to("0011"))
    rng = random.Random(11)
    rows = []
    for i in range(300):
        begin, end = fields(rng)
        begin.pop("price"), begin.pop("input_estimate")
        started = datetime.fromtimestamp(MIDNIGHT - 7200 + rng.random() * 14400, UTC)
        finished = None if end["status"] == "interrupted" and i % 2 else started + timedelta(seconds=3)
        rows.append({"request_id": f"m{i}", "started_at": started, "finished_at": finished, **begin, **end})
    async with engine.begin() as conn:
        await conn.execute(insert(Usage), rows)
    await migrate(engine)
    await assert_equal(engine, 300)


async def test_daily_reads_groups_filters_and_labels(
    database: Database, tmp_path: Path, clock: SimpleNamespace
) -> None:
    engine = await database.open()
    now = datetime(2026, 3, 10, tzinfo=UTC)
    async with engine.begin() as conn:
        await conn.execute(
            insert(Team),
            [
                {"id": i, "name": name, "priority": "standard", "priority_order": 100, "created_at": now}
                for i, name in ((1, "research"), (2, "ops"))
            ],
        )
        await conn.execute(
            insert(ApiKey),
            [
                {
                    "id": k,
                    "team_id": 1,
                    "name": f"key {k}",
                    "prefix": f"m2a-{k}",
                    "key_hash": f"h{k}",
                    "role": "member",
                    "created_at": now,
                }
                for k in (1, 2)
            ],
        )
    ledger = Ledger(engine, tmp_path / "j", flush_s=3600)
    await ledger.start()
    plan = [  # day offset, team, team id, key, model, input, output
        (0, "research", 1, 1, "a", 10, 20),
        (0, "research", 1, 2, "a", 1, 2),
        (0, "research", 1, 1, "b", 100, 200),
        (1, "research", 1, 1, "a", 5, 5),
        (1, "ops", 2, 9, "a", 7, 7),
    ]
    for i, (offset, team, team_id, key, model, inp, out) in enumerate(plan):
        clock.now = now.timestamp() + offset * 86400 + 60
        begin = {
            "team": team,
            "team_id": team_id,
            "key_id": key,
            "key_prefix": f"m2a-{key}",
            "model": model,
            "route": "chat",
            "priority": "standard",
            "stream": False,
        }
        ledger.begin(f"d{i}", **begin)
        ledger.end(f"d{i}", status="ok", input_tokens=inp, output_tokens=out, cost=0.01, duration_ms=10.0)
    await ledger.flush()
    await ledger.close()

    every = await daily(engine)
    assert [(t.day, t.team, t.key_name, t.model, t.requests) for t in every] == [
        ("2026-03-11", "ops", None, "a", 1),
        ("2026-03-11", "research", "key 1", "a", 1),
        ("2026-03-10", "research", "key 1", "b", 1),
        ("2026-03-10", "research", "key 1", "a", 1),
        ("2026-03-10", "research", "key 2", "a", 1),
    ]
    by_team = await daily(engine, group=["team"])
    assert [(t.team, t.tokens, t.requests) for t in by_team] == [("research", 343, 4), ("ops", 14, 1)]
    assert all(t.day is None and t.model is None for t in by_team)
    one = await daily(engine, date(2026, 3, 10), date(2026, 3, 10), team_id=1, model="a", group=["key"])
    assert [(t.key_id, t.key_prefix, t.tokens) for t in one] == [(1, "m2a-1", 30), (2, "m2a-2", 3)]
    assert (await daily(engine, team="ops", group=["day"]))[0].avg_duration_ms == 10.0
    assert await daily(engine, date(2026, 3, 12)) == []
    # a deleted team keeps its usage, labelled as deleted; a new team of its name starts empty
    async with engine.begin() as conn:
        await conn.execute(update(Team).where(Team.id == 2).values(name="ops~deleted~2", deleted_at=now))
        await conn.execute(
            insert(Team).values(id=3, name="ops", priority="standard", priority_order=100, created_at=now)
        )
    labels = {t.team for t in await daily(engine, group=["team"])}
    assert labels == {"research", "ops (deleted)"}
    assert await daily(engine, team="ops") == []
    with pytest.raises(ValueError):
        await daily(engine, group=["replica"])
