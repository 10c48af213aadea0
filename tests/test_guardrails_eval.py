"""The labelled evaluation set: well formed, large enough, and the detectors keep their F1 on it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("guardrails_eval", ROOT / "bench" / "guardrails_eval.py")
assert spec and spec.loader
ev = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ev)


def test_the_set_is_well_formed_and_large_enough() -> None:
    rows = ev.load(ev.DATA)
    spans = [s for r in rows for s in r["spans"]]
    assert sum(1 for s in spans if s["category"] == "pii") >= 100
    assert sum(1 for s in spans if s["category"] == "secret") >= 80
    assert sum(1 for r in rows if not r["spans"]) >= 150
    assert len({r["id"] for r in rows}) == len(rows)


def test_the_holdout_set_is_well_formed() -> None:
    rows = ev.load(ev.DATA.with_name("holdout.jsonl"))
    assert rows and all(r["text"] for r in rows)


def test_f1_per_category_stays_above_target() -> None:
    res = ev.evaluate(ev.load(ev.DATA))
    for cat in ("pii", "secret"):
        assert res[cat]["f1"] >= 0.95, (cat, res[cat])
