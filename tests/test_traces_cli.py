"""`m2a traces list|show` through typer's CliRunner, on a trace store in a temporary $M2A_HOME:
tables and filters, JSON, the waterfall's shape (indentation, bars on a shared timeline, key
attributes), and clear errors for a missing store or an unknown id."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

from m2a.cli.traces_cmd import traces_app
from m2a.telemetry.store import SpanRow, TraceStore

MS = 10**6
NOW = time.time_ns()
T0 = NOW - 60 * 10**9  # the traces below began a minute ago …
OLD = NOW - 3 * 3600 * 10**9  # … except one, three hours ago


def row(trace: str, n: int, parent: int | None, start_ms: int, dur_ms: int, name: str, **kw) -> SpanRow:
    base = kw.pop("base", T0)
    return SpanRow(
        trace_id=trace,
        span_id=f"{n:016x}",
        parent_id=f"{parent:016x}" if parent is not None else None,
        name=name,
        start_ns=base + start_ms * MS,
        end_ns=base + (start_ms + dur_ms) * MS,
        **kw,
    )


CHAT = "c0ffee00" + "1" * 24
FAIL = "dead0000" + "2" * 24
OLDT = "01d00000" + "3" * 24
NAMES = ("POST /v1/chat/completions", "admission", "chat llama", "llm_request")


def chat_trace() -> list[SpanRow]:
    """Root 0–100 ms; admission the first half; the engine call the second half, with an event."""
    return [
        row(CHAT, 1, None, 0, 100, "POST /v1/chat/completions", kind="server", service="m2a-gateway",
            attributes={"m2a.team": "research", "gen_ai.request.model": "llama", "http.method": "POST"}),
        row(CHAT, 2, 1, 0, 50, "admission", service="m2a-gateway", attributes={"m2a.priority": "batch"}),
        row(CHAT, 3, 1, 50, 50, "chat llama", kind="client", service="m2a-gateway",
            attributes={"gen_ai.usage.output_tokens": 7},
            events=[{"name": "first_token", "time_ns": T0 + 60 * MS, "attributes": {}}]),
        row(CHAT, 4, 3, 55, 40, "llm_request", service="vllm"),
    ]  # fmt: skip


def other_traces() -> list[SpanRow]:
    return [
        row(FAIL, 11, None, 10, 300, "POST /v1/chat/completions", service="m2a-gateway", status="error",
            status_message="upstream 500", attributes={"m2a.team": "sales", "gen_ai.request.model": "qwen"}),
        row(OLDT, 21, None, 0, 20, "POST /v1/embeddings", base=OLD, service="m2a-gateway",
            attributes={"m2a.team": "research", "gen_ai.request.model": "minilm"}),
    ]  # fmt: skip


@pytest.fixture
def home(tmp_path: Path) -> Path:
    store = TraceStore(tmp_path / "traces.db")
    store.add(chat_trace() + other_traces())
    store.close()
    return tmp_path


def cli(home: Path | None, *args: str) -> Result:
    env = {"M2A_HOME": str(home) if home else None, "M2A_CONFIG": None, "COLUMNS": "200"}
    return CliRunner().invoke(traces_app, list(args), env=env)


def test_list_shows_newest_first_with_summaries(home: Path) -> None:
    result = cli(home, "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    order = [next(i for i, line in enumerate(lines) if t[:12] in line) for t in (FAIL, CHAT, OLDT)]
    assert order == sorted(order)  # FAIL began 10 ms after CHAT; OLDT hours before
    chat_line = next(line for line in lines if CHAT[:12] in line)
    for text in ("POST /v1/chat/completions", "100.0 ms", "m2a-gateway,vllm", "research", "llama", "ok"):
        assert text in chat_line
    assert "error" in next(line for line in lines if FAIL[:12] in line)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--team", "research"], [CHAT, OLDT]),
        (["--model", "qwen"], [FAIL]),
        (["--status", "error"], [FAIL]),
        (["--status", "ok"], [CHAT, OLDT]),
        (["--since", "1h"], [FAIL, CHAT]),
        (["--since", "1h", "--team", "research"], [CHAT]),
        (["--slowest"], [FAIL, CHAT, OLDT]),
        (["--limit", "1"], [FAIL]),
        (["--team", "nobody"], []),
    ],
)
def test_list_filters_in_json(home: Path, args: list[str], expected: list[str]) -> None:
    result = cli(home, "list", "--json", *args)
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert [t["trace_id"] for t in found] == expected
    for t in found:
        assert t["span_count"] >= 1 and t["duration_ms"] > 0 and t["started"].endswith("Z")


def test_list_refuses_a_bad_status_and_says_when_nothing_matches(home: Path) -> None:
    assert cli(home, "list", "--status", "maybe").exit_code == 2
    result = cli(home, "list", "--team", "nobody")
    assert result.exit_code == 0 and "no traces match" in result.output


def bar_of(line: str) -> tuple[int, int, int]:
    """(first filled cell, filled cells, timeline width) of a span line's bar."""
    inside = line.split("│")[1]
    first = inside.index("█")
    return first, inside.count("█"), len(inside)


