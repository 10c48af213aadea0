"""The audit log (issue 14): appends per second and the cost of verifying it.

    .venv/bin/python bench/audit.py [--n 4000] [--verify-n 100000] [--concurrency 16]
        [--postgres-url postgresql://postgres@127.0.0.1:5432/test] [--no-postgres]

For each store (SQLite in a scratch folder; PostgreSQL in a scratch database created on the server
at ``--postgres-url`` and dropped afterwards, as ``tests/db_fixtures.py`` does), on a fresh log
signed by m2a's ``SigningKeys`` (a checkpoint every 256 records, written inline as in production):

- **baseline**: one INSERT of a row of the same shape into a plain table, one transaction each
  (what any durable append costs on that store, with no lock, no head read, no hash);
- **1 writer**: ``AuditLog.append`` ``--n`` times, each awaited before the next;
- **2 processes**: two OS processes appending ``--n`` records each at once, each awaiting each
  append (the cross-process lock: PostgreSQL's advisory lock, SQLite's write lock);
- **1 process, C tasks**: ``--n`` appends from ``--concurrency`` tasks at once (group commit: the
  appends that wait for a write go together in the next one);
- **verify**: ``AuditLog.verify`` of a log of ``--verify-n`` records (written with ``append_many``
  beforehand) with its checkpoints' signatures, and the most memory it had allocated at once (``tracemalloc``,
  in a second run: tracing slows it).

Progress goes to stderr, the table (markdown) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text

from m2a.agents.keys import SigningKeys
from m2a.store.db import open_store
from m2a.trust.audit import AuditItem, AuditLog

ISS = "https://m2a.bench"
AGENT = "spiffe://m2a.bench/team/eng/agent/bench-bot"
TRACE = "0af7651916cd43dd8448eb211c80319c"


def body(i: int) -> dict[str, Any]:
    """What a receipt record holds: digests and names."""
    return {
        "call_id": f"call_{i}",
        "tool": "erp.create_invoice",
        "jti": secrets.token_urlsafe(16),
        "receipt_sha256": secrets.token_hex(32),
        "status": "ok",
    }


def log_of(engine: Any, keys: Any) -> AuditLog:
    return AuditLog(engine, keys, issuer=ISS, checkpoint_every=256, checkpoint_interval_s=60)


def progress(label: str, i: int, n: int) -> None:
    if i % max(1, n // 20) == 0 or i == n:
        print(f"\r  {label}: {i}/{n}", end="\n" if i == n else "", file=sys.stderr, flush=True)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_by_one(label: str, n: int, step: Any) -> dict[str, float]:
    lat = []
    started = time.perf_counter()
    for i in range(1, n + 1):
        t = time.perf_counter()
        await step(i)
        lat.append(time.perf_counter() - t)
        progress(label, i, n)
    wall = time.perf_counter() - started
    return {"per_s": n / wall, "p50_ms": quantile(lat, 0.5) * 1e3, "p99_ms": quantile(lat, 0.99) * 1e3}


async def baseline(engine: Any, n: int) -> dict[str, float]:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE bench_plain (seq INTEGER PRIMARY KEY, at TIMESTAMP, kind VARCHAR(32), "
                "agent VARCHAR(256), trace_id VARCHAR(32), body TEXT, prev_hash VARCHAR(64), "
                "hash VARCHAR(64))"
            )
        )

    async def step(i: int) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO bench_plain VALUES (:s, CURRENT_TIMESTAMP, 'receipt', :a, :t, :b, :p, :h)"),
                {"s": i, "a": AGENT, "t": TRACE, "b": json.dumps(body(i)), "p": "0" * 64, "h": "1" * 64},
            )

    return await one_by_one("baseline", n, step)


async def single(engine: Any, n: int) -> dict[str, float]:
    log = log_of(engine, SigningKeys(engine))

    async def step(i: int) -> None:
        await log.append("receipt", body(i), agent=AGENT, team_id=1, trace_id=TRACE)

    return await one_by_one("1 writer", n, step)


async def tasks(engine: Any, n: int, concurrency: int) -> dict[str, float]:
    log = log_of(engine, SigningKeys(engine))
    done = 0

    async def worker(k: int) -> None:
        nonlocal done
        for i in range(k, n, concurrency):
            await log.append("receipt", body(i), agent=AGENT, team_id=1, trace_id=TRACE)
            done += 1
            progress(f"1 process, {concurrency} tasks", done, n)

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return {"per_s": n / (time.perf_counter() - started)}


async def child(url: str, home: str, n: int, flags: str, name: str) -> None:
    """One of the two writer processes: ready, wait for go, append ``n``, print its own timing."""
    engine = await open_store(url or None, Path(home))
    log = log_of(engine, SigningKeys(engine))
    await log.append("warmup", {"writer": name})
    Path(flags, f"{name}.ready").touch()
    while not Path(flags, "go").exists():
        await asyncio.sleep(0.002)
    started = time.perf_counter()
    for i in range(n):
        await log.append("receipt", body(i), agent=name, team_id=1, trace_id=TRACE)
    print(json.dumps({"s": time.perf_counter() - started}))
    await engine.dispose()


async def two_processes(url: str | None, home: Path, n: int) -> dict[str, float]:
    flags = Path(tempfile.mkdtemp(prefix="m2a-bench-flags-"))
    cmd = [sys.executable, __file__, "--child", url or "", str(home), str(n), str(flags)]
    procs = [subprocess.Popen([*cmd, name], stdout=subprocess.PIPE) for name in ("w1", "w2")]
    while not all((flags / f"w{k}.ready").exists() for k in (1, 2)):
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a writer process died before it started")
        await asyncio.sleep(0.01)
    print("  2 processes: appending...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    (flags / "go").touch()
    outs = [await asyncio.to_thread(p.communicate) for p in procs]
    wall = time.perf_counter() - started
    if any(p.returncode for p in procs):
        raise SystemExit(f"a writer process failed: {outs}")
    each = [json.loads(o[0])["s"] for o in outs]
    print(f"  2 processes: {2 * n}/{2 * n}", file=sys.stderr, flush=True)
    return {"per_s": 2 * n / wall, "each_per_s": n / max(each)}


async def verify_cost(engine: Any, n: int) -> dict[str, float]:
    keys = SigningKeys(engine)
    log = log_of(engine, keys)
    batch = 1000
    for start in range(0, n, batch):
        await log.append_many(
            AuditItem("receipt", body(i), AGENT, 1, TRACE) for i in range(start, min(n, start + batch))
        )
        progress("writing the log to verify", min(n, start + batch), n)
    await log.checkpoint()
    jwks = await keys.jwks()
    print("  verifying...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    report = await AuditLog(engine, None, issuer=ISS).verify(jwks)
    wall = time.perf_counter() - started
    if not report.ok:
        raise SystemExit(f"verify found problems in an untouched log: {report.problems[:3]}")
    print("  verifying again, tracing memory...", file=sys.stderr, flush=True)
    tracemalloc.start()
    await AuditLog(engine, None, issuer=ISS).verify(jwks)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {"records": report.records, "checkpoints": report.checkpoints, "s": wall, "peak_mb": peak}


async def store(label: str, url: str | None, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    print(f"{label}:", file=sys.stderr, flush=True)
    out: dict[str, Any] = {}
    for name, work in (
        ("baseline", lambda e: baseline(e, args.n)),
        ("1 writer", lambda e: single(e, args.n)),
        (f"1 process, {args.concurrency} tasks", lambda e: tasks(e, args.n, args.concurrency)),
    ):
        engine = await open_store(url, home)
        try:
            out[name] = await work(engine)
        finally:
            await engine.dispose()
    out["2 processes"] = await two_processes(url, home, args.n)
    engine = await open_store(url, home)
    try:
        async with engine.begin() as conn:  # verify a log of exactly --verify-n records
            await conn.execute(text("DELETE FROM audit_records"))
            await conn.execute(text("DELETE FROM audit_checkpoints"))
        out["verify"] = await verify_cost(engine, args.verify_n)
    finally:
        await engine.dispose()
    return out


async def scratch_postgres(admin_url: str) -> tuple[str, str]:
    name = f"m2a_bench_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(admin_url, timeout=15)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name, f"{admin_url.rpartition('/')[0]}/{name}"


async def drop_postgres(admin_url: str, name: str) -> None:
    admin = await asyncpg.connect(admin_url, timeout=15)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [
        f"| store | baseline INSERT/s | 1 writer appends/s (p50 / p99 ms) | 2 processes appends/s | "
        f"1 process, {args.concurrency} tasks appends/s | verify {args.verify_n:,} records |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        b, s, t, p, v = (
            r[k]
            for k in ("baseline", "1 writer", f"1 process, {args.concurrency} tasks", "2 processes", "verify")
        )
        rows.append(
            f"| {label} | {b['per_s']:,.0f} | {s['per_s']:,.0f} ({s['p50_ms']:.2f} / {s['p99_ms']:.2f}) | "
            f"{p['per_s']:,.0f} | {t['per_s']:,.0f} | {v['s']:.2f} s "
            f"({v['records'] / v['s']:,.0f} records/s, {v['checkpoints']} checkpoints, "
            f"peak {v['peak_mb']:.0f} MB allocated) |"
        )
    return "\n".join(rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--verify-n", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("M2A_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="m2a-bench-audit-") as tmp:
        results["SQLite"] = await store("SQLite", None, Path(tmp) / "home", args)
    if not args.no_postgres:
        name, url = await scratch_postgres(args.postgres_url)
        try:
            with tempfile.TemporaryDirectory(prefix="m2a-bench-audit-") as tmp:
                results["PostgreSQL"] = await store("PostgreSQL", url, Path(tmp) / "home", args)
        finally:
            await drop_postgres(args.postgres_url, name)
    print(table(results, args))


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        asyncio.run(child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]))
    else:
        asyncio.run(main())
