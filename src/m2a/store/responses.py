"""The Responses API's stored responses: one row per response, read and written per owner.

A row holds the Response object as the client saw it, its input items (with their ids, for
``GET /v1/responses/{id}/input_items``) and the chat messages of the whole conversation up to and
including it (``history``): continuing with ``previous_response_id`` reads that one row, whatever
the chain's length, and a chain never breaks when an earlier response expires or is deleted. The
price is that each row repeats its conversation so far; the gateway bounds a conversation by its
request-size limit, so a row is bounded too.

Every read takes the caller's ``owner`` (``gateway.responses_api.owner_of``: one API key, or one
agent acting for one subject): another owner's row is not found, exactly like a missing one. A row
past its ``expires_at`` is not found either, before it is pruned (``prune``, run periodically by the
gateway; every gateway sharing the store may run it, deleting is idempotent).

Three implementations of one interface: ``SQLResponses`` (the identity store's engine: PostgreSQL,
or SQLite), ``SQLiteResponses`` (the same table in the store's SQLite file through the ``sqlite3``
module on a thread of its own — what a gateway on SQLite uses: a write took about 2 ms through
SQLAlchemy's async engine and aiosqlite here, and a response is written on the request path) and
``MemoryResponses`` (a gateway without a database: bounded by count and bytes, oldest evicted
first, lost on restart).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from m2a.store.schema import StoredResponse

PRUNE_BATCH = 1000


def now() -> datetime:
    return datetime.now(UTC)


def _aware(t: datetime) -> datetime:
    """SQLite hands timezone-aware columns back naive (in UTC)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Record:
    """One response to store."""

    id: str
    owner: str
    team_id: int | None
    key_id: int | None
    agent: str | None
    model: str
    status: str
    previous_id: str | None
    created_at: datetime
    expires_at: datetime
    body: dict[str, Any]
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]
    conversation_id: str | None = None  # the first response of its chain (None: this one)

    def size(self) -> int:
        """Bytes of its JSON parts, as stored (what the in-memory store counts)."""
        return len(_dumps(self.body)) + len(_dumps(self.input_items)) + len(_dumps(self.history))


FIELDS = ("body", "input_items", "history")


@dataclass(frozen=True)
class Found:
    """A stored response as read back: only the JSON parts asked for are set."""

    id: str
    model: str
    status: str
    created_at: datetime
    body: dict[str, Any] | None = None
    input_items: list[dict[str, Any]] | None = None
    history: list[dict[str, Any]] | None = None
    conversation_id: str | None = None  # the first response of its chain

    @property
    def conversation(self) -> str:
        return self.conversation_id or self.id


class ResponseStore(Protocol):
    async def put(self, rec: Record) -> None: ...

    async def get(self, response_id: str, owner: str, *fields: str) -> Found | None: ...

    async def delete(self, response_id: str, owner: str) -> bool: ...

    async def prune(self, at: datetime | None = None, batch: int = PRUNE_BATCH) -> int: ...


