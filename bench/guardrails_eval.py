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

``prompt_injection`` is scored the same way (a labelled span is the attack: the whole line, or the
instruction hidden in a document), and per line: recall on lines with an attack, false-positive
rate on the lines without one (all of them: PII and secret lines are benign prompts too, and those
written for this detector, mostly hard negatives), and whether the kind (injection / jailbreak)
was right. ``--threshold`` scores the classifier at another threshold than its default.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from m2a.guardrails import Finding, build, check
from m2a.guardrails.injection import INJECTION, THRESHOLD

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


def evaluate(
    rows: list[dict], verbose: bool = False, threshold: float = THRESHOLD
) -> dict[str, dict[str, float]]:
    dets = [build("pii"), build("secrets"), build("prompt_injection", {"threshold": threshold})]
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


def injection_lines(
    rows: list[dict], threshold: float = THRESHOLD, verbose: bool = False
) -> dict[str, float]:
    """Per line: recall on attacks, false-positive rate on lines without one, kind accuracy."""
    det = build("prompt_injection", {"threshold": threshold})
    tp = fn = fp = fp_ours = ours = kind_ok = 0
    negatives = 0
    for row in rows:
        want = [s for s in row["spans"] if s["category"] == INJECTION]
        got = check([det], row["text"]).findings
        if want:
            if got:
                tp += 1
                kind_ok += got[0].kind == want[0]["kind"]
            else:
                fn += 1
                if verbose:
                    print(
                        f"  miss  #{row['id']:<4} prompt_injection/{want[0]['kind']}  ({row.get('note', '')})"
                    )
            continue
        negatives += 1
        written = INJECTION in row.get("note", "")
        ours += written
        if got:
            fp += 1
            fp_ours += written
            if verbose:
                print(f"  false #{row['id']:<4} prompt_injection/{got[0].kind}  ({row.get('note', '')})")
    return {"attacks": tp + fn, "recall": tp / max(1, tp + fn), "negatives": negatives,
            "fp_rate": fp / max(1, negatives), "written": ours, "fp_rate_written": fp_ours / max(1, ours),
            "kind_accuracy": kind_ok / max(1, tp)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--threshold", type=float, default=THRESHOLD, help="prompt_injection's threshold")
    args = ap.parse_args()
    rows = load(args.data)
    npos = sum(1 for r in rows for _ in r["spans"])
    nneg = sum(1 for r in rows if not r["spans"])
    print(f"{args.data.name}: {len(rows)} lines, {npos} labelled spans, {nneg} negative lines")
    res = evaluate(rows, args.verbose, args.threshold)
    print(f"{'category':<16} {'tp':>4} {'fp':>4} {'fn':>4} {'precision':>9} {'recall':>7} {'F1':>6}")
    for cat, m in res.items():
        print(
            f"{cat:<16} {m['tp']:>4} {m['fp']:>4} {m['fn']:>4} {m['precision']:>9.3f} {m['recall']:>7.3f} "
            f"{m['f1']:>6.3f}"
        )
    pi = injection_lines(rows, args.threshold, args.verbose)
    print(f"\nprompt_injection per line, threshold {args.threshold:g}:")
    print(f"  recall {pi['recall']:.3f} on {pi['attacks']} attacks", end="")
    print(f" (kind right on {pi['kind_accuracy']:.3f} of those found)")
    print(f"  false positives {pi['fp_rate']:.3f} of {pi['negatives']} lines without an attack")
    print(f"  false positives {pi['fp_rate_written']:.3f} of the {pi['written']} of them written for it")


if __name__ == "__main__":
    main()
