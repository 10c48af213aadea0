"""The audit log's verifier: every record and checkpoint checked, each problem named (``audit.py``
describes the log, the problem kinds and the decisions about retired keys).

``verify_log`` reads the records a page at a time in seq order and keeps, per record, its row's
seq, its own seq (from its hashed body), its time and its hash — arrays of about 56 bytes a record
— plus the prev hashes that are not the previous row's hash, and the Merkle root at each
checkpoint's seq (an ``Accumulator``: no leaves kept). An untouched log is recognised on the way
(every row consecutive, chained, its body's seq its row's); only a log with something off is
classified (``_classify``): from the records' own numbers, which their hashes cover, it tells rows
in place from gaps (deleted), rows out of order (reordered) and rows the chain does not go through
(inserted), then checks every present record's link to its predecessor (edited and re-hashed).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from array import array
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jwt
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.store.schema import AuditCheckpointRow, AuditRecordRow
from m2a.trust import merkle
from m2a.trust.audit import (
    CHECKPOINT_OPTIONS,
    CHECKPOINT_TYP,
    PROBLEM_KINDS,
    AuditReport,
    Problem,
    aware,
    chain_hash,
    iso,
)
from m2a.trust.signing import ALG

_R = AuditRecordRow.__table__
_C = AuditCheckpointRow.__table__
_PAGE = 5000
_GENESIS_B = bytes(32)


async def verify_log(engine: AsyncEngine, jwks: dict[str, Any] | None = None) -> AuditReport:
    """Check every record and checkpoint of the log in ``engine`` (signatures against ``jwks``;
    None: roots only)."""
    async with engine.connect() as conn:
        ckpts = (await conn.execute(select(_C).order_by(_C.c.seq))).all()
    scan = await _scan(engine, [c.seq for c in ckpts])
    problems = list(scan.problems)
    if not scan.clean:
        problems += _classify(scan)
    found, verified, unverifiable = _check_checkpoints(ckpts, scan, jwks, problems)
    problems = sorted({(p.seq, p.kind, p.detail): p for p in problems + found}.values(), key=_order)
    return AuditReport(not problems, len(scan.S), len(ckpts), problems, verified, unverifiable)


async def _scan(engine: AsyncEngine, ckpt_seqs: list[int]) -> _Scan:
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
        async with engine.connect() as conn:
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


def _order(p: Problem) -> tuple[int, int]:
    return p.seq, PROBLEM_KINDS.index(p.kind)


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
            if not 0 < seq < 2**62:
                raise ValueError("seq out of range")
            at = _timestamp(at_text)
        except (ValueError, TypeError, KeyError, OverflowError, OSError) as exc:
            self.edited(i, r.seq, f"its body is not an audit record ({type(exc).__name__})")
            return -1, math.nan
        column_at = iso(aware(r.at))
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
        claims = jwt.decode(
            c.signature, jwt.PyJWK(jwk, ALG).key, algorithms=[ALG], options=CHECKPOINT_OPTIONS
        )
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
