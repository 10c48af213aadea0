"""The data services' rows: uploaded files, vector stores, the files attached to them (the ingestion
queue) and file batches, always read and written per team.

Every query takes the caller's ``team_id``: a row of another team is not found (the API answers 404,
never 403). Lists page as OpenAI's do (``after``/``before`` an object's id, ``limit``, ``order`` by
creation), over each table's integer ``seq``. A vector-store file is the durable job of ingestion:
``attach`` writes it ``in_progress`` with a new ``attempt``; the worker ends it with ``finish``, which
changes nothing unless the row is still that attempt's and still ``in_progress`` (a file detached,
cancelled or re-attached meanwhile stays as the API left it). The bytes of files are not here
(``m2a.data.files`` keeps them on disk) nor are chunks (the vector backend keeps them).

**Expiry.** A store with ``expires_after`` ``{"anchor": "last_active_at", "days": N}`` is expired
once N days passed without activity (``expires_at``); from then on nothing revives it: ``expire_due``
marks it ``status = "expired"`` for good (its files still in progress cancelled, its ``usage_bytes``
zero: the ingestion sweep drops its chunks), and ``touch_store`` no longer moves its
``last_active_at``. **Storage.** A team's storage is the sum of its stores' ``usage_bytes`` and
of what its files in progress reserved (``team_usage_bytes``), held against its ``storage_bytes``
quota (``storage``). An ingestion job reserves its bytes before it embeds and before it writes
(``reserve``): under a lock (the team's row on PostgreSQL, the database's write lock on SQLite),
so jobs running at once, in one process or several, never reserve more than the quota together.
``finish`` moves a completed job's bytes from its reservation into its store's ``usage_bytes`` in
one transaction; a job that fails, is cancelled or detached holds nothing any more.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from m2a.store.limits import STORAGE
from m2a.store.schema import (
    DataFile,
    Quota,
    Team,
    VectorStoreFileBatchRow,
    VectorStoreFileRow,
    VectorStoreRow,
)

STATUSES = ("in_progress", "completed", "cancelled", "failed")
EXPIRED = "expired"
DAY = timedelta(days=1)
R = TypeVar("R")


class _NoRoom(Exception):
    """A reservation that does not fit (raised inside its transaction, which rolls it back)."""

    def __init__(self, held: int, limit: int) -> None:
        self.held, self.limit = held, limit


def now() -> datetime:
    return datetime.now(UTC)


def aware(t: datetime) -> datetime:
    """SQLite hands timezone-aware columns back naive (in UTC)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def expires_at(row: VectorStoreRow) -> datetime | None:
    """When the store expires (or expired): ``days`` after its last activity; None without a policy."""
    if not row.expires_after:
        return None
    return aware(row.last_active_at) + json.loads(row.expires_after)["days"] * DAY


def is_expired(row: VectorStoreRow, at: datetime | None = None) -> bool:
    """Marked expired, or past its ``expires_at`` (not swept yet)."""
    if row.status == EXPIRED:
        return True
    end = expires_at(row)
    return end is not None and end <= (at or now())


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


class CursorNotFound(LookupError):
    """An ``after``/``before`` id that names no object of the list."""

    def __init__(self, param: str, value: str) -> None:
        super().__init__(f"No object with id '{value}' in this list (parameter '{param}').")
        self.param = param


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    has_more: bool


