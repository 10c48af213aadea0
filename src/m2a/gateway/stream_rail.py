"""Guardrails over a streamed answer: a sliding window with a bounded hold-back.

A ``StreamRail`` takes the SSE events of a chat or completion stream as they come from the engine
and keeps back the newest ``hold`` characters of each text channel (a choice's content or text, or
one tool call's arguments). Before an event is released to the client, every channel with new text
is checked over a window that reaches ``hold`` characters back into what was already sent, so a
finding that straddles the release point is still seen whole:

- ``deny``: the stream ends at once; the held text is never sent; the client gets a last chunk
  with ``finish_reason: "content_filter"``, an error event in OpenAI's shape (code
  ``content_filter``) and ``[DONE]``; the engine's request is aborted;
- ``modify``: the masked span (``[SECRET]``…) replaces the text in the held events (a span that
  began in text already sent is masked from the release point on);
- ``warn``: counted and traced once per finding.

The bound is the price: a finding longer than ``hold`` characters may be partly sent before it is
recognised, and the first text reaches the client ``hold`` characters late (the role chunk and
events without text are not held behind nothing). Checks run when the window first fills, then
whenever ``step`` new characters arrived (a quarter of the window, at least 16), and at the end of
the stream over everything still held: each character is checked about ``2 * hold / step`` times.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from m2a.gateway.errors import GatewayError
from m2a.guardrails.base import Context, Finding
from m2a.guardrails.policy import DECISIONS, Policy, Verdict

Channel = tuple[int, str, int]  # choice index, field (content, text, tool, tool_name), tool call index
MIN_STEP = 16  # new characters before the next check: at least this, else a quarter of the window


@dataclass
class Held:
    raw: bytes
    payload: dict[str, Any] | None
    segs: list[tuple[Channel, int, int]]  # the text this event adds: channel, [start, end)


def _direction(chan: Channel) -> str:
    return "tool" if chan[1] in ("tool", "tool_name") else "output"


class StreamRail:
    def __init__(
        self,
        policies: list[Policy],
        context: Context,
        hold: int,
        on_verdict: Callable[[Verdict], None],
        step: int | None = None,
    ) -> None:
        self.policies = policies
        self.context = context
        self.hold = hold
        self.step = step if step is not None else max(MIN_STEP, hold // 4)
        self.started = False  # something was released: the window has filled once
        self.on_verdict = on_verdict  # telemetry, once per policy and direction, at the end
        self.text: dict[Channel, str] = {}
        self.released: dict[Channel, int] = {}
        self.checked: dict[Channel, int] = {}
        self.masks: dict[Channel, list[tuple[int, int, str]]] = {}
        self.held: deque[Held] = deque()
        self.seen: set[tuple[Channel, int, int, str, str]] = set()  # findings already counted
        self.summary: dict[tuple[str, str], Verdict] = {}  # (policy, direction) -> the stream's verdict
        self.template: dict[str, Any] = {}
        self.completion = False  # choices carry "text" (completions), not "delta"
        self.indexes: set[int] = set()
        self.pending = 0  # characters since the last check
        self.blocked: Verdict | None = None

    # -- input -------------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """Complete SSE events in; what may be sent now out (raises ``Blocked`` to end the stream)."""
        for raw in _events(data):
            self._add(raw)
        if self.pending >= self.step or (self.pending and not self.started and self._filled()):
            self._check(final=False)
        return self._release(final=False)

    def finish(self) -> bytes:
        """The engine's stream ended: check and send everything still held."""
        if self.held:
            self._check(final=True)
        out = self._release(final=True)
        self._report()
        return out

    def _add(self, raw: bytes) -> None:
        payload = _payload(raw)
        segs: list[tuple[Channel, int, int]] = []
        if payload is not None:
            self.template = {k: payload[k] for k in ("id", "object", "created", "model") if k in payload}
            for choice in payload.get("choices") or []:
                if not isinstance(choice, dict):
                    continue
                i = choice.get("index", 0) if isinstance(choice.get("index", 0), int) else 0
                self.indexes.add(i)
                if isinstance(choice.get("text"), str):
                    self.completion = True
                    segs.append(self._append((i, "text", 0), choice["text"]))
                delta = choice.get("delta")
                if not isinstance(delta, dict):
                    continue
                if isinstance(delta.get("content"), str):
                    segs.append(self._append((i, "content", 0), delta["content"]))
                for k, call in enumerate(delta.get("tool_calls") or []):
                    fn = call.get("function") if isinstance(call, dict) else None
                    if not isinstance(fn, dict):
                        continue
                    j = call.get("index", k) if isinstance(call.get("index", k), int) else k
                    if isinstance(fn.get("name"), str):  # checked (a deny list of tools), never masked
                        segs.append(self._append((i, "tool_name", j), fn["name"]))
                    if isinstance(fn.get("arguments"), str):
                        segs.append(self._append((i, "tool", j), fn["arguments"]))
        self.held.append(Held(raw, payload, [s for s in segs if s[2] > s[1]]))

    def _append(self, chan: Channel, piece: str) -> tuple[Channel, int, int]:
        start = len(self.text.get(chan, ""))
        self.text[chan] = self.text.get(chan, "") + piece
        self.pending += len(piece)
        return chan, start, start + len(piece)

    # -- checking ------------------------------------------------------------------------------

    def _check(self, final: bool) -> None:
        self.pending = 0
        for chan, text in self.text.items():
            if self.checked.get(chan, 0) == len(text) and not final:
                continue
            self.checked[chan] = len(text)
            base = max(0, self.released.get(chan, 0) - self.hold)
            window = text[base:]
            if not window:
                continue
            direction = _direction(chan)
            for policy in self.policies:
                if not policy.applies(direction):
                    continue
                v = policy.check(direction, window, self.context)
                self._note(policy, v, chan, base)
                if v.decision == "deny":
                    self.blocked = v
                    raise Blocked(v)
                for f in v.redacted:
                    self._mask(chan, base, f)

    def _note(self, policy: Policy, v: Verdict, chan: Channel, base: int) -> None:
        """Fold one window's verdict into the stream's: the worst decision, each finding once."""
        key = (policy.name, v.direction)
        total = self.summary.get(key) or Verdict("allow", policy.name, policy.version, v.direction)
        total.duration_s += v.duration_s
        total.errors.update(v.errors)
        total.over_budget |= v.over_budget
        if DECISIONS.index(v.decision) > DECISIONS.index(total.decision):
            total.decision, total.reason = v.decision, v.reason
            total.category, total.detector = v.category, v.detector
        for mine, theirs in (
            (total.blocked, v.blocked),
            (total.redacted, v.redacted),
            (total.flagged, v.flagged),
        ):
            for f in theirs:
                seen = (chan, base + f.start, base + f.end, f.category, f.kind)
                if seen not in self.seen:
                    self.seen.add(seen)
                    mine.append(f)
        self.summary[key] = total

    def _mask(self, chan: Channel, base: int, f: Finding) -> None:
        if chan[1] == "tool_name":
            return  # a function's name is not rewritten: deny it, or let it be
        start, end = base + f.start, base + f.end
        start = max(start, self.released.get(chan, 0))  # what was sent cannot be taken back
        if end <= start:
            return
        masks = self.masks.setdefault(chan, [])
        for i, (s, e, label) in enumerate(masks):
            if start < e and s < end:  # overlaps one already masked: widen it
                masks[i] = (min(s, start), max(e, end), label)
                return
        masks.append((start, end, f.mask))
        masks.sort()

    # -- output --------------------------------------------------------------------------------

    def _filled(self) -> bool:
        """The first held event would be released if the text so far were checked (the first
        release is not kept waiting for a whole step)."""
        return bool(self.held) and self._releasable(self.held[0], checked=False)

    def _releasable(self, h: Held, checked: bool = True) -> bool:
        """With at least ``hold`` characters after it on each of its channels: checked ones, or
        (``checked=False``) any."""
        upto = (lambda c: self.checked.get(c, 0)) if checked else (lambda c: len(self.text[c]))
        return all(upto(chan) - end >= self.hold for chan, _, end in h.segs)

    def _release(self, final: bool) -> bytes:
        out: list[bytes] = []
        while self.held and (final or self._releasable(self.held[0])):
            h = self.held.popleft()
            self.started = self.started or bool(h.segs)
            out.append(self._render(h))
            for chan, _, end in h.segs:
                self.released[chan] = end
        return b"".join(out)

    def _render(self, h: Held) -> bytes:
        touched = [
            (c, s, e) for c, s, e in h.segs if any(ms < e and s < me for ms, me, _ in self.masks.get(c, []))
        ]
        if not touched or h.payload is None:
            return h.raw
        for chan, s, e in touched:
            new = self._masked(chan, s, e)
            for choice in h.payload.get("choices") or []:
                if not isinstance(choice, dict) or choice.get("index", 0) != chan[0]:
                    continue
                if chan[1] == "text":
                    choice["text"] = new
                elif chan[1] == "content":
                    choice["delta"]["content"] = new
                else:
                    for k, call in enumerate(choice["delta"].get("tool_calls") or []):
                        if call.get("index", k) == chan[2]:
                            call["function"]["arguments"] = new
        return b"data: " + json.dumps(h.payload).encode() + b"\n\n"

    def _masked(self, chan: Channel, a: int, b: int) -> str:
        text, out, pos = self.text[chan], [], a
        for ms, me, label in self.masks.get(chan, []):
            if me <= a or ms >= b:
                continue
            if ms > pos:
                out.append(text[pos:ms])
            if ms >= a:
                out.append(label)  # the mask goes where its span begins
            pos = max(pos, min(me, b))
        if pos < b:
            out.append(text[pos:b])
        return "".join(out)

    # -- ending --------------------------------------------------------------------------------

    def blocked_tail(self, verdict: Verdict, error: GatewayError) -> bytes:
        """The last events a blocked stream sends: ``content_filter`` finish, the error, ``[DONE]``."""
        self.held.clear()
        self._report()
        choices = []
        for i in sorted(self.indexes or {0}):
            if self.completion:
                choices.append({"index": i, "text": "", "logprobs": None, "finish_reason": "content_filter"})
            else:
                choices.append({"index": i, "delta": {}, "logprobs": None, "finish_reason": "content_filter"})
        last = {**self.template, "choices": choices}
        return (
            b"data: " + json.dumps(last).encode() + b"\n\n"
            + b"data: " + json.dumps(error.body()).encode() + b"\n\n"
            + b"data: [DONE]\n\n"
        )  # fmt: skip

    def _report(self) -> None:
        summary, self.summary = self.summary, {}
        for v in summary.values():
            self.on_verdict(v)


class Blocked(Exception):
    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict


def _events(data: bytes) -> list[bytes]:
    parts = data.replace(b"\r\n", b"\n").split(b"\n\n")
    return [p + b"\n\n" for p in parts if p.strip()]


def _payload(raw: bytes) -> dict[str, Any] | None:
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            body = line[5:].strip()
            if not body.startswith(b"{"):
                return None
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError):
                return None
            return payload if isinstance(payload, dict) else None
    return None
