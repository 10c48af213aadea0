"""One connected trace from the client through the gateway into a real vLLM engine.

`m2a up` (the session stack) runs SmolLM2 on vLLM-CPU with engine tracing on, and is configured to
send traces to a test OTLP collector (real protobuf over HTTP on loopback) besides its embedded
store. A request carrying a W3C ``traceparent`` must yield, at the collector and in `m2a traces`,
one trace: the gateway's server span, its admission, route and engine-call spans, and vLLM's own
request span as the child of the engine-call span; and no prompt text anywhere.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import KEY, Stack
from tests.otlp_collector import Collector, Span

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m-instruct"
SECRET = "the vault code is 7-3-9-1"


def wait_for(collector: Collector, trace_id: str, want: int, timeout: float = 60) -> list[Span]:
    deadline = time.monotonic() + timeout
    spans: list[Span] = []
    while time.monotonic() < deadline:
        spans = collector.trace(trace_id)
        if len(spans) >= want and any(s.service.startswith("vllm") for s in spans):
            return spans
        time.sleep(0.5)  # both sides batch their exports (every few seconds)
    names = [(s.service, s.name) for s in spans]
    raise AssertionError(f"trace {trace_id} incomplete after {timeout} s: {names}")


def test_a_request_is_one_trace_from_gateway_to_engine(stack: Stack, collector: Collector) -> None:
    trace_id = secrets.token_hex(16)
    r = httpx.post(
        f"{stack.base_url}/chat/completions",
        headers={"authorization": f"Bearer {KEY}", "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        json={"model": MODEL, "messages": [{"role": "user", "content": SECRET}], "max_tokens": 8},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    spans = wait_for(collector, trace_id, want=5)
    by_name = {s.name: s for s in spans}
    root = by_name[f"chat {MODEL}"]
    engine_call = by_name[f"engine {MODEL}#0"]
    engine_spans = [s for s in spans if s.service.startswith("vllm")]
    assert {"m2a.admission", "m2a.route"} <= set(by_name)
    for name in ("m2a.admission", "m2a.route", f"engine {MODEL}#0"):
        assert by_name[name].parent_id == root.span_id, name
    assert len(engine_spans) == 1 and engine_spans[0].parent_id == engine_call.span_id
    vllm = engine_spans[0].attributes
    assert vllm.get("gen_ai.usage.completion_tokens") == root.attributes["gen_ai.usage.output_tokens"]
    assert "gen_ai.latency.time_in_queue" in vllm and "gen_ai.latency.time_to_first_token" in vllm
    assert root.attributes["gen_ai.operation.name"] == "chat"
    assert root.attributes["gen_ai.request.model"] == MODEL
    assert root.attributes["gen_ai.usage.input_tokens"] > 0
    for s in spans:  # no prompt text by default, neither ours nor the engine's
        assert SECRET not in json.dumps(s.attributes, default=str), (s.service, s.name)

    # The embedded store has the same trace, engine span included (`m2a traces show`).
    env = {**os.environ, "M2A_HOME": str(stack.home)}
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(
            [sys.executable, "-m", "m2a", "traces", "show", trace_id, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        stored = json.loads(out.stdout) if out.returncode == 0 else {"spans": []}
        names = {s["name"] for s in stored["spans"]}
        if {f"chat {MODEL}", engine_spans[0].name} <= names or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {f"chat {MODEL}", f"engine {MODEL}#0", engine_spans[0].name} <= names, out.stdout + out.stderr


def test_metrics_reach_the_collector_as_otlp(stack: Stack, collector: Collector) -> None:
    """The numbers of /metrics, engines' included, also go to the configured collector."""
    deadline = time.monotonic() + 60  # exported every 15 s
    want = {"m2a_requests_total", "vllm.num_requests_waiting"}
    while not want <= collector.metric_names and time.monotonic() < deadline:
        time.sleep(1)
    assert want <= collector.metric_names, sorted(collector.metric_names)[:50]
