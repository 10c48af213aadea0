"""The embedded trace store: spans in SQLite (``$M2A_HOME/traces.db``), bounded by age and by count.

Owns the ``spans`` table and the queries behind ``m2a traces``. Plain ``sqlite3`` with one connection
guarded by a lock: it is written from the OpenTelemetry batch worker thread and from asyncio code
through ``asyncio.to_thread``, and read by the CLI (WAL lets the CLI read while the gateway writes).
Pruning drops whole traces, oldest first, so a kept trace is never missing its root.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DB_NAME = "traces.db"
TEAM_ATTR = "m2a.team"
MODEL_ATTR = "gen_ai.request.model"
KINDS = ("internal", "server", "client", "producer", "consumer")
STATUSES = ("unset", "ok", "error")
MIN_PREFIX = 8

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT, name TEXT NOT NULL,
    kind TEXT NOT NULL, service TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    status TEXT NOT NULL, status_message TEXT NOT NULL DEFAULT '', team TEXT, model TEXT,
    attributes TEXT NOT NULL DEFAULT '{}', events TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (trace_id, span_id)  -- also the index by trace id
);
CREATE INDEX IF NOT EXISTS spans_start_ns ON spans (start_ns);
"""
_COLUMNS = "trace_id, span_id, parent_id, name, kind, service, start_ns, end_ns, status, status_message"


