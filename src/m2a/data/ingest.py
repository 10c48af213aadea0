"""Ingestion: the durable queue that turns a file attached to a vector store into searchable chunks.

The queue is the ``vector_store_files`` table (``m2a.store.data``): attaching a file writes its row
``in_progress`` with a new attempt number and hands ``(store, file, attempt)`` to this process's
workers (asyncio tasks). A job reads the file's bytes, parses them (``parse``), chunks the text
(``chunking``), embeds the chunks through the ``Embedder`` it was given (the gateway's own
``/v1/embeddings``, so embeddings are routed, metered and counted against the owning team), and
replaces the file's chunks in the backend at once (``VectorBackend.add``); only then is the row
marked ``completed`` with its ``usage_bytes``. Any failure marks it ``failed`` with ``last_error``
``{"code": "unsupported_file" | "invalid_file" | "insufficient_quota" | "server_error",
"message": ...}``: nothing here
raises to a caller.

**The lease.** A job first claims its row for this process (``lease_owner``, ``lease_until``:
``LEASE_S`` ahead) and renews it while it works (``LEASE_S / 3``); only the process holding the
lease may finish the row. So gateways sharing one store (PostgreSQL) never work the same file at
once, and one never re-queues another's live job: ``start()`` — and a sweep every ``LEASE_S / 2``
— queue only rows nobody leases, or whose lease ran out (the process that held it died or hangs).
A recovered job deletes that file's chunks from the backend before it starts again, so no file is
half indexed and reported completed. A job that finds its lease taken over stops without touching
the chunks (they are the new holder's now).

**Storage.** Before a file's chunks are embedded (its text's bytes), and again before they are
written (text and vectors: what ``usage_bytes`` will count), the job reserves those bytes of its
team's ``storage_bytes`` quota (``DataStore.reserve``, serialised per team), or the file fails with
``last_error`` ``insufficient_quota`` (no tokens spent on a file that cannot be kept). Files ingested
at once, by one process or several, count each other's reservations: together they never pass the
quota.

**Expiry.** Each sweep also marks the stores past their ``expires_at`` expired (``expire_due``) and
drops their chunks from the backend.

A job checks between embedding batches that its row is still its attempt and in progress; a file
detached, deleted or cancelled meanwhile, or a store deleted, ends the job without a trace (its
chunks removed).

It may import ``m2a.data``, ``m2a.store``; never the gateway (the embedder is passed in).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from m2a.data.chunking import ApproxTokenizer, ChunkingError, Tokenizer, chunk, chunking_strategy
from m2a.data.files import FileBlobs
from m2a.data.parse import ParseError, ParseLimits, parse
from m2a.data.stores.base import ChunkRecord, DimensionMismatch, StoreNotFound, VectorBackend, record_bytes
from m2a.store.data import DataStore

log = logging.getLogger("m2a.data.ingest")

EMBED_BATCH = 64  # chunks per embeddings request
LEASE_S = 60.0  # a job's lease on its row; renewed every third of it while the job runs


class EmbedError(Exception):
    """The embeddings call failed; ``message`` is safe to show as a file's ``last_error``."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# (team_id, texts) -> one vector per text, in order; raises EmbedError.
Embedder = Callable[[int, Sequence[str]], Awaitable[list[list[float]]]]


@dataclass(frozen=True, slots=True)
class Job:
    store_id: str
    file_id: str
    attempt: int
    recovered: bool = False  # queued from the store (a dead process's, or never started): chunks may be stale


class _Gone(Exception):
    """The job's row changed under it (detached, cancelled, re-attached, store deleted)."""


class _OverQuota(Exception):
    """The file would take the team's vector stores past their ``storage_bytes`` quota."""


class _Lost(Exception):
    """Another process holds the job's lease now (this one was too slow to renew it): leave it be."""


def _error(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message[:1000]}


