"""The tamper-evident audit log: hash-chained records in ``audit_records``, signed Merkle checkpoints
in ``audit_checkpoints``, and the verifier that names what was changed.

**Records.** ``append(kind, body, agent=, team_id=, trace_id=)`` stores the RFC 8785 canonical JSON
of ``{seq, at, kind, agent, team_id, trace_id, body}`` (``at``: ISO 8601 UTC with microseconds) and
``hash = sha256(prev_hash || canonical)`` (the previous record's hash as 64 hex ASCII characters;
record 1 follows 64 zeros). The columns beside the body (``at``, ``kind``, ``agent``, ...) are copies
for filtering; the verifier checks them against the body. **A body must never hold secrets**: the
log is kept for years and shown to auditors, so callers pass digests (``receipts.result_digest``,
the intent's digest), names and ids — never arguments, results, headers or tokens other than m2a's
own signed receipts.

**Sequence numbers** are gapless: each write transaction takes a lock every process sharing the
store takes (PostgreSQL: ``pg_advisory_xact_lock(_PG_LOCK)``; SQLite: the database's write lock,
taken by the transaction's first statement being a write), then reads the last record and writes
after it, so processes appending at once all succeed and the chain stays one chain. ``at`` never
goes back along the chain (a record is stamped no earlier than the one before it). Within a
process, appends that arrive while a write is under way are written together by the next one (one
transaction, one lock, one round trip for the lot: group commit); ``append_many`` writes several
records of one caller together.

**Checkpoints.** A checkpoint is a compact JWS (``typ`` ``m2a-audit-checkpoint+jwt``, m2a's current
signing key) of ``{iss, seq, root, head_hash, at, frontier}``: ``root`` is the RFC 6962 Merkle tree
hash (``merkle.py``) over the hashes (32 bytes each) of records ``1..seq``, ``head_hash`` the hash
of record ``seq``, ``frontier`` the roots of the tree's perfect subtrees, from which a process that
starts later continues the tree without reading the log again. Each process keeps the tree in
memory (at most 64 hashes) and, before signing, folds in the records written since, checking that
each chains to the one before; if they don't, or the log no longer matches its last checkpoint, it
refuses to sign (``AuditError``, logged): m2a never signs over a log that was changed. Checkpoints
are written **inline**: after an append, when ``checkpoint_every`` records are not yet covered, or
the oldest uncovered record waited ``checkpoint_interval_s``, or the signing key changed since the
last checkpoint (a rotation: the next checkpoint is signed with the new key at once, so the newest
checkpoint is signed by a key the JWKS still publishes). ``maybe_checkpoint()`` does the same check
without appending; the process that owns the log calls it every few seconds so the last records
are covered even when no more come. ``checkpoint()`` writes one now. With ``keys=None`` nothing is
signed and no checkpoint is written: the chain alone then shows edits, but not a rewrite of the
whole log or of its tail.

**Verification** (``verify(jwks)``) walks every record in seq order, a page at a time, keeping per
record only its seq numbers, its time and its hash (about 56 bytes: 56 MB for a million records),
and names each problem as a ``Problem(seq, kind, detail)``:

- ``edited``: a row whose hash is not sha256(prev_hash || body), whose columns disagree with its
  body, or whose body is not a record; a record whose hash changed after the next one was chained
  to it (edited and re-hashed); rows renumbered away from their records' own seq.
- ``deleted``: records missing from the chain (a gap in the records' own numbers, whether or not
  the rows after were renumbered to close it).
- ``reordered``: a record stored out of chain order (its own seq says it belongs elsewhere), or one
  stamped earlier than the record before it.
- ``inserted``: a row the chain does not go through: a second row claiming a record's number (the
  one the next record does not chain to), a row claiming a later number than its place while
  chaining straight after the record before it, a row numbered beyond the chain's end.
- ``checkpoint``: a checkpoint whose signature fails, whose row disagrees with what it signed,
  whose key is unknown where it can't be (below), or whose root / head hash disagrees with the one
  recomputed from the records — how a rewrite of the whole chain by someone without m2a's signing
  key shows. A checkpoint's mismatch is not reported again when a record problem at or below its
  seq explains it.
- ``truncated``: records missing after the end of the log that a checkpoint covers.

**Keys that were retired.** ``SigningKeys`` publishes a retired key only until every token it
signed has expired, then deletes it, so a month-old checkpoint's key is gone from the JWKS. Storing
each checkpoint's public key beside it would prove nothing: whoever can edit the table can store a
key of their own. The verifier therefore treats a checkpoint whose ``kid`` the JWKS does not hold
as *unverifiable*, not forged (counted in ``AuditReport.unverifiable``; its root and head hash are
still checked against the records, and its row against its unverified claims), **unless a
checkpoint with a lower seq verifies**: keys are retired and deleted oldest first, so a checkpoint
signed after one whose key is still published must have been signed by a key that is still
published too — an unknown key there is a forger's (``checkpoint`` problem). Because each
checkpoint covers every record from 1, the newest verifiable one vouches for the whole log up to
its seq (``AuditReport.verified_seq``); with inline re-signing after each rotation that is the
newest checkpoint whenever m2a ran recently. A verifier that must check old checkpoints keeps a
copy of the JWKS (``m2a audit verify --jwks FILE``).

**What this does not catch**, by design of any log its writer stores: whoever can write the store
can also write ``signing_keys`` (and so sign); records appended after the newest checkpoint can be
changed consistently or dropped until the next checkpoint covers them; a rewrite that also deletes
every checkpoint leaves a chain that verifies (keep checkpoints elsewhere: ``m2a audit export``).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import logging
import math
import time
from array import array
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import jwt
import rfc8785
from sqlalchemy import Select, insert, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from m2a.store.schema import AuditCheckpointRow, AuditRecordRow
from m2a.trust import merkle
from m2a.trust.signing import ALG, KeySource, sign

log = logging.getLogger("m2a.trust.audit")

GENESIS = "0" * 64
CHECKPOINT_TYP = "m2a-audit-checkpoint+jwt"
PROBLEM_KINDS = ("edited", "deleted", "reordered", "inserted", "checkpoint", "truncated")
_PG_LOCK = 7265690  # pg_advisory_xact_lock id of audit appends (migrate: 7265676, keys: 7265677)
_PAGE = 5000
_MAX_SKEW = timedelta(seconds=60)  # a previous record stamped further ahead than this is not followed
_R = AuditRecordRow.__table__
_C = AuditCheckpointRow.__table__
_GENESIS_B = bytes(32)


class AuditError(Exception):
    """The audit log could not be written, or refuses to sign; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class AuditItem:
    """One record to append (``append_many``)."""

    kind: str
    body: dict[str, Any]
    agent: str | None = None
    team_id: int | None = None
    trace_id: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: datetime
    kind: str
    hash: str


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    at: datetime
    root: str
    head_hash: str
    kid: str
    token: str


