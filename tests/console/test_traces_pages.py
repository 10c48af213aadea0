"""Traces: the traces API (team scoping, crafted requests, a caller's traceparent joining another
team's trace) and the pages over it: recent and slowest lists with filters, one trace as a
waterfall with the route decision and the engine call, everything escaped."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from typing import Any

import httpx
import pytest

from m2a.telemetry.store import SpanRow
from tests.console.conftest import ADMIN, MODEL, TIMEOUT, Console

pytestmark = pytest.mark.asyncio(loop_scope="session")

TRACES, SPANS = "/admin/v1/traces", "/admin/v1/traces/spans"


async def until_traces(console: Console, count: int, key: str = ADMIN, **query: Any) -> list[dict[str, Any]]:
    async with asyncio.timeout(TIMEOUT):
        while True:
            resp = await console.api("GET", TRACES, key, params=query)
            assert resp.status_code == 200, resp.text
            if len(resp.json()) >= count:
                return resp.json()
            await asyncio.sleep(0.05)


async def chat(console: Console, key: str, trace_id: str | None = None) -> str:
    """One chat request (continuing ``trace_id`` when given); the trace id it ran in."""
    trace_id = trace_id or secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01", "authorization": f"Bearer {key}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=console.url, timeout=TIMEOUT, trust_env=False) as http:
        resp = await http.post("/v1/chat/completions", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    return trace_id


async def test_the_api_scopes_traces_to_the_team(console: Console) -> None:
    research = await console.team("research")
    ops = await console.team("ops")
    mine, theirs = await chat(console, research), await chat(console, ops)
    every = await until_traces(console, 2)
    assert {t["trace_id"] for t in every} == {mine, theirs}
    by_id = {t["trace_id"]: t for t in every}
    assert by_id[mine]["team"] == "research" and by_id[mine]["model"] == MODEL
    assert by_id[mine]["root"] == f"chat {MODEL}" and by_id[mine]["status"] == "ok"

    seen = await until_traces(console, 1, research)
    assert [t["trace_id"] for t in seen] == [mine]
    assert (await console.api("GET", TRACES, research, params={"team": "ops"})).status_code == 403
    spans = (await console.api("GET", SPANS, research, params={"trace_id": mine})).json()["spans"]
    names = {s["name"] for s in spans}
    assert {f"chat {MODEL}", "m2a.admission", "m2a.route", f"engine {MODEL}-0"} <= names
    other = await console.api("GET", SPANS, research, params={"trace_id": theirs})
    assert other.status_code == 404  # another team's trace is not there, for this key
    assert (await console.api("GET", SPANS, ADMIN, params={"trace_id": theirs})).status_code == 200
    for bad in (theirs[:12], theirs.upper(), "x" * 32, ""):
        assert (await console.api("GET", SPANS, research, params={"trace_id": bad})).status_code in (400, 422)
    assert (await console.api("GET", TRACES, None)).status_code == 401

    # ops joins research's trace with its own traceparent: it sees its own spans there, not research's
    await chat(console, ops, trace_id=mine)
    async with asyncio.timeout(TIMEOUT):
        while len((await console.api("GET", SPANS, params={"trace_id": mine})).json()["spans"]) < 2 * len(
            spans
        ):
            await asyncio.sleep(0.05)
    joined = (await console.api("GET", SPANS, ops, params={"trace_id": mine})).json()["spans"]
    assert len(joined) == len(spans)
    assert {s["attributes"].get("m2a.team") for s in joined} == {"ops", None}
    research_ids = {s["span_id"] for s in spans}
    assert not research_ids & {s["span_id"] for s in joined}
    listed = {t["trace_id"]: t for t in await until_traces(console, 2, ops)}
    assert listed[mine]["team"] == "ops" and listed[mine]["span_count"] == len(spans)
    assert len((await console.api("GET", SPANS, research, params={"trace_id": mine})).json()["spans"]) == len(
        spans
    )

    # filters
    assert await until_traces(console, 2, model=MODEL)
    assert (await console.api("GET", TRACES, params={"model": "nope"})).json() == []
    assert (await console.api("GET", TRACES, params={"status": "error"})).json() == []
    assert (await console.api("GET", TRACES, params={"status": "bad"})).status_code == 400


def fake_trace(console: Console, name: str, team: str, duration_ms: float, error: bool = False) -> str:
    """A trace written straight into the trace store (a span name and attributes of our choosing)."""
    tid = secrets.token_hex(16)
    root, child = secrets.token_hex(8), secrets.token_hex(8)
    t0 = time.time_ns()
    end = t0 + int(duration_ms * 1e6)
    console.trace_store.add(
        [
            SpanRow(tid, root, None, name, "server", "m2a", t0, end, "error" if error else "ok",
                    "it broke <b>badly</b>" if error else "",
                    {"m2a.team": team, "gen_ai.request.model": MODEL, "m2a.key_prefix": "<img src=x>"},
                    [{"name": "first <token>", "time_ns": t0 + 1000, "attributes": {}}]),
            SpanRow(tid, child, root, "m2a.route", "internal", "m2a", t0 + 100, t0 + 200, "ok", "",
                    {"m2a.replica": "alpha-0", "m2a.route.picker": "max_score", "m2a.route.candidates": 2,
                     "m2a.route.score": 0.75, "m2a.route.score.queue": 0.5, "m2a.route.score.prefix": 1.0,
                     "m2a.route.totals": ["alpha-0=0.7500", "alpha-1=0.2500"]}),
        ]
    )  # fmt: skip
    return tid


async def test_the_traces_pages(console: Console) -> None:
    research = await console.team("research")
    real = await chat(console, research)
    await until_traces(console, 1)
    slow = fake_trace(console, "<script>alert('span')</script>", "research", 5000.0, error=True)
    quick = fake_trace(console, "quick one", "ops", 1.0)

    admin = console.browser()
    await admin.signin(ADMIN)
    page = await admin.get("/console/traces")
    assert page.status_code == 200
    html = page.text
    for tid in (real, slow, quick):
        assert f'href="/console/traces/{tid}"' in html
    assert "<script>alert('span')" not in html and "&lt;script&gt;" in html
    slowest = await admin.get("/console/traces", params={"order": "slowest"})
    order = re.findall(r'href="/console/traces/([0-9a-f]{32})"', slowest.text)
    assert order[0] == slow
    errors = await admin.get("/console/traces", params={"status": "error"})
    assert slow in errors.text and real not in errors.text
    ops_only = await admin.get("/console/traces", params={"team": "ops"})
    assert quick in ops_only.text and real not in ops_only.text

    one = await admin.get(f"/console/traces/{slow}")
    assert one.status_code == 200
    html = one.text
    assert 'class="waterfall"' in html and "<svg" in html and 'class="span kind-server error"' in html
    assert "style=" not in html  # the CSP forbids inline styles: geometry is SVG attributes
    assert "<script>alert" not in html and "<b>badly</b>" not in html and "<img src=x>" not in html
    assert "&lt;b&gt;badly&lt;/b&gt;" in html and "first &lt;token&gt;" in html
    assert "Route decision" in html and "max_score" in html and "alpha-1" in html
    assert "prefix" in html and "(chosen)" in html

    real_page = await admin.get(f"/console/traces/{real}")
    assert real_page.status_code == 200
    assert f"Engine call: engine {MODEL}-0" in real_page.text and f"chat {MODEL}" in real_page.text
    assert 'class="span kind-client"' in real_page.text
    assert (await admin.get(f"/console/traces/{'0' * 32}")).status_code == 404
    assert (await admin.get("/console/traces/not-a-trace")).status_code == 404

    member = console.browser()
    await member.signin(research)
    listed = await member.get("/console/traces")
    assert real in listed.text and slow in listed.text and quick not in listed.text
    assert 'id="t-team"' not in listed.text
    assert quick not in (await member.get("/console/traces", params={"team": "ops"})).text
    assert (await member.get(f"/console/traces/{quick}")).status_code == 404
    assert (await member.get(f"/console/traces/{real}")).status_code == 200