class Ingestor:
    def __init__(
        self,
        rows: DataStore,
        backend: VectorBackend,
        blobs: FileBlobs,
        embed: Embedder,
        *,
        workers: int = 2,
        tokenizer: Tokenizer | None = None,
        limits: ParseLimits | None = None,
        batch: int = EMBED_BATCH,
        lease_s: float = LEASE_S,
    ) -> None:
        self.owner = secrets.token_hex(16)  # this process's name on the leases it takes
        self.lease_s = lease_s
        self.rows = rows
        self.backend = backend
        self.blobs = blobs
        self.embed = embed
        self.tokenizer = tokenizer or ApproxTokenizer()
        self.limits = limits or ParseLimits()
        self.batch = batch
        self._n = workers
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._queued: set[tuple[str, str, int]] = set()  # jobs queued or running here

    async def start(self) -> None:
        """Queue what no live process works (a dead one's jobs: their chunks dropped first), then work,
        sweeping for more every half lease."""
        await self.sweep()
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._n)]
        self._workers.append(asyncio.create_task(self._sweeper()))

    async def sweep(self) -> int:
        """Drop the chunks of stores that expired; queue the jobs nobody leases (not already queued
        here): how many."""
        for store_id in await self.rows.expire_due():
            with contextlib.suppress(StoreNotFound):
                await self.backend.delete_store(store_id)
            log.info("vector store %s expired: its chunks are dropped", store_id)
        n = 0
        for row in await self.rows.unleased():
            if (row.vector_store_id, row.file_id, row.attempt) not in self._queued:
                self.submit(row.vector_store_id, row.file_id, row.attempt, recovered=True)
                n += 1
        return n

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 2)
            try:
                await self.sweep()
            except Exception:  # the store is away: the next sweep tries again
                log.exception("the ingestion sweep failed")

    def submit(self, store_id: str, file_id: str, attempt: int, *, recovered: bool = False) -> None:
        self._queued.add((store_id, file_id, attempt))
        self._queue.put_nowait(Job(store_id, file_id, attempt, recovered))

    async def idle(self) -> None:
        """Wait until every queued job is done (tests, and a graceful drain)."""
        await self._queue.join()

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self.run(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # run() handles its own failures; this is a bug: keep the worker alive
                log.exception("ingestion job %s/%s crashed", job.store_id, job.file_id)
            finally:
                self._queued.discard((job.store_id, job.file_id, job.attempt))
                self._queue.task_done()

    async def _check(self, job: Job) -> None:
        if await self.rows.renew(job.store_id, job.file_id, job.attempt, self.owner, self.lease_s):
            return
        if await self.rows.job(job.store_id, job.file_id, job.attempt) is None:
            raise _Gone
        raise _Lost

    async def _heartbeat(self, job: Job) -> None:
        """Renew the lease while a long step (parsing, embedding, writing) runs."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            with contextlib.suppress(Exception):  # a failed renewal shows at the next _check
                await self.rows.renew(job.store_id, job.file_id, job.attempt, self.owner, self.lease_s)

    async def run(self, job: Job) -> None:
        """One job, start to end: completed, failed, or (its row gone) nothing left behind; nothing at
        all when another process holds its lease."""
        if not await self.rows.claim(job.store_id, job.file_id, job.attempt, self.owner, self.lease_s):
            return  # finished, changed, or another live process works it
        row = await self.rows.job(job.store_id, job.file_id, job.attempt)
        if row is None:
            return
        heartbeat = asyncio.create_task(self._heartbeat(job))
        try:
            await self._run(job, row)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _run(self, job: Job, row: Any) -> None:
        if job.recovered:  # a dead process may have left this file's chunks half written
            with contextlib.suppress(StoreNotFound):
                await self.backend.delete_file(job.store_id, job.file_id)
        usage = 0
        error: dict[str, str] | None = None
        try:
            files = await self.rows.files_by_id(row.team_id, [job.file_id])
            meta = files.get(job.file_id)
            if meta is None:
                raise _Gone
            try:
                data = await asyncio.to_thread(self.blobs.read, row.team_id, job.file_id)
            except FileNotFoundError:
                raise ParseError("the file's content is missing") from None
            parsed = await asyncio.to_thread(parse, data, meta.filename, None, self.limits)
            strategy = chunking_strategy(json.loads(row.chunking_strategy))
            chunks = await asyncio.to_thread(chunk, parsed.text, self.tokenizer, strategy)
            await self._fits(job, row.team_id, sum(record_bytes(c.text, 0) for c in chunks))
            vectors: list[list[float]] = []
            for i in range(0, len(chunks), self.batch):
                await self._check(job)
                part = chunks[i : i + self.batch]
                got = await self.embed(row.team_id, [c.text for c in part])
                if len(got) != len(part):
                    raise EmbedError(f"the embeddings answer held {len(got)} vectors for {len(part)} chunks")
                vectors.extend(got)
            await self._check(job)
            records = [
                ChunkRecord(c.index, c.start, c.end, c.text, v) for c, v in zip(chunks, vectors, strict=True)
            ]
            await self._fits(job, row.team_id, sum(record_bytes(r.text, len(r.vector)) for r in records))
            usage = await self.backend.add(job.store_id, job.file_id, records, json.loads(row.attributes))
        except _Gone:
            await self._discard(job)
            return
        except _Lost:
            log.warning(
                "ingestion of %s into %s: another process took the job over", job.file_id, job.store_id
            )
            return
        except ParseError as exc:
            msg = str(exc)
            code = "unsupported_file" if msg.startswith("unsupported file type") else "invalid_file"
            error = _error(code, msg)
        except ChunkingError as exc:
            error = _error("invalid_file", str(exc))
        except _OverQuota as exc:
            error = _error("insufficient_quota", str(exc))
        except EmbedError as exc:
            error = _error("server_error", exc.message)
        except DimensionMismatch as exc:
            error = _error("server_error", f"the embedding does not fit this vector store: {exc}")
        except StoreNotFound:
            await self._discard(job)
            return
        except Exception:
            log.exception("ingestion of %s into %s failed", job.file_id, job.store_id)
            error = _error("server_error", "an internal error stopped the ingestion; it has been logged")
        if error is not None:
            if not await self.rows.finish(
                job.store_id, job.file_id, job.attempt, "failed", 0, error, owner=self.owner
            ):
                await self._lost_or_discard(job)
            return
        if await self.rows.finish(
            job.store_id, job.file_id, job.attempt, "completed", usage, owner=self.owner
        ):
            await self._settle_usage(job.store_id)
        else:  # detached, cancelled or re-attached while the chunks went in (or taken over)
            await self._lost_or_discard(job)

    async def _fits(self, job: Job, team_id: int, needed: int) -> None:
        """Reserve ``needed`` bytes of the team's storage for the job, or fail it (over quota)."""
        full = await self.rows.reserve(job.store_id, job.file_id, job.attempt, self.owner, team_id, needed)
        if full is not None:
            used, limit = full
            raise _OverQuota(
                f"This file needs {needed} bytes of vector storage and the team's stores hold or reserve "
                f"{used} of their storage_bytes quota of {limit}: delete files or stores, or ask an admin "
                "for more."
            )

    async def _lost_or_discard(self, job: Job) -> None:
        holder = await self.rows.lease_of(job.store_id, job.file_id, job.attempt)
        if holder is not None and holder != self.owner:
            log.warning(
                "ingestion of %s into %s: another process took the job over", job.file_id, job.store_id
            )
            return  # its chunks are the new holder's
        await self._discard(job)

    async def _discard(self, job: Job) -> None:
        """Remove what this job may have written, unless a newer attempt owns the file now."""
        if not await self.rows.store_exists(job.store_id):
            with contextlib.suppress(StoreNotFound):
                await self.backend.delete_store(job.store_id)
            return
        state = await self.rows.file_state(job.store_id, job.file_id)
        # detached, or this very attempt cancelled: its chunks go. Not when another process finished
        # this attempt (completed, failed: the chunks are its), nor when a newer attempt owns the file.
        if state is None or (state[0] == job.attempt and state[1] in ("cancelled", "in_progress")):
            with contextlib.suppress(StoreNotFound):
                await self.backend.delete_file(job.store_id, job.file_id)
        await self._settle_usage(job.store_id)

    async def _settle_usage(self, store_id: str) -> None:
        try:
            usage = await self.backend.usage_bytes(store_id)
        except StoreNotFound:
            usage = 0
        await self.rows.touch_store(store_id, usage)
