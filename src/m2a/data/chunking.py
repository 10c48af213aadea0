"""Chunking parsed text by tokens of the embedding model, with OpenAI's chunking strategies.

A strategy is OpenAI's ``chunking_strategy`` object, validated as its API does
(``chunking_strategy(obj)``): ``{"type": "auto"}`` (800-token chunks overlapping by 400) or
``{"type": "static", "static": {"max_chunk_size_tokens": 100..4096, "chunk_overlap_tokens": 0..max/2}}``.
A ``ChunkingError`` names the offending parameter (``.param``) for the API's error object.

Tokens come from a ``Tokenizer`` (``encode(text)`` gives each token's character span): the
embedding model's own Hugging Face tokenizer read from its folder (``HFTokenizer.from_folder``, with
the ``tokenizers`` library or else ``transformers``, both imported only then), or
``ApproxTokenizer``, a regular-expression word-piece approximation for when no tokenizer is at hand.
``chunk(text, tokenizer, strategy)`` slides a window of ``max_chunk_size_tokens`` tokens forward by
``max - overlap`` tokens; each ``Chunk`` keeps its character offsets into the parsed text, so
``text[c.start:c.end] == c.text``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

AUTO_MAX_TOKENS = 800  # OpenAI's documented defaults for "auto"
AUTO_OVERLAP_TOKENS = 400
MIN_CHUNK_TOKENS = 100
MAX_CHUNK_TOKENS = 4096


class ChunkingError(ValueError):
    """A bad ``chunking_strategy``; ``param`` is the path of the offending field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class ChunkingStrategy:
    max_chunk_size_tokens: int = AUTO_MAX_TOKENS
    chunk_overlap_tokens: int = AUTO_OVERLAP_TOKENS
    type: str = "auto"  # as asked: "auto" or "static"

    def as_openai(self) -> dict[str, Any]:
        """The strategy as OpenAI reports it on a vector store file (auto is shown as its static values)."""
        return {
            "type": "static",
            "static": {
                "max_chunk_size_tokens": self.max_chunk_size_tokens,
                "chunk_overlap_tokens": self.chunk_overlap_tokens,
            },
        }


AUTO = ChunkingStrategy()


def _int_field(obj: dict[str, Any], key: str, param: str) -> int:
    if key not in obj:
        raise ChunkingError(f"Missing required parameter: '{param}'.", param)
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChunkingError(
            f"Invalid type for '{param}': expected an integer, but got {type(value).__name__} instead.", param
        )
    return value


def _no_extra(obj: dict[str, Any], allowed: set[str], prefix: str) -> None:
    for key in obj:
        if key not in allowed:
            raise ChunkingError(f"Unknown parameter: '{prefix}.{key}'.", f"{prefix}.{key}")


def chunking_strategy(obj: Any, param: str = "chunking_strategy") -> ChunkingStrategy:
    """Validate OpenAI's ``chunking_strategy`` object (``None`` is auto)."""
    if obj is None:
        return AUTO
    if not isinstance(obj, dict):
        raise ChunkingError(f"Invalid type for '{param}': expected an object.", param)
    kind = obj.get("type")
    if kind == "auto":
        _no_extra(obj, {"type"}, param)
        return AUTO
    if kind != "static":
        raise ChunkingError(
            f"Invalid value for '{param}.type': expected one of 'auto' or 'static', but got {kind!r}.",
            f"{param}.type",
        )
    _no_extra(obj, {"type", "static"}, param)
    static = obj.get("static")
    sp = f"{param}.static"
    if static is None:
        raise ChunkingError(f"Missing required parameter: '{sp}'.", sp)
    if not isinstance(static, dict):
        raise ChunkingError(f"Invalid type for '{sp}': expected an object.", sp)
    _no_extra(static, {"max_chunk_size_tokens", "chunk_overlap_tokens"}, sp)
    size = _int_field(static, "max_chunk_size_tokens", f"{sp}.max_chunk_size_tokens")
    overlap = _int_field(static, "chunk_overlap_tokens", f"{sp}.chunk_overlap_tokens")
    if size < MIN_CHUNK_TOKENS or size > MAX_CHUNK_TOKENS:
        raise ChunkingError(
            f"Invalid '{sp}.max_chunk_size_tokens': expected a value between {MIN_CHUNK_TOKENS} and "
            f"{MAX_CHUNK_TOKENS}, but got {size} instead.",
            f"{sp}.max_chunk_size_tokens",
        )
    if overlap < 0:
        raise ChunkingError(
            f"Invalid '{sp}.chunk_overlap_tokens': expected a value >= 0, but got {overlap} instead.",
            f"{sp}.chunk_overlap_tokens",
        )
    if overlap * 2 > size:
        raise ChunkingError(
            f"Invalid '{sp}.chunk_overlap_tokens': it must not exceed half of max_chunk_size_tokens "
            f"({size // 2}), but got {overlap}.",
            f"{sp}.chunk_overlap_tokens",
        )
    return ChunkingStrategy(size, overlap, "static")


