"""Running detectors over a text or a list of chat messages: ``check``, ``Result``, ``redact``.

``check(detectors, text_or_messages, budget, context=...)`` normalises each piece of text once,
calls every detector on it, and gathers one ``Result``:

- ``findings``: what was found, spans into each piece's original text (with ``message`` / ``part``
  set for messages), overlapping duplicates of one kind merged;
- ``errors``: detectors that raised or returned something malformed, with the exception's class
  name only (a message could quote the text); the runner never lets an exception through — the
  policy decides whether an error fails open or closed; what such a detector found in the pieces
  before the one it failed on is kept;
- ``over_budget``: detectors that could not examine all of the text: ``Budget.max_chars`` characters
  are examined per call (the newest messages first, so history is what is left out), plus at most
  ``Budget.max_decoded`` bytes of decoded base64 / hex; the rest is not silently skipped but
  reported here, with ``examined`` and ``total``, for the caller to decide.

``acheck(...)`` (async) does the same with async detectors too (``base.is_async``): the text is
prepared once as for ``check``, the sync detectors run as ``check`` runs them, the async ones
concurrently, each within a timeout (``timeout_s``, or a ``{name: seconds}`` map with ``"*"`` for the
rest); one past it is cancelled and recorded in ``errors`` (``"TimeoutError"``) and ``timed_out``.
``check`` itself never waits on I/O: an async detector given to it is recorded in ``errors`` as
``"NeedsAsync"`` (the stream rails, sync per chunk, skip such detectors knowingly).

``Memo``: with a memo and a *scope* (the tenant whose texts they are), a piece of text the sync
detectors examined before, in the same scope and context, is not examined again: its findings are
replayed (a chat's history is resent with every turn). ``Policy`` keeps one per profile.

``redact(text, findings)`` masks the spans (``[EMAIL]``, ``[SECRET]``…) and ``redact_messages`` does
the same in a copy of the messages. Neither returns, logs nor describes the values themselves.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from m2a.guardrails.base import AnyDetector, AsyncDetector, Context, Detector, Finding, is_async
from m2a.guardrails.normalize import Prepared, prepare


@dataclass(frozen=True, slots=True)
class Budget:
    """How much one ``check`` call examines."""

    max_chars: int = 32_768  # characters of original text, all pieces together
    max_decoded: int = 16_384  # bytes decoded from base64 / hex runs, per piece
    decode_depth: int = 2  # base64 inside base64 ...


@dataclass(slots=True)
class Result:
    findings: list[Finding] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # detector -> exception class name
    over_budget: list[str] = field(default_factory=list)  # detectors that did not see all the text
    timed_out: list[str] = field(default_factory=list)  # async detectors stopped at their timeout
    examined: int = 0  # characters examined
    total: int = 0  # characters given

    @property
    def flagged(self) -> bool:
        return bool(self.findings)

    @property
    def complete(self) -> bool:
        """Every detector ran without error over all of the text."""
        return not self.errors and not self.over_budget

    def categories(self) -> set[str]:
        return {f.category for f in self.findings}

    def summary(self) -> dict[str, Any]:
        """A loggable summary: counts by category and kind, no spans of text, no values."""
        kinds: dict[str, int] = {}
        for f in self.findings:
            kinds[f"{f.category}.{f.kind}"] = kinds.get(f"{f.category}.{f.kind}", 0) + 1
        return {"findings": kinds, "errors": dict(self.errors), "over_budget": list(self.over_budget),
                "timed_out": list(self.timed_out), "examined": self.examined,
                "total": self.total}  # fmt: skip


Piece = tuple[int | None, int | None, str]  # message index, part index, text


def pieces(content: str | Sequence[Any]) -> list[Piece]:
    """The texts of a string, or of chat messages (``content`` a string or a list of parts with
    ``{"type": "text", "text": ...}``; tool calls' ``arguments`` too)."""
    if isinstance(content, str):
        return [(None, None, content)]
    out: list[Piece] = []
    for i, msg in enumerate(content):
        if isinstance(msg, str):
            out.append((i, None, msg))
            continue
        body = msg.get("content") if isinstance(msg, dict) else getattr(msg, "content", None)
        if isinstance(body, str):
            out.append((i, None, body))
        elif isinstance(body, list):
            for j, part in enumerate(body):
                text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
                if isinstance(text, str):
                    out.append((i, j, text))
        calls = msg.get("tool_calls") if isinstance(msg, dict) else None
        for k, call in enumerate(calls or []):
            args = (call.get("function") or {}).get("arguments") if isinstance(call, dict) else None
            if isinstance(args, str):
                out.append((i, -1 - k, args))  # part -1, -2, ...: the message's tool calls
    return out


def _valid(f: Any, n: int) -> bool:
    return (isinstance(f, Finding) and 0 <= f.start <= f.end <= n and 0.0 <= f.score <= 1.0
            and isinstance(f.description, str))  # fmt: skip


_Prepped = list[tuple[Piece, Prepared]]


@dataclass(frozen=True, slots=True)
class _Seen:
    """What the sync detectors found in one piece of text (``found[i]``: detector i's answer)."""

    truncated: bool
    found: tuple[tuple[Finding, ...] | None, ...]


class Memo:
    """What the sync detectors found in texts they have already examined, so that a text sent again
    (a chat's history, resent with every turn; an agent's system prompt and tool results) is not
    examined again: a bounded LRU of ``max_entries``, kept by a ``Policy``.

    An entry is keyed by the scope (the caller's tenant: one tenant's texts never answer for
    another's), the detectors, the direction, and BLAKE2b digests of the system prompt and of the
    text: no text is kept. Only built-in style sync detectors are memoised (they are pure
    functions of the text and the context); async ones (a model as judge, a remote service) always
    run, and a call in which a detector failed stores nothing. Texts longer than ``max_chars`` are
    not memoised.
    """

    def __init__(self, max_entries: int = 4096, max_chars: int = 65_536) -> None:
        self.max_entries = max_entries
        self.max_chars = max_chars
        self._seen: OrderedDict[tuple[Any, ...], _Seen] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._seen)

    @staticmethod
    def prefix(
        scope: str, detectors: Sequence[Any], ctx: Context, budget: Budget
    ) -> tuple[Any, ...] | None:
        """What every key of one call shares; None when the context cannot be keyed (``extra``).
        Detectors are told apart by identity: they must live as long as the memo (a ``Policy``'s do).
        The decode budget is part of it: it decides what the detectors saw of an encoded run."""
        if ctx.extra:
            return None
        sp = ctx.system_prompt
        digest = None if sp is None else _digest(sp)
        decoding = (budget.max_decoded, budget.decode_depth)
        return (scope, tuple(map(id, detectors)), ctx.direction, digest, decoding)

    @staticmethod
    def key(prefix: tuple[Any, ...], text: str) -> tuple[Any, ...]:
        return (*prefix, _digest(text))

    def get(self, key: tuple[Any, ...]) -> _Seen | None:
        seen = self._seen.get(key)
        if seen is None:
            self.misses += 1
            return None
        self.hits += 1
        self._seen.move_to_end(key)
        return seen

    def put(self, key: tuple[Any, ...], seen: _Seen) -> None:
        self._seen[key] = seen
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _select(content: str | Sequence[Any], budget: Budget) -> tuple[Result, list[tuple[Piece, str]], bool]:
    """The pieces of ``content`` within ``budget`` (newest first), each with the text examined, the
    ``Result`` to fill (``total`` and ``examined`` set), and whether some of the text was left out."""
    items = pieces(content)
    result = Result(total=sum(len(t) for _, _, t in items))
    left = budget.max_chars
    short = False
    chosen: list[tuple[Piece, str]] = []
    for piece in reversed(items):  # newest first: when the budget runs out, old history is left out
        text = piece[2]
        if left <= 0:
            short = short or bool(text)
            continue
        if len(text) > left:
            text, short = text[:left], True
        left -= len(text)
        chosen.append((piece, text))
    result.examined = budget.max_chars - left
    return result, chosen, short


