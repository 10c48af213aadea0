"""What a search asks and returns, and the backend-neutral parts of ranking.

- ``SearchQuery``: one search's parameters, validated (``SearchError`` names the parameter): the
  mode (``hybrid``, ``vector``, ``keyword``), ``k`` (OpenAI's ``max_num_results``, 1..50), the
  ``score_threshold`` (0..1), the filter, hybrid's weights;
- ``Hit``: one chunk found, with its file, its character span in the parsed file and its score;
- ``rrf``: reciprocal rank fusion (k=60) of ranked lists, weighted, scores normalised so that an
  item first in every list scores 1.0; each list gives fusion its first ``max(k, 10)`` items;
- ``auto_weights``: hybrid's default weights, by query. The keyword list counts fully (1:1) when
  the query holds an identifier-like term (a digit, ``_``, an inner ``.``, inner or repeated capitals:
  ``XK-4471-B``, ``ERP-2211``, ``sync.batch_size``, ``AcmeRateLimitError``, ``API``) and not at all
  for plain-language queries, where word matches on a small store are mostly noise next to the
  embedding (measured in ``bench/data_search.py``: plain 1:1 fusion lost recall on paraphrases and
  gained on identifiers). Explicit weights (OpenAI's ``embedding_weight``/``text_weight``) override;
- ``keyword_query``: a user's text as a safe SQLite FTS5 query (terms OR-ed, an identifier such as
  ``XK-4471-B`` as a phrase of its parts, common English words dropped), ``keyword_score`` maps
  FTS5's ``bm25()`` into [0, 1).

Scores are in [0, 1] in every mode: vector search reports the cosine similarity (negative values as
0), keyword search ``s / (1 + s)`` of the BM25 score ``s``, hybrid the normalised fused score, which
depends on ranks only. ``score_threshold`` drops hits below it in the mode's own score.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from m2a.data.filters import Filter, compile_filter

MODES = ("hybrid", "vector", "keyword")
RRF_K = 60
MAX_RESULTS = 50
DEFAULT_RESULTS = 10
MAX_QUERY_TERMS = 32

H = TypeVar("H", bound=Hashable)


class SearchError(ValueError):
    """A bad search request; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Hit:
    file_id: str
    index: int  # the chunk's position in its file
    start: int  # character span [start, end) in the parsed file
    end: int
    text: str
    score: float  # in [0, 1], see the module's docstring
    attributes: dict[str, Any] = field(default_factory=dict)  # the file's
    chunk_id: int = 0  # the backend's own id of the chunk


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """One search, validated by ``make``; ``vector`` is unit-length (float32) when given."""

    vector: np.ndarray | None
    text: str | None
    k: int = DEFAULT_RESULTS
    mode: str = "hybrid"
    score_threshold: float = 0.0
    filter: Filter | None = None
    weights: tuple[float, float] = (1.0, 1.0)  # hybrid: (vector, keyword), as OpenAI's embedding/text weights

    @property
    def depth(self) -> int:
        """How many candidates each ranked list gives to fusion (its rank window)."""
        return max(self.k, 10)

    @classmethod
    def make(
        cls,
        query_vector: Sequence[float] | np.ndarray | None,
        query_text: str | None,
        k: int = DEFAULT_RESULTS,
        filters: Mapping[str, Any] | Filter | None = None,
        mode: str = "hybrid",
        score_threshold: float = 0.0,
        weights: tuple[float, float] | None = None,
    ) -> SearchQuery:
        if mode not in MODES:
            raise SearchError(
                f"Invalid value for 'mode': expected one of {', '.join(MODES)}, got {mode!r}.", "mode"
            )
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_RESULTS:
            raise SearchError(
                f"Invalid 'max_num_results': expected an integer between 1 and {MAX_RESULTS}, got {k!r}.",
                "max_num_results",
            )
        if (
            isinstance(score_threshold, bool)
            or not isinstance(score_threshold, int | float)
            or not 0.0 <= score_threshold <= 1.0
        ):
            raise SearchError(
                f"Invalid 'score_threshold': expected a number between 0 and 1, got {score_threshold!r}.",
                "ranking_options.score_threshold",
            )
        if weights is not None and (
            len(weights) != 2 or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0
        ):
            raise SearchError(
                "Invalid hybrid weights: two non-negative numbers, not both 0.", "ranking_options"
            )
        vec = None
        if mode in ("hybrid", "vector"):
            if query_vector is None:
                raise SearchError(f"a {mode} search needs the query's embedding vector", "query")
            vec = unit(query_vector)
        if mode in ("hybrid", "keyword") and (query_text is None or not query_text.strip()):
            if mode == "keyword":
                raise SearchError("a keyword search needs the query's text", "query")
            query_text = None  # hybrid without text: the vector list alone
        flt = filters if filters is None or isinstance(filters, Filter) else compile_filter(filters)
        w = auto_weights(query_text) if weights is None else (float(weights[0]), float(weights[1]))
        return cls(vec, query_text, k, mode, float(score_threshold), flt, w)


