"""The ingestion lease: gateways sharing one store (SQLite here, PostgreSQL too) never work the same
file at once, never re-queue each other's live jobs, take over a dead one's after its lease runs
out, and a process whose job was taken over leaves the new holder's chunks alone.

Real stores (``tests/db_fixtures.py``: SQLite and a throwaway PostgreSQL database), a real SQLite
vector backend on disk, real files; the embedder is a deterministic hash (the test is about the
queue, not the vectors) that can be held to freeze a job mid-way.
"""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.data.files import FileBlobs
from m2a.data.ingest import Ingestor
from m2a.data.stores import build_backend
from m2a.store.data import DataStore
from m2a.store.identity import IdentityStore
from m2a.store.schema import VectorStoreFileRow
from tests.data_fixtures import STRATEGY, Embedder
from tests.db_fixtures import Database, database  # noqa: F401

pytestmark = pytest.mark.asyncio(loop_scope="session")
TEXT = b"Refunds are paid within 14 days. " * 40
WAIT_S = 30.0
FILE = "file-" + "ab" * 12


@pytest.fixture
async def setup(database: Database, tmp_path: Path):  # noqa: F811
    engine = await database.open()
    ids = IdentityStore(engine)
    await ids.create_team("team-a")
    key = (await ids.create_key("team-a", "k"))[0]
    team_id = (await ids.lookup(key)).team_id
    rows = DataStore(engine)
    blobs = FileBlobs(tmp_path / "files")
    await asyncio.to_thread(blobs.write, team_id, FILE, io.BytesIO(TEXT), 1 << 20)
    await rows.add_file(FILE, team_id, "refunds.txt", "assistants", len(TEXT))
    vs = await rows.create_store(team_id, "s", {}, None)
    backend = build_backend("sqlite", path=tmp_path / "vectors.db")
    await backend.create_store(vs.id)
    row = await rows.attach(team_id, vs.id, FILE, {}, STRATEGY)
    try:
        yield engine, rows, blobs, backend, vs.id, row.attempt
    finally:
        await backend.close()


def ingestor(rows: DataStore, backend, blobs: FileBlobs, embed: Embedder, lease_s: float = 60.0) -> Ingestor:
    return Ingestor(rows, backend, blobs, embed, workers=1, lease_s=lease_s, batch=4)


async def status(rows: DataStore, store_id: str) -> str:
    (row,) = [r for r in await rows.in_progress() if r.vector_store_id == store_id] or [None]
    return "in_progress" if row is not None else "done"


async def steal(engine: AsyncEngine, store_id: str, owner: str, seconds: float = 600.0) -> None:
    """Another process takes the lease (as after this one missed its renewals)."""
    async with engine.begin() as conn:
        await conn.execute(
            update(VectorStoreFileRow)
            .where(VectorStoreFileRow.vector_store_id == store_id)
            .values(lease_owner=owner, lease_until=datetime.now(UTC) + timedelta(seconds=seconds))
        )


async def test_two_processes_work_a_file_once(setup) -> None:
    engine, rows, blobs, backend, store_id, attempt = setup
    a_embed, b_embed = Embedder(), Embedder()
    a, b = ingestor(rows, backend, blobs, a_embed), ingestor(rows, backend, blobs, b_embed)
    a_embed.hold.clear()
    a.submit(store_id, FILE, attempt)
    b.submit(store_id, FILE, attempt)
    await a.start()
    await asyncio.wait_for(a_embed.entered.wait(), WAIT_S)  # a holds the lease, mid-job
    await b.start()  # b's start sweeps nothing (a's lease is live) and its own copy finds it leased
    assert await b.sweep() == 0
    await asyncio.wait_for(b.idle(), WAIT_S)
    assert b_embed.calls == 0
    a_embed.hold.set()
    await asyncio.wait_for(a.idle(), WAIT_S)
    await a.close()
    await b.close()
    assert await status(rows, store_id) == "done"
    assert await backend.file_ids(store_id) == [FILE]


async def test_a_dead_process_job_is_taken_over_when_its_lease_runs_out(setup) -> None:
    engine, rows, blobs, backend, store_id, attempt = setup
    await steal(engine, store_id, "a-dead-process", seconds=0.5)  # it claimed the job, then died
    embed = Embedder()
    live = ingestor(rows, backend, blobs, embed, lease_s=1.0)
    assert await live.sweep() == 0  # the lease is live yet: not queued
    await asyncio.sleep(0.6)
    await live.start()  # its sweep (at start, then every half lease) finds the lease run out
    async with asyncio.timeout(WAIT_S):
        while await status(rows, store_id) != "done":
            await asyncio.sleep(0.05)
    await live.idle()
    await live.close()
    assert embed.calls > 0 and await backend.file_ids(store_id) == [FILE]


async def test_a_process_whose_job_was_taken_over_leaves_the_chunks_alone(setup) -> None:
    engine, rows, blobs, backend, store_id, attempt = setup
    slow_embed = Embedder()
    slow_embed.hold.clear()
    slow = ingestor(rows, backend, blobs, slow_embed)
    slow.submit(store_id, FILE, attempt)
    await slow.start()
    await asyncio.wait_for(slow_embed.entered.wait(), WAIT_S)
    # It hung past its lease; another process takes the job over and finishes it.
    await steal(engine, store_id, "x", seconds=-1)  # ran out
    fast = ingestor(rows, backend, blobs, Embedder())
    await fast.start()
    async with asyncio.timeout(WAIT_S):
        while await status(rows, store_id) != "done":
            await asyncio.sleep(0.05)
    await fast.idle()
    chunks_before = await backend.usage_bytes(store_id)
    assert chunks_before > 0
    slow_embed.hold.set()  # the slow one wakes up: its row is done by another, its lease gone
    await asyncio.wait_for(slow.idle(), WAIT_S)
    await slow.close()
    await fast.close()
    assert await backend.file_ids(store_id) == [FILE]  # not deleted by the slow one
    assert await backend.usage_bytes(store_id) == chunks_before


async def test_a_lease_taken_mid_job_stops_the_old_holder_without_finishing(setup) -> None:
    engine, rows, blobs, backend, store_id, attempt = setup
    embed = Embedder()
    embed.hold.clear()
    old = ingestor(rows, backend, blobs, embed)
    old.submit(store_id, FILE, attempt)
    await old.start()
    await asyncio.wait_for(embed.entered.wait(), WAIT_S)
    await steal(engine, store_id, "new-holder")  # a live lease of another process
    embed.hold.set()
    await asyncio.wait_for(old.idle(), WAIT_S)
    await old.close()
    assert await status(rows, store_id) == "in_progress"  # the old holder did not finish it
    assert await rows.lease_of(store_id, FILE, attempt) == "new-holder"
    assert await backend.file_ids(store_id) == []  # and wrote nothing
