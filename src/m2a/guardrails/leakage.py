"""The ``system_prompt_leak`` detector: an answer that reproduces a long enough part of the system
prompt, found by word n-gram shingles.

The system prompt (``Context.system_prompt``) and the answer are normalised (``normalize.py``),
lower-cased and cut into words; every run of ``shingle`` consecutive answer words that also occurs
in the system prompt marks those words as copied. A run of at least ``min_words`` copied words (or
the whole prompt, when it is shorter) is a finding whose span covers it in the original answer.
Punctuation, case, spacing and line breaks do not matter; paraphrase does (this is a copy detector).
It abstains without a system prompt, or with one of fewer than 4 words.

Parameters: ``shingle`` (8 words), ``min_words`` (12), ``max_prompt_words`` (20 000: the part of a
long prompt that is indexed).
"""

from __future__ import annotations

import re
from functools import lru_cache

from m2a.guardrails.base import LEAKAGE, Context, Finding, register_detector
from m2a.guardrails.normalize import Prepared, normalize

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(normalize(text)[0])]


@lru_cache(maxsize=64)  # system prompts repeat from request to request; thread-safe
def _shingles(prompt: str, shingle: int, max_words: int) -> tuple[int, int, frozenset[tuple[str, ...]]]:
    """The prompt's shingle length (``shingle``, or fewer for a short prompt), word count and shingles."""
    ws = words(prompt)[:max_words]
    n = min(shingle, len(ws))
    return n, len(ws), frozenset(tuple(ws[i : i + n]) for i in range(len(ws) - n + 1))


@register_detector("system_prompt_leak")
class LeakageDetector:
    name = "system_prompt_leak"

    def __init__(self, shingle: int = 8, min_words: int = 12, max_prompt_words: int = 20_000) -> None:
        if shingle < 2 or min_words < shingle:
            raise ValueError("shingle must be at least 2 and min_words at least shingle")
        self.shingle, self.min_words, self.max_words = shingle, min_words, max_prompt_words

    def _index(self, prompt: str) -> tuple[int, int, frozenset[tuple[str, ...]]]:
        return _shingles(prompt, self.shingle, self.max_words)

    def check(self, ctx: Context, text: Prepared) -> list[Finding] | None:
        if not ctx.system_prompt:
            return None
        n, total, shingles = self._index(ctx.system_prompt)
        if total < 4:
            return None
        need = min(self.min_words, total)
        out = []
        for view in text.views:
            toks = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(view.text)]
            copied = [False] * len(toks)
            for i in range(len(toks) - n + 1):
                if tuple(t[2] for t in toks[i : i + n]) in shingles:
                    for j in range(i, i + n):
                        copied[j] = True
            i = 0
            while i < len(toks):
                if not copied[i]:
                    i += 1
                    continue
                j = i
                while j < len(toks) and copied[j]:
                    j += 1
                if j - i >= need:
                    s, e = view.span(toks[i][0], toks[j - 1][1])
                    score = min(1.0, 0.5 + 0.5 * (j - i) / total)
                    desc = f"reproduces {j - i} words of the system prompt"
                    out.append(Finding(LEAKAGE, "system_prompt", self.name, score, s, e, desc, "REDACTED",
                                       view.encoding))
                i = j
        return out
