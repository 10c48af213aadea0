"""Single use of signed intents: an executor acts on an intent once, so a copy replayed later (in
this process or any other sharing the cache) is refused.

- ``ReplayCache`` (sync, for third-party executors): ``consume(jti, exp) -> bool`` (False: used
  before), with ``MemoryReplayCache`` (one process) and ``SQLiteReplayCache(path)`` (a PRIMARY KEY
  insert into a SQLite file: atomic across the processes of one machine).
- ``StoreReplay(engine)`` (async, in the platform): inserts the jti into m2a's store
  (``intent_uses``); the primary key makes the insert the atomic test-and-set on SQLite and on
  PostgreSQL, across gateway processes.
- ``admit`` / ``admit_sync``: verify (``verify.verify_intent``), then consume. A refusal by
  verification consumes nothing; a second admission of one intent raises ``IntentError("replayed")``.

A consumed jti is kept ``GRACE_S`` past its expiry (longer than any verifier's leeway), then pruned:
by then no copy of that intent verifies anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import delete, insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from m2a.store.schema import IntentUseRow
from m2a.trust.verify import (
    MAX_LEEWAY_S,
    NOT_GIVEN,
    Intent,
    IntentError,
    JwksSource,
    averify_intent,
    verify_intent,
)

GRACE_S = 2 * MAX_LEEWAY_S  # a used jti outlives its intent's expiry by this much
PRUNE_EVERY_S = 30.0
_INSERT = insert(IntentUseRow)  # one statement, compiled once (parameters per call)


@runtime_checkable
class ReplayCache(Protocol):
    def consume(self, jti: str, exp: int) -> bool:
        """Record ``jti`` as used (until ``exp``); False when it was used before."""
        ...


class MemoryReplayCache:
    """Used jtis in this process's memory (one process; lost on restart, while intents live 60 s)."""

    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self._used: dict[str, int] = {}
        self._lock = threading.Lock()
        self._pruned_at = float("-inf")

    def consume(self, jti: str, exp: int) -> bool:
        with self._lock:
            now = self.clock()
            if now - self._pruned_at >= PRUNE_EVERY_S:
                self._pruned_at = now
                self._used = {j: e for j, e in self._used.items() if e + GRACE_S > now}
            if jti in self._used:
                return False
            self._used[jti] = exp
            return True

    def __len__(self) -> int:
        return len(self._used)


