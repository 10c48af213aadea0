"""Usage by day on a large ledger: the daily rollup (``usage_daily``) against a GROUP BY on ``usage``,
and what keeping the rollup costs the ledger's writes.

    .venv/bin/python bench/usage_daily.py [--rows 1000000] [--days 90] [--teams 20] [--keys-per-team 5]
        [--models 4] [--rounds 5] [--write-rows 20000] [--batch 200]
        [--postgres-url postgresql://postgres@127.0.0.1:5432/test] [--no-postgres]

For each store (SQLite in a scratch folder; PostgreSQL in a scratch database created on the server
at ``--postgres-url`` and dropped afterwards, as ``tests/db_fixtures.py`` does):

1. ``--rows`` ledger rows spread over ``--days`` days (teams, keys, models, statuses at random, a
   fixed seed) are inserted into ``usage``, and the rollup is filled from them with the same
   ``INSERT … SELECT … GROUP BY`` as migration 0012 (timed: what an upgrade costs).
2. Three questions the usage page asks, each answered from the rollup (``store.usage_daily.daily``,
   what ``GET /admin/v1/usage/daily`` runs) and by a GROUP BY on ``usage`` giving the same numbers
   (checked equal), in ``--rounds`` interleaved rounds (median and best reported):
   the last 30 days by day × team × key × model; the whole period by team; one team's last 30
   days by day × model.
3. Writes: ``--write-rows`` new ledger rows stored in batches of ``--batch`` (a flush's worth under
   load) through the ledger's own ``_upsert`` (usage rows + rollup, one transaction), against the
   upsert the ledger did before the rollup existed (one statement), interleaved.

Progress goes to stderr, the tables (markdown) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import insert, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.store.db import open_store
from m2a.store.ledger import Ledger
from m2a.store.schema import Team, Usage
from m2a.store.usage_daily import daily

END = datetime(2026, 3, 31, 23, 0, tzinfo=UTC)
STATUSES = ["ok"] * 18 + ["error", "cancelled"]


def say(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def ledger_rows(n: int, days: int, teams: int, keys: int, models: int, seed: int, prefix: str) -> list[dict]:
    rng = random.Random(seed)
    span = days * 86400
    out = []
    for i in range(n):
        team = rng.randrange(teams) + 1
        started = END - timedelta(seconds=rng.random() * span)
        inp, outp = rng.randint(10, 2000), rng.randint(1, 800)
        out.append(
            {
                "request_id": f"{prefix}{i}",
                "started_at": started,
                "finished_at": started + timedelta(seconds=1),
                "team": f"team-{team}",
                "team_id": team,
                "key_id": (team - 1) * keys + rng.randrange(keys) + 1,
                "key_prefix": "m2a-bench",
                "model": f"model-{rng.randrange(models)}",
                "route": "chat",
                "replica": "r-0",
                "priority": "standard",
                "stream": True,
                "status": rng.choice(STATUSES),
                "http_status": 200,
                "input_tokens": inp,
                "output_tokens": outp,
                "cached_tokens": rng.randint(0, inp),
                "ttft_ms": 50.0,
                "duration_ms": rng.random() * 2000,
                "cost": (inp * 0.5 + outp * 1.5) / 1e6,
                "agent": None,
            }
        )
    return out


async def load(engine: AsyncEngine, rows: list[dict], teams: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(Team),
            [
                {
                    "id": t,
                    "name": f"team-{t}",
                    "priority": "standard",
                    "priority_order": 100,
                    "created_at": END,
                }
                for t in range(1, teams + 1)
            ],
        )
    for i in range(0, len(rows), 50_000):
        async with engine.begin() as conn:
            for j in range(i, min(i + 50_000, len(rows)), 2000):
                await conn.execute(insert(Usage), rows[j : j + 2000])
        say(f"  loaded {min(i + 50_000, len(rows)):,} rows")


def day_sql(dialect: str) -> str:
    if dialect == "postgresql":
        return "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    return "substr(started_at, 1, 10)"


SUMS = (
    "COUNT(*), SUM(CASE WHEN status = 'ok' THEN 0 ELSE 1 END), SUM(input_tokens), SUM(output_tokens), "
    "SUM(cached_tokens), SUM(COALESCE(cost, 0)), SUM(COALESCE(duration_ms, 0))"
)


async def rebuild(engine: AsyncEngine) -> float:
    """The migration's backfill (seconds)."""
    day = day_sql(engine.dialect.name)
    keys = f"{day}, COALESCE(team_id, 0), COALESCE(key_id, 0), model"
    t = time.perf_counter()
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM usage_daily"))
        await conn.execute(
            text(
                "INSERT INTO usage_daily (day, team_id, key_id, model, team, requests, errors, input_tokens, "
                f"output_tokens, cached_tokens, cost, duration_ms) SELECT {keys}, MAX(team), {SUMS} "
                f"FROM usage GROUP BY {keys}"
            )
        )
    return time.perf_counter() - t