@dataclass(frozen=True)
class Problem:
    seq: int
    kind: str  # one of PROBLEM_KINDS
    detail: str


@dataclass(frozen=True)
class AuditReport:
    ok: bool
    records: int
    checkpoints: int
    problems: list[Problem]
    verified_seq: int = 0  # the highest seq a checkpoint whose signature verified vouches for
    unverifiable: int = 0  # checkpoints signed by keys the JWKS no longer holds (see the docstring)


def iso(at: datetime) -> str:
    """``at`` as the log writes it: ISO 8601 in UTC, always with microseconds and a ``Z``."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _utc(at: datetime) -> datetime:
    """A bound for comparing with the ``at`` column (naive times are taken as UTC)."""
    return _aware(at)


def canonical(
    seq: int, at: str, kind: str, agent: str | None, team_id: int | None, trace_id: str | None, body: bytes
) -> bytes:
    """The RFC 8785 form of a record, ``body`` already canonical (the members in JCS order)."""
    d = rfc8785.dumps
    return b"".join(
        (
            b'{"agent":',
            d(agent),
            b',"at":',
            d(at),
            b',"body":',
            body,
            b',"kind":',
            d(kind),
            b',"seq":',
            d(seq),
            b',"team_id":',
            d(team_id),
            b',"trace_id":',
            d(trace_id),
            b"}",
        )
    )


def chain_hash(prev_hash: str, canonical_bytes: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical_bytes).hexdigest()


@dataclass
class _Prepared:
    kind: str
    agent: str | None
    team_id: int | None
    trace_id: str | None
    body: bytes  # canonical


def _prepare(item: AuditItem) -> _Prepared:
    if not isinstance(item.kind, str) or not 0 < len(item.kind) <= 32:
        raise ValueError("an audit record's kind is a string of 1 to 32 characters")
    if item.agent is not None and (not isinstance(item.agent, str) or len(item.agent) > 256):
        raise ValueError("an audit record's agent is a string of at most 256 characters")
    if item.team_id is not None and (not isinstance(item.team_id, int) or isinstance(item.team_id, bool)):
        raise ValueError("an audit record's team_id is an integer")
    if item.trace_id is not None and (not isinstance(item.trace_id, str) or len(item.trace_id) > 32):
        raise ValueError("an audit record's trace_id is a string of at most 32 characters")
    if not isinstance(item.body, dict):
        raise ValueError("an audit record's body is a JSON object")
    try:
        body = rfc8785.dumps(item.body)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise ValueError(f"an audit record's body must be JSON: {exc}") from exc
    return _Prepared(item.kind, item.agent, item.team_id, item.trace_id, body)


@dataclass
class _Pending:
    items: list[_Prepared]
    entries: list[AuditEntry] | None = None
    error: BaseException | None = None


@dataclass
class _Tree:
    """What this process folded into its Merkle tree: records 1..tree.size, the last one's hash."""

    tree: merkle.Accumulator
    head: str