@dataclass(frozen=True)
class Paging:
    limit: int = 20
    order: str = "desc"  # by creation
    after: str | None = None
    before: str | None = None


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class DataStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    # -- paging ---------------------------------------------------------------------------------

    async def _page(
        self, s: AsyncSession, q: Select[Any], seq: Any, cursor: Select[Any], paging: Paging
    ) -> Page:
        """``q`` in ``paging``'s order and window; ``cursor`` selects a row's seq given ``.where(id==…)``."""
        desc = paging.order == "desc"
        for param, value in (("after", paging.after), ("before", paging.before)):
            if value is None:
                continue
            at = (await s.execute(cursor(value))).scalar()
            if at is None:
                raise CursorNotFound(param, value)
            forward = (param == "after") != desc  # rows with a greater seq
            q = q.where(seq > at) if forward else q.where(seq < at)
        backwards = paging.before is not None and paging.after is None
        ascending = desc == backwards  # "before" reads towards the cursor, then flips
        q = q.order_by(seq.asc() if ascending else seq.desc()).limit(paging.limit + 1)
        rows = list((await s.execute(q)).scalars())
        more = len(rows) > paging.limit
        rows = rows[: paging.limit]
        if backwards:
            rows.reverse()
        return Page(rows, more)

    # -- files ----------------------------------------------------------------------------------

    async def add_file(
        self, file_id: str, team_id: int, filename: str, purpose: str, nbytes: int
    ) -> DataFile:
        row = DataFile(
            id=file_id,
            team_id=team_id,
            filename=filename,
            purpose=purpose,
            bytes=nbytes,
            created_at=now(),
            status="processed",
        )
        async with self._session() as s, s.begin():
            s.add(row)
        return row

    async def file(self, team_id: int, file_id: str) -> DataFile | None:
        async with self._session() as s:
            return (
                await s.execute(
                    select(DataFile).where(
                        DataFile.id == file_id, DataFile.team_id == team_id, DataFile.deleted_at.is_(None)
                    )
                )
            ).scalar()

    async def files_by_id(self, team_id: int, file_ids: Sequence[str]) -> dict[str, DataFile]:
        if not file_ids:
            return {}
        async with self._session() as s:
            rows = (
                await s.execute(
                    select(DataFile).where(
                        DataFile.id.in_(set(file_ids)),
                        DataFile.team_id == team_id,
                        DataFile.deleted_at.is_(None),
                    )
                )
            ).scalars()
            return {r.id: r for r in rows}

    async def files(self, team_id: int, paging: Paging, purpose: str | None = None) -> Page:
        q = select(DataFile).where(DataFile.team_id == team_id, DataFile.deleted_at.is_(None))
        if purpose:
            q = q.where(DataFile.purpose == purpose)

        def cursor(value: str) -> Select[Any]:
            return select(DataFile.seq).where(DataFile.id == value, DataFile.team_id == team_id)

        async with self._session() as s:
            return await self._page(s, q, DataFile.seq, cursor, paging)

    async def delete_file(self, team_id: int, file_id: str) -> list[str] | None:
        """Mark the file deleted and detach it from every store; the stores it was in (None: no file)."""
        async with self._session() as s, s.begin():
            row = (
                await s.execute(
                    select(DataFile).where(
                        DataFile.id == file_id, DataFile.team_id == team_id, DataFile.deleted_at.is_(None)
                    )
                )
            ).scalar()
            if row is None:
                return None
            row.deleted_at = now()
            stores = (
                await s.execute(
                    select(VectorStoreFileRow.vector_store_id).where(
                        VectorStoreFileRow.file_id == file_id, VectorStoreFileRow.team_id == team_id
                    )
                )
            ).scalars()
            out = list(stores)
            await s.execute(
                delete(VectorStoreFileRow).where(
                    VectorStoreFileRow.file_id == file_id, VectorStoreFileRow.team_id == team_id
                )
            )
            return out

    # -- vector stores --------------------------------------------------------------------------

    async def create_store(
        self, team_id: int, name: str, metadata: dict[str, str], expires_after: dict[str, Any] | None
    ) -> VectorStoreRow:
        t = now()
        row = VectorStoreRow(
            id=new_id("vs_"),
            team_id=team_id,
            name=name,
            meta=_dumps(metadata),
            created_at=t,
            last_active_at=t,
            status="completed",
            expires_after=_dumps(expires_after) if expires_after else None,
            usage_bytes=0,
        )
        async with self._session() as s, s.begin():
            s.add(row)
        return row

    async def store(self, team_id: int, store_id: str) -> VectorStoreRow | None:
        async with self._session() as s:
            return (
                await s.execute(
                    select(VectorStoreRow).where(
                        VectorStoreRow.id == store_id, VectorStoreRow.team_id == team_id
                    )
                )
            ).scalar()

    async def store_exists(self, store_id: str) -> bool:
        async with self._session() as s:
            found = await s.execute(select(VectorStoreRow.seq).where(VectorStoreRow.id == store_id))
            return found.scalar() is not None

    async def stores(self, team_id: int, paging: Paging) -> Page:
        q = select(VectorStoreRow).where(VectorStoreRow.team_id == team_id)

        def cursor(value: str) -> Select[Any]:
            return select(VectorStoreRow.seq).where(
                VectorStoreRow.id == value, VectorStoreRow.team_id == team_id
            )

        async with self._session() as s:
            return await self._page(s, q, VectorStoreRow.seq, cursor, paging)

    async def update_store(self, team_id: int, store_id: str, **changes: Any) -> VectorStoreRow | None:
        """Set ``name``, ``metadata`` or ``expires_after`` (those given); None when there is no store."""
        async with self._session() as s, s.begin():
            row = (
                await s.execute(
                    select(VectorStoreRow).where(
                        VectorStoreRow.id == store_id, VectorStoreRow.team_id == team_id
                    )
                )
            ).scalar()
            if row is None:
                return None
            if "name" in changes:
                row.name = changes["name"]
            if "metadata" in changes:
                row.meta = _dumps(changes["metadata"])
            if "expires_after" in changes:
                row.expires_after = _dumps(changes["expires_after"]) if changes["expires_after"] else None
            if not is_expired(row):
                row.last_active_at = now()
        return row

    async def delete_store(self, team_id: int, store_id: str) -> bool:
        async with self._session() as s, s.begin():
            gone = await s.execute(
                delete(VectorStoreRow).where(VectorStoreRow.id == store_id, VectorStoreRow.team_id == team_id)
            )
            if not gone.rowcount:
                return False
            for table in (VectorStoreFileRow, VectorStoreFileBatchRow):
                await s.execute(delete(table).where(table.vector_store_id == store_id))
            return True

    async def touch_store(self, store_id: str, usage_bytes: int | None = None) -> None:
        """Note activity (and the store's ``usage_bytes``); an expired store stays as it is."""
        async with self._session() as s, s.begin():
            row = (await s.execute(select(VectorStoreRow).where(VectorStoreRow.id == store_id))).scalar()
            if row is None:
                return
            if not is_expired(row):
                row.last_active_at = now()
                if usage_bytes is not None:
                    row.usage_bytes = usage_bytes
            elif usage_bytes is not None and row.status != EXPIRED:
                row.usage_bytes = usage_bytes  # expired, chunks not dropped yet: they still count

    async def expire_due(self) -> list[str]:
        """Mark every store past its ``expires_at`` expired (once: the ids this call marked), cancel
        its files in progress and zero its ``usage_bytes``; the caller drops its chunks."""
        at = now()
        async with self._session() as s:
            rows = (
                await s.execute(
                    select(VectorStoreRow).where(
                        VectorStoreRow.expires_after.is_not(None), VectorStoreRow.status != EXPIRED
                    )
                )
            ).scalars()
            due = [r.id for r in rows if is_expired(r, at)]
        marked = []
        for store_id in due:
            async with self._session() as s, s.begin():
                done = await s.execute(
                    update(VectorStoreRow)
                    .where(VectorStoreRow.id == store_id, VectorStoreRow.status != EXPIRED)
                    .values(status=EXPIRED, usage_bytes=0)
                )
                if not done.rowcount:
                    continue  # another process marked it first
                await s.execute(
                    update(VectorStoreFileRow)
                    .where(
                        VectorStoreFileRow.vector_store_id == store_id,
                        VectorStoreFileRow.status == "in_progress",
                    )
                    .values(status="cancelled", lease_owner=None, lease_until=None)
                )
                marked.append(store_id)
        return marked

    @staticmethod
    async def _used(s: AsyncSession, team_id: int) -> int:
        stored = select(func.coalesce(func.sum(VectorStoreRow.usage_bytes), 0)).where(
            VectorStoreRow.team_id == team_id
        )
        reserved = select(func.coalesce(func.sum(VectorStoreFileRow.reserved_bytes), 0)).where(
            VectorStoreFileRow.team_id == team_id, VectorStoreFileRow.status == "in_progress"
        )
        used = await s.execute(select(stored.scalar_subquery() + reserved.scalar_subquery()))
        return int(used.scalar() or 0)

    @staticmethod
    async def _limit(s: AsyncSession, team_id: int) -> int | None:
        found = await s.execute(
            select(func.min(Quota.limit)).where(
                Quota.team_id == team_id, Quota.key_id.is_(None), Quota.metric == STORAGE
            )
        )
        limit = found.scalar()
        return None if limit is None else int(limit)

    async def team_usage_bytes(self, team_id: int) -> int:
        """What the team's vector stores hold (their ``usage_bytes``) and its files in progress
        reserved, all together."""
        async with self._session() as s:
            return await self._used(s, team_id)

    async def storage(self, team_id: int) -> tuple[int, int] | None:
        """What the team's stores hold (reservations included) and its ``storage_bytes`` limit (the
        lowest, should there be several), in one session; None when the team has no such limit."""
        async with self._session() as s:
            limit = await self._limit(s, team_id)
            return None if limit is None else (await self._used(s, team_id), limit)

    async def reserve(
        self, store_id: str, file_id: str, attempt: int, owner: str, team_id: int, needed: int
    ) -> tuple[int, int] | None:
        """Hold ``needed`` bytes of the team's storage for the job (replacing what it held), if they
        fit its ``storage_bytes`` quota: None when reserved (or the job is no longer this owner's:
        its next lease check says so); ``(held by everything else, limit)`` when they do not fit,
        and then nothing changes. Serialised per team, so two jobs never both take the last room."""
        try:
            async with self._session() as s, s.begin():
                if self.engine.dialect.name == "postgresql":
                    # Every reservation of the team waits here. FOR NO KEY UPDATE: inserts of rows
                    # that reference the team (their foreign-key check) do not wait for it.
                    await s.execute(select(Team.id).where(Team.id == team_id).with_for_update(key_share=True))
                # The job's own row first: on SQLite this write takes the database's write lock, so
                # what is read below is the latest, and no other reservation lands before it commits.
                mine = await s.execute(
                    update(VectorStoreFileRow)
                    .where(*self._leased(store_id, file_id, attempt), VectorStoreFileRow.lease_owner == owner)
                    .values(reserved_bytes=needed)
                )
                if not mine.rowcount:
                    return None
                limit = await self._limit(s, team_id)
                if limit is not None and (used := await self._used(s, team_id)) > limit:
                    raise _NoRoom(used - needed, limit)  # rolls the reservation back
        except _NoRoom as full:
            return full.held, full.limit
        return None

    async def file_counts(self, store_id: str, batch_id: str | None = None) -> dict[str, int]:
        """Files per status (every status present, and ``total``), of a store or of one of its batches."""
        q = select(VectorStoreFileRow.status, func.count()).where(
            VectorStoreFileRow.vector_store_id == store_id
        )
        if batch_id is not None:
            q = q.where(VectorStoreFileRow.batch_id == batch_id)
        async with self._session() as s:
            counts = dict.fromkeys(STATUSES, 0)
            for status, n in (await s.execute(q.group_by(VectorStoreFileRow.status))).all():
                counts[status] = counts.get(status, 0) + int(n)
        counts["total"] = sum(counts[k] for k in STATUSES)
        return counts

    # -- vector store files ---------------------------------------------------------------------

    async def attach(
        self,
        team_id: int,
        store_id: str,
        file_id: str,
        attributes: dict[str, Any],
        chunking: dict[str, Any],
        batch_id: str | None = None,
    ) -> VectorStoreFileRow:
        """Queue the file for ingestion into the store (again, if it was attached: a new attempt)."""
        async with self._session() as s, s.begin():
            row = (
                await s.execute(
                    select(VectorStoreFileRow).where(
                        VectorStoreFileRow.vector_store_id == store_id, VectorStoreFileRow.file_id == file_id
                    )
                )
            ).scalar()
            if row is None:
                row = VectorStoreFileRow(
                    vector_store_id=store_id, file_id=file_id, team_id=team_id, created_at=now(), attempt=0
                )
                s.add(row)
            row.batch_id = batch_id
            row.status = "in_progress"
            row.last_error = None
            row.attributes = _dumps(attributes)
            row.chunking_strategy = _dumps(chunking)
            row.usage_bytes = 0
            row.reserved_bytes = 0
            row.attempt = (row.attempt or 0) + 1
            row.lease_owner, row.lease_until = None, None  # a new attempt: whoever takes it first
            await s.execute(
                update(VectorStoreRow).where(VectorStoreRow.id == store_id).values(last_active_at=now())
            )
        return row

    async def vs_file(self, team_id: int, store_id: str, file_id: str) -> VectorStoreFileRow | None:
        async with self._session() as s:
            return (
                await s.execute(
                    select(VectorStoreFileRow).where(
                        VectorStoreFileRow.vector_store_id == store_id,
                        VectorStoreFileRow.file_id == file_id,
                        VectorStoreFileRow.team_id == team_id,
                    )
                )
            ).scalar()

    async def vs_files(
        self,
        team_id: int,
        store_id: str,
        paging: Paging,
        status: str | None = None,
        batch_id: str | None = None,
    ) -> Page:
        q = select(VectorStoreFileRow).where(
            VectorStoreFileRow.vector_store_id == store_id, VectorStoreFileRow.team_id == team_id
        )
        if status:
            q = q.where(VectorStoreFileRow.status == status)
        if batch_id:
            q = q.where(VectorStoreFileRow.batch_id == batch_id)

        def cursor(value: str) -> Select[Any]:
            return select(VectorStoreFileRow.seq).where(
                VectorStoreFileRow.vector_store_id == store_id,
                VectorStoreFileRow.file_id == value,
                VectorStoreFileRow.team_id == team_id,
            )

        async with self._session() as s:
            return await self._page(s, q, VectorStoreFileRow.seq, cursor, paging)

    async def set_attributes(
        self,
        team_id: int,
        store_id: str,
        file_id: str,
        attributes: dict[str, Any],
        usage_delta: Callable[[VectorStoreFileRow], int] | None = None,
    ) -> VectorStoreFileRow | None:
        """Replace the file's attributes; ``usage_delta(row)`` says how its ``usage_bytes`` change."""
        async with self._session() as s, s.begin():
            row = (
                await s.execute(
                    select(VectorStoreFileRow).where(
                        VectorStoreFileRow.vector_store_id == store_id,
                        VectorStoreFileRow.file_id == file_id,
                        VectorStoreFileRow.team_id == team_id,
                    )
                )
            ).scalar()
            if row is not None:
                if usage_delta is not None:
                    row.usage_bytes += usage_delta(row)
                row.attributes = _dumps(attributes)
        return row

    async def detach(self, team_id: int, store_id: str, file_id: str) -> bool:
        async with self._session() as s, s.begin():
            gone = await s.execute(
                delete(VectorStoreFileRow).where(
                    VectorStoreFileRow.vector_store_id == store_id,
                    VectorStoreFileRow.file_id == file_id,
                    VectorStoreFileRow.team_id == team_id,
                )
            )
            return bool(gone.rowcount)

    # -- the ingestion queue --------------------------------------------------------------------

    async def in_progress(self) -> list[VectorStoreFileRow]:
        """Every job not finished, oldest first."""
        async with self._session() as s:
            q = select(VectorStoreFileRow).where(VectorStoreFileRow.status == "in_progress")
            return list((await s.execute(q.order_by(VectorStoreFileRow.seq))).scalars())

    async def unleased(self) -> list[VectorStoreFileRow]:
        """Jobs not finished that no live process works: never leased, or its lease ran out (the
        process that held it died or hangs) — what a gateway queues at start and on its sweeps."""
        at = now()
        async with self._session() as s:
            q = select(VectorStoreFileRow).where(
                VectorStoreFileRow.status == "in_progress",
                or_(VectorStoreFileRow.lease_until.is_(None), VectorStoreFileRow.lease_until < at),
            )
            return list((await s.execute(q.order_by(VectorStoreFileRow.seq))).scalars())

    def _leased(self, store_id: str, file_id: str, attempt: int) -> Any:
        return (
            VectorStoreFileRow.vector_store_id == store_id,
            VectorStoreFileRow.file_id == file_id,
            VectorStoreFileRow.attempt == attempt,
            VectorStoreFileRow.status == "in_progress",
        )

    async def claim(self, store_id: str, file_id: str, attempt: int, owner: str, lease_s: float) -> bool:
        """Take the job for ``owner`` until ``lease_s`` from now: true for one process at a time — when
        nobody holds it, the lease ran out, or ``owner`` holds it already (a renewal)."""
        at = now()
        async with self._session() as s, s.begin():
            done = await s.execute(
                update(VectorStoreFileRow)
                .where(
                    *self._leased(store_id, file_id, attempt),
                    or_(
                        VectorStoreFileRow.lease_owner.is_(None),
                        VectorStoreFileRow.lease_owner == owner,
                        VectorStoreFileRow.lease_until < at,
                    ),
                )
                .values(lease_owner=owner, lease_until=at + timedelta(seconds=lease_s))
            )
            return bool(done.rowcount)

    async def renew(self, store_id: str, file_id: str, attempt: int, owner: str, lease_s: float) -> bool:
        """Extend ``owner``'s lease; false when the job changed or another process took it over."""
        async with self._session() as s, s.begin():
            done = await s.execute(
                update(VectorStoreFileRow)
                .where(*self._leased(store_id, file_id, attempt), VectorStoreFileRow.lease_owner == owner)
                .values(lease_until=now() + timedelta(seconds=lease_s))
            )
            return bool(done.rowcount)

    async def lease_of(self, store_id: str, file_id: str, attempt: int) -> str | None:
        """Who holds the job's lease (None: nobody, or the job is not this attempt in progress)."""
        async with self._session() as s:
            return (
                await s.execute(
                    select(VectorStoreFileRow.lease_owner).where(*self._leased(store_id, file_id, attempt))
                )
            ).scalar()

    async def job(self, store_id: str, file_id: str, attempt: int) -> VectorStoreFileRow | None:
        """The job's row while it is still this attempt and in progress."""
        async with self._session() as s:
            return (
                await s.execute(
                    select(VectorStoreFileRow).where(
                        VectorStoreFileRow.vector_store_id == store_id,
                        VectorStoreFileRow.file_id == file_id,
                        VectorStoreFileRow.attempt == attempt,
                        VectorStoreFileRow.status == "in_progress",
                    )
                )
            ).scalar()

    async def file_state(self, store_id: str, file_id: str) -> tuple[int, str] | None:
        """The attempt and status of the file's row in the store (None: not attached)."""
        async with self._session() as s:
            row = (
                await s.execute(
                    select(VectorStoreFileRow.attempt, VectorStoreFileRow.status).where(
                        VectorStoreFileRow.vector_store_id == store_id, VectorStoreFileRow.file_id == file_id
                    )
                )
            ).first()
            return (row[0], row[1]) if row is not None else None

    async def finish(
        self,
        store_id: str,
        file_id: str,
        attempt: int,
        status: str,
        usage_bytes: int = 0,
        last_error: dict[str, str] | None = None,
        owner: str | None = None,
    ) -> bool:
        """End the job (only if it is still this attempt and in progress, and, given an ``owner``,
        still leased to it); whether it was. Its reservation ends; a completed job's ``usage_bytes``
        join its store's in the same transaction (the caller settles the exact figure after)."""
        held = () if owner is None else (VectorStoreFileRow.lease_owner == owner,)
        async with self._session() as s, s.begin():
            done = await s.execute(
                update(VectorStoreFileRow)
                .where(*self._leased(store_id, file_id, attempt), *held)
                .values(
                    status=status,
                    usage_bytes=usage_bytes,
                    reserved_bytes=0,
                    last_error=_dumps(last_error) if last_error else None,
                    lease_owner=None,
                    lease_until=None,
                )
            )
            if done.rowcount and status == "completed" and usage_bytes:
                await s.execute(
                    update(VectorStoreRow)
                    .where(VectorStoreRow.id == store_id, VectorStoreRow.status != EXPIRED)
                    .values(usage_bytes=VectorStoreRow.usage_bytes + usage_bytes)
                )
            return bool(done.rowcount)

    # -- file batches ---------------------------------------------------------------------------

    async def create_batch(self, team_id: int, store_id: str) -> VectorStoreFileBatchRow:
        row = VectorStoreFileBatchRow(
            id=new_id("vsfb_"),
            vector_store_id=store_id,
            team_id=team_id,
            status="in_progress",
            created_at=now(),
        )
        async with self._session() as s, s.begin():
            s.add(row)
        return row

    async def batch(self, team_id: int, store_id: str, batch_id: str) -> VectorStoreFileBatchRow | None:
        async with self._session() as s:
            return (
                await s.execute(
                    select(VectorStoreFileBatchRow).where(
                        VectorStoreFileBatchRow.id == batch_id,
                        VectorStoreFileBatchRow.vector_store_id == store_id,
                        VectorStoreFileBatchRow.team_id == team_id,
                    )
                )
            ).scalar()

    async def cancel_batch(
        self, team_id: int, store_id: str, batch_id: str
    ) -> VectorStoreFileBatchRow | None:
        """Cancel the batch and its files still in progress (their jobs stop at their next step)."""
        async with self._session() as s, s.begin():
            row = (
                await s.execute(
                    select(VectorStoreFileBatchRow).where(
                        VectorStoreFileBatchRow.id == batch_id,
                        VectorStoreFileBatchRow.vector_store_id == store_id,
                        VectorStoreFileBatchRow.team_id == team_id,
                    )
                )
            ).scalar()
            if row is None:
                return None
            row.status = "cancelled"
            await s.execute(
                update(VectorStoreFileRow)
                .where(
                    VectorStoreFileRow.batch_id == batch_id,
                    VectorStoreFileRow.vector_store_id == store_id,
                    VectorStoreFileRow.status == "in_progress",
                )
                .values(status="cancelled")
            )
        return row
