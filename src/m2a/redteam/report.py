"""Reports of one run: attack success rate per category with its Wilson 95% interval, and example
attempts, as JSON, Markdown or HTML.

``build(store, run)`` gathers everything into one JSON-ready dict (the JSON report is exactly that);
``markdown(report)`` and ``html(report)`` render it. Rates leave errors out (an attempt that was not
judged is not a safe one) and say so: the ``error`` column is always shown.
"""

from __future__ import annotations

import html as _html
import json
import re
from typing import Any

from m2a.redteam.probes import CATEGORY_ORDER, load
from m2a.redteam.results import Run, Store
from m2a.redteam.score import overall, tally

EXCERPT = 600


def _order(run: Run, rows: list[dict[str, Any]]) -> list[str]:
    cats = list(run.categories) or sorted({r["category"] for r in rows})
    return sorted(cats, key=lambda c: (CATEGORY_ORDER.index(c) if c in CATEGORY_ORDER else 99, c))


def _last_user(prompt: str) -> str:
    i = prompt.rfind("[user] ")
    return prompt[i + 7 :] if i >= 0 else prompt


def _excerpt(text: str, n: int = EXCERPT) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _example(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "probe_id": row["probe_id"],
        "technique": row.get("technique") or "",
        "outcome": row["outcome"],
        "decided_by": row["decided_by"],
        "echoed": bool((row.get("detail") or {}).get("echoed")),
        "latency_s": row.get("latency_s"),
        "prompt": _excerpt(_last_user(row.get("prompt") or "")),
        "answer": _excerpt(row.get("answer") or ""),
    }


def examples(rows: list[dict[str, Any]], per_category: int = 3) -> dict[str, list[dict[str, Any]]]:
    """Up to ``per_category`` successful attempts per category; where there is none, one blocked and
    one resisted attempt (what defending looked like) and one error."""
    out: dict[str, list[dict[str, Any]]] = {}
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["category"], []).append(r)
    for cat, rs in by.items():
        hits = [r for r in rs if r["outcome"] == "success"][:per_category]
        if not hits:
            for outcome in ("blocked", "resisted", "error"):
                hits += [r for r in rs if r["outcome"] == outcome][:1]
        out[cat] = [_example(r) for r in hits]
    return out