class AuditLog:
    """The audit log on one store (see the module docstring). One instance per process is enough;
    any number of processes may share the store."""

    def __init__(
        self,
        engine: AsyncEngine,
        keys: KeySource | None,
        *,
        issuer: str,
        checkpoint_every: int = 256,
        checkpoint_interval_s: float = 60.0,
    ) -> None:
        if checkpoint_every < 1 or checkpoint_interval_s <= 0:
            raise ValueError("checkpoint_every is at least 1 and checkpoint_interval_s above 0")
        self.engine = engine
        self.keys = keys
        self.issuer = issuer
        self.every = checkpoint_every
        self.interval_s = checkpoint_interval_s
        self._queue: list[_Pending] = []
        self._write_lock = asyncio.Lock()
        self._ckpt_lock = asyncio.Lock()
        self._tree: _Tree | None = None
        self._known_ckpt = 0  # the newest checkpoint's seq this process has seen
        self._known_kid: str | None = None  # and the key that signed it
        self._next_check = 0.0  # time.monotonic() of the next look at whether a checkpoint is due

    # -- appending -------------------------------------------------------------------------------

    async def append(
        self,
        kind: str,
        body: dict[str, Any],
        *,
        agent: str | None = None,
        team_id: int | None = None,
        trace_id: str | None = None,
    ) -> AuditEntry:
        """Append one record (``body``: digests and names, never secrets). Raises ``AuditError`` when
        the store can't be written, ``ValueError`` for a body that is not JSON."""
        return (await self.append_many([AuditItem(kind, body, agent, team_id, trace_id)]))[0]

    async def append_many(self, items: Iterable[AuditItem]) -> list[AuditEntry]:
        """Append records in this order, next to each other in the chain, in one transaction."""
        pending = _Pending([_prepare(i) for i in items])
        if not pending.items:
            return []
        self._queue.append(pending)
        async with self._write_lock:
            if pending.entries is None and pending.error is None:
                batch, self._queue = self._queue, []
                try:
                    written = await self._write([p.items for p in batch])
                except BaseException as exc:
                    failure = (
                        exc if isinstance(exc, AuditError) else AuditError(f"the audit write failed: {exc!r}")
                    )
                    for p in batch:
                        if p is not pending:
                            p.error = failure
                    raise
                for p, entries in zip(batch, written, strict=True):
                    p.entries = entries
        if pending.error is not None:
            raise pending.error
        assert pending.entries is not None
        await self._after_append(pending.entries[-1].seq)
        return pending.entries

    async def _take_lock(self, conn: AsyncConnection) -> None:
        if conn.dialect.name == "postgresql":
            await conn.execute(text(f"SELECT pg_advisory_xact_lock({_PG_LOCK})"))
        else:  # a write statement first: SQLite's write lock, held until commit (others wait on it)
            await conn.execute(update(AuditRecordRow).where(text("1 = 0")).values(seq=AuditRecordRow.seq))

    async def _write(self, groups: list[list[_Prepared]]) -> list[list[AuditEntry]]:
        try:
            async with self.engine.begin() as conn:
                await self._take_lock(conn)
                head = (
                    await conn.execute(
                        select(_R.c.seq, _R.c.hash, _R.c.at).order_by(_R.c.seq.desc()).limit(1)
                    )
                ).first()
                now = datetime.now(UTC)
                seq, prev, at = 0, GENESIS, now
                if head is not None:
                    seq, prev = head.seq, head.hash
                    last_at = _aware(head.at)
                    if now < last_at <= now + _MAX_SKEW:  # never stamped before the record it follows
                        at = last_at
                at_iso = iso(at)
                rows: list[dict[str, Any]] = []
                out: list[list[AuditEntry]] = []
                for group in groups:
                    entries = []
                    for p in group:
                        seq += 1
                        body = canonical(seq, at_iso, p.kind, p.agent, p.team_id, p.trace_id, p.body)
                        h = chain_hash(prev, body)
                        rows.append(
                            {
                                "seq": seq,
                                "at": at,
                                "kind": p.kind,
                                "agent": p.agent,
                                "team_id": p.team_id,
                                "trace_id": p.trace_id,
                                "body": body.decode(),
                                "prev_hash": prev,
                                "hash": h,
                            }
                        )
                        entries.append(AuditEntry(seq, at, p.kind, h))
                        prev = h
                    out.append(entries)
                await conn.execute(insert(_R), rows)
            return out
        except (SQLAlchemyError, OSError) as exc:
            raise AuditError(f"could not write to the audit log: {type(exc).__name__}: {exc}") from exc

    async def _after_append(self, seq: int) -> None:
        if self.keys is None:
            return
        if seq - self._known_ckpt < self.every and time.monotonic() < self._next_check:
            try:  # a rotated key re-anchors the log at once (the newest checkpoint stays verifiable)
                rotated = self._known_kid is not None and (await self.keys.signer()).kid != self._known_kid
            except Exception:
                rotated = False
            if not rotated:
                return
        try:
            await self.maybe_checkpoint()
        except AuditError as exc:
            log.error("audit checkpoint refused: %s", exc.message)
        except Exception:  # the records are written; a checkpoint failing must not fail the action
            log.exception("could not write an audit checkpoint")

    # -- checkpoints -----------------------------------------------------------------------------

    async def checkpoint(self) -> Checkpoint | None:
        """A signed checkpoint of every record now, unless the newest one covers them all already
        (or ``keys`` is None). Raises ``AuditError`` when the log does not match what was signed."""
        return await self._checkpoint(force=True)

    async def maybe_checkpoint(self) -> Checkpoint | None:
        """A checkpoint if one is due (``checkpoint_every`` records uncovered, the oldest of them
        waiting ``checkpoint_interval_s``, or a new signing key); else None."""
        return await self._checkpoint(force=False)

    async def _checkpoint(self, force: bool) -> Checkpoint | None:
        if self.keys is None:
            return None
        async with self._ckpt_lock:
            self._next_check = time.monotonic() + self.interval_s  # failures retry at this pace
            signer = await self.keys.signer()  # before reading: SigningKeys may write its own rows
            try:
                async with self.engine.connect() as conn:
                    head = (
                        await conn.execute(select(_R.c.seq, _R.c.hash).order_by(_R.c.seq.desc()).limit(1))
                    ).first()
                    latest = (await conn.execute(select(_C).order_by(_C.c.seq.desc()).limit(1))).first()
                    covered = latest.seq if latest is not None else 0
                    if latest is not None and latest.seq >= self._known_ckpt:
                        self._known_ckpt, self._known_kid = latest.seq, latest.kid
                    if head is None or head.seq <= covered:
                        return None
                    if not force and not await self._due(conn, head.seq, latest, signer.kid):
                        return None
                    tree = await self._fold(conn, head.seq, latest)
            except SQLAlchemyError as exc:
                raise AuditError(f"could not read the audit log: {type(exc).__name__}: {exc}") from exc
            now = datetime.now(UTC)
            claims = {
                "iss": self.issuer,
                "seq": head.seq,
                "root": tree.tree.root().hex(),
                "head_hash": tree.head,
                "at": iso(now),
                "frontier": [h.hex() for h in tree.tree.frontier()],
            }
            token = await sign(self.keys, claims, CHECKPOINT_TYP)
            kid = str(jwt.get_unverified_header(token).get("kid"))
            row = {"seq": head.seq, "at": now, "root": claims["root"], "head_hash": tree.head, "kid": kid}
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(insert(_C).values(**row, signature=token))
            except IntegrityError:
                return None  # another process checkpointed this very seq a moment ago
            except SQLAlchemyError as exc:
                raise AuditError(f"could not write an audit checkpoint: {type(exc).__name__}: {exc}") from exc
            self._known_ckpt, self._known_kid = head.seq, kid
            return Checkpoint(head.seq, now, claims["root"], tree.head, kid, token)

    async def _due(self, conn: AsyncConnection, head: int, latest: Any, kid: str) -> bool:
        covered = latest.seq if latest is not None else 0
        if head - covered >= self.every or (latest is not None and latest.kid != kid):
            return True
        first = (
            await conn.execute(select(_R.c.at).where(_R.c.seq > covered).order_by(_R.c.seq).limit(1))
        ).scalar()
        if first is None:
            return False
        waited = (datetime.now(UTC) - _aware(first)).total_seconds()
        if waited >= self.interval_s:
            return True
        self._next_check = time.monotonic() + (self.interval_s - waited)
        return False

    async def _start_tree(self, latest: Any) -> tuple[_Tree, Any]:
        """The tree where the newest checkpoint left it (its signed frontier, checked with its key),
        or an empty one and the checkpoint to compare with on the way (its key is gone)."""
        empty = _Tree(merkle.Accumulator(), GENESIS)
        if latest is None:
            return empty, None
        assert self.keys is not None
        jwk = await self.keys.public(latest.kid)
        if jwk is None:
            return empty, latest
        try:
            claims = jwt.decode(
                latest.signature, jwt.PyJWK(jwk, ALG).key, algorithms=[ALG], options=_CKPT_OPTIONS
            )
            frontier = [bytes.fromhex(h) for h in claims["frontier"]]
            tree = merkle.Accumulator(int(claims["seq"]), frontier)
        except (jwt.PyJWTError, KeyError, TypeError, ValueError) as exc:
            raise AuditError(f"the checkpoint at {latest.seq} does not verify with its key: {exc}") from exc
        signed = (claims.get("seq"), claims.get("root"), claims.get("head_hash"))
        if signed != (latest.seq, latest.root, latest.head_hash) or tree.root().hex() != latest.root:
            raise AuditError(f"the checkpoint at {latest.seq} disagrees with what its key signed")
        return _Tree(tree, latest.head_hash), None

    async def _fold(self, conn: AsyncConnection, upto: int, latest: Any) -> _Tree:
        """This process's tree advanced to record ``upto``, each record checked on the way."""
        start, check = self._tree, None
        if start is None:  # kept only once the fold succeeds: a refused one starts over next time
            start, check = await self._start_tree(latest)
        if start.tree.size > upto:
            raise AuditError(
                f"the log ends at record {upto}, but record {start.tree.size} was signed already"
            )
        tree, head, seq = start.tree.copy(), start.head, start.tree.size
        while seq < upto:
            q = select(_R.c.seq, _R.c.body, _R.c.prev_hash, _R.c.hash).where(_R.c.seq > seq, _R.c.seq <= upto)
            rows = (await conn.execute(q.order_by(_R.c.seq).limit(_PAGE))).all()
            if not rows:
                raise AuditError(f"records {seq + 1}..{upto} are missing from the audit log")
            for r in rows:
                if r.seq != seq + 1:
                    raise AuditError(f"record {seq + 1} is missing from the audit log")
                if r.prev_hash != head or chain_hash(r.prev_hash, r.body.encode()) != r.hash:
                    raise AuditError(f"record {r.seq} does not chain to record {seq}: the log was changed")
                tree.add(bytes.fromhex(r.hash))
                seq, head = r.seq, r.hash
                if check is not None and seq == check.seq:
                    if tree.root().hex() != check.root or head != check.head_hash:
                        raise AuditError(
                            f"the log no longer matches its checkpoint at {seq}: the log was changed"
                        )
                    check = None
        self._tree = _Tree(tree, head)
        return self._tree

    # -- reading ---------------------------------------------------------------------------------

    def _filtered(
        self,
        agent: str | None,
        trace_id: str | None,
        kind: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> Select[Any]:
        q = select(_R)
        if agent is not None:
            q = q.where(_R.c.agent == agent)
        if trace_id is not None:
            q = q.where(_R.c.trace_id == trace_id)
        if kind is not None:
            q = q.where(_R.c.kind == kind)
        if since is not None:
            q = q.where(_R.c.at >= _utc(since))
        if until is not None:
            q = q.where(_R.c.at < _utc(until))
        return q

    async def show(
        self,
        *,
        agent: str | None = None,
        trace_id: str | None = None,
        kind: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        after_seq: int | None = None,
    ) -> list[dict[str, Any]]:
        """Records matching every filter given, in seq order: the first ``limit`` after ``after_seq``,
        or (without it) the newest ``limit``. ``until`` is exclusive."""
        limit = max(1, min(limit, 10_000))
        q = self._filtered(agent, trace_id, kind, since, until)
        async with self.engine.connect() as conn:
            if after_seq is not None:
                rows = (
                    await conn.execute(q.where(_R.c.seq > after_seq).order_by(_R.c.seq).limit(limit))
                ).all()
            else:
                rows = (await conn.execute(q.order_by(_R.c.seq.desc()).limit(limit))).all()[::-1]
        return [_record_json(r) for r in rows]

    async def records(
        self,
        *,
        agent: str | None = None,
        trace_id: str | None = None,
        kind: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_seq: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every record matching the filters, in seq order, read a page at a time."""
        q = self._filtered(agent, trace_id, kind, since, until)
        last = after_seq if after_seq is not None else 0
        while True:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(q.where(_R.c.seq > last).order_by(_R.c.seq).limit(_PAGE))).all()
            for r in rows:
                yield _record_json(r)
            if len(rows) < _PAGE:
                return
            last = rows[-1].seq

    async def export(
        self,
        out: TextIO,
        *,
        agent: str | None = None,
        trace_id: str | None = None,
        kind: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_seq: int | None = None,
    ) -> int:
        """Write the matching records to ``out`` as JSON lines (seq, at, kind, agent, team_id,
        trace_id, body, prev_hash, hash); returns how many."""
        n = 0
        async for record in self.records(
            agent=agent, trace_id=trace_id, kind=kind, since=since, until=until, after_seq=after_seq
        ):
            out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
        return n

    # -- verification ----------------------------------------------------------------------------

    async def verify(self, jwks: dict[str, Any] | None = None) -> AuditReport:
        """Check every record and checkpoint (signatures against ``jwks``; None: roots only) and
        name each problem (see the module docstring)."""
        async with self.engine.connect() as conn:
            ckpts = (await conn.execute(select(_C).order_by(_C.c.seq))).all()
        scan = await self._scan([c.seq for c in ckpts])
        problems = list(scan.problems)
        if not scan.clean:
            problems += _classify(scan)
        found, verified, unverifiable = _check_checkpoints(ckpts, scan, jwks, problems)
        problems = sorted({(p.seq, p.kind, p.detail): p for p in problems + found}.values(), key=_order)
        return AuditReport(not problems, len(scan.S), len(ckpts), problems, verified, unverifiable)

    async def _scan(self, ckpt_seqs: list[int]) -> _Scan:
        scan = _Scan()
        tree = merkle.Accumulator()
        want, w = ckpt_seqs, 0
        prev_h, prev_s, prev_at = _GENESIS_B, 0, -math.inf
        last = 0
        cols = (
            _R.c.seq,
            _R.c.at,
            _R.c.kind,
            _R.c.agent,
            _R.c.team_id,
            _R.c.trace_id,
            _R.c.body,
            _R.c.prev_hash,
            _R.c.hash,
        )
        while True:
            async with self.engine.connect() as conn:
                q = select(*cols).where(_R.c.seq > last).order_by(_R.c.seq).limit(_PAGE)
                rows = (await conn.execute(q)).all()
            for r in rows:
                while w < len(want) and want[w] < r.seq:  # a checkpoint's own record is missing
                    scan.roots[want[w]] = (tree.root().hex(), None)
                    w += 1
                h = _hash_bytes(r.hash)
                p = _hash_bytes(r.prev_hash)
                i = len(scan.S)
                seq, at = scan.check_row(i, r)
                scan.S.append(r.seq)
                scan.L.append(seq)
                scan.H += h
                scan.at.append(at)
                if p != prev_h:
                    scan.broken[i] = p
                    scan.clean = False
                if seq != r.seq or r.seq != prev_s + 1 or at < prev_at:
                    scan.clean = False
                tree.add(h)
                while w < len(want) and want[w] == r.seq:
                    scan.roots[want[w]] = (tree.root().hex(), r.hash)
                    w += 1
                prev_h, prev_s, prev_at = h, r.seq, at
            if len(rows) < _PAGE:
                break
            last = rows[-1].seq
        return scan


_CKPT_OPTIONS: dict[str, Any] = {
    "require": ["seq", "root", "head_hash"],
    "verify_exp": False,
    "verify_iat": False,
    "verify_nbf": False,
    "verify_aud": False,
}


def _order(p: Problem) -> tuple[int, int]:
    return p.seq, PROBLEM_KINDS.index(p.kind)


def _record_json(r: Any) -> dict[str, Any]:
    try:
        body = json.loads(r.body).get("body")
    except (ValueError, AttributeError):
        body = None
    return {
        "seq": r.seq,
        "at": iso(_aware(r.at)),
        "kind": r.kind,
        "agent": r.agent,
        "team_id": r.team_id,
        "trace_id": r.trace_id,
        "body": body,
        "prev_hash": r.prev_hash,
        "hash": r.hash,
    }


def _hash_bytes(value: Any) -> bytes:
    """A stored hash as 32 bytes; one that is not 64 hex digits as a value no real hash equals."""
    if isinstance(value, str) and len(value) == 64:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    return hashlib.sha256(b"not a hash:" + str(value).encode()).digest()


def _timestamp(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


@dataclass
class _Scan:
    """The records in seq (row) order, compactly: rows' seq ``S``, records' own seq ``L`` (-1: not
    readable), hashes ``H`` (32 bytes each), times; prev hashes only where they are not the row
    before's hash; the problems of single rows."""

    S: array[int] = field(default_factory=lambda: array("q"))
    L: array[int] = field(default_factory=lambda: array("q"))
    H: bytearray = field(default_factory=bytearray)
    at: array[float] = field(default_factory=lambda: array("d"))
    broken: dict[int, bytes] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    bad: set[int] = field(default_factory=set)  # rows with a problem of their own
    roots: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # checkpoint seq: root, head
    clean: bool = True

    def h(self, i: int) -> bytes:
        return bytes(self.H[32 * i : 32 * i + 32])

    def p(self, i: int) -> bytes:
        if i in self.broken:
            return self.broken[i]
        return self.h(i - 1) if i else _GENESIS_B

    def edited(self, i: int, seq: int, detail: str) -> None:
        self.problems.append(Problem(seq, "edited", detail))
        self.bad.add(i)
        self.clean = False

    def check_row(self, i: int, r: Any) -> tuple[int, float]:
        """A row's own checks; its record's seq and time (-1 and NaN when the body is unreadable)."""
        if not isinstance(r.hash, str) or chain_hash(str(r.prev_hash), str(r.body).encode()) != r.hash:
            self.edited(
                i,
                r.seq,
                "its content does not hash to its stored hash: the row was changed after it was written",
            )
        try:
            d = json.loads(r.body)
            seq, at_text = d["seq"], d["at"]
            if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(at_text, str):
                raise TypeError("seq or at of the wrong type")
            at = _timestamp(at_text)
        except (ValueError, TypeError, KeyError) as exc:
            self.edited(i, r.seq, f"its body is not an audit record ({type(exc).__name__})")
            return -1, math.nan
        column_at = iso(_aware(r.at))
        differ = [
            f"{name} (column {col!r}, body {val!r})"
            for name, col, val in (
                ("kind", r.kind, d.get("kind")),
                ("agent", r.agent, d.get("agent")),
                ("team_id", r.team_id, d.get("team_id")),
                ("trace_id", r.trace_id, d.get("trace_id")),
                ("at", column_at, at_text),
            )
            if col != val
        ]
        if differ:
            self.edited(i, r.seq, "its columns disagree with its hashed body: " + "; ".join(differ))
        return seq, at


# Rows' roles in the chain, as the walk in ``_classify`` finds them.
_PLACED, _AHEAD, _BACK, _DUP, _FORGED = range(5)


class _Gaps:
    """Record numbers missing so far, as sorted half-open ranges."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, a: int, b: int) -> None:
        if a < b:
            self.starts.append(a)
            self.ends.append(b)

    def take(self, n: int) -> bool:
        """Remove ``n`` if it is missing (it turned up elsewhere); whether it was."""
        k = bisect.bisect_right(self.starts, n) - 1
        if k < 0 or n >= self.ends[k]:
            return False
        a, b = self.starts[k], self.ends[k]
        del self.starts[k], self.ends[k]
        for lo, hi in ((n + 1, b), (a, n)):
            if lo < hi:
                self.starts.insert(k, lo)
                self.ends.insert(k, hi)
        return True

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self.starts, self.ends, strict=True))


def _classify(t: _Scan) -> list[Problem]:
    """The chain's problems, from the records' own numbers (covered by their hashes) and the links.

    Walk the rows in seq order, expecting record 1, 2, 3, ...: a row holding the expected record is
    in place; one holding a later number starts a gap (records missing) when the next row goes on
    from it, and is a record stored ahead of its place when it doesn't; one holding an earlier
    number fills a gap (stored after its place) or repeats a number (one of the two was inserted:
    the next record chains to the other). Then every present record's prev_hash must be its
    predecessor's hash."""
    n = len(t.S)
    L = array("q", t.L)
    role = bytearray(n)
    gaps = _Gaps()
    ahead: dict[int, int] = {}  # record number -> row, for records stored ahead of their place
    expect, last = 1, -1  # the next record number; the row holding record expect - 1 (-1: genesis)
    dups: list[int] = []

    def last_hash() -> bytes:
        return t.h(last) if last >= 0 else _GENESIS_B

    def settle() -> None:  # numbers already seen ahead of their place are not waited for
        nonlocal expect, last
        while expect in ahead:
            last = ahead[expect]
            expect += 1

    for i in range(n):
        if L[i] < 1:  # unreadable (reported): take it as the record expected here
            L[i] = expect
        num = L[i]
        if num == expect:
            role[i], last, expect = _PLACED, i, expect + 1
            settle()
        elif num in ahead:
            role[i] = _DUP
            dups.append(i)
        elif num > expect:
            nxt = L[i + 1] if i + 1 < n else None
            if t.p(i) == last_hash():
                role[i] = _FORGED  # says it is a later record, yet chains straight after the last one
            elif nxt is None or nxt > num or nxt == -1:  # the rows after go on from it: a gap
                for lo, hi in _without(expect, num, ahead):
                    gaps.add(lo, hi)
                role[i], last, expect = _PLACED, i, num + 1
                settle()
            else:
                role[i] = _AHEAD
                ahead[num] = i
        elif gaps.take(num):
            role[i] = _BACK
        else:
            role[i] = _DUP
            dups.append(i)

    # Which row holds each record (the numbers below ``expect`` are the chain's).
    rec = array("q", [-1]) * (expect + 1)
    for i in range(n):
        if role[i] in (_PLACED, _BACK) or (role[i] == _AHEAD and L[i] < expect):
            rec[L[i]] = i
    problems: list[Problem] = []
    intruders: set[int] = set()
    for i in dups:
        num = L[i]
        j = rec[num] if num < expect else -1
        if j < 0:
            intruders.add(i)
            problems.append(
                Problem(
                    t.S[i], "inserted", f"row {t.S[i]} repeats record {num}, which the chain does not reach"
                )
            )
            continue
        genuine = _genuine(t, rec, num, i, j, expect)
        loser = j if genuine == i else i
        rec[num] = genuine
        intruders.add(loser)
        copy = " (a copy of it)" if t.h(i) == t.h(j) else ""
        problems.append(
            Problem(
                t.S[loser],
                "inserted",
                f"row {t.S[loser]} claims record {num}{copy}, but the chain runs through row {t.S[genuine]}",
            )
        )
    for i in range(n):
        if role[i] == _FORGED:
            intruders.add(i)
            problems.append(
                Problem(
                    t.S[i],
                    "inserted",
                    f"row {t.S[i]} claims to be record {L[i]}, yet chains straight after the record before "
                    "it: "
                    "the log never wrote it",
                )
            )
        elif role[i] == _AHEAD and L[i] >= expect:
            intruders.add(i)
            problems.append(
                Problem(t.S[i], "inserted", f"row {t.S[i]} claims record {L[i]}, beyond the chain's end")
            )

    for a, b in gaps.ranges():
        what = f"record {a} is" if b - a == 1 else f"records {a}..{b - 1} are"
        problems.append(
            Problem(a, "deleted", f"{what} missing: the chain goes from record {a - 1} to record {b}")
        )

    def at_row(num: int) -> str:
        return f"row {t.S[rec[num]]}" if 0 < num < expect and rec[num] >= 0 else "nowhere"

    for i in range(n):
        if role[i] in (_AHEAD, _BACK) and i not in intruders and rec[L[i]] == i:
            num = L[i]
            problems.append(
                Problem(
                    t.S[i],
                    "reordered",
                    f"row {t.S[i]} holds record {num}, out of chain order "
                    f"(record {num - 1} is at {at_row(num - 1)}, record {num + 1} at {at_row(num + 1)})",
                )
            )

    # Links and times, record by record.
    prev = -2  # the row of the record before (-2: genesis, -1: missing)
    for num in range(1, expect):
        i = rec[num]
        if i < 0:
            prev = -1
            continue
        if prev != -1:
            want = _GENESIS_B if prev == -2 else t.h(prev)
            if t.p(i) != want and i not in t.bad and prev not in t.bad:
                if prev == -2:
                    problems.append(
                        Problem(t.S[i], "edited", "record 1 does not start from the genesis hash")
                    )
                    t.bad.add(i)
                else:
                    problems.append(
                        Problem(
                            t.S[prev],
                            "edited",
                            f"its hash changed after record {num} (row {t.S[i]}) was chained to it: "
                            "it was edited and re-hashed",
                        )
                    )
                    t.bad.add(prev)
            elif prev >= 0 and t.at[i] < t.at[prev] and i not in t.bad and prev not in t.bad:
                problems.append(
                    Problem(
                        t.S[i],
                        "reordered",
                        f"record {num} is stamped earlier than record {num - 1}, which it follows",
                    )
                )
        prev = i

    # Rows renumbered away from their records' own seq (not explained by rows gone or added).
    shift, before, before_num = 0, -1, 0
    displaced = {i for i in range(n) if role[i] in (_AHEAD, _BACK)} | intruders
    in_place = [i for i in range(n) if i not in displaced and rec[L[i]] == i]
    for k, i in enumerate(in_place):
        d = t.S[i] - L[i]
        if d != shift:
            event = i - before > 1 or L[i] - before_num > 1
            isolated = k + 1 < len(in_place) and t.S[in_place[k + 1]] - L[in_place[k + 1]] == shift
            if not event and not isolated:
                problems.append(
                    Problem(
                        t.S[i],
                        "edited",
                        f"rows from {t.S[i]} on are numbered {d:+d} from their records' own seq: renumbered",
                    )
                )
            if not isolated:
                shift = d
        before, before_num = i, L[i]
    return problems


def _without(lo: int, hi: int, ahead: dict[int, int]) -> list[tuple[int, int]]:
    """``[lo, hi)`` less the numbers seen ahead of their place."""
    out, start = [], lo
    for num in sorted(k for k in ahead if lo <= k < hi):
        out.append((start, num))
        start = num + 1
    out.append((start, hi))
    return [(a, b) for a, b in out if a < b]


def _genuine(t: _Scan, rec: array[int], num: int, i: int, j: int, expect: int) -> int:
    """Of two rows claiming record ``num``, the one the chain goes through."""
    succ = rec[num + 1] if num + 1 < expect else -1
    if succ >= 0:
        if t.p(succ) == t.h(i) != t.h(j):
            return i
        if t.p(succ) == t.h(j):
            return j
    pred = rec[num - 1] if num > 1 else -2
    if pred != -1:
        want = _GENESIS_B if pred == -2 else t.h(pred)
        if t.p(i) == want and t.p(j) != want:
            return i
    return j


def _signed_claims(c: Any, jwks: dict[str, Any] | None) -> tuple[str, str, dict[str, Any] | None]:
    """(state, why, claims) of a checkpoint's JWS: ``ok``, ``bad``, ``unknown`` (key not in the
    JWKS: claims read unverified) or ``unchecked`` (no JWKS given)."""
    try:
        header = jwt.get_unverified_header(c.signature)
        loose = jwt.decode(c.signature, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        return "bad", f"its signature is not a JWS ({exc})", None
    if header.get("alg") != ALG or header.get("typ") != CHECKPOINT_TYP:
        return (
            "bad",
            f"its signature is not a checkpoint's (alg {header.get('alg')!r}, typ {header.get('typ')!r})",
            None,
        )
    kid = header.get("kid")
    if kid != c.kid:
        return "bad", f"its row names key {c.kid!r}, its signature key {kid!r}", None
    if jwks is None:
        return "unchecked", "", loose
    jwk = next((k for k in jwks.get("keys", []) if isinstance(k, dict) and k.get("kid") == kid), None)
    if jwk is None:
        return "unknown", f"signed with key {kid!r}, which the JWKS does not hold", loose
    try:
        claims = jwt.decode(c.signature, jwt.PyJWK(jwk, ALG).key, algorithms=[ALG], options=_CKPT_OPTIONS)
    except jwt.PyJWTError as exc:
        return "bad", f"its signature does not verify with key {kid!r} ({type(exc).__name__}: {exc})", None
    return "ok", "", claims


def _check_checkpoints(
    ckpts: list[Any], t: _Scan, jwks: dict[str, Any] | None, record_problems: list[Problem]
) -> tuple[list[Problem], int, int]:
    """The checkpoints' problems, the highest seq a verified checkpoint vouches for, and how many
    could not be checked (keys retired)."""
    end = max(t.S[-1] if len(t.S) else 0, max(t.L, default=0))  # renumbered rows keep their numbers
    first_record_problem = min((p.seq for p in record_problems), default=math.inf)
    problems: list[Problem] = []
    states: list[tuple[Any, str, str]] = []
    for c in ckpts:
        state, why, claims = _signed_claims(c, jwks)
        if claims is not None:
            signed = {f: claims.get(f) for f in ("seq", "root", "head_hash")}
            differ = [f for f, v in signed.items() if v != getattr(c, f)]
            if differ:
                state, why = (
                    "bad",
                    "its row's " + ", ".join(differ) + " differ from what its signature covers",
                )
        states.append((c, state, why))
    oldest_ok = min((c.seq for c, state, _ in states if state == "ok"), default=math.inf)
    newest = ckpts[-1] if ckpts else None
    verified, unverifiable = 0, 0
    for c, state, why in states:
        if state == "bad":
            problems.append(Problem(c.seq, "checkpoint", why))
            continue
        if state == "unknown":
            if c.seq > oldest_ok:
                problems.append(
                    Problem(
                        c.seq,
                        "checkpoint",
                        f"{why}, though the key of the older checkpoint at {oldest_ok} is still published: "
                        "keys are retired oldest first, so m2a never signed this one",
                    )
                )
                continue
            unverifiable += 1
        if c.seq > end:
            if c is newest:
                problems.append(
                    Problem(
                        end + 1,
                        "truncated",
                        f"records {end + 1}..{c.seq} are missing: the checkpoint at {c.seq} covers them, "
                        f"the log ends at {end}",
                    )
                )
            continue
        root, head = t.roots.get(c.seq, (None, None))
        if root != c.root or head != c.head_hash:
            if first_record_problem > c.seq:
                what = "root" if root != c.root else "head hash"
                problems.append(
                    Problem(
                        c.seq,
                        "checkpoint",
                        f"its {what} does not match records 1..{c.seq}: "
                        "the records were changed after it was signed",
                    )
                )
            continue
        if state == "ok":
            verified = max(verified, c.seq)
    return problems, verified, unverifiable