async def group_by(
    engine: AsyncEngine, since: date, until: date, keys: list[str], team_id: int | None
) -> list:
    """The same question asked of the ledger itself."""
    day = day_sql(engine.dialect.name)
    cols = [
        {"day": day, "team": "COALESCE(team_id, 0)", "key": "COALESCE(key_id, 0)", "model": "model"}[k]
        for k in keys
    ]
    lo = datetime(since.year, since.month, since.day, tzinfo=UTC)
    hi = datetime(until.year, until.month, until.day, tzinfo=UTC) + timedelta(days=1)
    where = "started_at >= :lo AND started_at < :hi" + (" AND team_id = :team" if team_id else "")
    sql = f"SELECT {', '.join(cols)}, {SUMS} FROM usage WHERE {where} GROUP BY {', '.join(cols)}"
    params: dict[str, Any] = {"lo": lo, "hi": hi, "team": team_id}
    if engine.dialect.name == "sqlite":  # SQLite compares the stored text
        params["lo"], params["hi"] = (x.strftime("%Y-%m-%d %H:%M:%S.%f") for x in (lo, hi))
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


def same(rollup: list, ledger: list, keys: list[str]) -> bool:
    def key_of(r: Any) -> tuple:
        return tuple({"day": r.day, "team": r.team_id, "key": r.key_id, "model": r.model}[k] for k in keys)

    a = {key_of(r): (r.requests, r.errors, r.input_tokens, r.output_tokens, r.cached_tokens) for r in rollup}
    b = {tuple(r[: len(keys)]): tuple(int(x) for x in r[len(keys) : len(keys) + 5]) for r in ledger}
    return a == b


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = await fn()
    return (time.perf_counter() - t) * 1000, out


async def queries(
    engine: AsyncEngine, days: int, rounds: int
) -> list[tuple[str, list[float], list[float], int]]:
    until = END.date()
    last30 = until - timedelta(days=29)
    first = until - timedelta(days=days - 1)
    cases = [
        ("last 30 days by day × team × key × model", last30, ["day", "team", "key", "model"], None),
        (f"all {days} days by team", first, ["team"], None),
        ("one team, last 30 days by day × model", last30, ["day", "model"], 3),
    ]
    out = []
    for name, since, keys, team in cases:
        fast, slow = [], []
        rows = 0
        for _ in range(rounds):
            ms, a = await timed(lambda s=since, k=keys, t=team: daily(engine, s, until, team_id=t, group=k))
            fast.append(ms)
            ms, b = await timed(lambda s=since, k=keys, t=team: group_by(engine, s, until, k, t))
            slow.append(ms)
            if not same(a, b, keys):
                raise AssertionError(f"{name}: the rollup and the ledger disagree")
            rows = len(a)
        out.append((name, fast, slow, rows))
        say(f"  {name}: rollup {statistics.median(fast):.1f} ms, GROUP BY {statistics.median(slow):.1f} ms")
    return out