_IDENTIFIER = re.compile(r"\d|_|[a-z][A-Z]|[A-Z]{2}|\w\.\w")


def has_identifier(text: str | None) -> bool:
    """Whether a whitespace-separated term of ``text`` looks like a code, a name in code or an acronym."""
    return text is not None and any(_IDENTIFIER.search(term) for term in text.split())


def auto_weights(text: str | None) -> tuple[float, float]:
    """Hybrid's default (vector, keyword) weights for a query's text (see the module's docstring)."""
    return (1.0, 1.0) if has_identifier(text) else (1.0, 0.0)


def unit(vector: Sequence[float] | np.ndarray) -> np.ndarray:
    """``vector`` as float32 with length 1; ``SearchError`` for an empty, zero or non-finite vector."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if v.size == 0:
        raise SearchError("the embedding vector is empty", "query")
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm == 0.0:
        raise SearchError("the embedding vector must be finite and not all zeros", "query")
    return v / norm


def rrf(
    rankings: Sequence[Sequence[H]], weights: Sequence[float] | None = None, k: int = RRF_K
) -> list[tuple[H, float]]:
    """Reciprocal rank fusion: ``sum_i w_i / (k + rank_i)`` over the lists an item is in (ranks from
    1), divided by its maximum ``sum_i w_i / (k + 1)``; best first, ties by first appearance."""
    ws = list(weights) if weights is not None else [1.0] * len(rankings)
    if len(ws) != len(rankings):
        raise ValueError("one weight per ranked list")
    top = sum(w / (k + 1) for w in ws) or 1.0
    scores: dict[H, float] = {}
    for ranking, w in zip(rankings, ws, strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + w / (k + rank)
    return sorted(((item, s / top) for item, s in scores.items()), key=lambda p: -p[1])


# Common English words dropped from keyword queries (they match nearly everything and slow the scan).
_STOP = """a about above after again all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her
here hers him his how i if in into is it its itself just me more most my no nor not now of off on once
only or other our ours out over own same she should so some such than that the their theirs them then
there these they this those through to too under until up very was we were what when where which while
who whom why will with would you your yours"""
STOPWORDS = frozenset(_STOP.split())
_WORD = re.compile(r"[^\W_]+")


def keyword_terms(text: str | None) -> list[str]:
    """The terms of ``text`` a keyword search looks for, each its words (lowercase, letters and digits
    only) joined by a space: a term with inner punctuation (``XK-4471-B``) is a phrase of its parts;
    repeated terms and terms of only common words dropped, at most ``MAX_QUERY_TERMS``."""
    if not text:
        return []
    terms: list[tuple[str, bool]] = []  # (term, all its words are stopwords)
    seen: set[str] = set()
    for raw in text.split():
        words = [w.lower() for w in _WORD.findall(raw)]
        if not words:
            continue
        term = " ".join(words)
        if term in seen:
            continue
        seen.add(term)
        terms.append((term, all(w in STOPWORDS for w in words)))
    # Only common words: they would match (and rank) nearly every chunk.
    return [t for t, stop in terms if not stop][:MAX_QUERY_TERMS]


def keyword_query(text: str | None) -> str | None:
    """An FTS5 MATCH expression for ``text`` (``None`` when it has no word): every term quoted (no
    operator or syntax of the user's reaches FTS5), a term with inner punctuation as a phrase."""
    terms = keyword_terms(text)
    return " OR ".join(f'"{t}"' for t in terms) if terms else None


def keyword_score(bm25: float) -> float:
    """FTS5's ``bm25()`` (negative, lower is better) as a score in [0, 1)."""
    s = max(0.0, -float(bm25))
    return s / (1.0 + s)


def vector_score(cosine: float) -> float:
    return min(1.0, max(0.0, float(cosine)))
