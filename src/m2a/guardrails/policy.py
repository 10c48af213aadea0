"""Guardrail policies: a profile (``config.GuardrailProfile``) made runnable, and what a check decides.

A ``Policy`` builds each rule's detector once and checks a text or chat messages in one direction
(``input``: prompts; ``output``: answers; ``tool``: tool calls and tool results). Its ``Verdict``
says what to do, in the OpenTelemetry GenAI security terms the gateway traces it with:

- ``deny``: a finding of a ``block`` rule at or above its threshold, a detector of a ``fail:
  closed`` rule that errored or timed out, or text past ``max_chars`` with ``over_budget: block``;
- ``modify``: findings of ``redact`` rules (``redact`` / ``redact_messages`` mask them);
- ``warn``: findings of ``flag`` rules only;
- ``allow``: nothing (findings below a threshold are ignored; a ``fail: open`` detector's error is
  reported in ``errors`` and lets the text pass).

A verdict never carries the text found: findings hold spans and descriptions, and ``reason`` names
the category and the detector only.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from m2a.config import GuardrailProfile, GuardrailRule
from m2a.guardrails import run
from m2a.guardrails.base import Context, Detector, Finding, build

DECISIONS = ("allow", "warn", "modify", "deny")  # in increasing order of what they do


@dataclass
class Verdict:
    decision: str  # allow, warn, modify, deny
    policy: str
    version: str
    direction: str
    reason: str = ""  # why it was denied: the category and the detector, never the text
    category: str | None = None  # of the blocking finding ("detector_error", "over_budget" otherwise)
    detector: str | None = None
    blocked: list[Finding] = field(default_factory=list)
    redacted: list[Finding] = field(default_factory=list)
    flagged: list[Finding] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # detector -> exception class, all of them
    over_budget: bool = False
    duration_s: float = 0.0

    @property
    def findings(self) -> list[Finding]:
        return self.blocked + self.redacted + self.flagged

    def worse(self, other: Verdict) -> Verdict:
        """The verdict that does more (deny over modify over warn over allow)."""
        return other if DECISIONS.index(other.decision) > DECISIONS.index(self.decision) else self


def profile_version(profile: GuardrailProfile) -> str:
    """A short, stable digest of a profile's content: its version in traces and listings."""
    return hashlib.sha256(profile.model_dump_json().encode()).hexdigest()[:12]


class Policy:
    """A profile made runnable: its detectors built once, checked per direction."""

    def __init__(self, name: str, profile: GuardrailProfile, version: str | None = None) -> None:
        self.name = name
        self.profile = profile
        self.version = version or profile_version(profile)
        self.rules: list[tuple[GuardrailRule, Detector]] = [
            (rule, build(rule.detector, rule.params)) for rule in profile.rules
        ]
        self.budget = run.Budget(max_chars=profile.max_chars)
        self._by_direction: dict[str, list[tuple[GuardrailRule, Detector]]] = {
            d: [(r, det) for r, det in self.rules if d in r.where] for d in ("input", "output", "tool")
        }
        # Per direction, made once: the detectors and their rules by name (all of them, and the sync
        # ones that ``check`` runs), whether any is async, and their timeouts.
        by = self._by_direction
        sync = {d: [(r, x) for r, x in p if not run_async(x)] for d, p in by.items()}
        self._detectors = {d: [x for _, x in p] for d, p in by.items()}
        self._rules = {d: {x.name: r for r, x in p} for d, p in by.items()}
        self._sync_detectors = {d: [x for _, x in p] for d, p in sync.items()}
        self._sync_rules = {d: {x.name: r for r, x in p} for d, p in sync.items()}
        self._has_async = {d: len(sync[d]) < len(p) for d, p in by.items()}
        self._timeouts = {d: {x.name: r.timeout_s for r, x in p} for d, p in by.items()}
        self.memo = run.Memo()  # texts already examined, per scope (``check(..., scope=)``)

    @property
    def hold_chars(self) -> int:
        return self.profile.stream_hold_chars

    def applies(self, direction: str) -> bool:
        return bool(self._by_direction[direction])

    def sync_applies(self, direction: str) -> bool:
        """Whether any detector for ``direction`` can run in a stream's chunk hook (not async)."""
        return bool(self._sync_detectors[direction])

    def check(
        self,
        direction: str,
        content: str | Sequence[Any],
        context: Context | None = None,
        scope: str | None = None,
    ) -> Verdict:
        """Check in-process (detectors that need I/O are left out: streams). ``scope``: whose texts
        these are (a team); given, a text examined before in that scope is not examined again."""
        started = time.perf_counter()
        detectors = self._sync_detectors[direction]
        result = run.check(detectors, content, self.budget, context=context, memo=self.memo, scope=scope)
        return self._verdict(direction, self._sync_rules[direction], result, started)

    async def acheck(
        self,
        direction: str,
        content: str | Sequence[Any],
        context: Context | None = None,
        scope: str | None = None,
    ) -> Verdict:
        """Check with every detector, slow ones (a model as judge, a remote service) within their
        rule's ``timeout_s``. ``scope`` as for ``check`` (async detectors always run)."""
        started = time.perf_counter()
        detectors = self._detectors[direction]
        if not self._has_async[direction]:
            result = run.check(detectors, content, self.budget, context=context, memo=self.memo, scope=scope)
        else:
            result = await run.acheck(
                detectors,
                content,
                self.budget,
                context=context,
                timeout_s=self._timeouts[direction],
                memo=self.memo,
                scope=scope,
            )
        return self._verdict(direction, self._rules[direction], result, started)

    def _verdict(
        self, direction: str, rules: dict[str, GuardrailRule], result: run.Result, started: float
    ) -> Verdict:
        v = Verdict("allow", self.name, self.version, direction, errors=dict(result.errors))
        for f in result.findings:
            rule = rules.get(f.detector)
            if rule is None or f.score < rule.threshold:
                continue
            {"block": v.blocked, "redact": v.redacted, "flag": v.flagged}[rule.action].append(f)
        if v.blocked:
            top = max(v.blocked, key=lambda f: f.score)
            v.decision, v.category, v.detector = "deny", top.category, top.detector
            v.reason = f"{top.description or top.category} found by detector '{top.detector}'"
        for name in result.errors:
            rule = rules.get(name)
            if rule is not None and rule.fail == "closed" and v.decision != "deny":
                v.decision, v.category, v.detector = "deny", "detector_error", name
                v.reason = f"detector '{name}' failed ({result.errors[name]}) and its rule fails closed"
        if result.over_budget:
            v.over_budget = True
            if self.profile.over_budget == "block" and v.decision != "deny":
                v.decision, v.category = "deny", "over_budget"
                v.reason = (f"the text is longer than the {self.profile.max_chars} characters this "
                            "profile examines")  # fmt: skip
        if v.decision == "allow":
            v.decision = "modify" if v.redacted else "warn" if v.flagged else "allow"
        v.duration_s = time.perf_counter() - started
        return v


def run_async(det: Detector) -> bool:
    """Whether a detector needs I/O (it defines ``acheck``): it cannot run in a chunk hook."""
    return callable(getattr(det, "acheck", None))
