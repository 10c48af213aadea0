"""The ``denylist`` detector: terms and regular expressions from the policy, grouped in topics.

Terms match case-insensitively, as whole words (not inside a longer word), with any run of spaces
between their words, after the text's normalisation (so fullwidth letters, homoglyphs and
zero-width padding do not hide them) and, unless ``leet=False``, through leetspeak (``h4ck``,
``p@$$w0rd``). Terms are normalised the same way before they are compiled. Regular expressions
match case-insensitively on the normalised text as given; a pattern whose repetition nests another
variable repetition (``(a+)+``, ``(\\w*\\s?)*``: catastrophic backtracking) is refused when the
detector is built — write it with a possessive quantifier or an atomic group (``(?>…)``) instead.

Parameters: ``terms``, ``regexes`` (the topic ``denylist``), ``topics`` (``{name: {"terms": [...],
"regexes": [...]}}``), ``leet`` (True), ``score`` (1.0). A finding's kind is its topic's name.
"""

from __future__ import annotations

import re
from re import _constants as sre_c  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

from m2a.guardrails.base import DENYLIST, Context, Finding, register_detector
from m2a.guardrails.normalize import Prepared, leet_pattern, normalize

_REPEATS = {sre_c.MAX_REPEAT, sre_c.MIN_REPEAT}


def _variable_repeat(items: Any) -> bool:
    """Whether a parsed (sub)pattern holds a repetition of variable length (not possessive)."""
    for op, av in items:
        if op in _REPEATS and (av[0] != av[1] or _variable_repeat(av[2])):
            return True
        if _children(op, av) and any(_variable_repeat(c) for c in _children(op, av)):
            return True
    return False


def _children(op: Any, av: Any) -> list[Any]:
    if op == sre_c.SUBPATTERN:
        return [av[3]]
    if op == sre_c.BRANCH:
        return list(av[1])
    if op in (sre_c.ASSERT, sre_c.ASSERT_NOT):
        return [av[1]]
    return []  # atomic groups and possessive repeats cannot backtrack into themselves


def nested_repeat(pattern: str) -> bool:
    """True when ``pattern`` repeats (max > 1) something that itself repeats a variable number of times."""

    def walk(items: Any) -> bool:
        for op, av in items:
            if op in _REPEATS:
                if av[1] > 1 and _variable_repeat(av[2]):
                    return True
                if walk(av[2]):
                    return True
            elif any(walk(c) for c in _children(op, av)):
                return True
        return False

    return walk(sre_parse.parse(pattern))


def compile_regex(pattern: str) -> re.Pattern[str]:
    if nested_repeat(pattern):
        raise ValueError(f"deny-list regex {pattern!r} nests variable repetitions (catastrophic "
                         "backtracking); use a possessive quantifier or an atomic group")
    return re.compile(pattern, re.IGNORECASE)


def term_pattern(term: str, leet: bool = True) -> str:
    norm = normalize(" ".join(term.split()))[0].lower()
    body = leet_pattern(norm) if leet else re.sub(r"(?:\\ )+", r"\\s+", re.escape(norm))
    return body


@register_detector("denylist")
class DenyListDetector:
    name = "denylist"

    def __init__(self, terms: list[str] | None = None, regexes: list[str] | None = None,
                 topics: dict[str, dict[str, list[str]]] | None = None, leet: bool = True,
                 score: float = 1.0) -> None:  # fmt: skip
        groups = dict(topics or {})
        if terms or regexes:
            groups.setdefault("denylist", {})
            groups["denylist"] = {"terms": [*groups["denylist"].get("terms", []), *(terms or [])],
                                  "regexes": [*groups["denylist"].get("regexes", []), *(regexes or [])]}
        self.score = score
        self.patterns: list[tuple[str, re.Pattern[str]]] = []
        for topic, spec in groups.items():
            unknown = set(spec) - {"terms", "regexes"}
            if unknown:
                raise ValueError(f"topic {topic!r}: unknown keys {sorted(unknown)} (terms, regexes)")
            words = sorted({t for t in spec.get("terms", []) if t.strip()}, key=len, reverse=True)
            if words:
                alt = "|".join(term_pattern(w, leet) for w in words)
                self.patterns.append((topic, re.compile(rf"(?<![A-Za-z0-9])(?:{alt})(?![A-Za-z0-9])", re.I)))
            for rx in spec.get("regexes", []):
                self.patterns.append((topic, compile_regex(rx)))

    def check(self, ctx: Context, text: Prepared) -> list[Finding] | None:
        if not self.patterns:
            return None
        out = []
        for view in text.views:
            for topic, rx in self.patterns:
                for m in rx.finditer(view.text):
                    if m.end() == m.start():
                        continue
                    s, e = view.span(m.start(), m.end())
                    out.append(Finding(DENYLIST, topic, self.name, self.score, s, e,
                                       f"term of the deny list (topic {topic})", "BLOCKED", view.encoding))
        return out