class SQLiteReplayCache:
    """Used jtis in a SQLite file: the PRIMARY KEY insert is atomic across processes on one machine
    (SQLite's file lock; WAL mode, waiting up to ``timeout_s`` for another writer)."""

    def __init__(self, path: str | Path, *, timeout_s: float = 10.0, clock: Any = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._pruned_at = float("-inf")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS intent_uses (jti TEXT PRIMARY KEY, exp INTEGER NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS intent_uses_exp ON intent_uses (exp)")

    def consume(self, jti: str, exp: int) -> bool:
        with self._lock:
            if self.clock() - self._pruned_at >= PRUNE_EVERY_S:
                self._prune()
            try:
                self._db.execute("INSERT INTO intent_uses (jti, exp) VALUES (?, ?)", (jti, int(exp)))
            except sqlite3.IntegrityError:
                return False
            return True

    def _prune(self) -> int:
        self._pruned_at = now = self.clock()
        return self._db.execute("DELETE FROM intent_uses WHERE exp < ?", (int(now - GRACE_S),)).rowcount

    def prune(self) -> int:
        """Forget jtis whose intents expired more than ``GRACE_S`` ago; how many were forgotten."""
        with self._lock:
            return self._prune()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class StoreReplay:
    """Used jtis in m2a's store (``intent_uses``): one insert per intent, atomic across every
    process sharing the store (SQLite or PostgreSQL); a duplicate key means replayed.

    By default each consume takes a connection from the engine's pool (and gives it back): nothing
    to close. ``hold=True`` keeps one autocommit connection for consumes instead (one round trip
    each, no pool checkout, ping or BEGIN/COMMIT; consumes in this process take turns on it): call
    ``close()`` (or use ``async with``) before the engine is disposed. A held connection that fails
    is dropped and the insert tried once more on a new one; an insert whose first try did commit
    is then refused as replayed, which fails closed.
    """

    def __init__(self, engine: AsyncEngine, clock: Any = time.time, *, hold: bool = False) -> None:
        self.engine = engine
        self.clock = clock
        self.hold = hold
        self._conn: AsyncConnection | None = None
        self._lock = asyncio.Lock()

    async def consume(self, jti: str, audience: str, exp: int) -> bool:
        """Record ``jti`` as consumed by ``audience``; False when any process consumed it before."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        row = {
            "jti": jti,
            "audience": audience,
            "consumed_at": now,
            "expires_at": datetime.fromtimestamp(exp, UTC),
        }
        if self.hold:
            return await self._held_insert(row)
        try:
            async with self.engine.begin() as conn:
                await conn.execute(_INSERT, row)
        except IntegrityError:
            return False
        return True

    async def _held_insert(self, row: dict[str, Any]) -> bool:
        async with self._lock:
            for attempt in range(2):
                if self._conn is None:
                    self._conn = await self.engine.connect()
                    await self._conn.execution_options(isolation_level="AUTOCOMMIT")
                try:
                    await self._conn.execute(_INSERT, row)
                    return True
                except IntegrityError:
                    return False
                except DBAPIError:
                    await self._drop()
                    if attempt == 1:
                        raise
                except BaseException:
                    await self._drop()
                    raise
        raise AssertionError("unreachable")

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
                await conn.close()

    async def close(self) -> None:
        """Give the held connection back (hold=True); consumes after this open a new one."""
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()

    async def __aenter__(self) -> StoreReplay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def prune(self) -> int:
        """Delete the jtis whose intents expired more than ``GRACE_S`` ago; how many."""
        cutoff = datetime.fromtimestamp(self.clock() - GRACE_S, UTC)
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(IntentUseRow).where(IntentUseRow.expires_at < cutoff))
        return int(result.rowcount or 0)


def _replayed(intent: Intent) -> IntentError:
    return IntentError("replayed", f"intent {intent.jti} was used before")


async def admit(
    token: str,
    arguments: Any = NOT_GIVEN,
    *,
    jwks: dict[str, Any] | JwksSource,
    audience: str,
    issuer: str | None,
    replay: StoreReplay | ReplayCache,
    now: float | None = None,
    leeway_s: int = 5,
) -> Intent:
    """Verify the intent for this executor (``audience``) and consume it: the claims to act on, or
    ``IntentError`` (``replayed`` for a second admission). Verification failures consume nothing.

    ``replay``: a ``StoreReplay`` (awaited) or a sync ``ReplayCache``. A JWKS read runs off the loop.
    """
    intent = await averify_intent(
        token, jwks, audience=audience, issuer=issuer, arguments=arguments, now=now, leeway_s=leeway_s
    )
    if inspect.iscoroutinefunction(replay.consume):
        fresh = await replay.consume(intent.jti, intent.aud, intent.exp)
    else:
        fresh = replay.consume(intent.jti, intent.exp)  # type: ignore[call-arg]
    if not fresh:
        raise _replayed(intent)
    return intent


def admit_sync(
    token: str,
    arguments: Any = NOT_GIVEN,
    *,
    jwks: dict[str, Any] | JwksSource,
    audience: str,
    issuer: str | None,
    replay: ReplayCache,
    now: float | None = None,
    leeway_s: int = 5,
) -> Intent:
    """``admit`` for sync executors, with a sync ``ReplayCache``."""
    intent = verify_intent(
        token, jwks, audience=audience, issuer=issuer, arguments=arguments, now=now, leeway_s=leeway_s
    )
    if not replay.consume(intent.jti, intent.exp):
        raise _replayed(intent)
    return intent
