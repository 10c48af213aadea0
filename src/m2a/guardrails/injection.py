"""The ``prompt_injection`` detector: a trained linear classifier of prompt-injection and jailbreak
attempts, run over the normalised and decoded views of the text.

What it is: logistic regression over each word, word bigrams, skip-bigrams (two words with one
between) and the character 3-5-grams of each word (with word-boundary marks), lower-cased, of the
text after ``normalize.prepare`` (invisible characters removed, NFKC, homoglyphs, diacritics),
with leetspeak read back inside words that mix letters and digits (``1gn0r3`` reads ``ignore``).
Base64 / hex runs that decode to text are scored as views of their own, so an encoded attack
scores as the attack does. A second small model over the same features, applied to flagged text
only, tells ``jailbreak`` (personas and "no rules" framings that try to lift the model's safety
behaviour) from ``injection`` (overriding the operator's or developer's instructions, extracting
the system prompt, instructions hidden in documents, tool output or code comments).

Training and data: ``scripts/train_injection.py`` trains both on
``tests/data/guardrails/injection_train.jsonl`` (generated from templates and hand-written pieces
by ``scripts/injection_corpus.py``, written for m2a, Apache-2.0) plus benign windows of the
docstrings of Python's standard library and of installed packages (read at training time, not
copied here). ``data/injection_model.json`` records the data's hash, those sources' versions, the
hyper-parameters and the scores measured on ``eval.jsonl``; ``bench/README.md`` has the numbers.

Why this and not embeddings: it is pure Python at inference, a few hundred microseconds on a 2 kB
prompt, so it can run on every request on the gateway's event loop; nearest neighbours over
MiniLM embeddings would need torch and several milliseconds a request.

Where: the text is cut into windows of ``window`` tokens (every ``stride`` tokens, the last one
flush with the end), so an instruction hidden in a long document is not diluted by the document
around it; the score is the best window's probability and the finding's span is that window,
mapped back to the original text (through the decoding when it was found in a base64 run). One
finding at most per text.

Cost: linear in the text. A token's own weight (its word's and its character n-grams') is cached
once computed, so a common word costs a dictionary look-up; pair features are nested dictionaries
(no string built to look one up). The model is read once per process, on first use.

Parameters: ``threshold`` (``THRESHOLD``: the lowest score reported; a policy may ask for more),
``window`` / ``stride`` (default: the model file's), ``model`` (the path of another model file).
It returns ``[]`` for text without a word, never ``None``.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from m2a.guardrails.base import Context, Finding, register_detector
from m2a.guardrails.normalize import Prepared, View

INJECTION = "prompt_injection"  # the category of its findings
# The default reporting threshold, chosen on tests/data/guardrails/eval.jsonl: recall 0.84 there with
# 0.6% false positives over its lines without an attack (2.1% of the hard negatives written for this
# detector; 0.6 had 5.3% of those). The finding's score is the probability; bench/README.md has the
# holdout's numbers.
THRESHOLD = 0.7
MODEL_FILE = "injection_model.json"

_TOKEN = re.compile(r"[\w@$]+")
# The same tokens for ASCII text, faster: every other ASCII character becomes a space, then split.
_ASCII_SEPARATORS = str.maketrans({c: " " for c in range(128) if not (chr(c).isalnum() or chr(c) in "_@$")})
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_LEET_CHARS = frozenset("013457@$")
_LETTER = re.compile(r"[^\W\d_]").search
MAX_GRAM_WORD = 24  # longer tokens (hashes, base64 runs) get no character n-grams


def token_text(tok: str) -> str:
    """A lower-cased token with leetspeak read back when it mixes letters with digits or @ / $."""
    if tok.isalpha() or tok.isdigit() or _LEET_CHARS.isdisjoint(tok) or _LETTER(tok) is None:
        return tok
    return tok.translate(_LEET)


def tokens(text: str) -> list[str]:
    """The tokens of a view's text, lower-cased, leetspeak read back."""
    low = text.lower()
    raw = low.translate(_ASCII_SEPARATORS).split() if low.isascii() else _TOKEN.findall(low)
    return [t if t.isalpha() else token_text(t) for t in raw]


