"""The ``catalog`` labelled retrieval set (tests/data/retrieval/catalog/) is well formed: unique ids,
the documents' schema, valid query kinds, every relevant id a document, and the sizes it promises.
Fast: reads the JSON lines only (no model, no store)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

FOLDER = Path(__file__).parent / "data" / "retrieval" / "catalog"
KINDS = {"keyword", "paraphrase", "natural"}
QUERY_FILES = {"queries.jsonl": 150, "queries_holdout.jsonl": 60}


def rows(name: str) -> list[dict]:
    text = (FOLDER / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_documents_are_well_formed() -> None:
    docs = rows("docs.jsonl")
    assert len(docs) >= 400
    ids = Counter(d["id"] for d in docs)
    assert [i for i, n in ids.items() if n > 1] == []
    for d in docs:
        assert set(d) == {"id", "topic", "title", "text"}, d
        assert all(isinstance(d[k], str) and d[k].strip() for k in d), d


@pytest.mark.parametrize("name", sorted(QUERY_FILES))
def test_queries_are_well_formed(name: str) -> None:
    doc_ids = {d["id"] for d in rows("docs.jsonl")}
    queries = rows(name)
    assert len(queries) >= QUERY_FILES[name]
    assert [i for i, n in Counter(q["id"] for q in queries).items() if n > 1] == []
    assert [t for t, n in Counter(q["query"] for q in queries).items() if n > 1] == []
    for q in queries:
        assert set(q) == {"id", "kind", "query", "relevant"}, q
        assert q["kind"] in KINDS, q
        assert q["query"].strip(), q
        assert q["relevant"] and len(set(q["relevant"])) == len(q["relevant"]), q
        assert set(q["relevant"]) <= doc_ids, (q, set(q["relevant"]) - doc_ids)
    assert {q["kind"] for q in queries} == KINDS  # a mix, not identifier look-ups alone


def test_holdout_does_not_repeat_the_first_set() -> None:
    first = {q["query"] for q in rows("queries.jsonl")}
    assert first.isdisjoint(q["query"] for q in rows("queries_holdout.jsonl"))
    ids = {q["id"] for q in rows("queries.jsonl")}
    assert ids.isdisjoint(q["id"] for q in rows("queries_holdout.jsonl"))