def test_show_draws_a_waterfall(home: Path) -> None:
    result = cli(home, "show", CHAT[:8])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"trace {CHAT}" in out and "4 span(s)" in out and "m2a-gateway, vllm" in out
    lines = out.splitlines()
    span_line = {
        name: next(line for line in lines if line.lstrip(" └").startswith(name) and "│" in line)
        for name in NAMES
    }
    assert span_line["POST /v1/chat/completions"].startswith("POST")
    assert span_line["admission"].startswith("  └ admission")
    assert span_line["llm_request"].startswith("    └ llm_request")  # a grandchild: one level deeper
    root, adm, chat = (bar_of(span_line[n]) for n in ("POST /v1/chat/completions", "admission", "chat llama"))
    width = root[2]
    assert root[:2] == (0, width)  # the root spans the whole timeline
    assert adm[0] == 0 and abs(adm[1] - width / 2) <= 1  # first half
    assert abs(chat[0] - width / 2) <= 1 and abs(chat[1] - width / 2) <= 1  # second half
    assert "100.0 ms" in span_line["POST /v1/chat/completions"] and "50.0 ms" in span_line["admission"]
    assert "vllm" in span_line["llm_request"]
    assert "gen_ai.request.model=llama" in out and "m2a.team=research" in out
    assert "m2a.priority=batch" in out and "gen_ai.usage.output_tokens=7" in out
    assert "http.method" not in out  # only gen_ai.* and m2a.* are shown
    assert "first_token" in out and "+10.0 ms" in out


def test_show_marks_errors(home: Path) -> None:
    result = cli(home, "show", FAIL)
    assert result.exit_code == 0, result.output
    assert "ERROR" in result.output and "error: upstream 500" in result.output


def test_show_json(home: Path) -> None:
    result = cli(home, "show", CHAT[:10], "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["trace_id"] == CHAT
    assert [s["name"] for s in data["spans"]] == list(NAMES)
    assert data["spans"][2]["events"][0]["name"] == "first_token"


@pytest.mark.parametrize("trace_id", ["abcdef0123456789", "c0ffee0", "not-hex!", "c0ffee00" + "f" * 24])
def test_show_unknown_or_bad_id(home: Path, trace_id: str) -> None:
    result = cli(home, "show", trace_id)
    assert result.exit_code == 1
    assert "error:" in result.output and "Traceback" not in result.output


def test_show_ambiguous_prefix(home: Path) -> None:
    store = TraceStore(home / "traces.db")
    store.add([row("c0ffee00" + "9" * 24, 99, None, 0, 5, "other")])
    store.close()
    result = cli(home, "show", "c0ffee00")
    assert result.exit_code == 1 and "more than one trace" in result.output
    assert cli(home, "show", CHAT[:9]).exit_code == 0


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    for args in (["list"], ["show", CHAT]):
        result = cli(tmp_path, *args)
        assert result.exit_code == 1
        assert "no trace store" in result.output and "traces.db" in result.output
    assert not (tmp_path / "traces.db").exists()  # looking does not create it


def test_config_option_chooses_the_home(home: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    config = tmp_path_factory.mktemp("cfg") / "m2a.yaml"
    config.write_text(yaml.safe_dump({"home": str(home)}))
    result = cli(None, "list", "--json", "--config", str(config))  # $M2A_HOME would win
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 3


def test_empty_store(tmp_path: Path) -> None:
    TraceStore(tmp_path / "traces.db").close()
    result = cli(tmp_path, "list")
    assert result.exit_code == 0 and "no traces yet" in result.output
    assert json.loads(cli(tmp_path, "list", "--json").stdout) == []
