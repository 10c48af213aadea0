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

**Verification** (``verify(jwks)``, in ``audit_verify.py``) walks every record in seq order, a page
at a time, keeping per record only its seq numbers, its time and its hash (about 56 bytes: 56 MB
for a million records), and names each problem as a ``Problem(seq, kind, detail)``:

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
every checkpoint leaves a chain that verifies. Against those, keep copies outside the store: the
newest checkpoint's JWS (its root covers every record up to it) or an ``m2a audit export``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import jwt
import rfc8785
from sqlalchemy import Select, func, insert, select, text, update
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


def aware(at: datetime) -> datetime:
    """``at`` in UTC; a naive time (SQLite gives those back) is taken as UTC."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


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

    async def _locked_head(self, conn: AsyncConnection) -> Any:
        """Take the log's write lock, then read the last record (seq, hash, at; None when empty)."""
        if conn.dialect.name == "postgresql":
            await conn.execute(text(f"SELECT pg_advisory_xact_lock({_PG_LOCK})"))
            last = select(_R.c.seq, _R.c.hash, _R.c.at).order_by(_R.c.seq.desc()).limit(1)
            return (await conn.execute(last)).first()
        # SQLite: a write statement first takes the database's write lock, held until commit (others
        # wait on it); this one writes nothing new and returns the last record, one round trip.
        newest = select(func.max(_R.c.seq)).scalar_subquery()
        touch = update(_R).where(_R.c.seq == newest).values(seq=_R.c.seq)
        return (await conn.execute(touch.returning(_R.c.seq, _R.c.hash, _R.c.at))).first()

    async def _write(self, groups: list[list[_Prepared]]) -> list[list[AuditEntry]]:
        try:
            async with self.engine.begin() as conn:
                head = await self._locked_head(conn)
                now = datetime.now(UTC)
                seq, prev, at = 0, GENESIS, now
                if head is not None:
                    seq, prev = head.seq, head.hash
                    last_at = aware(head.at)
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
        waited = (datetime.now(UTC) - aware(first)).total_seconds()
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
                latest.signature, jwt.PyJWK(jwk, ALG).key, algorithms=[ALG], options=CHECKPOINT_OPTIONS
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
        team_id: int | None = None,
    ) -> Select[Any]:
        q = select(_R)
        if team_id is not None:
            q = q.where(_R.c.team_id == team_id)
        if agent is not None:
            q = q.where(_R.c.agent == agent)
        if trace_id is not None:
            q = q.where(_R.c.trace_id == trace_id)
        if kind is not None:
            q = q.where(_R.c.kind == kind)
        if since is not None:
            q = q.where(_R.c.at >= aware(since))
        if until is not None:
            q = q.where(_R.c.at < aware(until))
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
        team_id: int | None = None,
        before_seq: int | None = None,
    ) -> list[dict[str, Any]]:
        """Records matching every filter given, in seq order: the first ``limit`` after ``after_seq``,
        or (without it) the newest ``limit`` (below ``before_seq`` when given: paging back). ``until``
        is exclusive; ``team_id``: one team's records."""
        limit = max(1, min(limit, 10_000))
        q = self._filtered(agent, trace_id, kind, since, until, team_id)
        if before_seq is not None:
            q = q.where(_R.c.seq < before_seq)
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
        name each problem (see the module docstring and ``audit_verify.py``)."""
        from m2a.trust.audit_verify import verify_log  # it builds on this module's record format

        return await verify_log(self.engine, jwks)


CHECKPOINT_OPTIONS: dict[str, Any] = {
    "require": ["seq", "root", "head_hash"],
    "verify_exp": False,
    "verify_iat": False,
    "verify_nbf": False,
    "verify_aud": False,
}


def _record_json(r: Any) -> dict[str, Any]:
    try:
        body = json.loads(r.body).get("body")
    except (ValueError, AttributeError):
        body = None
    return {
        "seq": r.seq,
        "at": iso(aware(r.at)),
        "kind": r.kind,
        "agent": r.agent,
        "team_id": r.team_id,
        "trace_id": r.trace_id,
        "body": body,
        "prev_hash": r.prev_hash,
        "hash": r.hash,
    }
