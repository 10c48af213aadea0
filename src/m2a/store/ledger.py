"""The usage ledger: one record per request, crash-safe, written to the database in batches.

Each gateway process appends to its own journal file (JSON lines, one ``write`` per line, so a
line is whole even if the process is killed): a *begin* line before the request goes to an engine
and an *end* line before the client gets the last byte of the answer. A background task upserts
finished records into the ``usage`` table every ``flush_s``. The journal is locked while its
process lives; at start, and every few seconds, each process reads the journals of dead processes:
finished records are stored, and requests that began but never ended are stored as
``interrupted``. Upserts by request id make a replay harmless.

A stream also writes *progress* lines (output tokens relayed so far) as it goes, so a request cut
off by a dying gateway is still billed for what the client received: its prompt (the estimate in
the begin line) and the relayed tokens, priced with the prices the begin line carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.store import usage_daily
from m2a.store.schema import Usage

log = logging.getLogger("m2a.store.ledger")

BEGIN_FIELDS = ("team", "team_id", "key_id", "key_prefix", "model", "route", "priority", "stream", "agent")
END_FIELDS = (
    "status",
    "http_status",
    "replica",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "ttft_ms",
    "duration_ms",
    "cost",
)
ROTATE_BYTES = 8 << 20
# Made once: json.dumps with separators builds a new encoder on every call.
_compact = json.JSONEncoder(separators=(",", ":")).encode
PROGRESS_EVERY_S = 0.5  # a stream's relayed tokens are written to the journal at most this often


def price_of(begin: dict[str, Any], input_tokens: int, output_tokens: int) -> float | None:
    """Dollars for the tokens at the prices a begin line carries (``[input, output]`` per 1M)."""
    price = begin.get("price")
    if not isinstance(price, list) or len(price) < 2:
        return None
    return (input_tokens * float(price[0]) + output_tokens * float(price[1])) / 1e6


def _row(begin: dict[str, Any], end: dict[str, Any] | None, relayed: int = 0) -> dict[str, Any]:
    """The ledger row of a begin line, its end line (None: cut off), and the tokens ``relayed``."""
    row = {f: begin.get(f) for f in BEGIN_FIELDS}
    row["request_id"] = begin["id"]
    row["started_at"] = datetime.fromtimestamp(begin["at"], UTC)
    row["finished_at"] = datetime.fromtimestamp(end["at"], UTC) if end else None
    for f in END_FIELDS:
        row[f] = end.get(f) if end else None
    if end is None or (row["status"] == "interrupted" and not row["output_tokens"]):
        # Cut off (the gateway died, or is stopping): bill what reached the client.
        row["status"] = "interrupted"
        if relayed:
            row["input_tokens"] = int(begin.get("input_estimate") or 0)
            row["output_tokens"] = relayed
            row["cost"] = price_of(begin, row["input_tokens"], relayed)
    for f in ("input_tokens", "output_tokens", "cached_tokens"):
        row[f] = row[f] or 0
    row["key_prefix"] = row["key_prefix"] or ""
    row["stream"] = bool(row["stream"])
    return row


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Every request a journal holds, as ledger rows (interrupted where no end line exists)."""
    begins: dict[str, dict[str, Any]] = {}
    ends: dict[str, dict[str, Any]] = {}
    relayed: dict[str, int] = {}
    with path.open("rb") as f:
        for line in f:
            try:
                entry = json.loads(line)
                kind, rid = entry.get("t"), entry["id"]
            except (ValueError, KeyError, AttributeError):  # a torn last line: the process died writing it
                continue
            if kind == "b":
                begins[rid] = entry
            elif kind == "p":
                relayed[rid] = max(relayed.get(rid, 0), int(entry.get("out") or 0))
            else:
                ends[rid] = entry
    return [_row(b, ends.get(rid), relayed.get(rid, 0)) for rid, b in begins.items()]