class SQLResponses:
    """Stored responses in the store's database (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    async def put(self, rec: Record) -> None:
        # Core, not the ORM: one insert on the request path, without a session's bookkeeping.
        values = {
            "id": rec.id,
            "owner": rec.owner,
            "team_id": rec.team_id,
            "key_id": rec.key_id,
            "agent": rec.agent,
            "model": rec.model,
            "status": rec.status,
            "previous_id": rec.previous_id,
            "conversation_id": rec.conversation_id,
            "created_at": rec.created_at,
            "expires_at": rec.expires_at,
            "body": _dumps(rec.body),
            "input_items": _dumps(rec.input_items),
            "history": _dumps(rec.history),
        }
        async with self.engine.begin() as conn:
            await conn.execute(insert(StoredResponse).values(**values))

    async def get(self, response_id: str, owner: str, *fields: str) -> Found | None:
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise ValueError(f"no such part of a stored response: {sorted(unknown)}")
        t = StoredResponse
        cols = [t.id, t.model, t.status, t.created_at, t.conversation_id, *(getattr(t, f) for f in fields)]
        q = select(*cols).where(t.id == response_id, t.owner == owner, t.expires_at > now())
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        if row is None:
            return None
        parts = {f: json.loads(row[5 + i]) for i, f in enumerate(fields)}
        return Found(row[0], row[1], row[2], _aware(row[3]), conversation_id=row[4], **parts)

    async def delete(self, response_id: str, owner: str) -> bool:
        t = StoredResponse
        q = delete(t).where(t.id == response_id, t.owner == owner, t.expires_at > now())
        async with self._session() as s, s.begin():
            result = await s.execute(q)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def prune(self, at: datetime | None = None, batch: int = PRUNE_BATCH) -> int:
        """Delete expired rows, ``batch`` per transaction (short locks); how many went."""
        at = at or now()
        t = StoredResponse
        total = 0
        while True:
            async with self._session() as s, s.begin():
                seqs = select(t.seq).where(t.expires_at <= at).limit(batch)
                result = await s.execute(delete(t).where(t.seq.in_(seqs.scalar_subquery())))
            n = int(result.rowcount or 0)  # type: ignore[attr-defined]
            total += n
            if n < batch:
                return total


_COLUMNS = (
    "id", "owner", "team_id", "key_id", "agent", "model", "status", "previous_id", "conversation_id",
    "created_at", "expires_at", "body", "input_items", "history",
)  # fmt: skip
_INSERT = f"INSERT INTO responses ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


def _sqlite_time(t: datetime) -> str:
    """A time as SQLAlchemy's SQLite DateTime stores it (UTC, microseconds): both paths compare alike."""
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _from_sqlite(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class SQLiteResponses:
    """Stored responses in the store's SQLite file, through ``sqlite3`` on one connection used by
    one thread of its own (statements in autocommit: each insert its own transaction; waits up to
    ``busy_s`` for another writer, in this or another process)."""

    def __init__(self, path: str, busy_s: float = 10.0) -> None:
        self.path = path
        self.busy_s = busy_s
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="m2a-responses")
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:  # in the thread only
        if self._conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_s, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conn = conn
        return self._conn

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def put(self, rec: Record) -> None:
        row = (
            rec.id, rec.owner, rec.team_id, rec.key_id, rec.agent, rec.model, rec.status, rec.previous_id,
            rec.conversation_id, _sqlite_time(rec.created_at), _sqlite_time(rec.expires_at),
            _dumps(rec.body), _dumps(rec.input_items), _dumps(rec.history),
        )  # fmt: skip
        await self._run(lambda: self._db().execute(_INSERT, row))

    async def get(self, response_id: str, owner: str, *fields: str) -> Found | None:
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise ValueError(f"no such part of a stored response: {sorted(unknown)}")
        cols = ", ".join(("id", "model", "status", "created_at", "conversation_id", *fields))
        q = f"SELECT {cols} FROM responses WHERE id = ? AND owner = ? AND expires_at > ?"
        args = (response_id, owner, _sqlite_time(now()))
        row = await self._run(lambda: self._db().execute(q, args).fetchone())
        if row is None:
            return None
        parts = {f: json.loads(row[5 + i]) for i, f in enumerate(fields)}
        return Found(row[0], row[1], row[2], _from_sqlite(row[3]), conversation_id=row[4], **parts)

    async def delete(self, response_id: str, owner: str) -> bool:
        q = "DELETE FROM responses WHERE id = ? AND owner = ? AND expires_at > ?"
        args = (response_id, owner, _sqlite_time(now()))
        return bool(await self._run(lambda: self._db().execute(q, args).rowcount))

    async def prune(self, at: datetime | None = None, batch: int = PRUNE_BATCH) -> int:
        """Delete expired rows, ``batch`` per transaction (short locks); how many went."""
        q = "DELETE FROM responses WHERE seq IN (SELECT seq FROM responses WHERE expires_at <= ? LIMIT ?)"
        args = (_sqlite_time(at or now()), batch)
        total = 0
        while True:
            n = int(await self._run(lambda: self._db().execute(q, args).rowcount))
            total += n
            if n < batch:
                return total

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._run(shut)
        self._thread.shutdown(wait=False)


class MemoryResponses:
    """Stored responses in this process only, for a gateway without a database: at most
    ``max_items`` responses and ``max_bytes`` of their JSON, the oldest evicted first."""

    def __init__(self, max_items: int = 1000, max_bytes: int = 64 << 20) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._rows: OrderedDict[str, tuple[Record, int]] = OrderedDict()
        self._bytes = 0

    async def put(self, rec: Record) -> None:
        size = rec.size()
        old = self._rows.pop(rec.id, None)
        if old is not None:
            self._bytes -= old[1]
        self._rows[rec.id] = (rec, size)
        self._bytes += size
        while self._rows and (len(self._rows) > self.max_items or self._bytes > self.max_bytes):
            _, (_, gone) = self._rows.popitem(last=False)
            self._bytes -= gone

    def _live(self, response_id: str, owner: str) -> Record | None:
        hit = self._rows.get(response_id)
        if hit is None or hit[0].owner != owner or hit[0].expires_at <= now():
            return None
        return hit[0]

    async def get(self, response_id: str, owner: str, *fields: str) -> Found | None:
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise ValueError(f"no such part of a stored response: {sorted(unknown)}")
        rec = self._live(response_id, owner)
        if rec is None:
            return None
        found = Found(rec.id, rec.model, rec.status, rec.created_at, conversation_id=rec.conversation_id)
        # Copies through JSON, as the database would give them: a caller's changes stay its own.
        return replace(found, **{f: json.loads(_dumps(getattr(rec, f))) for f in fields})

    async def delete(self, response_id: str, owner: str) -> bool:
        if self._live(response_id, owner) is None:
            return False
        _, size = self._rows.pop(response_id)
        self._bytes -= size
        return True

    async def prune(self, at: datetime | None = None, batch: int = PRUNE_BATCH) -> int:
        at = at or now()
        gone = [k for k, (rec, _) in self._rows.items() if rec.expires_at <= at]
        for k in gone:
            self._bytes -= self._rows.pop(k)[1]
        return len(gone)