def build(store: Store, run: Run, per_category: int = 3) -> dict[str, Any]:
    """The report of ``run`` as a JSON-ready dict."""
    rows = store.attempts(run.id)
    stats = tally(rows, _order(run, rows))
    try:
        titles = {c.name: c.title for c in load()[1].values()}
    except Exception:  # a broken custom install must not stop a report of stored results
        titles = {}
    cats = []
    echoes: dict[str, int] = {}
    flagged: dict[str, list[int]] = {}  # category -> [flagged, examined] by the input classifier
    for r in rows:
        detail = r.get("detail") or {}
        if r["outcome"] == "success" and detail.get("echoed"):
            echoes[r["category"]] = echoes.get(r["category"], 0) + 1
        if "input_flagged" in detail:
            f = flagged.setdefault(r["category"], [0, 0])
            f[0] += bool(detail["input_flagged"])
            f[1] += 1
    for s in stats:
        d = s.as_dict()
        d["title"] = titles.get(s.category, s.category.replace("_", " "))
        d["echoed"] = echoes.get(s.category, 0)  # successes whose canary came inside a copy of the prompt
        # informational: attack texts the prompt_injection classifier flags (what an input guard sees)
        d["input_flagged"] = flagged.get(s.category, [None, None])[0]
        d["input_examined"] = flagged.get(s.category, [None, None])[1]
        cats.append(d)
    report: dict[str, Any] = {
        "run": run.as_dict(),
        "categories": cats,
        "overall": overall(stats).as_dict(),
        "examples": examples(rows, per_category),
        "note": "rate = success / (success + resisted + blocked); errors are not judged and not counted "
        "as safe; 95% Wilson score intervals",
    }
    evals = store.detector_evals(run.id)
    if evals:
        report["detector_evals"] = [{k: v for k, v in e.items() if k not in ("id", "run_id")} for e in evals]
    return report


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False, default=str)


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def ci(d: dict[str, Any]) -> str:
    return "n/a" if not d["judged"] else f"{100 * d['ci_low']:.1f}–{100 * d['ci_high']:.1f}%"


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    f = "`" * max(3, longest + 1)
    return f"{f}text\n{text}\n{f}"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    run = report["run"]
    lines = [f"# Red team run {run['id']}: {run['model']}", ""]
    lines.append(
        f"- profile: {run['profile'] or '(none given)'}; source: {run['source']}; "
        f"gateway: {run['base_url'] or 'n/a'}"
    )
    lines.append(f"- started {run['started_at']}, finished {run['finished_at'] or '(not finished)'}")
    meta = run.get("meta") or {}
    if meta.get("seed") is not None:
        lines.append(
            f"- seed {meta['seed']}, concurrency {meta.get('concurrency')}, timeout {meta.get('timeout_s')} s"
        )
    if meta.get("missing_detectors"):
        lines.append(
            f"- detectors not available (their rules were skipped): {', '.join(meta['missing_detectors'])}"
        )
    lines += ["", f"{report['note']}.", ""]
    lines.append(
        "| category | OWASP | judged | success | blocked | resisted | error | attack success rate | 95% CI |"
    )
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for d in [*report["categories"], report["overall"]]:
        name = d["category"] if d["category"] != "all" else "**all**"
        lines.append(
            f"| {name} | {d['owasp']} | {d['judged']} | {d['success']} | {d['blocked']} | "
            f"{d['resisted']} | {d['error']} | {pct(d['rate'])} | {ci(d)} |"
        )
    cats = report["categories"]
    seen = [
        f"{d['category']} {d['input_flagged']}/{d['input_examined']}" for d in cats if d.get("input_examined")
    ]
    if seen:
        lines += [
            "",
            "The prompt_injection classifier flags the attack text (informational, not a judgement: what "
            f"an input guard could see) of: {', '.join(seen)}.",
        ]
    echoed = [f"{d['category']} {d['echoed']}" for d in report["categories"] if d.get("echoed")]
    if echoed:
        lines += [
            "",
            "Successes whose canary came back inside a word-for-word copy of the prompt (the model "
            "repeated the injected text rather than obeying it, which still delivers it): "
            f"{', '.join(echoed)}.",
        ]
    if report.get("detector_evals"):
        lines += [
            "",
            "## garak, per probe and detector",
            "",
            "garak's own counts next to the ones recomputed from its attempts (hit: score ≥ 0.5).",
            "",
            "| probe | detector | category | garak passed | garak fails | garak nones | hits | scored "
            "| unscored |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for e in report["detector_evals"]:
            lines.append(
                f"| {e['probe']} | {e['detector']} | {e['category']} | {e['passed']} | {e['fails']} | "
                f"{e['nones']} | {e['hits']} | {e['scored']} | {e['unscored']} |"
            )
    lines += ["", "## Examples", ""]
    for cat, exs in report["examples"].items():
        lines += [f"### {cat}", ""]
        for ex in exs:
            lines.append(
                f"**{ex['probe_id']}** ({_md_cell(ex['technique']) or 'probe'}): **{ex['outcome']}**, "
                f"{_md_cell(ex['decided_by'])}{' (inside a copy of the prompt)' if ex.get('echoed') else ''}"
            )
            lines += [
                "",
                "Prompt (last user message):",
                "",
                _fence(ex["prompt"]),
                "",
                "Answer:",
                "",
                _fence(ex["answer"] or "(empty)"),
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


def html(report: dict[str, Any]) -> str:
    e = _html.escape
    run = report["run"]
    rows = []
    for d in [*report["categories"], report["overall"]]:
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{e(str(x))}</td>"
                for x in (
                    d["category"],
                    d["owasp"],
                    d["judged"],
                    d["success"],
                    d["blocked"],
                    d["resisted"],
                    d["error"],
                    pct(d["rate"]),
                    ci(d),
                )
            )
            + "</tr>"
        )
    ex_html = []
    for cat, exs in report["examples"].items():
        ex_html.append(f"<h3>{e(cat)}</h3>")
        for ex in exs:
            ex_html.append(
                f"<p><b>{e(ex['probe_id'])}</b> ({e(ex['technique'] or 'probe')}): "
                f"<b>{e(ex['outcome'])}</b>, "
                f"{e(ex['decided_by'])}</p><p>Prompt:</p><pre>{e(ex['prompt'])}</pre>"
                f"<p>Answer:</p><pre>{e(ex['answer'] or '(empty)')}</pre>"
            )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "category",
            "OWASP",
            "judged",
            "success",
            "blocked",
            "resisted",
            "error",
            "attack success rate",
            "95% CI",
        )
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Red team run {e(str(run['id']))}</title>"
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3em .6em}"
        "pre{background:#f6f6f6;padding:.5em;white-space:pre-wrap}"
        "</style></head><body>"
        f"<h1>Red team run {e(str(run['id']))}: {e(run['model'])}</h1>"
        f"<p>profile {e(run['profile'] or '(none given)')}; source {e(run['source'])}; gateway "
        f"{e(run['base_url'] or 'n/a')}; started {e(run['started_at'])}</p><p>{e(report['note'])}.</p>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table><h2>Examples</h2>{''.join(ex_html)}</body></html>\n"
    )


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return to_json(report) + "\n"
    if fmt == "md":
        return markdown(report)
    if fmt == "html":
        return html(report)
    raise ValueError(f"unknown format {fmt!r}: json, md or html")
