"""Signed intents (issue 14): what signing, verifying and consuming one intent costs.

    .venv/bin/python bench/intents.py [--n 2000] [--postgres-url postgresql://postgres@127.0.0.1:5432/test]
        [--no-postgres]

For each store (SQLite in a scratch folder; PostgreSQL in a scratch database created on the server
at ``--postgres-url`` and dropped afterwards, as ``tests/db_fixtures.py`` does), ``--n`` times in a
row, each step timed alone with ``perf_counter_ns``:

- **sign**: ``IntentIssuer.issue`` with m2a's ``SigningKeys`` on that store (claims built and
  validated, the arguments' RFC 8785 digest, an ES256 JWS);
- **verify**: ``verify_intent`` of that token against the JWKS (a document the executor holds),
  with the arguments (every rule: header, key, signature, strict claims, times, audience, issuer,
  digest);
- **consume**: ``StoreReplay(engine, hold=True).consume`` (one INSERT into ``intent_uses`` on the
  connection it holds, autocommit);
- **all three**: the three above, one after the other, timed as one;
- **consume, pool** and **all three, pool**: the same with ``StoreReplay(engine)``'s default, a pool
  checkout per consume (the engine's pre-ping, BEGIN, INSERT, COMMIT, the reset on return).
  Iterations alternate between the two (``--n`` in all, half each), so both see the same machine.

Beside them, the floor: PyJWT's ES256 encode and decode of the same claims (no m2a checks), and the
third-party caches (``SQLiteReplayCache``, ``MemoryReplayCache``) consuming. Target: all three
under 1 ms p50. Progress goes to stderr, the table (markdown) to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import jwt

from m2a.agents.keys import SigningKeys
from m2a.principal import AgentRef
from m2a.store.db import open_store
from m2a.trust.intents import TYP, IntentIssuer
from m2a.trust.replay import MemoryReplayCache, SQLiteReplayCache, StoreReplay
from m2a.trust.verify import verify_intent

AUD = "m2a:executor:mcp"
ISS = "https://m2a.bench"
AGENT = AgentRef("spiffe://m2a.bench/team/eng/agent/bench-bot", 1, "bench-bot", 2, 5, subject="user:ana")
ARGS = {"query": "SELECT name FROM customers WHERE id = ?", "params": [1042], "limit": 50}
POLICY = {"id": "team-eng", "version": "3", "mode": "enforce"}


def quantile(values: list[int], q: float) -> float:
    """The ``q`` quantile (nearest rank) of nanosecond timings, in microseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