def _prep(text: str, budget: Budget) -> Prepared:
    return prepare(text, depth=budget.decode_depth, max_decoded=budget.max_decoded)


class _Pass:
    """The sync detectors' pass over the pieces of one call, memoised where a ``Memo`` is given:
    each piece is either seen before (its findings replayed) or prepared and examined."""

    def __init__(self, chosen: list[tuple[Piece, str]], budget: Budget, memo: Memo | None,
                 prefix: tuple[Any, ...] | None) -> None:  # fmt: skip
        self.budget = budget
        self.memo = memo if prefix is not None else None
        self.rows: list[tuple[Piece, str, Prepared | None, _Seen | None, tuple[Any, ...] | None]] = []
        short = False
        for piece, text in chosen:
            key = seen = None
            if self.memo is not None and prefix is not None and len(text) <= self.memo.max_chars:
                key = self.memo.key(prefix, text)
                seen = self.memo.get(key)
            prep = None if seen is not None else _prep(text, budget)
            short = short or (seen.truncated if seen is not None else prep.truncated)  # type: ignore[union-attr]
            self.rows.append((piece, text, prep, seen, key))
        self.short = short

    def prepared(self) -> _Prepped:
        """Every piece prepared (for detectors that are not memoised)."""
        out: _Prepped = []
        for i, (piece, text, prep, seen, key) in enumerate(self.rows):
            if prep is None:
                prep = _prep(text, self.budget)
                self.rows[i] = (piece, text, prep, seen, key)
            out.append((piece, prep))
        return out

    def run(self, sync: Sequence[Detector], ctx: Context, result: Result) -> None:
        fresh: list[list[tuple[Finding, ...] | None]] = [[] for _ in self.rows]
        failed = False
        for j, det in enumerate(sync):
            try:
                for i, (piece, text, prep, seen, _) in enumerate(self.rows):
                    if seen is not None:
                        got: Any = seen.found[j]
                    else:
                        assert prep is not None
                        got = det.check(ctx, prep)
                        got = None if got is None else tuple(got)
                    _collect(result.findings, got, piece, len(text))
                    if seen is None:
                        fresh[i].append(got)
            except Exception as exc:  # a detector's crash is a result, never the caller's exception
                result.errors[_name(det)] = type(exc).__name__
                failed = True
        if self.memo is None or failed:
            return
        for (_, _, prep, seen, key), found in zip(self.rows, fresh, strict=True):
            if seen is None and key is not None and prep is not None:
                self.memo.put(key, _Seen(prep.truncated, tuple(found)))


