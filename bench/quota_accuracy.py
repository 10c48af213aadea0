"""Quota accuracy: 200 concurrent requests against a tight token limit, on one gateway process and
on two processes sharing the budget through Redis (and, as the baseline that shows why Redis is
needed, two processes each counting alone).

A mock engine answers at once and reports usage derived from the request (``max_tokens`` output
tokens, one prompt token per 4 bytes), so the tokens admitted are known exactly. The target:
tokens admitted beyond the limit stay under one request's reservation per process.

    .venv/bin/python bench/quota_accuracy.py [--requests 200] [--limit 5000]

Needs PostgreSQL (M2A_BENCH_PG, default postgresql://postgres@127.0.0.1:5432/test) and Redis
(M2A_BENCH_REDIS, default redis://127.0.0.1:6379/0) for the two-process cases; it creates and
drops a throwaway database and uses its own Redis key prefix.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import KEY, Up, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
ADMIN = {"authorization": f"Bearer {KEY}"}
PROMPT = "word " * 40  # 200 bytes: the mock counts 51 prompt tokens, the gateway estimates 71
MAX_TOKENS = 50


def team_key(root: str, team: str, limit: int) -> str:
    httpx.post(f"{root}/admin/v1/teams", json={"name": team}, headers=ADMIN).raise_for_status()
    httpx.put(f"{root}/admin/v1/teams/{team}/grants/mock", headers=ADMIN).raise_for_status()
    quota = {"limits": [{"metric": "tokens", "window": "hour", "limit": limit}]}
    httpx.put(f"{root}/admin/v1/teams/{team}/quotas", json=quota, headers=ADMIN).raise_for_status()
    r = httpx.post(f"{root}/admin/v1/keys", json={"team": team, "name": "bench"}, headers=ADMIN)
    r.raise_for_status()
    return r.json()["key"]


async def fire(urls: list[str], key: str, n: int) -> tuple[int, int, int, int]:
    """n concurrent requests spread over ``urls``: (ok, 429, other, tokens the ok answers used)."""
    body = {"model": "mock", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS}
    ok = refused = other = tokens = 0
    start = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def one(i: int) -> None:
            nonlocal ok, refused, other, tokens
            await start.wait()
            async with s.post(
                urls[i % len(urls)], json=body, headers={"authorization": f"Bearer {key}"}
            ) as r:
                data = await r.json()
                if r.status == 200:
                    ok += 1
                    tokens += data["usage"]["total_tokens"]
                elif r.status == 429:
                    refused += 1
                else:
                    other += 1

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        await asyncio.sleep(0.2)
        start.set()
        await asyncio.gather(*tasks)
    return ok, refused, other, tokens


async def pg_database(url: str, name: str, drop: bool = False) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"' if drop else f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--limit", type=int, default=5000, help="tokens per hour")
    ap.add_argument("--home", type=Path, default=Path("/tmp/m2a-bench-quota"))
    args = ap.parse_args()
    if time.time() % 3600 > 3540:  # the hour window must not turn over during the run
        time.sleep(3600 - time.time() % 3600 + 1)
    pg = os.environ.get("M2A_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
    redis = os.environ.get("M2A_BENCH_REDIS", "redis://127.0.0.1:6379/0")
    db = f"m2a_bench_{uuid.uuid4().hex[:8]}"
    db_url = pg.rsplit("/", 1)[0] + "/" + db
    prefix = f"m2a-bench:{uuid.uuid4().hex[:8]}:"
    reservation = MAX_TOKENS + (len(PROMPT.encode()) + 2) // 3 + 4
    port = free_port()
    mock = subprocess.Popen([sys.executable, str(HERE / "mock_engine.py"), str(port), "--usage-from-request"])
    model = [{"name": "mock", "engine": "remote", "url": f"http://127.0.0.1:{port}/v1"}]
    rows = []
    asyncio.run(pg_database(pg, db))
    try:
        cases = [
            ("1 process, in-process counters", 1, {}),
            (
                "2 processes, Redis",
                2,
                {"M2A_DATABASE_URL": db_url, "M2A_REDIS_URL": redis, "M2A_REDIS_PREFIX": prefix},
            ),
            ("2 processes, each counting alone", 2, {"M2A_DATABASE_URL": db_url}),
        ]
        for n, (label, procs, env) in enumerate(cases):
            with ExitStack() as stack:
                ups = [
                    stack.enter_context(Up(model, args.home / f"case{n}-{i}", label=f"{label} #{i}", env=env))
                    for i in range(procs)
                ]
                key = team_key(ups[0].root, f"case{n}", args.limit)
                time.sleep(1.5)  # the other process sees the new team and quota (0.5 s revision poll)
                print(f"[{label}] {args.requests} concurrent requests", flush=True)
                ok, refused, other, tokens = asyncio.run(
                    fire([f"{u.base_url}/chat/completions" for u in ups], key, args.requests)
                )
                over = max(0, tokens - args.limit)
                rows.append(
                    f"| {label} | {args.limit} | {ok} | {refused} | {other} | {tokens} | {over} | "
                    f"{reservation * procs} | {'yes' if over < reservation * procs else 'NO'} |"
                )
    finally:
        mock.terminate()
        mock.wait()
        asyncio.run(pg_database(pg, db, drop=True))
    print(
        f"\n{args.requests} concurrent requests of {MAX_TOKENS} output tokens; "
        f"one reservation = {reservation} tokens"
    )
    print(
        "| case | limit (tokens/hour) | ok | 429 | other | tokens admitted | over the limit | "
        "allowed (1 reservation per process) | within |\n" + "|---" * 9 + "|"
    )
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
