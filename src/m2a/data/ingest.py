"""Ingestion: the durable queue that turns a file attached to a vector store into searchable chunks.

The queue is the ``vector_store_files`` table (``m2a.store.data``): attaching a file writes its row
``in_progress`` with a new attempt number and hands ``(store, file, attempt)`` to this process's
workers (asyncio tasks). A job reads the file's bytes, parses them (``parse``), chunks the text
(``chunking``), embeds the chunks through the ``Embedder`` it was given (the gateway's own
``/v1/embeddings``, so embeddings are routed, metered and counted against the owning team), and
replaces the file's chunks in the backend at once (``VectorBackend.add``); only then is the row
marked ``completed`` with its ``usage_bytes``. Any failure marks it ``failed`` with ``last_error``
``{"code": "unsupported_file" | "invalid_file" | "server_error", "message": ...}``: nothing here
raises to a caller.

Restart: ``start()`` queues every row left ``in_progress`` (a gateway killed mid-job) again, after
deleting that file's chunks from the backend, so no file is half indexed and reported completed.
A job checks between embedding batches that its row is still its attempt and in progress; a file
detached, deleted or cancelled meanwhile, or a store deleted, ends the job without a trace (its
chunks removed). One gateway process works a queue; several processes on one database would each
re-queue the others' jobs at start-up (the PostgreSQL backend will need a lease for that).

It may import ``m2a.data``, ``m2a.store``; never the gateway (the embedder is passed in).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from m2a.data.chunking import ApproxTokenizer, ChunkingError, Tokenizer, chunk, chunking_strategy
from m2a.data.files import FileBlobs
from m2a.data.parse import ParseError, ParseLimits, parse
from m2a.data.stores.base import ChunkRecord, DimensionMismatch, StoreNotFound, VectorBackend
from m2a.store.data import DataStore

log = logging.getLogger("m2a.data.ingest")

EMBED_BATCH = 64  # chunks per embeddings request


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


class _Gone(Exception):
    """The job's row changed under it (detached, cancelled, re-attached, store deleted)."""


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
    ) -> None:
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

    async def start(self) -> None:
        """Queue again what a previous process left in progress (its chunks dropped first), then work."""
        for row in await self.rows.in_progress():
            with contextlib.suppress(StoreNotFound):
                await self.backend.delete_file(row.vector_store_id, row.file_id)
            self.submit(row.vector_store_id, row.file_id, row.attempt)
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._n)]

    def submit(self, store_id: str, file_id: str, attempt: int) -> None:
        self._queue.put_nowait(Job(store_id, file_id, attempt))

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
                self._queue.task_done()

    async def _check(self, job: Job) -> None:
        if await self.rows.job(job.store_id, job.file_id, job.attempt) is None:
            raise _Gone

    async def run(self, job: Job) -> None:
        """One job, start to end: completed, failed, or (its row gone) nothing left behind."""
        row = await self.rows.job(job.store_id, job.file_id, job.attempt)
        if row is None:
            return
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
            usage = await self.backend.add(job.store_id, job.file_id, records, json.loads(row.attributes))
        except _Gone:
            await self._discard(job)
            return
        except ParseError as exc:
            msg = str(exc)
            code = "unsupported_file" if msg.startswith("unsupported file type") else "invalid_file"
            error = _error(code, msg)
        except ChunkingError as exc:
            error = _error("invalid_file", str(exc))
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
            if not await self.rows.finish(job.store_id, job.file_id, job.attempt, "failed", 0, error):
                await self._discard(job)
            return
        if await self.rows.finish(job.store_id, job.file_id, job.attempt, "completed", usage):
            await self._settle_usage(job.store_id)
        else:  # detached, cancelled or re-attached while the chunks went in
            await self._discard(job)

    async def _discard(self, job: Job) -> None:
        """Remove what this job may have written, unless a newer attempt owns the file now."""
        if not await self.rows.store_exists(job.store_id):
            with contextlib.suppress(StoreNotFound):
                await self.backend.delete_store(job.store_id)
            return
        current = await self.rows.current_attempt(job.store_id, job.file_id)
        if current is None or current == job.attempt:
            with contextlib.suppress(StoreNotFound):
                await self.backend.delete_file(job.store_id, job.file_id)
        await self._settle_usage(job.store_id)

    async def _settle_usage(self, store_id: str) -> None:
        try:
            usage = await self.backend.usage_bytes(store_id)
        except StoreNotFound:
            usage = 0
        await self.rows.touch_store(store_id, usage)
