"""Traces: recent and slowest requests, and one trace as a waterfall.

The list is ``GET /admin/v1/traces`` (filters: team for admins, model, status, how far back); a
trace is ``GET /admin/v1/traces/spans``: its spans as a tree, each a bar on the trace's timeline
(server-side SVG whose geometry is attributes, so the CSP's ban on inline styles holds), the
gateway's route decision with every scorer's score and each candidate's total, and the engine's
span. A team key sees its own team's traces only, as the API enforces (``admin_traces.py``).
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any

from m2a.console.api import ApiError
from m2a.console.pages import Ctx, page

TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
SINCE = {"1h": 1.0, "24h": 24.0, "72h": 72.0}
LIST_LIMIT = 50
WIDTH = 1000  # the waterfall's SVG viewBox width
MAX_DEPTH = 5  # deeper spans are indented as this deep
SHOWN_PREFIXES = ("gen_ai.", "m2a.", "http.", "error.", "url.", "server.")
MAX_VALUE = 300


def started(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@page("traces", "/traces", "Traces", "traces.html", who="any", order=50)
async def traces(ctx: Ctx) -> dict[str, Any]:
    assert ctx.api is not None
    slowest = ctx.query("order") == "slowest"
    status = ctx.query("status") if ctx.query("status") in ("ok", "error") else None
    since = ctx.query("since") if ctx.query("since") in SINCE else None
    model = (ctx.query("model") or "").strip()[:256] or None
    team = ((ctx.query("team") or "").strip()[:64] or None) if ctx.is_admin else None
    query = {
        "limit": LIST_LIMIT,
        "slowest": "true" if slowest else None,
        "status": status,
        "since_hours": SINCE[since] if since else None,
        "model": model,
        "team": team,
    }
    calls: list[Any] = [ctx.api.get("/admin/v1/traces", **query), ctx.api.get("/v1/models")]
    if ctx.is_admin:
        calls.append(ctx.api.get("/admin/v1/teams"))
    found = await asyncio.gather(*calls, return_exceptions=True)
    if isinstance(found[0], BaseException):
        raise found[0]
    rows = found[0]
    models = sorted(m["id"] for m in found[1]["data"]) if not isinstance(found[1], BaseException) else []
    teams = []
    if ctx.is_admin and not isinstance(found[2], BaseException):
        teams = sorted(t["name"] for t in found[2])
    top = max([r["duration_ms"] for r in rows] or [0.0])
    for r in rows:
        r["started"] = started(r["start_ns"])
        r["width"] = round(r["duration_ms"] / top * 20) * 5 if top else 0
    filters = {"status": status, "since": since, "model": model, "team": team}
    return {
        "rows": rows,
        "slowest": slowest,
        "filters": filters,
        "models": models,
        "teams": teams,
        "since_choices": list(SINCE),
        "recent_url": ctx.url("traces", **filters),
        "slowest_url": ctx.url("traces", order="slowest", **filters),
    }


def tree(spans: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """``(depth, span)`` depth-first, children by start time; a span whose parent is not in the
    trace is a root, and a span in a parent cycle is still shown (at depth 0)."""
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for s in spans:
        parent = s["parent_id"] if s["parent_id"] in ids and s["parent_id"] != s["span_id"] else None
        children.setdefault(parent, []).append(s)
    for group in children.values():
        group.sort(key=lambda s: (s["start_ns"], -s["end_ns"], s["span_id"]))
    out: list[tuple[int, dict[str, Any]]] = []
    seen: set[str] = set()
    stack = [(0, s) for s in reversed(children.get(None, []))]
    while stack:
        depth, span = stack.pop()
        if span["span_id"] in seen:
            continue
        seen.add(span["span_id"])
        out.append((depth, span))
        stack.extend((depth + 1, c) for c in reversed(children.get(span["span_id"], [])))
    out.extend((0, s) for s in spans if s["span_id"] not in seen)
    return out


def _shown(attributes: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for key in sorted(attributes):
        if key.startswith(SHOWN_PREFIXES):
            value = attributes[key]
            text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            out.append((key, text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"))
    return out


def route_decision(span: dict[str, Any]) -> dict[str, Any]:
    """The router's decision on an ``m2a.route`` span: the replica, picker, candidates, each
    scorer's score of the chosen replica and each candidate's combined score."""
    a = span["attributes"]
    chosen = a.get("m2a.replica")
    totals = []
    for item in a.get("m2a.route.totals") or []:
        name, _, value = str(item).rpartition("=")
        try:
            totals.append({"replica": name, "score": float(value), "chosen": name == chosen})
        except ValueError:
            continue
    totals.sort(key=lambda t: -t["score"])
    prefix = "m2a.route.score."
    scores = sorted((k[len(prefix) :], v) for k, v in a.items() if k.startswith(prefix))
    return {
        "replica": chosen,
        "picker": a.get("m2a.route.picker") or a.get("m2a.route.policy"),
        "candidates": a.get("m2a.route.candidates"),
        "score": a.get("m2a.route.score"),
        "attempt": a.get("m2a.route.attempt"),
        "excluded": a.get("m2a.route.excluded") or [],
        "scores": scores,
        "totals": totals,
    }


def waterfall(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows for the template: each span's depth, bar geometry (in ``WIDTH`` units), duration,
    events and shown attributes; and the trace's start and length."""
    t0 = min(s["start_ns"] for s in spans)
    total = max(1, max(s["end_ns"] for s in spans) - t0)
    rows = []
    for depth, s in tree(spans):
        x = (s["start_ns"] - t0) * WIDTH / total
        w = max(2.0, (s["end_ns"] - s["start_ns"]) * WIDTH / total)
        events = []
        for e in (s.get("events") or [])[:20]:
            at = int(e.get("time_ns") or s["start_ns"])
            ex = min(WIDTH - 3, max(0, (at - t0) * WIDTH / total))
            events.append(
                {"name": str(e.get("name", "")), "x": round(ex, 2), "at_ms": (at - s["start_ns"]) / 1e6}
            )
        rows.append(
            {
                "span": s,
                "depth": min(depth, MAX_DEPTH),
                "x": round(min(x, WIDTH - 2), 2),
                "w": round(min(w, WIDTH - min(x, WIDTH - 2)), 2),
                "offset_ms": (s["start_ns"] - t0) / 1e6,
                "duration_ms": max(0, s["end_ns"] - s["start_ns"]) / 1e6,
                "events": events,
                "attrs": _shown(s["attributes"]),
                "error": s["status"] == "error",
            }
        )
    return {"rows": rows, "start": started(t0), "total_ms": total / 1e6}


