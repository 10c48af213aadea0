"""Precision, recall and F1 of the guardrail detectors on the labelled set in the repository.

    .venv/bin/python bench/guardrails_eval.py [--data tests/data/guardrails/eval.jsonl] [-v]

Each line of the set is ``{"id", "text", "spans": [{"category", "kind", "value"}], "note"}``; a span is
where its ``value`` first occurs in ``text`` (positives), and a line without spans is a negative
(most are hard negatives: order numbers, UUIDs, SHAs, versions, placeholders, invalid look-alikes).
Scoring is by span and per category: a labelled span is found (true positive) when a finding of its
category overlaps it; a finding that overlaps no labelled span of its category is a false positive.
``-v`` lists the misses and false positives by line id and kind (the set is synthetic: no real data).

``--data tests/data/guardrails/holdout.jsonl``: a smaller set written after the detectors were tuned
on ``eval.jsonl``, to see how far the numbers carry to text the tuning never saw.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from m2a.guardrails import Finding, build, check

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "guardrails" / "eval.jsonl"


def load(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            for s in row["spans"]:
                start = row["text"].index(s["value"])
                s["start"], s["end"] = start, start + len(s["value"])
            rows.append(row)
    return rows


def overlaps(f: Finding, span: dict) -> bool:
    return f.category == span["category"] and f.start < span["end"] and span["start"] < f.end


def evaluate(rows: list[dict], verbose: bool = False) -> dict[str, dict[str, float]]:
    dets = [build("pii"), build("secrets")]
    tp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    for row in rows:
        found = check(dets, row["text"]).findings
        for s in row["spans"]:
            hit = any(overlaps(f, s) for f in found)
            (tp if hit else fn)[s["category"]] += 1
            if not hit and verbose:
                print(f"  miss  #{row['id']:<4} {s['category']}/{s['kind']}  ({row.get('note', '')})")
        for f in found:
            if not any(overlaps(f, s) for s in row["spans"]):
                fp[f.category] += 1
                if verbose:
                    print(f"  false #{row['id']:<4} {f.category}/{f.kind}  ({row.get('note', '')})")
    out = {}
    for cat in sorted(set(tp) | set(fn) | set(fp)):
        p = tp[cat] / (tp[cat] + fp[cat]) if tp[cat] + fp[cat] else 0.0
        r = tp[cat] / (tp[cat] + fn[cat]) if tp[cat] + fn[cat] else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        out[cat] = {"tp": tp[cat], "fp": fp[cat], "fn": fn[cat], "precision": p, "recall": r, "f1": f1}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    rows = load(args.data)
    npos = sum(1 for r in rows for _ in r["spans"])
    nneg = sum(1 for r in rows if not r["spans"])
    print(f"{args.data.name}: {len(rows)} lines, {npos} labelled spans, {nneg} negative lines")
    res = evaluate(rows, args.verbose)
    print(f"{'category':<10} {'tp':>4} {'fp':>4} {'fn':>4} {'precision':>9} {'recall':>7} {'F1':>6}")
    for cat, m in res.items():
        print(f"{cat:<10} {m['tp']:>4} {m['fp']:>4} {m['fn']:>4} {m['precision']:>9.3f} {m['recall']:>7.3f} "
              f"{m['f1']:>6.3f}")


if __name__ == "__main__":
    main()