def _collect(out: list[Finding], got: Any, piece: Piece, n: int) -> None:
    """Validate one detector's answer for one piece of ``n`` characters and add its findings
    (message / part set)."""
    if got is None:
        return
    msg, part, _ = piece
    for f in got:
        if not _valid(f, n):
            raise TypeError("malformed finding")
        out.append(f if msg is None else replace(f, message=msg, part=part))


def _name(det: Any) -> str:
    return getattr(det, "name", type(det).__name__)


def check(detectors: Sequence[AnyDetector], content: str | Sequence[Any], budget: Budget | None = None,
          *, context: Context | None = None, memo: Memo | None = None,
          scope: str | None = None) -> Result:  # fmt: skip
    """Run ``detectors`` over ``content`` (a text or chat messages) within ``budget``. Async detectors
    are not run: each is recorded in ``errors`` as ``"NeedsAsync"`` (use ``acheck`` for them).
    With a ``memo`` and a ``scope`` (whose texts these are), texts examined before in that scope are
    not examined again (``Memo``)."""
    ctx = context or Context()
    b = budget or Budget()
    result, chosen, short = _select(content, b)
    sync: list[Detector] = []
    for det in detectors:
        if is_async(det):
            result.errors[_name(det)] = "NeedsAsync"
        else:
            sync.append(det)  # type: ignore[arg-type]
    one = _Pass(chosen, b, memo, _prefix(memo, scope, sync, ctx, b))
    if short or one.short:
        result.over_budget.extend(_name(d) for d in sync)
    one.run(sync, ctx, result)
    result.findings = merge(result.findings)
    return result


def _prefix(
    memo: Memo | None, scope: str | None, sync: Sequence[Detector], ctx: Context, budget: Budget
) -> tuple[Any, ...] | None:
    return Memo.prefix(scope, sync, ctx, budget) if memo is not None and scope is not None and sync else None


_GRACE_S = 0.1  # how long a cancelled detector is given to stop


def _error_of(task: asyncio.Future[Any]) -> str | None:
    if task.cancelled():
        return "CancelledError"
    exc = task.exception()
    return None if exc is None else type(exc).__name__


def _quiet(task: asyncio.Future[Any]) -> None:
    """Retrieve a late task's exception, so that asyncio does not log it (its message could quote
    the text)."""
    if not task.cancelled():
        task.exception()


async def _run_async(det: AsyncDetector, ctx: Context, prepared: _Prepped, timeout: float,
                     found: list[Finding]) -> str | None:  # fmt: skip
    """Run one async detector over every piece concurrently, within ``timeout`` seconds for all of
    them; findings go to ``found`` as each piece completes (so a timeout keeps what was found).
    Returns the error's class name, or None."""

    async def one(piece: Piece, prep: Prepared) -> None:
        got = await det.acheck(ctx, prep)
        _collect(found, got, piece, len(prep.original))

    tasks = [asyncio.ensure_future(one(piece, prep)) for piece, prep in prepared]
    if not tasks:
        return None
    try:
        _, pending = await asyncio.wait(tasks, timeout=timeout)
    except BaseException:  # the caller was cancelled: take the detector's calls down with it
        for t in tasks:
            t.cancel()
        raise
    if pending:
        for t in pending:
            t.cancel()
            t.add_done_callback(_quiet)  # a detector that ignores cancelling is not waited for
        await asyncio.wait(pending, timeout=_GRACE_S)
        return "TimeoutError"
    errors = [e for e in map(_error_of, tasks) if e is not None]
    return errors[0] if errors else None  # the first failing piece's, in piece order