@dataclass
class SpanRow:
    """One finished span, as stored. Ids are lowercase hex; times are Unix nanoseconds."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str = "internal"
    service: str = "unknown_service"
    start_ns: int = 0
    end_ns: int = 0
    status: str = "unset"
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # {name, time_ns, attributes}

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TraceSummary:
    """One line of ``m2a traces list``."""

    trace_id: str
    root: str
    start_ns: int
    duration_ns: int
    span_count: int
    services: list[str]
    status: str  # "error" when any span errored, else "ok"
    team: str | None
    model: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AmbiguousTraceId(ValueError):
    """A trace-id prefix that matches more than one trace."""


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _values(r: SpanRow) -> tuple[Any, ...]:
    team, model = _text(r.attributes.get(TEAM_ATTR)), _text(r.attributes.get(MODEL_ATTR))
    head = (r.trace_id, r.span_id, r.parent_id, r.name, r.kind, r.service, r.start_ns, r.end_ns)
    return (*head, r.status, r.status_message, team, model, _dumps(r.attributes), _dumps(r.events))


def _summary(row: tuple[Any, ...], root: str) -> TraceSummary:
    tid, start, duration, n, services, failed, team, model = row
    status = "error" if failed else "ok"
    return TraceSummary(
        tid, root, start, max(0, duration), n, sorted(set(services.split(","))), status, team, model
    )


class TraceStore:
    """Spans in one SQLite file; safe to share between threads."""

    def __init__(self, path: Path | str, retention_s: float = 72 * 3600, max_spans: int = 200_000) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self.max_spans = max_spans
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._adds_since_prune = 0
        self._last_prune = time.monotonic()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction, under the lock."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- writing ----------------------------------------------------------------------------------

    def add(self, rows: Iterable[SpanRow]) -> int:
        """Store spans; a span sent again (same trace and span id) replaces the earlier copy."""
        values = [_values(r) for r in rows]
        if not values:
            return 0
        with self._write():
            self._db.executemany(
                f"INSERT OR REPLACE INTO spans ({_COLUMNS}, team, model, attributes, events) "
                f"VALUES ({', '.join('?' * len(values[0]))})",
                values,
            )
            self._adds_since_prune += 1
        return len(values)

    def prune(self, now_ns: int | None = None) -> int:
        """Drop traces with no span started within the retention, then the oldest traces beyond
        ``max_spans``. Returns how many spans were removed."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        cutoff = now_ns - int(self.retention_s * 1e9)
        with self._write():
            removed = self._db.execute(
                "DELETE FROM spans WHERE trace_id IN (SELECT trace_id FROM spans WHERE start_ns < ? "
                "EXCEPT SELECT trace_id FROM spans WHERE start_ns >= ?)",
                (cutoff, cutoff),
            ).rowcount
            excess = self._db.execute("SELECT COUNT(*) FROM spans").fetchone()[0] - self.max_spans
            if excess > 0:
                # Every trace that began no later than the excess-th oldest span goes: together they
                # hold at least `excess` spans.
                (edge,) = self._db.execute(
                    "SELECT start_ns FROM spans ORDER BY start_ns LIMIT 1 OFFSET ?", (excess - 1,)
                ).fetchone()
                removed += self._db.execute(
                    "DELETE FROM spans WHERE trace_id IN (SELECT trace_id FROM spans WHERE start_ns <= ?)",
                    (edge,),
                ).rowcount
            self._adds_since_prune = 0
            self._last_prune = time.monotonic()
        return removed

    def maybe_prune(self, every_adds: int = 100, interval_s: float = 60.0) -> int:
        """Prune when ``every_adds`` batches came in since the last prune, or ``interval_s`` passed."""
        with self._lock:
            waiting = self._adds_since_prune
            due = waiting >= every_adds or (waiting > 0 and time.monotonic() - self._last_prune >= interval_s)
        return self.prune() if due else 0

    # -- reading ----------------------------------------------------------------------------------

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM spans").fetchone()[0]

    def traces(
        self,
        limit: int = 20,
        since_ns: int | None = None,
        team: str | None = None,
        model: str | None = None,
        status: str | None = None,
        slowest: bool = False,
    ) -> list[TraceSummary]:
        """Trace summaries, newest first (or slowest first); filters combine with AND."""
        if status not in (None, "ok", "error"):
            raise ValueError(f"status filter is 'ok' or 'error', not {status!r}")
        failed = None if status is None else int(status == "error")
        filters = [
            ("MIN(start_ns) >= ?", since_ns),
            ("SUM(team = ?) > 0", team),
            ("SUM(model = ?) > 0", model),
        ]
        having = [(c, v) for c, v in [*filters, ("MAX(status = 'error') = ?", failed)] if v is not None]
        # the start index narrows the scan; HAVING keeps the traces that began in the window
        where, args = ("WHERE trace_id IN (SELECT trace_id FROM spans WHERE start_ns >= ?)", [since_ns])
        if since_ns is None:
            where, args = "", []
        sql = (
            "SELECT trace_id, MIN(start_ns) AS start, MAX(end_ns) - MIN(start_ns) AS duration, COUNT(*), "
            f"GROUP_CONCAT(DISTINCT service), MAX(status = 'error'), MAX(team), MAX(model) FROM spans {where}"
            " GROUP BY trace_id"
            + (" HAVING " + " AND ".join(c for c, _ in having) if having else "")
            + (" ORDER BY duration DESC, start DESC" if slowest else " ORDER BY start DESC")
            + " LIMIT ?"
        )
        with self._lock:
            found = self._db.execute(sql, (*args, *(v for _, v in having), max(0, limit))).fetchall()
            roots = self._roots([row[0] for row in found])
        return [_summary(row, roots.get(row[0], "")) for row in found]

    def _roots(self, trace_ids: list[str]) -> dict[str, str]:
        """The root span's name per trace: a span with no parent, else the earliest one."""
        if not trace_ids:
            return {}
        marks = ",".join("?" * len(trace_ids))
        rows = self._db.execute(
            f"SELECT trace_id, name FROM spans WHERE trace_id IN ({marks}) "
            "ORDER BY trace_id, parent_id IS NOT NULL, start_ns, end_ns DESC",
            trace_ids,
        ).fetchall()
        roots: dict[str, str] = {}
        for tid, name in rows:
            roots.setdefault(tid, name)
        return roots

    def resolve(self, trace_id: str) -> str | None:
        """The full id of the one trace whose id starts with ``trace_id`` (≥ 8 hex characters)."""
        prefix = trace_id.strip().lower()
        if len(prefix) < MIN_PREFIX or len(prefix) > 32 or any(c not in "0123456789abcdef" for c in prefix):
            raise ValueError(f"a trace id is {MIN_PREFIX} to 32 hex characters: {trace_id!r}")
        with self._lock:
            found = self._db.execute(
                "SELECT DISTINCT trace_id FROM spans WHERE trace_id >= ? AND trace_id < ? LIMIT 2",
                (prefix, prefix + "g"),
            ).fetchall()
        if len(found) > 1:
            raise AmbiguousTraceId(f"{trace_id!r} matches more than one trace; give more characters")
        return found[0][0] if found else None

    def spans(self, trace_id: str) -> list[SpanRow]:
        """The spans of one trace (full id or unique prefix), by start time; empty when unknown."""
        full = self.resolve(trace_id)
        if full is None:
            return []
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS}, attributes, events FROM spans WHERE trace_id = ? "
                "ORDER BY start_ns, end_ns DESC, span_id",
                (full,),
            ).fetchall()
        return [
            SpanRow(*row[:10], attributes=json.loads(row[10]), events=json.loads(row[11])) for row in rows
        ]