class Ledger:
    close_grace_s = 5.0  # how long close() waits for a flush under way before cancelling it

    def __init__(self, engine: AsyncEngine, directory: Path, flush_s: float = 0.25) -> None:
        self.engine = engine
        self.directory = directory
        self.flush_s = flush_s
        self._open: dict[str, dict[str, Any]] = {}  # begun, not ended
        self._relayed: dict[str, int] = {}  # output tokens relayed so far, of open streams
        self._noted_at: dict[str, float] = {}  # when each open request's progress was last written
        self._done: list[dict[str, Any]] = []  # ended, not yet in the database
        self._fd = -1
        self._path: Path | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()  # close() asks the flush task to stop between flushes
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    # -- the journal ---------------------------------------------------------------------------

    def _open_journal(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"journal-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while this process lives
        self._fd, self._path = fd, path

    def _write(self, entry: dict[str, Any]) -> None:
        os.write(self._fd, _compact(entry).encode() + b"\n")

    def begin(self, request_id: str, **fields: Any) -> None:
        """Record that a request is going to an engine (call before sending it)."""
        entry = {"t": "b", "id": request_id, "at": time.time(), **fields}
        self._write(entry)
        self._open[request_id] = entry
        self._noted_at[request_id] = time.monotonic()

    def progress(self, request_id: str, output_tokens: int) -> None:
        """Note the output tokens relayed so far (a stream calls this with each piece it relays).

        Kept in memory at once (a clean stop bills it); written to the journal at most every
        ``PROGRESS_EVERY_S`` per request, so a fast stream costs no extra write and a killed gateway
        bills all but the last fraction of a second of a long one."""
        if output_tokens <= self._relayed.get(request_id, 0) or request_id not in self._open:
            return
        self._relayed[request_id] = output_tokens
        now = time.monotonic()
        if now - self._noted_at.get(request_id, 0.0) >= PROGRESS_EVERY_S:
            self._noted_at[request_id] = now
            self._write({"t": "p", "id": request_id, "out": output_tokens})

    def end(self, request_id: str, **fields: Any) -> None:
        """Record how a begun request ended (call before the client gets the last byte)."""
        begin = self._open.pop(request_id, None)
        relayed = self._relayed.pop(request_id, 0)
        self._noted_at.pop(request_id, None)
        if begin is None:
            return
        entry = {"t": "e", "id": request_id, "at": time.time(), **fields}
        self._write(entry)
        self._done.append(_row(begin, entry, relayed))

    @property
    def in_flight(self) -> int:
        return len(self._open)

    # -- the database --------------------------------------------------------------------------

    async def _upsert(self, rows: list[dict[str, Any]]) -> None:
        """Store rows, and keep the daily rollup equal to them in the same transaction: a new request
        id is inserted; one stored already (a replayed journal) replaces its row, and the rollup
        takes the old row out before adding the new one (``usage_daily``)."""
        if not rows:
            return
        rows = list({r["request_id"]: r for r in rows}.values())  # one row per request, the last
        stmt = self._insert(Usage)
        update = {c: stmt.excluded[c] for c in rows[0] if c != "request_id"}
        upsert = stmt.on_conflict_do_update(index_elements=["request_id"], set_=update)
        fresh = stmt.on_conflict_do_nothing(index_elements=["request_id"]).returning(Usage.request_id)
        async with self.engine.begin() as conn:
            for i in range(0, len(rows), 500):
                chunk = rows[i : i + 500]
                inserted = set((await conn.execute(fresh, chunk)).scalars())
                again = [r for r in chunk if r["request_id"] not in inserted]
                old = await usage_daily.old_rows(conn, [r["request_id"] for r in again])
                if again:
                    await conn.execute(upsert, again)
                await usage_daily.add(conn, chunk, old)

    async def flush(self) -> int:
        """Write finished records to the database; how many."""
        rows, self._done = self._done, []
        try:
            await self._upsert(rows)
        except BaseException:  # a database error, or a cancelled flush (shutdown): keep them
            self._done = rows + self._done  # the journal still has them; try again next time
            raise
        if self._path is not None and not self._done and self._path.stat().st_size > ROTATE_BYTES:
            self._rotate()
        return len(rows)

    def _rotate(self) -> None:
        """A fresh journal holding only the open requests; the old one is fully in the database."""
        old_fd, old_path = self._fd, self._path
        self._open_journal()
        for entry in self._open.values():
            self._write(entry)
            if entry["id"] in self._relayed:
                self._write({"t": "p", "id": entry["id"], "out": self._relayed[entry["id"]]})
        assert old_path is not None
        old_path.unlink()
        os.close(old_fd)

    async def recover(self) -> int:
        """Store the records of journals whose process is gone; how many records."""
        count = 0
        for path in sorted(self.directory.glob("journal-*.jsonl")):
            if path == self._path:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its process is alive
                os.close(fd)
                continue
            try:
                if os.fstat(fd).st_nlink == 0:  # another process recovered it while we waited
                    continue
                rows = read_journal(path)
                await self._upsert(rows)
                path.unlink(missing_ok=True)
                count += len(rows)
                interrupted = sum(r["status"] == "interrupted" for r in rows)
                log.warning(
                    "ledger: recovered %d records (%d interrupted) from %s", len(rows), interrupted, path.name
                )
            finally:
                os.close(fd)
        return count

    async def _run(self) -> None:
        last_recover = time.monotonic()
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.flush_s)
            if self._closing.is_set():
                return
            try:
                await self.flush()
                if time.monotonic() - last_recover > 5:
                    last_recover = time.monotonic()
                    await self.recover()
            except Exception:  # the database may blip: the journal keeps everything meanwhile
                log.warning("ledger: could not write usage records", exc_info=True)

    async def start(self) -> int:
        self._open_journal()
        recovered = await self.recover()
        self._task = asyncio.create_task(self._run())
        return recovered

    async def close(self) -> None:
        """Final flush; requests still open are recorded as interrupted."""
        if self._task:
            # A flush under way is given time to finish first: one cut off inside its transaction
            # could keep SQLite's write lock (the driver's thread goes on) while the final flush
            # below waits for it. One that overruns (a database that hangs) is cancelled: the final
            # flush then tries again, and failing that the journal keeps the records.
            self._closing.set()
            done, _ = await asyncio.wait({self._task}, timeout=self.close_grace_s)
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task})  # a cancellation of close() itself still propagates
        for rid in list(self._open):
            self.end(rid, status="interrupted")
        try:
            await self.flush()
        except Exception:
            log.warning("ledger: final write failed; the journal stays for the next start", exc_info=True)
            os.close(self._fd)
            return
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        os.close(self._fd)
