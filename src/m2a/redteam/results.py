"""Where red-team results live: a SQLite file of its own (``$M2A_HOME/redteam.db`` by default), never
the gateway's store.

Tables (created when missing; no migrations): ``redteam_runs`` (one row per run: when, the model,
the gateway URL, the profile label, the source ``m2a`` or ``garak``, the categories asked for, the
totals per outcome and free ``meta``), ``redteam_attempts`` (one row per attempt: probe id,
category, OWASP id, outcome, what decided it, latency, HTTP status, the prompt and answer cut to
``MAX_TEXT`` characters, ``detail`` as JSON) and ``redteam_detector_evals`` (garak's own counts
per (probe, detector), next to the counts recomputed from its attempts).

Planted fake values are stored with the attempts (they are fake by construction); real answers may
hold real data when a model leaks some, so the file is created readable by its owner only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    func,
    insert,
    select,
    update,
)

MAX_TEXT = 4000
metadata = MetaData()

runs = Table(
    "redteam_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("model", String(200), nullable=False),
    Column("base_url", String(500), nullable=False, default=""),
    Column("profile", String(100), nullable=False, default=""),
    Column("source", String(20), nullable=False, default="m2a"),
    Column("categories", JSON, nullable=False, default=list),
    Column("totals", JSON, nullable=False, default=dict),
    Column("meta", JSON, nullable=False, default=dict),
)

attempts = Table(
    "redteam_attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("redteam_runs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("probe_id", String(200), nullable=False),
    Column("category", String(100), nullable=False),
    Column("owasp", String(40), nullable=False, default=""),
    Column("technique", String(200), nullable=False, default=""),
    Column("outcome", String(20), nullable=False),
    Column("decided_by", String(300), nullable=False, default=""),
    Column("latency_s", Float),
    Column("status", Integer),
    Column("prompt", Text, nullable=False, default=""),
    Column("answer", Text, nullable=False, default=""),
    Column("detail", JSON, nullable=False, default=dict),
)

detector_evals = Table(
    "redteam_detector_evals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("redteam_runs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("probe", String(200), nullable=False),
    Column("detector", String(200), nullable=False),
    Column("category", String(100), nullable=False),
    Column("passed", Integer),  # garak's own numbers, as it wrote them
    Column("fails", Integer),
    Column("nones", Integer),
    Column("total_evaluated", Integer),
    Column("total_processed", Integer),
    Column("hits", Integer, nullable=False),  # recomputed from the attempts (score >= threshold)
    Column("scored", Integer, nullable=False),  # outputs this detector gave a score to
    Column("unscored", Integer, nullable=False),  # outputs it left without one (None)
)


def cut(text: str | None, limit: int = MAX_TEXT) -> str:
    if not text:
        return ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Run:
    id: int
    started_at: datetime
    finished_at: datetime | None
    model: str
    base_url: str
    profile: str
    source: str
    categories: list[str]
    totals: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["started_at"] = self.started_at.isoformat()
        d["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        return d


class NoSuchRun(LookupError):
    pass


def _utc(dt: datetime | None) -> datetime | None:
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)  # SQLite gives naive datetimes back
    return dt


class Store:
    """The red-team results file: ``Store(path)`` creates it (and its tables) when missing."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
        self.engine: Engine = create_engine(f"sqlite:///{self.path}")
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self.engine.begin() as conn:
            yield conn

    def start_run(
        self,
        model: str,
        base_url: str,
        profile: str,
        source: str,
        categories: list[str],
        meta: dict[str, Any] | None = None,
        started_at: datetime | None = None,
    ) -> int:
        with self._tx() as c:
            res = c.execute(
                insert(runs).values(
                    started_at=started_at or datetime.now(UTC),
                    model=model,
                    base_url=base_url,
                    profile=profile,
                    source=source,
                    categories=list(categories),
                    totals={},
                    meta=meta or {},
                )
            )
            return int(res.inserted_primary_key[0])

    def add_attempts(self, run_id: int, rows: Iterable[dict[str, Any]]) -> int:
        values = []
        for r in rows:
            values.append(
                {
                    "run_id": run_id,
                    "probe_id": r["probe_id"],
                    "category": r["category"],
                    "owasp": r.get("owasp") or "",
                    "technique": r.get("technique") or "",
                    "outcome": r["outcome"],
                    "decided_by": cut(r.get("decided_by"), 300),
                    "latency_s": r.get("latency_s"),
                    "status": r.get("status"),
                    "prompt": cut(r.get("prompt")),
                    "answer": cut(r.get("answer")),
                    "detail": r.get("detail") or {},
                }
            )
        if values:
            with self._tx() as c:
                c.execute(insert(attempts), values)
        return len(values)

    def add_detector_evals(self, run_id: int, rows: Iterable[dict[str, Any]]) -> None:
        values = [{"run_id": run_id, **r} for r in rows]
        if values:
            with self._tx() as c:
                c.execute(insert(detector_evals), values)

    def finish_run(self, run_id: int, meta: dict[str, Any] | None = None) -> Run:
        with self._tx() as c:
            counts = c.execute(
                select(attempts.c.outcome, func.count())
                .where(attempts.c.run_id == run_id)
                .group_by(attempts.c.outcome)
            ).all()
            totals = {o: int(n) for o, n in counts}
            values: dict[str, Any] = {"finished_at": datetime.now(UTC), "totals": totals}
            if meta is not None:
                old = c.execute(select(runs.c.meta).where(runs.c.id == run_id)).scalar_one()
                values["meta"] = {**(old or {}), **meta}
            c.execute(update(runs).where(runs.c.id == run_id).values(**values))
        return self.run(run_id)

    def _run(self, row: Any) -> Run:
        return Run(
            row.id,
            _utc(row.started_at),
            _utc(row.finished_at),
            row.model,
            row.base_url,  # type: ignore[arg-type]
            row.profile,
            row.source,
            list(row.categories or []),
            dict(row.totals or {}),
            dict(row.meta or {}),
        )

    def run(self, ref: int | str) -> Run:
        """A run by id, or ``"last"`` (the newest run)."""
        with self._tx() as c:
            if isinstance(ref, str) and ref.strip().lower() in ("last", "latest"):
                row = c.execute(select(runs).order_by(runs.c.id.desc()).limit(1)).first()
            else:
                try:
                    rid = int(ref)
                except ValueError as exc:
                    raise NoSuchRun(f"{ref!r} is not a run id (a number, or 'last')") from exc
                row = c.execute(select(runs).where(runs.c.id == rid)).first()
        if row is None:
            raise NoSuchRun(f"no red-team run {ref!r} in {self.path}")
        return self._run(row)

    def runs(self, limit: int = 50) -> list[Run]:
        with self._tx() as c:
            rows = c.execute(select(runs).order_by(runs.c.id.desc()).limit(limit)).all()
        return [self._run(r) for r in rows]

    def attempts(self, run_id: int) -> list[dict[str, Any]]:
        with self._tx() as c:
            rows = c.execute(
                select(attempts).where(attempts.c.run_id == run_id).order_by(attempts.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]

    def detector_evals(self, run_id: int) -> list[dict[str, Any]]:
        with self._tx() as c:
            rows = c.execute(
                select(detector_evals).where(detector_evals.c.run_id == run_id).order_by(detector_evals.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]


def default_path(home: Path) -> Path:
    return Path(home) / "redteam.db"


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str, ensure_ascii=False)
