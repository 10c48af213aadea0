"""Token economics: what the tokens served here cost, beside what they would cost at external APIs.

Pure computation (the Token economics page feeds it the usage-by-day API's rows and the config).
Per model, the cost of serving here comes from ``economics.serving`` (the model's entry, else its
engine kind's):

- ``hardware_cost_per_hour``: the hardware's dollars per hour × replicas × the hours it ran,
  divided by the tokens (input + output) it served in them — the throughput the ledger measured,
  idle hours included. A model is taken to run from the first day it served a request in the
  period to the period's end (today: until now); a day it served nothing still costs its hours.
- ``price_per_million``: a set price per million input and output tokens.
- neither: the chargeback cost the ledger stored with each request (the model's ``price``).

Each team pays its tokens' share of a model's day (hardware cost split by tokens). Every external
price the admin configured (``economics.external_prices``) prices the same input and output
tokens; savings are external minus here (negative: serving here cost more), per day, model, team.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from m2a.config import EconomicsConfig, ServingCost

HARDWARE, PRICE, CHARGEBACK = "hardware", "price", "chargeback"


@dataclass
class Line:
    """Tokens and dollars of one model, team or day."""

    name: str
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    cost_here: float = 0.0
    external: dict[str, float] = field(default_factory=dict)  # by external price name
    source: str | None = None  # models: hardware, price or chargeback
    hours: float | None = None  # models on hardware: hours charged
    replicas: int | None = None
    hourly: float | None = None  # models on hardware: one replica's dollars per hour

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def per_million_here(self) -> float | None:
        """Dollars per million tokens served here."""
        return self.cost_here / self.tokens * 1e6 if self.tokens else None

    @property
    def tokens_per_hour(self) -> float | None:
        """The measured throughput (models on hardware)."""
        return self.tokens / self.hours if self.hours else None

    def per_million(self, name: str) -> float | None:
        return self.external[name] / self.tokens * 1e6 if self.tokens and name in self.external else None

    def savings(self, name: str) -> float | None:
        """External minus here, in dollars (None: no such external price)."""
        return self.external[name] - self.cost_here if name in self.external else None

    def _add(self, inp: int, out: int, requests: int, here: float, external: Mapping[str, float]) -> None:
        self.input_tokens += inp
        self.output_tokens += out
        self.requests += requests
        self.cost_here += here
        for k, v in external.items():
            self.external[k] = self.external.get(k, 0.0) + v


@dataclass
class Economics:
    since: date
    until: date
    external_names: list[str]
    models: list[Line]
    teams: list[Line]  # one per team, every model ("(idle hardware)": hours no token paid for)
    days: list[Line]  # oldest first
    total: Line
    cumulative: dict[str, list[float]]  # savings so far, per day (days' order), by external name

    @property
    def configured(self) -> bool:
        return bool(self.external_names)


def serving_of(cfg: EconomicsConfig, model: str, engine: str | None) -> ServingCost | None:
    """The model's serving cost: its own entry, else its engine kind's."""
    return cfg.serving.get(model) or (cfg.serving.get(engine) if engine else None)


def _hours(day: date, now: datetime) -> float:
    """Hours of ``day`` (UTC) that have passed by ``now``."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return max(0.0, min(24.0, (now - start).total_seconds() / 3600))


def compute(
    rows: Iterable[Mapping[str, Any]],
    cfg: EconomicsConfig,
    since: date,
    until: date,
    now: datetime | None = None,
    models: Mapping[str, tuple[str | None, int]] | None = None,
) -> Economics:
    """The economics of ``rows`` (usage-by-day lines with ``day``, ``team``, ``model``, tokens,
    ``requests`` and ``cost``) from ``since`` to ``until``; ``models``: each model's engine kind and
    replica count (default: unknown engine, one replica)."""
    now = now or datetime.now(UTC)
    models = models or {}
    names = list(cfg.external_prices)
    # tokens per (day, model) and per (day, model, team)
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in rows:
        day, model = str(r.get("day")), str(r.get("model"))
        team = r.get("team") or "(no team)"
        acc = cells.setdefault((day, model), {}).setdefault(team, [0, 0, 0, 0.0])
        acc[0] += int(r.get("input_tokens") or 0)
        acc[1] += int(r.get("output_tokens") or 0)
        acc[2] += int(r.get("requests") or 0)
        acc[3] += float(r.get("cost") or 0.0)

    def new(name: str) -> Line:
        return Line(name, external=dict.fromkeys(names, 0.0))

    by_model: dict[str, Line] = {}
    by_team: dict[str, Line] = {}
    by_day: dict[str, Line] = {}
    days = [(since + timedelta(days=i)).isoformat() for i in range((until - since).days + 1)]
    first_day = {m: min(d for d, mm in cells if mm == m) for _, m in cells}
    idle = "(idle hardware)"
    for model, first in sorted(first_day.items()):
        engine, replicas = models.get(model, (None, 1))
        serving = serving_of(cfg, model, engine)
        line = by_model.setdefault(model, new(model))
        rate = None  # dollars per hour of the model's hardware, all replicas
        if serving is not None and serving.hardware_cost_per_hour is not None:
            line.source, line.hours, line.replicas = HARDWARE, 0.0, max(1, replicas)
            line.hourly = serving.hardware_cost_per_hour
            rate = serving.hardware_cost_per_hour * line.replicas
        elif serving is not None and serving.price_per_million is not None:
            line.source = PRICE
        else:
            line.source = CHARGEBACK
        for day in days:
            if day < first:
                continue
            teams = cells.get((day, model), {})
            tokens = sum(a[0] + a[1] for a in teams.values())
            hardware = 0.0
            if rate is not None:
                hours = _hours(date.fromisoformat(day), now)
                line.hours = (line.hours or 0.0) + hours
                hardware = rate * hours
                if not tokens:  # idle: the day's cost, no tokens to share it
                    for target in (
                        line,
                        by_day.setdefault(day, new(day)),
                        by_team.setdefault(idle, new(idle)),
                    ):
                        target._add(0, 0, 0, hardware, {})
                    continue
            for team, (inp, out, requests, stored) in teams.items():
                inp, out, requests = int(inp), int(out), int(requests)
                if rate is not None:
                    here = hardware * (inp + out) / tokens
                elif serving is not None and serving.price_per_million is not None:
                    here = serving.price_per_million.cost(inp, out)
                else:
                    here = stored
                external = {n: cfg.external_prices[n].cost(inp, out) for n in names}
                for target in (line, by_day.setdefault(day, new(day)), by_team.setdefault(team, new(team))):
                    target._add(inp, out, requests, here, external)
    total = new("total")
    for line in by_model.values():
        total._add(line.input_tokens, line.output_tokens, line.requests, line.cost_here, line.external)
    day_lines = [by_day.get(d) or new(d) for d in days]
    cumulative: dict[str, list[float]] = {}
    for n in names:
        run, acc = 0.0, []
        for d in day_lines:
            run += d.savings(n) or 0.0
            acc.append(run)
        cumulative[n] = acc
    return Economics(
        since=since,
        until=until,
        external_names=names,
        models=sorted(by_model.values(), key=lambda x: -x.tokens),
        teams=sorted(by_team.values(), key=lambda x: (-x.tokens, x.name)),
        days=day_lines,
        total=total,
        cumulative=cumulative,
    )