# -- tokenizers ---------------------------------------------------------------------------------


@runtime_checkable
class Tokenizer(Protocol):
    name: str

    def encode(self, text: str) -> list[tuple[int, int]]:
        """Each token's character span ``[start, end)`` in ``text``, in order (no special tokens)."""
        ...


_PIECE = re.compile(r"[^\W\d_]+|\d+|[^\w\s]|_")


class ApproxTokenizer:
    """Word pieces by regular expression, close to a WordPiece/BPE count on English text.

    Letters runs of up to 6 characters are one token, longer ones one more per 4 characters;
    digits go in groups of 3; every other visible character is a token of its own.
    """

    name = "approx"

    def encode(self, text: str) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for m in _PIECE.finditer(text):
            start, end = m.span()
            n = end - start
            if m.group()[0].isdigit():
                out.extend((s, min(s + 3, end)) for s in range(start, end, 3))
            elif n > 6 and m.group()[0].isalpha():
                out.append((start, start + 6))
                out.extend((s, min(s + 4, end)) for s in range(start + 6, end, 4))
            else:
                out.append((start, end))
        return out


_SEGMENT = 64_000  # characters per encode call: long texts are cut at a line break near this


def _segments(text: str) -> list[tuple[int, str]]:
    """``text`` cut after line breaks into pieces of about ``_SEGMENT`` characters: (offset, piece)."""
    out: list[tuple[int, str]] = []
    pos = 0
    while pos < len(text):
        end = min(len(text), pos + _SEGMENT)
        if end < len(text):
            cut = text.rfind("\n", pos + _SEGMENT // 2, end)
            if cut < 0:
                cut = text.rfind(" ", pos + _SEGMENT // 2, end)
            end = cut + 1 if cut >= 0 else end
        out.append((pos, text[pos:end]))
        pos = end
    return out


class HFTokenizer:
    """A Hugging Face tokenizer read from a model folder (``tokenizer.json`` or a transformers one)."""

    def __init__(self, backend: Any, kind: str, name: str) -> None:
        self._backend = backend
        self._kind = kind  # "tokenizers" or "transformers"
        self.name = name

    @classmethod
    def from_folder(cls, folder: str | Path) -> HFTokenizer:
        path = Path(folder)
        if not path.is_dir():
            raise FileNotFoundError(f"no tokenizer folder at {path}")
        name = path.name
        if (path / "tokenizer.json").is_file():
            try:
                from tokenizers import Tokenizer as _Tok
            except ImportError:
                pass
            else:
                tok = _Tok.from_file(str(path / "tokenizer.json"))
                tok.no_truncation()  # the file may truncate to the model's window; chunking needs all
                tok.no_padding()
                return cls(tok, "tokenizers", name)
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise RuntimeError(
                "reading a tokenizer folder needs the 'tokenizers' or 'transformers' package"
            ) from exc
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
        if not getattr(tok, "is_fast", False):
            raise RuntimeError(f"the tokenizer in {path} has no fast version (character offsets are needed)")
        return cls(tok, "transformers", name)

    def encode(self, text: str) -> list[tuple[int, int]]:
        segments = _segments(text)
        pieces = [p for _, p in segments]
        if self._kind == "tokenizers":
            offsets = [e.offsets for e in self._backend.encode_batch(pieces, add_special_tokens=False)]
        else:
            enc = self._backend(
                pieces, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False
            )
            offsets = enc["offset_mapping"]
        out: list[tuple[int, int]] = []
        for (base, _), spans in zip(segments, offsets, strict=True):
            out.extend((base + s, base + e) for s, e in spans if e > s)
        return out


# -- chunking -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int  # position in the file
    start: int  # character span [start, end) in the parsed text
    end: int
    text: str
    tokens: int


def chunk(text: str, tokenizer: Tokenizer, strategy: ChunkingStrategy = AUTO) -> list[Chunk]:
    """``text`` in windows of ``strategy.max_chunk_size_tokens`` tokens that overlap by
    ``strategy.chunk_overlap_tokens`` (the last window may be shorter); empty text gives no chunk."""
    spans = tokenizer.encode(text)
    size = strategy.max_chunk_size_tokens
    step = size - strategy.chunk_overlap_tokens
    if step <= 0:
        raise ChunkingError(
            "chunk_overlap_tokens must be smaller than max_chunk_size_tokens", "chunking_strategy"
        )
    out: list[Chunk] = []
    i = 0
    while i < len(spans):
        window = spans[i : i + size]
        start, end = window[0][0], window[-1][1]
        out.append(Chunk(len(out), start, end, text[start:end], len(window)))
        if i + size >= len(spans):
            break
        i += step
    return out