class Progress:
    def __init__(self, label: str, n: int) -> None:
        self.label, self.n, self.next = label, n, 0

    def tick(self, i: int) -> None:
        if i >= self.next:
            print(f"\r{self.label}: {i}/{self.n}", end="", file=sys.stderr, flush=True)
            self.next += max(1, self.n // 20)

    def done(self) -> None:
        print(f"\r{self.label}: {self.n}/{self.n}", file=sys.stderr, flush=True)


async def measure_store(label: str, url: str | None, home: Path, n: int) -> dict[str, list[int]]:
    engine = await open_store(url, home)
    replays = {"": StoreReplay(engine, hold=True), ", pool": StoreReplay(engine)}
    try:
        keys = SigningKeys(engine)
        issuer = IntentIssuer(keys, ISS)
        jwks = await keys.jwks()

        async def sign() -> Any:
            return await issuer.issue(
                audience=AUD, agent=AGENT, server="crm", tool="query", arguments=ARGS, tier="read",
                policy=POLICY, guardrails=[{"detector": "pii", "action": "allow"}],
            )  # fmt: skip

        for replay in replays.values():
            for _ in range(50):  # warm: the first key, pools, caches
                s = await sign()
                verify_intent(s.token, jwks, audience=AUD, issuer=ISS, arguments=ARGS)
                await replay.consume(s.claims.jti, AUD, s.claims.exp)

        out: dict[str, list[int]] = {}
        for suffix in replays:
            for step in ("sign", "verify", "consume", "all three"):
                out[step + suffix] = []
        progress = Progress(label, n)
        for i in range(n):
            progress.tick(i)
            suffix = ", pool" if i % 2 else ""
            replay = replays[suffix]
            t0 = time.perf_counter_ns()
            s = await sign()
            t1 = time.perf_counter_ns()
            intent = verify_intent(s.token, jwks, audience=AUD, issuer=ISS, arguments=ARGS)
            t2 = time.perf_counter_ns()
            if not await replay.consume(intent.jti, AUD, intent.exp):
                raise RuntimeError("a fresh intent was refused as replayed")
            t3 = time.perf_counter_ns()
            out["sign" + suffix].append(t1 - t0)
            out["verify" + suffix].append(t2 - t1)
            out["consume" + suffix].append(t3 - t2)
            out["all three" + suffix].append(t3 - t0)
        progress.done()
        merged = {"sign": out["sign"] + out["sign, pool"], "verify": out["verify"] + out["verify, pool"]}
        return {**merged, **{k: v for k, v in out.items() if k.startswith(("consume", "all three"))}}
    finally:
        for replay in replays.values():
            await replay.close()
        await engine.dispose()


async def measure_floor(n: int, home: Path) -> dict[str, list[int]]:
    """PyJWT alone on the same claims, and the third-party replay caches."""
    engine = await open_store(None, home)
    try:
        keys = SigningKeys(engine)
        signed = await IntentIssuer(keys, ISS).issue(
            audience=AUD, agent=AGENT, server="crm", tool="query", arguments=ARGS, tier="read", policy=POLICY
        )
        signer = await keys.signer()
        public = signer.key.public_key()
    finally:
        await engine.dispose()
    claims = signed.claims.claims()
    headers = {"kid": signer.kid, "typ": TYP}
    token = signed.token
    sqlite_cache = SQLiteReplayCache(home / "replay-cache.db")
    memory_cache = MemoryReplayCache()
    steps: dict[str, Callable[[], Any]] = {
        "PyJWT ES256 encode (floor of sign)": lambda: jwt.encode(
            claims, signer.key, "ES256", headers=headers
        ),
        "PyJWT ES256 decode (floor of verify)": lambda: jwt.decode(
            token, public, ["ES256"], audience=AUD, options={"verify_exp": False}
        ),
        "SQLiteReplayCache.consume": lambda: sqlite_cache.consume(secrets.token_hex(16), claims["exp"]),
        "MemoryReplayCache.consume": lambda: memory_cache.consume(secrets.token_hex(16), claims["exp"]),
    }
    out: dict[str, list[int]] = {}
    progress = Progress("floor", n)
    for name in steps:
        out[name] = []
    for i in range(n):
        progress.tick(i)
        for name, step in steps.items():
            t0 = time.perf_counter_ns()
            step()
            out[name].append(time.perf_counter_ns() - t0)
    progress.done()
    sqlite_cache.close()
    return out


async def scratch_postgres(admin_url: str, work: Callable[[str], Awaitable[Any]]) -> Any:
    """Run ``work(url)`` on a database created for it on ``admin_url``'s server, dropped after."""
    name = f"m2a_bench_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(admin_url, timeout=15)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        return await work(f"{admin_url.rpartition('/')[0]}/{name}")
    finally:
        admin = await asyncpg.connect(admin_url, timeout=15)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def table(rows: list[tuple[str, str, list[int]]]) -> str:
    lines = ["| store | step | p50 µs | p99 µs | mean µs |", "|---|---|---:|---:|---:|"]
    for store, step, values in rows:
        mean = sum(values) / len(values) / 1000
        lines.append(
            f"| {store} | {step} | {quantile(values, 0.5):.0f} | {quantile(values, 0.99):.0f} | {mean:.0f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> None:
    rows: list[tuple[str, str, list[int]]] = []
    with tempfile.TemporaryDirectory(prefix="m2a-bench-intents-") as tmp:
        sqlite = await measure_store("sqlite", None, Path(tmp) / "sqlite", args.n)
        rows += [("SQLite", step, v) for step, v in sqlite.items()]
        if not args.no_postgres:
            try:
                pg = await scratch_postgres(
                    args.postgres_url, lambda url: measure_store("postgres", url, Path(tmp) / "pg", args.n)
                )
                rows += [("PostgreSQL", step, v) for step, v in pg.items()]
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                print(
                    f"PostgreSQL at {args.postgres_url} skipped: {type(exc).__name__}: {exc}", file=sys.stderr
                )
        floor = await measure_floor(args.n, Path(tmp) / "floor")
        rows += [("-", step, v) for step, v in floor.items()]
    load = os.getloadavg()
    loads = " ".join(f"{x:.2f}" for x in load)
    print(f"\n{args.n} intents per store, {os.cpu_count()} CPUs, load {loads}\n")
    print(table(rows))
    for store in ("SQLite", "PostgreSQL"):
        for step in ("all three", "all three, pool"):
            total = [v for s, name, v in rows if s == store and name == step]
            if total:
                p50 = quantile(total[0], 0.5)
                verdict = "meets" if p50 < 1000 else "misses"
                print(
                    f"{store} ({step}): sign + verify + consume p50 {p50:.0f} µs ({verdict} the 1 ms target)"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="Intents per store (default 2000).")
    ap.add_argument(
        "--postgres-url",
        default=os.environ.get("M2A_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="A PostgreSQL server's database to create the scratch database from.",
    )
    ap.add_argument("--no-postgres", action="store_true", help="SQLite only.")
    args = ap.parse_args()
    if args.n < 1:
        ap.error("--n must be at least 1")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
