"""``GET /admin/v1/traces`` and ``GET /admin/v1/traces/spans``: the embedded trace store over HTTP.

The list is what ``m2a traces list`` shows (newest or slowest first; team, model, status filters);
``spans`` is one trace's spans, for a waterfall. Admins see every trace. A team key (or an agent's
token) sees its own team's: the spans its team's requests made (``m2a.team``) and the spans under
them that name no other team (route decision, engine call, the engine's own span). A caller's
``traceparent`` can put its request into another team's trace id; what that other team's spans
hold is still never shown to it (and a trace's summary is computed from the visible spans only).
(No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.)
"""

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from m2a.gateway.admin_access import caller
from m2a.gateway.errors import GatewayError
from m2a.principal import Principal
from m2a.telemetry.store import MODEL_ATTR, TEAM_ATTR, SpanRow, TraceStore, TraceSummary

NO_NUL = r"^[^\x00]*$"
TRACE_ID = r"^[0-9a-f]{32}$"


class TraceOut(BaseModel):
    trace_id: str
    root: str = Field(description="The root span's name.")
    start_ns: int
    duration_ms: float
    span_count: int
    services: list[str]
    status: str = Field(description="error when any span errored, else ok.")
    team: str | None
    model: str | None


class SpanOut(BaseModel):
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    status: str
    status_message: str
    attributes: dict[str, Any]
    events: list[dict[str, Any]]


class TraceSpansOut(BaseModel):
    trace_id: str
    spans: list[SpanOut]


def visible(spans: list[SpanRow], team: str) -> list[SpanRow]:
    """The spans of a trace that ``team`` may see: its own (``m2a.team``), and their descendants
    that name no other team."""
    children: dict[str | None, list[SpanRow]] = {}
    for s in spans:
        children.setdefault(s.parent_id, []).append(s)
    seen: set[str] = set()
    stack = [s for s in spans if s.attributes.get(TEAM_ATTR) == team]
    out = []
    while stack:
        span = stack.pop()
        if span.span_id in seen:
            continue
        seen.add(span.span_id)
        out.append(span)
        for c in children.get(span.span_id, []):
            if c.attributes.get(TEAM_ATTR) in (None, team):
                stack.append(c)
    out.sort(key=lambda s: (s.start_ns, -s.end_ns, s.span_id))
    return out


def summarize(trace_id: str, spans: list[SpanRow]) -> TraceOut:
    """A trace's line, from the spans given (for a team: the ones it may see)."""
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id not in ids] or spans
    start = min(s.start_ns for s in spans)
    models = sorted({str(s.attributes[MODEL_ATTR]) for s in spans if MODEL_ATTR in s.attributes})
    teams = sorted({str(s.attributes[TEAM_ATTR]) for s in spans if TEAM_ATTR in s.attributes})
    return TraceOut(
        trace_id=trace_id,
        root=min(roots, key=lambda s: (s.parent_id is not None, s.start_ns, -s.end_ns)).name,
        start_ns=start,
        duration_ms=round(max(0, max(s.end_ns for s in spans) - start) / 1e6, 3),
        span_count=len(spans),
        services=sorted({s.service for s in spans}),
        status="error" if any(s.status == "error" for s in spans) else "ok",
        team=teams[-1] if teams else None,
        model=models[-1] if models else None,
    )


def _summary(t: TraceSummary) -> TraceOut:
    return TraceOut(
        trace_id=t.trace_id,
        root=t.root,
        start_ns=t.start_ns,
        duration_ms=round(t.duration_ns / 1e6, 3),
        span_count=t.span_count,
        services=t.services,
        status=t.status,
        team=t.team,
        model=t.model,
    )


def _span(s: SpanRow) -> SpanOut:
    return SpanOut(**{f: getattr(s, f) for f in SpanOut.model_fields})


def _team_of(p: Principal, team: str | None) -> str | None:
    """The team filter a caller gets: any for admins, its own for everyone else."""
    if p.is_admin:
        return team
    if p.team is None:
        raise GatewayError(403, "This key belongs to no team.", code="not_your_team")
    if team is not None and team != p.team:
        raise GatewayError(403, "A team key sees its own team's traces only.", code="not_your_team")
    return p.team


def traces_router(store: TraceStore | None) -> APIRouter:
    """The routes, reading ``store`` (None: tracing off, no traces)."""
    router = APIRouter()
    Caller = Annotated[Principal, Depends(caller)]

    @router.get("/v1/traces", response_model=list[TraceOut])
    async def list_traces(
        p: Caller,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        since_hours: Annotated[float | None, Query(gt=0, le=24 * 3660)] = None,
        team: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
        model: Annotated[str | None, Query(max_length=256, pattern=NO_NUL)] = None,
        status: Literal["ok", "error"] | None = None,
        slowest: bool = False,
    ) -> list[TraceOut]:
        """Recent traces, newest first (``slowest``: longest first); team keys see their team's."""
        team = _team_of(p, team)
        if store is None:
            return []
        since_ns = None if since_hours is None else time.time_ns() - int(since_hours * 3600e9)
        found = await asyncio.to_thread(store.traces, limit, since_ns, team, model, status, slowest)
        if p.is_admin:
            return [_summary(t) for t in found]
        assert team is not None
        out = []
        for t in found:  # computed again from what this team may see of each
            spans = visible(await asyncio.to_thread(store.spans, t.trace_id), team)
            if spans:
                out.append(summarize(t.trace_id, spans))
        out = [t for t in out if status is None or t.status == status]
        if slowest:
            out.sort(key=lambda t: (-t.duration_ms, -t.start_ns))
        return out

    @router.get("/v1/traces/spans", response_model=TraceSpansOut)
    async def trace_spans(
        p: Caller, trace_id: Annotated[str, Query(pattern=TRACE_ID, description="32 hex digits.")]
    ) -> TraceSpansOut:
        """One trace's spans, by start time (a team key: those its team may see)."""
        team = _team_of(p, None)
        spans = [] if store is None else await asyncio.to_thread(store.spans, trace_id)
        if team is not None:
            spans = visible(spans, team)
        if not spans:
            raise GatewayError(404, f"No trace {trace_id} (it may have been pruned).", code="not_found")
        return TraceSpansOut(trace_id=trace_id, spans=[_span(s) for s in spans])

    return router
