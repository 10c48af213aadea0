"""Normalisation before detection, with an offset map back to the original text.

``prepare(text)`` gives a ``Prepared`` text: the original and its *views*, each a string a detector
scans plus a ``span(start, end)`` that maps a match in the view back to a span of the original.

- ``views[0]`` is the normalised text: invisible characters removed (Unicode category Cf — zero-width
  spaces and joiners, bidi controls, soft hyphens, the BOM, tag characters U+E0000.. — plus variation
  selectors and a few fillers), NFKC (fullwidth letters, ligatures, mathematical alphanumerics, odd
  spaces), diacritics folded off ASCII letters, and common Cyrillic / Greek look-alikes mapped to the
  ASCII letters they imitate. Case is kept (keys are case-sensitive).
- the other views are runs of base64 (standard or URL-safe) and hex (``0x…``, ``\\x..``) in the
  normalised text that decode to printable text, themselves normalised (and decoded again, up to
  ``depth``); a match inside maps back to the bytes' characters of the encoded run. Runs behind a
  binary data URL (``data:image/png;base64,``) are not decoded.
- ``leet_class`` / ``leet_pattern`` / ``deleet``: cheap leetspeak (0→o, 1→i or l, 3→e, 4→a, 5→s, 7→t,
  @→a, $→s) for word-list detectors; they work on a view's text and keep its offsets.

A span in a view covers every original character its view characters came from, so a key padded
with zero-width spaces maps back to a span over the key and the spaces inside it.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

# Invisible characters that are not in category Cf, removed too.
_EXTRA_INVISIBLE = {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180F, 0x3164, 0xFFA0}


def invisible(ch: str) -> bool:
    cp = ord(ch)
    return (
        unicodedata.category(ch) == "Cf"
        or 0xFE00 <= cp <= 0xFE0F  # variation selectors
        or 0xE0100 <= cp <= 0xE01EF  # variation selectors supplement
        or 0xE0000 <= cp <= 0xE007F  # tag characters
        or cp in _EXTRA_INVISIBLE
    )


# Look-alikes NFKC leaves alone: Cyrillic, Greek, Latin small capitals and other lookalike letters.
_CONFUSABLES = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i", "ј": "j", "к": "k", "м": "m",
    "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "ԁ": "d", "ԛ": "q",
    "ԝ": "w", "ɡ": "g", "ү": "y", "ӏ": "l", "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H",
    "О": "O", "Р": "P", "С": "C", "Т": "T", "Х": "X", "У": "Y", "І": "I", "Ј": "J", "Ѕ": "S", "Ԁ": "D",
    "Ү": "Y", "Ԛ": "Q", "Ԝ": "W", "Ӏ": "I",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ω": "w", "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K",
    "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    # Latin look-alikes and punctuation
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɩ": "i", "ʟ": "l", "ꞵ": "b", "ꓲ": "I", "ǀ": "l", "‐": "-", "‑": "-",
    "‒": "-", "–": "-", "—": "-", "−": "-", "⁄": "/", "∕": "/", "ǃ": "!",
}  # fmt: skip

_ASCII_RUN = re.compile(r"[\x00-\x7f]+(?![\u0300-\u036f])|.[\u0300-\u036f]*", re.S)


@lru_cache(maxsize=8192)
def _fold(cluster: str) -> str:
    """One cluster (a character and its combining marks) normalised (cached: texts repeat them)."""
    if len(cluster) == 1 and invisible(cluster):
        return ""
    s = unicodedata.normalize("NFKC", cluster)
    out = []
    for ch in s:
        if ch.isascii():
            out.append(ch)
        elif ch in _CONFUSABLES:
            out.append(_CONFUSABLES[ch])
        elif invisible(ch):
            continue
        elif unicodedata.combining(ch) and out and out[-1].isascii():
            continue  # a mark over an ASCII letter: dropped
        else:
            d = unicodedata.normalize("NFD", ch)
            if len(d) > 1 and d[0].isascii() and all(unicodedata.combining(c) for c in d[1:]):
                out.append(d[0])
            else:
                out.append(ch)
    return "".join(out)


class SegmentMap:
    """A piecewise map from positions in a normalised string to spans of its source string.

    Segments are either identity runs (a character maps to the character at the same offset) or
    replacements (every character of the normalised piece maps to the whole source piece).
    """

    __slots__ = ("n_starts", "n_ends", "o_starts", "o_ends", "ident")

    def __init__(self) -> None:
        self.n_starts: list[int] = []
        self.n_ends: list[int] = []
        self.o_starts: list[int] = []
        self.o_ends: list[int] = []
        self.ident: list[bool] = []

    def add(self, n0: int, n1: int, o0: int, o1: int, ident: bool) -> None:
        if n0 == n1:
            return  # removed characters: no position maps into them
        if ident and self.ident and self.ident[-1] and self.n_ends[-1] == n0 and self.o_ends[-1] == o0:
            self.n_ends[-1], self.o_ends[-1] = n1, o1
            return
        self.n_starts.append(n0)
        self.n_ends.append(n1)
        self.o_starts.append(o0)
        self.o_ends.append(o1)
        self.ident.append(ident)

    def _seg(self, pos: int) -> int:
        return max(0, bisect_right(self.n_starts, pos) - 1)

    def span(self, start: int, end: int) -> tuple[int, int]:
        if not self.n_starts:
            return (0, 0)
        i = self._seg(start)
        s = self.o_starts[i] + (start - self.n_starts[i]) if self.ident[i] else self.o_starts[i]
        j = self._seg(max(start, end - 1))
        e = self.o_starts[j] + (end - self.n_starts[j]) if self.ident[j] else self.o_ends[j]
        return (s, max(s, e))


def normalize(text: str) -> tuple[str, SegmentMap | None]:
    """The normalised text and its map to ``text`` (None: position for position, as for ASCII)."""
    if text.isascii():
        return text, None
    uniq = {c for c in set(text) if not c.isascii()}
    if any(unicodedata.combining(c) or 0x1100 <= ord(c) <= 0x11FF for c in uniq):
        return _normalize_clusters(text)  # marks (and jamo) compose with their neighbours
    table = {ord(c): _fold(c) for c in uniq}
    out = text.translate(table)
    resized = "".join(sorted(c for c in uniq if len(table[ord(c)]) != 1))
    if not resized:
        return out, None  # one character for one: offsets unchanged
    smap = SegmentMap()
    n = o = 0
    for m in _resized_rx(resized).finditer(text):
        i = m.start()
        smap.add(n, n + i - o, o, i, True)
        n += i - o
        rep = table[ord(text[i])]
        smap.add(n, n + len(rep), i, i + 1, False)
        n += len(rep)
        o = i + 1
    smap.add(n, n + len(text) - o, o, len(text), True)
    return out, smap


@lru_cache(maxsize=256)
def _resized_rx(chars: str) -> re.Pattern[str]:
    return re.compile("[" + "".join(re.escape(c) for c in chars) + "]")


def _normalize_clusters(text: str) -> tuple[str, SegmentMap]:
    out: list[str] = []
    smap = SegmentMap()
    n = 0
    for m in _ASCII_RUN.finditer(text):
        piece = m.group()
        folded = piece if piece.isascii() else _fold(piece)
        smap.add(n, n + len(folded), m.start(), m.end(), folded == piece)
        out.append(folded)
        n += len(folded)
    return "".join(out), smap


@dataclass(slots=True)
class View:
    """A string to scan and the map from its positions to spans of the original text."""

    text: str
    span: Callable[[int, int], tuple[int, int]]
    encoding: str | None = None  # None for the normalised text; base64 / hex for a decoded run


@dataclass(slots=True)
class Prepared:
    """A text ready for detection: the original and its views (``views[0]``: the normalised text)."""

    original: str
    views: list[View] = field(default_factory=list)
    truncated: bool = False  # an encoded run was longer than the decode budget: not all decoded

    @property
    def main(self) -> View:
        return self.views[0]


# One scan finds both: a run of the base64 alphabet (hex digits are a part of it) of 16 or more.
_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_HEX_ESCAPES = re.compile(r"(?:\\x[0-9A-Fa-f]{2}){8,}")
_BINARY_DATA_URL = re.compile(
    r"data:(?:image|audio|video|font|application/(?:octet-stream|pdf|zip))[\w./+-]{0,64}"
    r"(?:;[\w=.-]{1,64}){0,4};base64,$"
)
_PEEK = 96  # encoded characters decoded first, to drop binary runs cheaply


def _printable(raw: bytes) -> str | None:
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    stripped = s.replace("\n", "").replace("\r", "").replace("\t", "")
    if not stripped or not stripped.isprintable() or not any(c.isalpha() for c in stripped):
        return None
    return s


def _b64(run: str) -> bytes | None:
    if len(run) % 4 == 1:
        run = run[:-1]
    run = run.rstrip("=")
    alt = b"-_" if ("-" in run or "_" in run) else None
    try:
        return base64.b64decode(run + "=" * (-len(run) % 4), altchars=alt, validate=True)
    except (binascii.Error, ValueError):
        return None


def _decoded_view(parent: View, start: int, width: float, raw: bytes, text: str, enc: str) -> View:
    """A view of ``text`` decoded from ``raw``, whose byte i came from ``parent`` characters
    ``[start + i*width, start + (i+1)*width)`` (width 2 for hex, 4/3 for base64)."""
    if text.isascii():
        byte_at: list[int] | None = None
    else:
        byte_at, b = [], 0
        for ch in text:
            byte_at.append(b)
            b += len(ch.encode("utf-8"))
        byte_at.append(b)
    norm, smap = normalize(text)

    def span(s: int, e: int) -> tuple[int, int]:
        if smap is not None:
            s, e = smap.span(s, e)
        b0, b1 = (s, e) if byte_at is None else (byte_at[s], byte_at[e])
        p0 = start + int(b0 * width)
        p1 = start + int(-(-b1 * width // 1))
        return parent.span(p0, max(p0 + 1, p1))

    return View(norm, span, enc)


def _decode_runs(view: View, budget: list[int], depth: int, out: list[View]) -> bool:
    """Append the decoded views of ``view`` to ``out``; True when the budget stopped a decode.

    ``budget[0]`` is the number of decoded bytes still allowed (shared by all depths); runs that
    do not decode to printable text (hashes, keys, images) are judged on their first bytes and
    cost nothing."""
    truncated = False
    text = view.text
    found: list[tuple[int, float, str, str]] = []  # start, characters per byte, the encoded run, how
    for m in _RUN.finditer(text):
        start, run = m.start(), m.group()
        if start and text[start - 1] in _B64_CHARS:
            continue  # the tail of a longer run (after a character the scan does not take)
        if run.startswith(("0x", "0X")) and _HEX_DIGITS.issuperset(run[2:]):
            start, run = start + 2, run[2:]
        if _HEX_DIGITS.issuperset(run):
            if len(run) % 2 == 0:
                found.append((start, 2.0, run, "hex"))
            continue  # hex, or a hash: not base64 text
        if text.startswith("base64,", start - 7) and _BINARY_DATA_URL.search(text, max(0, start - 96), start):
            continue
        found.append((start, 4 / 3, run, "base64"))
    if "\\x" in text:
        for m in _HEX_ESCAPES.finditer(text):
            found.append((m.start(), 4.0, m.group().replace("\\x", ""), "hex"))
        found.sort()
    for start, width, run, enc in found:
        head = _unhex(run[:_PEEK]) if enc == "hex" else _b64(run[: min(len(run), _PEEK) // 4 * 4])
        if head is None or _printable(head[: max(1, len(head) - 3)]) is None:
            continue
        if budget[0] <= 0:
            return True
        room = budget[0]
        cut = 2 * room if enc == "hex" else (room + 2) // 3 * 4  # encoded characters for ``room`` bytes
        raw = (_unhex(run[:cut]) if enc == "hex" else _b64(run[:cut])) or b""
        if len(raw) > room or len(run) > cut:
            raw, truncated = raw[:room], True
        decoded = _printable_prefix(raw)
        if decoded is None:
            continue
        budget[0] -= len(raw)
        dv = _decoded_view(view, start, width, raw, decoded, enc)
        out.append(dv)
        if depth > 1:
            truncated |= _decode_runs(dv, budget, depth - 1, out)
    return truncated


def _unhex(digits: str) -> bytes | None:
    try:
        return binascii.unhexlify(digits[: len(digits) // 2 * 2])
    except (binascii.Error, ValueError):
        return None


def _printable_prefix(raw: bytes) -> str | None:
    """The decoded run as text, allowing a last partial UTF-8 character (a cut run)."""
    for cut in range(0, 4):
        s = _printable(raw[: len(raw) - cut] if cut else raw)
        if s is not None:
            return s
    return None


def prepare(text: str, *, decode: bool = True, depth: int = 2, max_decoded: int = 65_536) -> Prepared:
    """``text`` normalised, with its decoded base64 and hex runs (at most ``max_decoded`` bytes)."""
    norm, smap = normalize(text)
    main = View(norm, smap.span if smap is not None else (lambda s, e: (s, e)))
    prep = Prepared(text, [main])
    if decode:
        prep.truncated = _decode_runs(main, [max_decoded], depth, prep.views)
    return prep


# --- leetspeak -------------------------------------------------------------------------------------

LEET: dict[str, str] = {"0": "o", "1": "il", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s",
                        "!": "i"}  # fmt: skip
_LEET_FOR: dict[str, set[str]] = {}
for _k, _v in LEET.items():
    for _c in _v:
        _LEET_FOR.setdefault(_c, set()).add(_k)


def leet_class(ch: str) -> str:
    """A regular-expression piece matching ``ch`` or a leetspeak stand-in for it."""
    alts = _LEET_FOR.get(ch.lower())
    if not alts:
        return re.escape(ch)
    return "[" + re.escape(ch) + "".join(re.escape(a) for a in sorted(alts)) + "]"


def leet_pattern(term: str) -> str:
    """A pattern for ``term`` (already normalised) allowing leetspeak and any run of spaces."""
    parts = []
    for ch in term:
        parts.append(r"\s+" if ch.isspace() else leet_class(ch))
    return re.sub(r"(?:\\s\+)+", r"\\s+", "".join(parts))


_DELEET = {ord(k): v[0] for k, v in LEET.items()}


def deleet(text: str) -> str:
    """``text`` with leetspeak digits and signs read as letters (one for one: offsets are kept)."""
    return text.translate(_DELEET)
