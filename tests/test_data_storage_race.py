"""A team's ``storage_bytes`` quota holds against ingestion jobs that run at once: each job reserves
its bytes under a per-team lock (``DataStore.reserve``), so jobs in one process or in several (two
engines on one database here: SQLite, and PostgreSQL, where the lock is the team's row) never take
more than the quota together. A completed job's bytes pass into its store's ``usage_bytes`` in the
same transaction that ends its reservation; a failed, re-attached or detached job holds nothing.

Real stores (``tests/db_fixtures.py``); the end-to-end check runs real ingestors with a SQLite vector
backend and a hash embedder held until every job has reserved (the test is about the quota).
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.data.files import FileBlobs
from m2a.data.ingest import Ingestor
from m2a.data.stores import build_backend
from m2a.store.data import DataStore
from m2a.store.identity import IdentityStore
from m2a.store.limits import NO_WINDOW, STORAGE
from m2a.store.quotas import QuotaStore
from m2a.store.schema import VectorStoreFileRow
from tests.data_fixtures import STRATEGY, Embedder
from tests.db_fixtures import Database, database  # noqa: F401

pytestmark = pytest.mark.asyncio(loop_scope="session")
WAIT_S = 30.0


async def team_with_files(rows: DataStore, ids: IdentityStore, n: int, blobs: FileBlobs | None = None):
    """A team, one vector store and ``n`` files attached to it (jobs in progress)."""
    await ids.create_team("team-q")
    key = (await ids.create_key("team-q", "k"))[0]
    team_id = (await ids.lookup(key)).team_id
    vs = await rows.create_store(team_id, "s", {}, None)
    return team_id, vs.id, await attach_files(rows, team_id, vs.id, range(n), blobs)


async def attach_files(
    rows: DataStore, team_id: int, store_id: str, numbers: range, blobs: FileBlobs | None = None
) -> list[tuple[str, str, int]]:
    jobs = []
    for i in numbers:
        file_id = f"file-{i:024x}"
        text = f"file {i}: refunds are paid within {i + 1:02d} days. ".encode() * 20  # all one size
        if blobs is not None:
            await asyncio.to_thread(blobs.write, team_id, file_id, io.BytesIO(text), 1 << 20)
        await rows.add_file(file_id, team_id, f"f{i}.txt", "assistants", len(text))
        row = await rows.attach(team_id, store_id, file_id, {}, STRATEGY)
        jobs.append((store_id, file_id, row.attempt))
    return jobs


async def test_jobs_at_once_never_reserve_past_the_quota(database: Database) -> None:  # noqa: F811
    one, two = await database.open(), await database.open()  # two processes' engines
    ids = IdentityStore(one)
    stores = [DataStore(one), DataStore(two)]
    team_id, store_id, jobs = await team_with_files(stores[0], ids, 8)
    await QuotaStore(one).set("team-q", [(STORAGE, NO_WINDOW, 1000)])
    owners = [f"owner-{i}" for i in range(len(jobs))]
    for (sid, fid, attempt), owner in zip(jobs, owners, strict=True):
        assert await stores[0].claim(sid, fid, attempt, owner, 60.0)

    async def reserve(i: int, needed: int) -> tuple[int, int] | None:
        sid, fid, attempt = jobs[i]
        return await stores[i % 2].reserve(sid, fid, attempt, owners[i], team_id, needed)

    got = await asyncio.gather(*(reserve(i, 300) for i in range(len(jobs))))
    won = [i for i, g in enumerate(got) if g is None]
    assert len(won) == 3, got  # 3 × 300 fit in 1000; a fourth would not
    assert all(g == (900, 1000) for g in got if g is not None)  # what the others hold, and the limit
    assert await stores[0].storage(team_id) == (900, 1000)

    # A job reserving again replaces what it held (its second check: text and vectors).
    assert await reserve(won[0], 350) is None
    assert await reserve(won[1], 500) == (650, 1000)  # 650 held by the others, 500 does not fit
    assert await stores[1].team_usage_bytes(team_id) == 950  # the refused one kept its 300
    # Someone else's job (another owner) reserves nothing.
    sid, fid, attempt = jobs[won[2]]
    assert await stores[0].reserve(sid, fid, attempt, "not-the-owner", team_id, 10**9) is None
    assert await stores[0].team_usage_bytes(team_id) == 950

    # Completed: its reservation becomes its store's usage_bytes, in one step.
    sid, fid, attempt = jobs[won[0]]
    assert await stores[0].finish(sid, fid, attempt, "completed", 340, owner=owners[won[0]])
    assert await stores[0].storage(team_id) == (940, 1000)
    # Failed: it holds nothing.
    sid, fid, attempt = jobs[won[1]]
    assert await stores[1].finish(sid, fid, attempt, "failed", 0, {"code": "x", "message": "y"})
    assert await stores[0].team_usage_bytes(team_id) == 640
    # Re-attached (a new attempt): the old attempt's reservation is gone with it.
    sid, fid, attempt = jobs[won[2]]
    again = await stores[0].attach(team_id, sid, fid, {}, STRATEGY)
    assert again.attempt == attempt + 1
    assert await stores[0].team_usage_bytes(team_id) == 340
    # The freed room goes to the jobs still waiting.
    late = [i for i in range(len(jobs)) if i not in won]
    got = await asyncio.gather(*(reserve(i, 300) for i in late))
    assert sum(g is None for g in got) == 2  # 340 + 2 × 300 = 940
    assert await stores[0].team_usage_bytes(team_id) == 940


async def file_rows(engine: AsyncEngine, store_id: str) -> dict[str, VectorStoreFileRow]:
    async with engine.connect() as conn:
        q = select(VectorStoreFileRow).where(VectorStoreFileRow.vector_store_id == store_id)
        found = await conn.execute(q)
        return {r.file_id: r for r in found}


async def test_files_ingested_at_once_by_two_processes_stay_within_the_quota(
    database: Database,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Five files at once, two ingestors on two engines, room for two and a half beside a first one:
    two complete, three fail with ``insufficient_quota`` before any token is spent on them, and what
    the stores hold is within the quota."""
    one, two = await database.open(), await database.open()
    ids = IdentityStore(one)
    rows = DataStore(one)
    blobs = FileBlobs(tmp_path / "files")
    team_id, store_id, [first] = await team_with_files(rows, ids, 1, blobs)
    backend = build_backend("sqlite", path=tmp_path / "vectors.db")
    await backend.create_store(store_id)
    embed = Embedder()
    workers = [
        Ingestor(DataStore(engine), backend, blobs, embed, workers=3, batch=64) for engine in (one, two)
    ]
    try:
        # One file's text and vectors, measured: a lone ingestion with no quota.
        solo = Ingestor(rows, backend, blobs, embed, workers=1, batch=64)
        embed.hold.set()
        await solo.start()  # its sweep finds the one file
        await asyncio.wait_for(solo.idle(), WAIT_S)
        await solo.close()
        done = (await file_rows(one, store_id))[first[1]]
        assert done.status == "completed" and done.usage_bytes > 0
        each = done.usage_bytes
        await QuotaStore(one).set("team-q", [(STORAGE, NO_WINDOW, each * 3 + each // 2)])
        await attach_files(rows, team_id, store_id, range(1, 6), blobs)

        embed.hold.clear()
        embed.calls = 0
        for w in workers:
            await w.start()  # each sweeps the five files; the lease gives each to one of them

        # Every job reserves its text's bytes before it embeds (the text is nearly all of a file's
        # bytes): two fit, and with the embedder holding those two, the other three fail at once.
        async def failed() -> int:
            return sum(f.status == "failed" for f in (await file_rows(one, store_id)).values())

        async with asyncio.timeout(WAIT_S):
            while embed.calls < 2 or await failed() < 3:
                await asyncio.sleep(0.05)
        embed.hold.set()
        for w in workers:
            await asyncio.wait_for(w.idle(), WAIT_S)
        files = await file_rows(one, store_id)
        statuses = sorted(f.status for f in files.values())
        assert statuses.count("completed") == 3, statuses  # the first file and two of the five
        refused = [f for f in files.values() if f.status == "failed"]
        assert len(refused) == 3 and all("insufficient_quota" in (f.last_error or "") for f in refused)
        used, limit = await rows.storage(team_id) or (0, 0)
        assert used == sum(f.usage_bytes for f in files.values()) == await backend.usage_bytes(store_id)
        assert used <= limit
        assert embed.calls == 2  # no tokens spent on a file that could not be kept
    finally:
        for w in workers:
            await w.close()
        await backend.close()