@page("trace", "/traces/{trace_id}", "Trace", "trace.html", who="any", nav=False)
async def trace(ctx: Ctx) -> Any:
    assert ctx.api is not None
    trace_id = str(ctx.request.path_params.get("trace_id", "")).lower()
    if not TRACE_ID.fullmatch(trace_id):
        raise ApiError(404, "A trace id is 32 hex digits.", "not_found")
    data = await ctx.api.get("/admin/v1/traces/spans", trace_id=trace_id)
    spans = data["spans"]
    wf = waterfall(spans)
    routes = [route_decision(s) for s in spans if s["name"] == "m2a.route"]
    gateway = next((s for s in spans if s["kind"] == "server" and "m2a.team" in s["attributes"]), None)
    engine = [s for s in spans if s["kind"] == "client" and s["name"].startswith("engine ")]
    calls = {s["span_id"] for s in engine}
    engine_own = [s for s in spans if s["parent_id"] in calls]  # the engine's own span (vLLM's)
    return {
        "trace_id": trace_id,
        "wf": wf,
        "width": WIDTH,
        "spans": spans,
        "services": sorted({s["service"] for s in spans}),
        "routes": routes,
        "gateway": gateway,
        "gateway_attrs": _shown(gateway["attributes"]) if gateway else [],
        "engine": engine,
        "engine_own": engine_own,
        "failed": any(s["status"] == "error" for s in spans),
        "back": ctx.url("traces"),
    }
