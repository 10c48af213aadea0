"""The vector-store backends' contract, each test run against SQLite and against PostgreSQL with
pgvector (a real server, ``tests/data/pg_fixtures.py``): add, search in each mode, filters before
ranking, thresholds, usage_bytes, deletes (also while searches run), isolation of stores, two
instances on one database (two gateway processes) seeing each other's writes, and hybrid beating
vector and keyword search on a case built for it. Embeddings are deterministic hashed bags of words.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from m2a.data.search import SearchError, auto_weights, has_identifier, keyword_query, rrf
from m2a.data.stores import (
    ChunkRecord,
    DimensionMismatch,
    StoreNotFound,
    UnknownBackend,
    VectorBackend,
    build_backend,
    known_backends,
)
from m2a.data.stores.sqlite import SQLiteBackend
from tests.data.pg_fixtures import pg_url, pgvector_server  # noqa: F401

BACKENDS = ["sqlite", "postgres"]

DIM = 64
# A toy "semantic" embedding: synonyms share a dimension, codes and numbers are invisible to it.
SYNONYMS = {
    "reimbursement": "refund", "reimbursed": "refund", "refunded": "refund", "repaid": "refund",
    "travel": "trip", "journey": "trip", "trips": "trip",
    "expenses": "cost", "costs": "cost", "spending": "cost",
    "vacation": "leave", "holiday": "leave", "holidays": "leave", "pto": "leave",
    "laptop": "computer", "notebook": "computer", "pc": "computer",
    "broken": "damaged", "faulty": "damaged", "defective": "damaged",
    "staff": "employee", "employees": "employee", "workers": "employee",
}  # fmt: skip
STOP = {
    "the",
    "a",
    "an",
    "of",
    "for",
    "to",
    "is",
    "are",
    "and",
    "in",
    "on",
    "my",
    "i",
    "how",
    "do",
    "what",
    "by",
}


def embed(text: str, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim)
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in STOP:
            continue
        h = hashlib.blake2b(SYNONYMS.get(word, word).encode(), digest_size=8).digest()
        v[int.from_bytes(h[:4], "little") % dim] += 1.0 if h[4] & 1 else -1.0
    return v if v.any() else np.ones(dim)


def records(texts: list[str]) -> list[ChunkRecord]:
    out, pos = [], 0
    for i, t in enumerate(texts):
        out.append(ChunkRecord(i, pos, pos + len(t), t, embed(t)))
        pos += len(t) + 1
    return out


@pytest.fixture(params=BACKENDS)
def backend_params(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict]:
    """A backend's name and the parameters of one empty database for it (built as often as wanted)."""
    if request.param == "sqlite":
        return "sqlite", {"path": tmp_path / "vectors.db"}
    return "postgres", {"url": request.getfixturevalue("pg_url")}


@pytest_asyncio.fixture(loop_scope="function")  # the test's loop: a backend's connections live on one
async def backend(backend_params: tuple[str, dict]) -> AsyncIterator[VectorBackend]:
    b = build_backend(backend_params[0], **backend_params[1])
    yield b
    await b.close()


def test_registry() -> None:
    assert {"sqlite", "postgres"} <= set(known_backends())
    with pytest.raises(UnknownBackend, match="unknown vector store backend 'faiss'"):
        build_backend("faiss")
    with pytest.raises(ValueError, match="bad params"):
        build_backend("sqlite", nope=1)
    with pytest.raises(ValueError, match="needs a file path"):
        SQLiteBackend(":memory:")


