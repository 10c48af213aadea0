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

``redact(text, findings)`` masks the spans (``[EMAIL]``, ``[SECRET]``…) and ``redact_messages`` does
the same in a copy of the messages. Neither returns, logs nor describes the values themselves.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from m2a.guardrails.base import Context, Detector, Finding
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
                "examined": self.examined, "total": self.total}  # fmt: skip


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


def check(detectors: Sequence[Detector], content: str | Sequence[Any], budget: Budget | None = None, *,
          context: Context | None = None) -> Result:  # fmt: skip
    """Run ``detectors`` over ``content`` (a text or chat messages) within ``budget``."""
    budget = budget or Budget()
    ctx = context or Context()
    items = pieces(content)
    result = Result(total=sum(len(t) for _, _, t in items))
    left = budget.max_chars
    short = False
    prepared: list[tuple[Piece, Prepared]] = []
    for piece in reversed(items):  # newest first: when the budget runs out, old history is left out
        text = piece[2]
        if left <= 0:
            short = short or bool(text)
            continue
        if len(text) > left:
            text, short = text[:left], True
        left -= len(text)
        prep = prepare(text, depth=budget.decode_depth, max_decoded=budget.max_decoded)
        short = short or prep.truncated
        prepared.append((piece, prep))
    result.examined = budget.max_chars - left
    for det in detectors:
        name = getattr(det, "name", type(det).__name__)
        if short:
            result.over_budget.append(name)
        try:
            for (msg, part, _), prep in prepared:
                got = det.check(ctx, prep)
                if got is None:
                    continue
                for f in got:
                    if not _valid(f, len(prep.original)):
                        raise TypeError("malformed finding")
                    result.findings.append(f if msg is None else replace(f, message=msg, part=part))
        except Exception as exc:  # a detector's crash is a result, never the caller's exception
            result.errors[name] = type(exc).__name__
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
