"""CPU per usage record of the ledger's database side, in-process (``store/ledger.py``).

Makes a fresh, migrated store (SQLite in a temporary folder, or ``--url`` for PostgreSQL, whose
``usage`` tables it empties first: use a scratch database), then repeats: ``--rows`` records begun
and ended as the gateway makes them (the journal lines), then one ``Ledger.flush`` (the batched
upsert and the daily rollup). Prints the process CPU time (every thread: the driver's too) per
record for each part. No gateway, no HTTP: what one request's record costs the gateway's process.

    .venv/bin/python bench/ledger_flush.py [--flushes 40] [--rows 200] [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import text

from m2a.store.db import database_url, make_engine, migrate
from m2a.store.ledger import Ledger


async def run(flushes: int, rows: int, url: str | None) -> None:
    home = Path(tempfile.mkdtemp(prefix="m2a-ledger-bench-"))
    engine = make_engine(database_url(url, home))
    try:
        await migrate(engine)
        if url:
            async with engine.begin() as conn:
                await conn.execute(text("DELETE FROM usage"))
                await conn.execute(text("DELETE FROM usage_daily"))
        ledger = Ledger(engine, home / "ledger")
        ledger._open_journal()

        def records() -> None:
            for _ in range(rows):
                rid = str(uuid.uuid4())
                ledger.begin(
                    rid, team="bench", team_id=1, input_estimate=9, price=[0.1, 0.2], key_id=1,
                    key_prefix="m2a-abcd", model="mock", route="/v1/chat/completions", priority=1,
                    stream=False, agent=None,
                )  # fmt: skip
                ledger.end(
                    rid, status="ok", http_status=200, replica="mock-0", input_tokens=9,
                    output_tokens=16, cached_tokens=0, ttft_ms=None, duration_ms=1.2, cost=0.0001,
                )  # fmt: skip

        records()
        await ledger.flush()  # warm: statements compiled, connection open
        journal = flush = 0.0
        for i in range(flushes):
            t = time.process_time()
            records()
            journal += time.process_time() - t
            t = time.process_time()
            await ledger.flush()
            flush += time.process_time() - t
            print(f"\rflush {i + 1}/{flushes}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        n = flushes * rows
        print(f"{engine.dialect.name}: {n} records in batches of {rows}")
        print(f"  begin + end (journal lines): {journal / n * 1e6:.1f} µs CPU per record")
        print(f"  flush (upsert + daily rollup): {flush / n * 1e6:.1f} µs CPU per record")
    finally:
        await engine.dispose()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flushes", type=int, default=40)
    ap.add_argument("--rows", type=int, default=200, help="records per flush (about 0.25 s of traffic)")
    ap.add_argument("--url", help="a scratch PostgreSQL database instead of SQLite")
    args = ap.parse_args()
    if args.flushes < 1 or args.rows < 1:
        raise SystemExit("--flushes and --rows must be at least 1")
    asyncio.run(run(args.flushes, args.rows, args.url))


if __name__ == "__main__":
    main()