async def test_add_search_delete(backend: VectorBackend) -> None:
    texts = ["Hex bolt M8 zinc plated", "Washer M8 stainless", "Nut M10 brass", "Cable tie black 200mm"]
    await backend.add("vs_a", "file-parts", records(texts), {"kind": "catalog"})
    await backend.add("vs_a", "file-other", records(["Office chair with armrests"]))
    assert await backend.has_store("vs_a") and not await backend.has_store("vs_b")
    assert await backend.file_ids("vs_a") == ["file-other", "file-parts"]

    hits = await backend.search("vs_a", embed("washer stainless"), "washer stainless", k=3)
    assert hits[0].file_id == "file-parts" and hits[0].index == 1 and hits[0].text == texts[1]
    assert hits[0].attributes == {"kind": "catalog"}
    assert (hits[0].start, hits[0].end) == (len(texts[0]) + 1, len(texts[0]) + 1 + len(texts[1]))
    assert len(hits) == 3 and all(0.0 <= h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    assert await backend.delete_file("vs_a", "file-parts")
    assert not await backend.delete_file("vs_a", "file-parts")
    hits = await backend.search("vs_a", embed("washer stainless"), "washer stainless", k=5)
    assert [h.file_id for h in hits] == ["file-other"]

    assert await backend.delete_store("vs_a")
    assert not await backend.delete_store("vs_a")
    with pytest.raises(StoreNotFound):
        await backend.search("vs_a", embed("chair"), "chair")
    with pytest.raises(StoreNotFound):
        await backend.usage_bytes("vs_a")


async def test_re_adding_a_file_replaces_its_chunks(backend: VectorBackend) -> None:
    await backend.add("vs", "f", records(["old text about pumps", "more old text"]))
    await backend.add("vs", "f", records(["new text about valves"]))
    assert [h.text for h in await backend.search("vs", None, "pumps", mode="keyword")] == []
    hits = await backend.search("vs", embed("valves"), "valves", k=10)
    assert [h.text for h in hits] == ["new text about valves"]


async def test_empty_store_and_empty_file(backend: VectorBackend) -> None:
    await backend.create_store("vs")
    await backend.create_store("vs")  # idempotent
    assert await backend.search("vs", embed("x"), "x") == []
    assert await backend.usage_bytes("vs") == 0
    await backend.add("vs", "empty", [])
    assert await backend.file_ids("vs") == ["empty"]
    assert await backend.search("vs", embed("x"), "x", mode="keyword") == []


async def test_modes_and_keyword_search(backend: VectorBackend) -> None:
    await backend.add(
        "vs", "f", records(["Part XK-4471-B is a hex bolt", "Part XK-4472-B is a washer", "Tea"])
    )
    hits = await backend.search("vs", None, "XK-4472-B", mode="keyword")
    assert [h.index for h in hits] == [1]  # the identifier is a phrase of its parts
    assert 0.0 < hits[0].score < 1.0
    # Operators and quotes of the user's never reach FTS5 as syntax.
    for nasty in ['"unbalanced', "NEAR(bolt washer)", "bolt AND OR NOT", "col:bolt", "*", "^bolt", "a'b\"c"]:
        await backend.search("vs", embed(nasty), nasty)
        await backend.search("vs", None, nasty, mode="keyword")
    # Hybrid without text is the vector list alone, ranked the same.
    vec = await backend.search("vs", embed("hex bolt"), None, mode="vector")
    hyb = await backend.search("vs", embed("hex bolt"), "   ", mode="hybrid")
    assert [h.chunk_id for h in vec] == [h.chunk_id for h in hyb]


async def test_bad_search_parameters(backend: VectorBackend) -> None:
    await backend.add("vs", "f", records(["text"]))
    v = embed("text")
    for kwargs, param in [
        ({"k": 0}, "max_num_results"),
        ({"k": 51}, "max_num_results"),
        ({"mode": "semantic"}, "mode"),
        ({"score_threshold": 1.5}, "ranking_options.score_threshold"),
        ({"score_threshold": -0.1}, "ranking_options.score_threshold"),
        ({"weights": (0.0, 0.0)}, "ranking_options"),
    ]:
        with pytest.raises(SearchError) as err:
            await backend.search("vs", v, "text", **kwargs)  # type: ignore[arg-type]
        assert err.value.param == param
    with pytest.raises(SearchError, match="needs the query's embedding"):
        await backend.search("vs", None, "text", mode="vector")
    with pytest.raises(SearchError, match="needs the query's text"):
        await backend.search("vs", v, "", mode="keyword")
    with pytest.raises(SearchError, match="not all zeros"):
        await backend.search("vs", np.zeros(DIM), "text")
    with pytest.raises(DimensionMismatch):
        await backend.search("vs", np.ones(DIM + 1), "text")
    with pytest.raises(DimensionMismatch):
        await backend.add("vs", "g", [ChunkRecord(0, 0, 1, "x", np.ones(DIM * 2))])
    with pytest.raises(ValueError, match="expected one of eq"):
        await backend.search("vs", v, "text", filters={"type": "like", "key": "a", "value": "b"})


async def test_filters_apply_before_ranking(backend: VectorBackend) -> None:
    # 60 chunks close to the query in "general", 3 far from it in "archive": a filter on archive
    # must still give 3 hits (post-filtering the top results would give none).
    await backend.add(
        "vs", "general", records([f"pump maintenance schedule {i}" for i in range(60)]), {"team": "ops"}
    )
    await backend.add(
        "vs", "archive", records(["old fax machines", "typewriter ribbons", "pump"]), {"team": "legacy"}
    )
    flt = {"type": "eq", "key": "team", "value": "legacy"}
    for mode in ("vector", "keyword", "hybrid"):
        hits = await backend.search(
            "vs", embed("pump maintenance"), "pump maintenance", k=5, mode=mode, filters=flt
        )
        assert hits and {h.file_id for h in hits} == {"archive"}, mode
    assert (
        len(await backend.search("vs", embed("pump maintenance"), "pump", k=5, mode="vector", filters=flt))
        == 3
    )
    none = {"type": "and", "filters": [flt, {"type": "eq", "key": "team", "value": "ops"}]}
    assert await backend.search("vs", embed("pump"), "pump", filters=none) == []
    # Attributes can change, and the next search sees them.
    assert await backend.set_attributes("vs", "general", {"team": "legacy"})
    assert not await backend.set_attributes("vs", "missing", {"team": "legacy"})
    hits = await backend.search("vs", embed("pump maintenance"), "pump maintenance", k=5, filters=flt)
    assert {h.file_id for h in hits} == {"general"}


async def test_score_threshold(backend: VectorBackend) -> None:
    texts = ["refund policy for damaged goods", "refund policy", "office plants need water", "damaged"]
    await backend.add("vs", "f", records(texts))
    q = embed("refund policy for damaged goods")
    everything = await backend.search("vs", q, None, k=10, mode="vector")
    assert everything[0].text == texts[0] and everything[0].score == pytest.approx(1.0, abs=1e-6)
    cut = 0.6
    kept = await backend.search("vs", q, None, k=10, mode="vector", score_threshold=cut)
    assert [h.chunk_id for h in kept] == [h.chunk_id for h in everything if h.score >= cut]
    assert 0 < len(kept) < len(everything)
    for mode in ("keyword", "hybrid"):
        full = await backend.search("vs", q, "refund policy damaged", k=10, mode=mode)
        cut = full[len(full) // 2].score
        hits = await backend.search("vs", q, "refund policy damaged", k=10, mode=mode, score_threshold=cut)
        assert [h.chunk_id for h in hits] == [h.chunk_id for h in full if h.score >= cut]
        assert 0 < len(hits) < len(full), mode
    assert await backend.search("vs", embed("office plants"), None, mode="vector", score_threshold=0.99) == []


async def test_usage_bytes(backend: VectorBackend) -> None:
    texts = ["naïve café", "plain ascii"]
    usage = await backend.add("vs", "f1", records(texts), {"lang": "fr"})
    attrs_json = len(b'{"lang":"fr"}')
    expected = sum(len(t.encode()) + 4 * DIM for t in texts) + attrs_json
    assert usage == expected
    assert await backend.usage_bytes("vs") == expected
    second = await backend.add("vs", "f2", records(["x" * 100]))
    assert second == 100 + 4 * DIM
    assert await backend.usage_bytes("vs") == expected + second
    await backend.set_attributes("vs", "f1", {"lang": "french"})
    assert await backend.usage_bytes("vs") == expected + second + 4
    await backend.delete_file("vs", "f2")
    assert await backend.usage_bytes("vs") == expected + 4


async def test_stores_never_share_chunks(backend: VectorBackend) -> None:
    same = ["secret roadmap for project falcon", "falcon budget 2025", "falcon hiring plan"]
    await backend.add("team_a", "fa", records(same), {"owner": "a"})
    await backend.add("team_b", "fb", records(same), {"owner": "b"})
    await backend.add("team_b", "fb2", records(["falcon launch date"]), {"owner": "b"})
    for mode in ("vector", "keyword", "hybrid"):
        a = await backend.search("team_a", embed("falcon"), "falcon", k=50, mode=mode)
        b = await backend.search("team_b", embed("falcon"), "falcon", k=50, mode=mode)
        assert a and {h.file_id for h in a} == {"fa"}, mode
        assert b and {h.file_id for h in b} <= {"fb", "fb2"}, mode
        assert not {h.chunk_id for h in a} & {h.chunk_id for h in b}
    # A filter naming another store's attributes finds nothing, rather than the other store's chunks.
    other = {"type": "eq", "key": "owner", "value": "b"}
    assert await backend.search("team_a", embed("falcon"), "falcon", filters=other) == []
    await backend.delete_store("team_b")
    assert len(await backend.search("team_a", embed("falcon"), "falcon", k=50, mode="keyword")) == 3


async def test_writes_invalidate_the_cache_across_instances(backend_params: tuple[str, dict]) -> None:
    one = build_backend(backend_params[0], **backend_params[1])
    two = build_backend(backend_params[0], **backend_params[1])  # as another gateway process would
    try:
        await one.add("vs", "f1", records(["first document about turbines"]))
        assert len(await one.search("vs", embed("turbines"), "turbines", k=10)) == 1  # cached now
        await two.add("vs", "f2", records(["second document about turbines"]))
        assert {h.file_id for h in await one.search("vs", embed("turbines"), "turbines", k=10)} == {
            "f1",
            "f2",
        }
        await two.delete_file("vs", "f1")
        assert {h.file_id for h in await one.search("vs", embed("turbines"), "turbines", k=10)} == {"f2"}
        await two.delete_store("vs")
        with pytest.raises(StoreNotFound):
            await one.search("vs", embed("turbines"), "turbines")
    finally:
        await one.close()
        await two.close()


async def test_delete_store_while_searches_run(backend: VectorBackend) -> None:
    rng = np.random.default_rng(7)
    words = ["pump", "valve", "seal", "motor", "gear", "belt", "filter", "sensor"]
    n = 4000
    texts = [" ".join(rng.choice(words, size=8)) for _ in range(n)]
    vecs = rng.normal(size=(n, DIM))
    await backend.add(
        "vs", "big", [ChunkRecord(i, 0, 1, t, v) for i, (t, v) in enumerate(zip(texts, vecs, strict=True))]
    )
    await backend.add("keep", "small", records(["pump seal"]))
    outcomes: list[str] = []
    deleted = asyncio.Event()

    async def one(i: int) -> None:
        if i < 40:
            await asyncio.sleep(i * 0.001)  # spread over the deletion
        else:
            await deleted.wait()
        try:
            hits = await backend.search("vs", rng.normal(size=DIM), "pump valve seal", k=10, mode="hybrid")
            assert all(h.file_id == "big" for h in hits)
            outcomes.append("hits" if hits else "empty")
        except StoreNotFound:
            outcomes.append("not_found")

    async def delete_soon() -> None:
        await asyncio.sleep(0.01)
        assert await backend.delete_store("vs")
        deleted.set()

    await asyncio.gather(delete_soon(), *(one(i) for i in range(80)))
    assert len(outcomes) == 80 and set(outcomes) <= {"hits", "not_found"}
    assert outcomes.count("not_found") >= 40  # at least every search that started after the deletion
    with pytest.raises(StoreNotFound):
        await backend.search("vs", embed("pump"), "pump")
    assert len(await backend.search("keep", embed("pump"), "pump")) == 1  # the other store is intact


# -- hybrid beats either alone ------------------------------------------------------------------

DOCS = {
    "err-1001": "Error E1001: the billing service stopped responding. Restart it from the admin console.",
    "err-1002": "Error E1002: the payroll service stopped responding. Restart it from the admin console.",
    "err-1003": "Error E1003: the inventory service stopped responding. Restart it from the admin console.",
    "err-1004": "Error E1004: the shipping service stopped responding. Restart it from the admin console.",
    "trip-refund": "Trip costs are refunded within 30 days once the receipts are approved by finance.",
    "travel-agency": "Travel agency bookings go through the corporate portal only.",
    "leave": "Employees get 25 days of paid leave a year; carry over is limited to five days.",
    "holiday-party": "The holiday party is in December; staff may bring a guest.",
    "computer-damaged": "A damaged computer is replaced by IT within two working days.",
    "laptop-bag": "Laptop bags with the company logo can be ordered from the shop.",
}
# Codes: the toy embedding cannot see them, keywords can. Paraphrases: the other way round.
QUERIES = [
    ("E1003 fix", "err-1003"),
    ("E1002 meaning", "err-1002"),
    ("E1004", "err-1004"),
    ("reimbursement of travel expenses", "trip-refund"),
    ("how many vacation days do employees get", "leave"),
    ("my laptop is broken", "computer-damaged"),
]


async def test_hybrid_beats_vector_and_keyword(backend: VectorBackend) -> None:
    for file_id, text in DOCS.items():
        await backend.add("vs", file_id, records([text]))
    recall2: dict[str, float] = {}
    mrr: dict[str, float] = {}
    for mode in ("vector", "keyword", "hybrid"):
        found, rr = 0, 0.0
        for query, want in QUERIES:
            ids = [h.file_id for h in await backend.search("vs", embed(query), query, k=5, mode=mode)]
            found += want in ids[:2]
            rr += 1.0 / (ids.index(want) + 1) if want in ids else 0.0
        recall2[mode], mrr[mode] = found / len(QUERIES), rr / len(QUERIES)
    assert recall2["hybrid"] == 1.0
    assert recall2["vector"] < 1.0 and recall2["keyword"] < 1.0
    assert mrr["hybrid"] > max(mrr["vector"], mrr["keyword"]), mrr


def test_rrf() -> None:
    fused = rrf([["a", "b", "c"], ["c", "a"]])
    assert [x for x, _ in fused] == ["a", "c", "b"]
    assert fused[0][1] == pytest.approx((1 / 61 + 1 / 62) / (2 / 61))
    assert rrf([["x"], ["x"]])[0][1] == pytest.approx(1.0)
    weighted = rrf([["a", "b"], ["b", "a"]], weights=[1.0, 3.0])
    assert [x for x, _ in weighted] == ["b", "a"]
    with pytest.raises(ValueError):
        rrf([["a"]], weights=[1.0, 2.0])


def test_keyword_query() -> None:
    assert keyword_query("What is the refund policy?") == '"refund" OR "policy"'
    assert keyword_query("error XK-4471-B today") == '"error" OR "xk 4471 b" OR "today"'
    assert keyword_query("the of and") is None  # only common words: no keyword list
    assert keyword_query('"; DROP TABLE chunks; --') == '"drop" OR "table" OR "chunks"'
    assert keyword_query("?!") is None and keyword_query(None) is None


def test_auto_weights_count_keywords_for_identifiers_only() -> None:
    for text in [
        "XK-4471-B",
        "error E7001",
        "sync.batch_size",
        "ACME_API_TOKEN",
        "AcmeRateLimitError",
        "the API",
    ]:
        assert has_identifier(text) and auto_weights(text) == (1.0, 1.0), text
    for text in [
        "how much time off do I get",
        "two-factor authentication",
        "month-end close",
        "Nimbus",
        None,
    ]:
        assert not has_identifier(text) and auto_weights(text) == (1.0, 0.0), text


async def test_explicit_weights_bring_the_keyword_list_in(backend: VectorBackend) -> None:
    # A plain-language query: by default hybrid ranks as vector search; with 1:1 weights the chunk
    # holding the query's rare word rises.
    await backend.add("vs", "f", records(["pump maintenance guide", "pump maintenance log", "zeolite pump"]))
    q = "pump maintenance zeolite"
    vec = [h.chunk_id for h in await backend.search("vs", embed("pump maintenance"), q, mode="vector")]
    auto = [h.chunk_id for h in await backend.search("vs", embed("pump maintenance"), q)]
    even = await backend.search("vs", embed("pump maintenance"), q, weights=(1.0, 1.0))
    assert auto == vec
    zeolite = vec[-1]  # last by the embedding, which does not know the word
    assert [h.chunk_id for h in even].index(zeolite) < vec.index(zeolite)


async def test_filtered_vector_search_is_exact(backend: VectorBackend) -> None:
    # Against a brute-force scan, for filters that pass a few files (their rows are read alone) and
    # most files (a mask over the whole matrix).
    rng = np.random.default_rng(3)
    vectors: dict[str, np.ndarray] = {}
    for f in range(30):
        vs = rng.normal(size=(20, DIM))
        vectors[f"file-{f:02d}"] = vs / np.linalg.norm(vs, axis=1, keepdims=True)
        recs = [ChunkRecord(i, 0, 1, f"chunk {i}", v) for i, v in enumerate(vs)]
        await backend.add("vs", f"file-{f:02d}", recs, {"shard": f % 10, "big": f >= 5})
    q = rng.normal(size=DIM)
    qn = q / np.linalg.norm(q)
    filters = [
        {"type": "in", "key": "shard", "value": [1, 2, 7]},
        {"type": "ne", "key": "shard", "value": 3},
        {
            "type": "and",
            "filters": [
                {"type": "eq", "key": "big", "value": True},
                {"type": "lt", "key": "shard", "value": 5},
            ],
        },
    ]
    for flt, keep in zip(
        filters,
        [lambda f: f % 10 in (1, 2, 7), lambda f: f % 10 != 3, lambda f: f >= 5 and f % 10 < 5],
        strict=True,
    ):
        brute = sorted(
            (
                (float(v @ qn), fid, i)
                for fid, vs in vectors.items()
                if keep(int(fid[5:]))
                for i, v in enumerate(vs)
            ),
            reverse=True,
        )[:10]
        hits = await backend.search("vs", q, None, k=10, mode="vector", filters=flt)
        assert [(h.file_id, h.index) for h in hits] == [(fid, i) for _, fid, i in brute]
        assert [h.score for h in hits] == pytest.approx([max(0.0, s) for s, _, _ in brute], abs=1e-5)