def token_features(tok: str) -> list[str]:
    """A token's own features: the word and its character n-grams (3 to 5, with ``<`` ``>`` marks)."""
    feats = ["w:" + tok]
    if len(tok) <= MAX_GRAM_WORD:
        s = f"<{tok}>"
        for n in (3, 4, 5):
            feats.extend("c:" + s[i : i + n] for i in range(len(s) - n + 1))
    return feats


def bigram_feature(prev: str, tok: str) -> str:
    return f"b:{prev} {tok}"


def skipgram_feature(prev2: str, tok: str) -> str:
    """A pair of tokens with one token between them (``ignore … instructions``)."""
    return f"s:{prev2} {tok}"


def windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` token windows of a text of ``n`` tokens (one when it is short)."""
    if n <= window:
        return [(0, n)]
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] != n - window:
        starts.append(n - window)
    return [(s, s + window) for s in starts]


def window_features(toks: list[str], start: int, end: int) -> list[str]:
    """The features of tokens ``[start, end)``: each token's own, its bigram with the token before and
    its skip-gram with the token before that (those may reach before the window: as at inference)."""
    out: list[str] = []
    for i in range(start, end):
        out.extend(token_features(toks[i]))
        if i:
            out.append(bigram_feature(toks[i - 1], toks[i]))
        if i > 1:
            out.append(skipgram_feature(toks[i - 2], toks[i]))
    return out


class LinearModel:
    """Weights by feature name and a bias. For speed the pair features are kept as nested
    dictionaries (``pairs[prev][tok]``: no string is built to look them up) and a token's own
    weight (its word's and its character n-grams') is cached once computed."""

    __slots__ = ("weights", "bias", "cache", "bigrams", "skips")

    def __init__(self, weights: dict[str, float], bias: float) -> None:
        self.weights = weights
        self.bias = bias
        self.cache: dict[str, float] = {}
        self.bigrams: dict[str, dict[str, float]] = {}
        self.skips: dict[str, dict[str, float]] = {}
        for f, v in weights.items():
            if f[:2] in ("b:", "s:"):
                a, _, b = f[2:].partition(" ")
                (self.bigrams if f[0] == "b" else self.skips).setdefault(a, {})[b] = v

    def unit(self, tok: str) -> float:
        u = self.cache.get(tok)
        if u is None:
            w = self.weights
            u = sum(w.get(f, 0.0) for f in token_features(tok))
            if len(self.cache) >= 65_536:
                self.cache.clear()
            self.cache[tok] = u
        return u

    def contributions(self, toks: list[str]) -> list[float]:
        """Each token's part of the logit: its own weight, its bigram's and its skip-gram's (the
        features ``window_features`` gives, summed per token)."""
        cached = self.cache.get
        unit = self.unit
        big = self.bigrams.get
        skip = self.skips.get
        out = []
        p1 = p2 = ""
        for tok in toks:
            c = cached(tok)
            if c is None:
                c = unit(tok)
            d = big(p1)
            if d is not None:
                c += d.get(tok, 0.0)
            d = skip(p2)
            if d is not None:
                c += d.get(tok, 0.0)
            out.append(c)
            p2, p1 = p1, tok
        return out

    def logit(self, toks: list[str]) -> float:
        return self.bias + sum(self.contributions(toks))


@dataclass(slots=True)
class Model:
    attack: LinearModel
    kind: LinearModel  # positive: jailbreak, negative: injection
    window: int
    stride: int
    meta: dict[str, Any]


def _linear(spec: dict[str, Any]) -> LinearModel:
    return LinearModel({k: float(v) for k, v in spec["weights"].items()}, float(spec["bias"]))


_LOCK = threading.Lock()
_MODELS: dict[str, Model] = {}


def load_model(path: str | Path | None = None) -> Model:
    """The model in ``path`` (default: the one shipped in ``m2a/guardrails/data``), read once per process."""
    key = str(path) if path is not None else ""
    model = _MODELS.get(key)
    if model is not None:
        return model
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            if path is None:
                raw = (
                    resources.files("m2a.guardrails").joinpath("data", MODEL_FILE).read_text(encoding="utf-8")
                )
            else:
                raw = Path(path).read_text(encoding="utf-8")
            spec = json.loads(raw)
            model = Model(
                _linear(spec["attack"]),
                _linear(spec["kind"]),
                int(spec["window"]),
                int(spec["stride"]),
                spec.get("meta", {}),
            )
            _MODELS[key] = model
    return model


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def best_window(model: Model, toks: list[str]) -> tuple[float, int, int]:
    """The highest window logit of ``toks`` and that window's ``[start, end)`` token range."""
    contrib = model.attack.contributions(toks)
    n = len(contrib)
    if n <= model.window:
        return model.attack.bias + sum(contrib), 0, n
    prefix = [0.0]
    acc = 0.0
    for c in contrib:
        acc += c
        prefix.append(acc)
    best, bs, be = -math.inf, 0, n
    for s, e in windows(n, model.window, model.stride):
        v = prefix[e] - prefix[s]
        if v > best:
            best, bs, be = v, s, e
    return model.attack.bias + best, bs, be


def _char_span(view: View, start_tok: int, end_tok: int) -> tuple[int, int]:
    """The span in the original text of tokens ``[start_tok, end_tok)`` of ``view``."""
    lowered = view.text.lower()
    src = lowered if len(lowered) == len(view.text) else view.text
    flags = 0 if src is lowered else re.IGNORECASE
    s = e = None
    for i, m in enumerate(re.finditer(_TOKEN.pattern, src, flags)):
        if i == start_tok:
            s = m.start()
        if i == end_tok - 1:
            e = m.end()
            break
    if s is None or e is None:
        return view.span(0, len(view.text))
    return view.span(s, e)


def score_text(text: str, model: Model | None = None) -> float:
    """The attack probability of one string (its best window), without normalisation or decoding."""
    model = model or load_model()
    toks = tokens(text)
    if not toks:
        return 0.0
    return _sigmoid(best_window(model, toks)[0])


@register_detector("prompt_injection")
class PromptInjectionDetector:
    name = "prompt_injection"

    def __init__(
        self,
        threshold: float = THRESHOLD,
        model: str | None = None,
        window: int | None = None,
        stride: int | None = None,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("threshold must be in [0, 1]")
        if window is not None and window < 1 or stride is not None and stride < 1:
            raise ValueError("window and stride must be positive")
        self.threshold = threshold
        self.model_path = model
        self._window = window
        self._stride = stride
        self._model: Model | None = None

    @property
    def model(self) -> Model:
        if self._model is None:
            m = load_model(self.model_path)
            if self._window or self._stride:
                m = Model(m.attack, m.kind, self._window or m.window, self._stride or m.stride, m.meta)
            self._model = m
        return self._model

    def score(self, text: Prepared) -> tuple[float, View | None, int, int]:
        """The best score over the views of ``text``, and where: the view and its token range."""
        model = self.model
        best, where, bs, be = -math.inf, None, 0, 0
        for view in text.views:
            toks = tokens(view.text)
            if not toks:
                continue
            v, s, e = best_window(model, toks)
            if v > best:
                best, where, bs, be = v, view, s, e
        return (_sigmoid(best) if where is not None else 0.0), where, bs, be

    def check(self, ctx: Context, text: Prepared) -> list[Finding] | None:
        p, view, s, e = self.score(text)
        if view is None or p < self.threshold:
            return []
        toks = tokens(view.text)[s:e]
        jb = _sigmoid(self.model.kind.logit(toks)) >= 0.5
        kind = "jailbreak" if jb else "injection"
        start, end = _char_span(view, s, e)
        what = "jailbreak attempt" if jb else "prompt injection attempt"
        return [
            Finding(INJECTION, kind, self.name, round(p, 4), start, end, what, "INJECTION", view.encoding)
        ]