async def old_upsert(engine: AsyncEngine, rows: list[dict]) -> None:
    """The ledger's write before the rollup: one upsert statement per 500 rows."""
    ins = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    stmt = ins(Usage)
    stmt = stmt.on_conflict_do_update(
        index_elements=["request_id"], set_={c: stmt.excluded[c] for c in rows[0] if c != "request_id"}
    )
    async with engine.begin() as conn:
        for i in range(0, len(rows), 500):
            await conn.execute(stmt, rows[i : i + 500])


async def writes(engine: AsyncEngine, args: argparse.Namespace, home: Path) -> dict[str, list[float]]:
    ledger = Ledger(engine, home / "ledger", flush_s=3600)
    out: dict[str, list[float]] = {"with rollup (ledger now)": [], "usage only (before)": []}
    for r in range(args.rounds):
        for name, fn in (("with rollup (ledger now)", ledger._upsert), ("usage only (before)", None)):
            rows = ledger_rows(args.write_rows, 2, args.teams, args.keys_per_team, args.models, 100 + r,
                               f"w{r}-{name[:4]}-")  # fmt: skip
            t = time.perf_counter()
            for i in range(0, len(rows), args.batch):
                chunk = rows[i : i + args.batch]
                await (fn(chunk) if fn is not None else old_upsert(engine, chunk))
            out[name].append(len(rows) / (time.perf_counter() - t))
        say(f"  writes round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} rows/s" for k, v in out.items()))
    return out


async def run(url: str | None, args: argparse.Namespace, label: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        engine = await open_store(url, home)
        try:
            say(f"{label}: generating {args.rows:,} ledger rows")
            rows = ledger_rows(args.rows, args.days, args.teams, args.keys_per_team, args.models, 7, "r")
            t = time.perf_counter()
            await load(engine, rows, args.teams)
            loaded = time.perf_counter() - t
            del rows
            backfill = await rebuild(engine)
            async with engine.connect() as conn:
                (rollup_rows,) = (await conn.execute(text("SELECT COUNT(*) FROM usage_daily"))).one()
            say(f"{label}: loaded in {loaded:.0f} s, backfill {backfill:.1f} s, {rollup_rows:,} rollup rows")
            found = await queries(engine, args.days, args.rounds)
            wrote = await writes(engine, args, home)
        finally:
            await engine.dispose()
    print(f"\n### {label}: {args.rows:,} ledger rows over {args.days} days, {rollup_rows:,} rollup rows\n")
    print(f"Migration backfill (INSERT … SELECT … GROUP BY over the whole ledger): {backfill:.1f} s\n")
    print("| question | rows out | rollup median (best) ms | GROUP BY on usage median (best) ms | speed-up |")
    print("|---|---|---|---|---|")
    for name, fast, slow, n in found:
        fm, sm = statistics.median(fast), statistics.median(slow)
        print(
            f"| {name} | {n:,} | {fm:.1f} ({min(fast):.1f}) | {sm:.1f} ({min(slow):.1f}) | {sm / fm:.0f}x |"
        )
    print(f"\nLedger writes, {args.write_rows:,} rows in batches of {args.batch} ({args.rounds} rounds):\n")
    print("| write | rows/s median | best |")
    print("|---|---|---|")
    for name, rates in wrote.items():
        print(f"| {name} | {statistics.median(rates):,.0f} | {max(rates):,.0f} |")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--teams", type=int, default=20)
    p.add_argument("--keys-per-team", type=int, default=5)
    p.add_argument("--models", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--write-rows", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument(
        "--postgres-url",
        default=os.environ.get("M2A_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--no-sqlite", action="store_true")
    args = p.parse_args()
    if not args.no_sqlite:
        await run(None, args, "SQLite")
    if args.no_postgres:
        return
    name = f"m2a_bench_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(args.postgres_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        await run(args.postgres_url.rpartition("/")[0] + "/" + name, args, "PostgreSQL")
    finally:
        admin = await asyncpg.connect(args.postgres_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