async def acheck(detectors: Sequence[AnyDetector], content: str | Sequence[Any], budget: Budget | None = None,
                 *, context: Context | None = None,
                 timeout_s: float | Mapping[str, float] = 5.0, memo: Memo | None = None,
                 scope: str | None = None) -> Result:  # fmt: skip
    """``check`` for a mix of sync and async detectors: the text is prepared once, the sync detectors
    run as ``check`` runs them, the async ones concurrently (and with the sync ones), each within its
    own timeout — ``timeout_s`` seconds, or ``timeout_s[name]`` (``timeout_s["*"]`` for the others,
    else 5 s). A detector past its timeout is cancelled and recorded in ``errors`` as
    ``"TimeoutError"`` and in ``timed_out``; what it had found in the pieces it finished is kept.
    No detector's exception escapes."""
    ctx = context or Context()
    b = budget or Budget()
    result, chosen, short = _select(content, b)
    sync: list[Detector] = [d for d in detectors if not is_async(d)]  # type: ignore[misc]
    one = _Pass(chosen, b, memo, _prefix(memo, scope, sync, ctx, b))
    short = short or one.short
    if isinstance(timeout_s, Mapping):
        default = float(timeout_s.get("*", 5.0))
        limit = lambda name: float(timeout_s.get(name, default))  # noqa: E731
    else:
        limit = lambda name: float(timeout_s)  # noqa: E731
    if short:
        result.over_budget.extend(_name(d) for d in detectors)
    runs: list[tuple[str, list[Finding], asyncio.Future[str | None]]] = []
    if len(sync) < len(detectors):
        prepared = one.prepared()
        for det in detectors:
            if is_async(det):
                found: list[Finding] = []
                name = _name(det)
                fut = asyncio.ensure_future(_run_async(det, ctx, prepared, limit(name), found))
                runs.append((name, found, fut))
    one.run(sync, ctx, result)  # the sync ones meanwhile (cheap: they do not wait)
    if runs:
        try:
            await asyncio.wait([fut for _, _, fut in runs])
        except BaseException:
            for _, _, fut in runs:
                fut.cancel()
            raise
    for name, found, fut in runs:
        result.findings.extend(found)
        error = _error_of(fut) or fut.result()
        if error is not None:
            result.errors[name] = error
            if error == "TimeoutError":
                result.timed_out.append(name)
    result.findings = merge(result.findings)
    return result


def merge(findings: list[Finding]) -> list[Finding]:
    """One finding per place: of overlapping findings of the same category and kind in the same
    piece, the highest score is kept (the spans joined)."""
    out: list[Finding] = []
    key = lambda f: (f.message if f.message is not None else -1, f.part if f.part is not None else 0,  # noqa: E731
                     f.category, f.kind, f.start, -f.end)  # fmt: skip
    for f in sorted(findings, key=key):
        last = out[-1] if out else None
        if (last is not None and (last.message, last.part, last.category, last.kind)
                == (f.message, f.part, f.category, f.kind) and f.start < last.end):  # fmt: skip
            best = last if last.score >= f.score else f
            out[-1] = replace(best, start=last.start, end=max(last.end, f.end))
        else:
            out.append(f)
    return sorted(out, key=lambda f: (f.message if f.message is not None else -1, f.part or 0, f.start))


def redact(text: str, findings: Sequence[Finding]) -> str:
    """``text`` with each finding's span replaced by its mask (``[EMAIL]``, ``[SECRET]``…); overlapping
    spans become one, masked with the highest-scoring finding's label."""
    spans = sorted((f.start, f.end, f.score, f.mask) for f in findings if f.end > f.start)
    merged: list[list[Any]] = []
    for s, e, score, mask in spans:
        if merged and s < merged[-1][1]:
            top = merged[-1]
            top[1] = max(top[1], e)
            if score > top[2]:
                top[2], top[3] = score, mask
        else:
            merged.append([s, e, score, mask])
    out, pos = [], 0
    for s, e, _, mask in merged:
        out.append(text[pos:s])
        out.append(mask)
        pos = e
    out.append(text[pos:])
    return "".join(out)


def redact_messages(messages: Sequence[Any], findings: Sequence[Finding]) -> list[Any]:
    """A copy of chat ``messages`` with the findings (from ``check`` over them) masked."""
    out = copy.deepcopy(list(messages))
    groups: dict[tuple[int, int | None], list[Finding]] = {}
    for f in findings:
        if f.message is not None:
            groups.setdefault((f.message, f.part), []).append(f)
    for (i, j), fs in groups.items():
        msg = out[i]
        if isinstance(msg, str):
            out[i] = redact(msg, fs)
        elif j is None:
            msg["content"] = redact(msg["content"], fs)
        elif j >= 0:
            msg["content"][j]["text"] = redact(msg["content"][j]["text"], fs)
        else:
            fn = msg["tool_calls"][-1 - j]["function"]
            fn["arguments"] = redact(fn["arguments"], fs)
    return out
