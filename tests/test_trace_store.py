"""The embedded trace store: writes (idempotent, thread-safe), summaries and their filters, trace-id
prefixes, and pruning by age and by size (whole traces, oldest first)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from m2a.telemetry.store import AmbiguousTraceId, SpanRow, TraceStore

NOW = 1_800_000_000 * 10**9  # a fixed "now" in Unix nanoseconds
MS = 10**6
HOUR = 3600 * 10**9


def tid(n: int) -> str:
    return f"{n:032x}"


def sid(n: int) -> str:
    return f"{n:016x}"


def span(
    trace: int,
    n: int,
    parent: int | None = None,
    start: int = NOW,
    dur_ms: float = 10,
    name: str | None = None,
    service: str = "m2a-gateway",
    status: str = "unset",
    **attributes: Any,
) -> SpanRow:
    return SpanRow(
        trace_id=tid(trace),
        span_id=sid(trace * 1000 + n),
        parent_id=sid(trace * 1000 + parent) if parent is not None else None,
        name=name or f"span-{trace}-{n}",
        kind="server" if parent is None else "internal",
        service=service,
        start_ns=start,
        end_ns=start + int(dur_ms * MS),
        status=status,
        status_message="boom" if status == "error" else "",
        attributes={k.replace("__", "."): v for k, v in attributes.items()},
    )


def chat_trace(trace: int, start: int, team: str, model: str, failed: bool = False, dur_ms: int = 100):
    """A gateway request with an engine span under it."""
    return [
        span(trace, 0, None, start, dur_ms, "POST /v1/chat/completions", m2a__team=team),
        span(trace, 1, 0, start + 2 * MS, 1, "admission"),
        span(
            trace, 2, 0, start + 5 * MS, dur_ms - 10, "chat " + model, "vllm",
            "error" if failed else "ok", gen_ai__request__model=model,
        ),
    ]  # fmt: skip


@pytest.fixture
def store(tmp_path: Path):
    s = TraceStore(tmp_path / "traces.db", retention_s=24 * 3600, max_spans=1000)
    yield s
    s.close()


def test_spans_round_trip_in_start_order(store: TraceStore) -> None:
    attrs = {"s": "x", "b": True, "i": 7, "f": 1.5, "arr": ["a", "b"], "nested": {"k": [1, 2]}}
    rows = [
        span(1, 2, 0, NOW + 3 * MS, name="late"),
        span(1, 0, None, NOW, 50, name="root", **attrs),
        span(1, 1, 0, NOW + 1 * MS, name="early"),
    ]
    rows[0].events = [{"name": "first_token", "time_ns": NOW + 4 * MS, "attributes": {"n": 1}}]
    assert store.add(rows) == 3
    got = store.spans(tid(1))
    assert [s.name for s in got] == ["root", "early", "late"]
    assert got[0].attributes == attrs
    assert got[0].parent_id is None and got[1].parent_id == sid(1000)
    assert got[2].events == rows[0].events
    assert got[0].duration_ns == 50 * MS


def test_add_is_idempotent_and_a_resend_replaces(store: TraceStore) -> None:
    rows = chat_trace(1, NOW, "research", "llama")
    store.add(rows)
    store.add(rows)
    assert store.count() == 3
    again = span(1, 1, 0, NOW + 2 * MS, 3, "admission (retry)")
    store.add([again])
    assert store.count() == 3
    assert [s.name for s in store.spans(tid(1))][1] == "admission (retry)"
    assert store.add([]) == 0


def test_trace_summary(store: TraceStore) -> None:
    store.add(chat_trace(1, NOW, "research", "llama", failed=True, dur_ms=200))
    (t,) = store.traces()
    assert t.trace_id == tid(1)
    assert t.root == "POST /v1/chat/completions"
    assert (t.start_ns, t.duration_ns, t.span_count) == (NOW, 200 * MS, 3)
    assert t.services == ["m2a-gateway", "vllm"]
    assert (t.status, t.team, t.model) == ("error", "research", "llama")


def test_root_is_the_span_whose_parent_is_elsewhere(store: TraceStore) -> None:
    # the agent that started the trace did not report here: the gateway span is the root
    store.add([span(1, 1, 0, NOW + MS, 5, "child"), span(1, 0, 99, NOW, 20, "gw")])
    store.add([span(2, 0, None, NOW + MS, 5, "real root"), span(2, 1, 0, NOW, 20, "earlier child")])
    roots = {t.trace_id: t.root for t in store.traces()}
    assert roots == {tid(1): "gw", tid(2): "real root"}


def test_filters_order_and_limit(store: TraceStore) -> None:
    store.add(chat_trace(1, NOW - 3 * HOUR, "research", "llama", dur_ms=500))
    store.add(chat_trace(2, NOW - 2 * HOUR, "sales", "qwen", failed=True, dur_ms=100))
    store.add(chat_trace(3, NOW - 1 * HOUR, "research", "qwen", dur_ms=300))
    ids = lambda found: [t.trace_id for t in found]  # noqa: E731
    assert ids(store.traces()) == [tid(3), tid(2), tid(1)]  # newest first
    assert ids(store.traces(slowest=True)) == [tid(1), tid(3), tid(2)]
    assert ids(store.traces(limit=2)) == [tid(3), tid(2)]
    assert ids(store.traces(since_ns=NOW - 2 * HOUR - MS)) == [tid(3), tid(2)]
    assert ids(store.traces(team="research")) == [tid(3), tid(1)]
    assert ids(store.traces(model="qwen")) == [tid(3), tid(2)]
    assert ids(store.traces(status="error")) == [tid(2)]
    assert ids(store.traces(status="ok")) == [tid(3), tid(1)]
    assert ids(store.traces(team="research", model="qwen", status="ok")) == [tid(3)]
    assert store.traces(team="nobody") == []
    with pytest.raises(ValueError):
        store.traces(status="weird")


def test_trace_id_prefixes(store: TraceStore) -> None:
    a, b, c = "abcdef01" + "0" * 23 + "1", "abcdef01" + "0" * 23 + "2", "12345678" + "9" * 24
    for trace_id in (a, b, c):
        row = span(1, 0)
        row.trace_id = trace_id
        store.add([row])
    assert store.resolve(c[:8]) == c
    assert store.resolve(c.upper()) == c
    assert [s.trace_id for s in store.spans(c[:10])] == [c]
    assert store.spans(a)[0].trace_id == a
    with pytest.raises(AmbiguousTraceId):
        store.spans("abcdef01")
    with pytest.raises(AmbiguousTraceId):
        store.resolve(a[:-1])  # 31 characters, shared by a and b
    assert store.spans("ffffffff") == []
    for bad in ("abcdef0", "xyz12345", a + "0"):
        with pytest.raises(ValueError):
            store.spans(bad)


def test_prune_by_age_drops_old_traces_whole_and_keeps_recent(store: TraceStore) -> None:
    store.add(chat_trace(1, NOW - 48 * HOUR, "research", "llama"))  # past the 24 h retention
    store.add(chat_trace(2, NOW - 30 * HOUR, "research", "llama"))
    store.add(chat_trace(3, NOW - 1 * HOUR, "research", "llama"))
    # a long trace: its root began before the cutoff, a child after it; kept whole
    store.add([span(4, 0, None, NOW - 25 * HOUR, 3 * 3600 * 1000), span(4, 1, 0, NOW - 23 * HOUR)])
    assert store.prune(NOW) == 6
    assert store.spans(tid(1)) == [] and store.spans(tid(2)) == []
    assert len(store.spans(tid(3))) == 3
    assert len(store.spans(tid(4))) == 2
    assert store.prune(NOW) == 0


def test_prune_by_size_drops_oldest_traces_whole(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db", retention_s=24 * 3600, max_spans=10)
    for n in range(6):  # 18 spans, all within retention
        store.add(chat_trace(n + 1, NOW - (10 - n) * 60 * 10**9, "research", "llama"))
    removed = store.prune(NOW)
    assert removed == 9  # 8 spans too many: the three oldest traces go whole
    assert store.count() == 9
    assert {t.trace_id for t in store.traces()} == {tid(4), tid(5), tid(6)}
    assert all(t.span_count == 3 for t in store.traces())
    store.add(chat_trace(7, NOW, "research", "llama"))
    assert store.prune(NOW) == 3 and {t.trace_id for t in store.traces()} == {tid(5), tid(6), tid(7)}
    store.close()


def test_maybe_prune_counts_batches(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db", retention_s=3600, max_spans=1000)
    store.add(chat_trace(1, 10**9, "research", "llama"))  # 1970: long past retention
    assert store.maybe_prune(every_adds=2, interval_s=3600) == 0
    assert store.count() == 3
    store.add(chat_trace(2, 10**9, "research", "llama"))
    assert store.maybe_prune(every_adds=2, interval_s=3600) == 6
    assert store.count() == 0
    store.close()


def test_threads_share_one_store_and_a_reopen_sees_everything(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")

    def work(k: int) -> None:
        for i in range(25):
            store.add(chat_trace(k * 100 + i + 1, NOW + i, "t", "m"))
            store.traces(limit=5)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count() == 8 * 25 * 3
    store.close()
    again = TraceStore(tmp_path / "t.db")
    assert len(again.traces(limit=1000)) == 200
    again.close()


def test_store_exporter_under_a_batch_processor_writes_and_prunes(tmp_path: Path) -> None:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import Status, StatusCode

    from m2a.telemetry.exporter import StoreExporter

    store = TraceStore(tmp_path / "t.db", retention_s=3600, max_spans=4)
    exporter = StoreExporter(store, prune_every=1, close_store=True)
    provider = TracerProvider(resource=Resource.create({"service.name": "m2a-gateway"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))  # writes from its worker thread
    tracer = provider.get_tracer("test")
    trace_ids = []
    for n in range(3):
        with tracer.start_as_current_span("request", attributes={"m2a.team": "t", "n": n}) as root:
            trace_ids.append(f"{root.get_span_context().trace_id:032x}")
            with tracer.start_as_current_span("engine") as child:
                child.set_status(Status(StatusCode.ERROR, "no"))
        assert provider.force_flush()
    kept = store.traces()
    assert store.count() <= 4 and [t.trace_id for t in kept][0] == trace_ids[-1]  # newest kept
    assert store.spans(trace_ids[0]) == []  # oldest pruned
    assert kept[0].status == "error" and kept[0].team == "t" and kept[0].services == ["m2a-gateway"]
    last = store.spans(trace_ids[-1])
    assert [s.name for s in last] == ["request", "engine"] and last[1].parent_id == last[0].span_id
    provider.shutdown()
    with pytest.raises(sqlite3.ProgrammingError):  # the exporter closed the store
        store.count()
