"""Usage and chargeback, and Token economics.

Usage (any signed-in principal; a team key sees its own team only, as the API enforces): tokens,
requests, errors and cost by team, key, model and day over a chosen period, with filters, charts
(tokens per day by model, cost per day) and a CSV export. Every number comes from
``GET /admin/v1/usage/daily`` (the daily rollup: fast on a large ledger), one call per grouping;
the export is that API's ``format=csv`` answer relayed as it is.

Token economics (admins: a team's share of the hardware depends on every team's tokens): per model
and team, the cost of serving the tokens here beside what the same tokens would cost at the
external API prices the admin configured, and the savings over time (``economics.py``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

from starlette.responses import Response

from m2a.config import EconomicsConfig
from m2a.console.api import ApiClient, error_of
from m2a.console.economics import compute
from m2a.console.pages import Ctx, page

DAILY = "/admin/v1/usage/daily"
DEFAULT_DAYS = 30
MAX_DAYS = 366
MAX_SERIES = 8  # models drawn in the tokens chart; the rest summed as "other"


class Period:
    """The period and filters a usage page shows, read from its query (bad values: the defaults)."""

    def __init__(self, ctx: Ctx) -> None:
        self.problems: list[str] = []
        today = datetime.now(UTC).date()
        self.until = self._day(ctx.query("until"), "until") or today
        days = DEFAULT_DAYS
        self.since = self._day(ctx.query("since"), "since") or self.until - timedelta(days=days - 1)
        if self.since > self.until:
            self.problems.append("The first day is after the last: showing the 30 days before the last.")
            self.since = self.until - timedelta(days=days - 1)
        if (self.until - self.since).days >= MAX_DAYS:
            self.problems.append(f"At most {MAX_DAYS} days at once: showing the last {MAX_DAYS}.")
            self.since = self.until - timedelta(days=MAX_DAYS - 1)
        self.team = (ctx.query("team") or "").strip() or None
        self.model = (ctx.query("model") or "").strip() or None
        key = (ctx.query("key_id") or "").strip()
        self.key_id = int(key) if key.isdigit() and len(key) < 10 else None
        if not ctx.is_admin:  # a team key: the API would refuse another team anyway
            self.team = None

    def _day(self, text: str | None, name: str) -> date | None:
        if not text:
            return None
        try:
            return date.fromisoformat(text.strip())
        except ValueError:
            self.problems.append(f"“{text[:20]}” is not a day (YYYY-MM-DD): {name} left at its default.")
            return None

    def query(self, **extra: Any) -> dict[str, Any]:
        """The API query of this period and these filters."""
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "team": self.team,
            "model": self.model,
            "key_id": self.key_id,
            **extra,
        }

    def link(self) -> dict[str, Any]:
        """The page query that shows this period again (for links: export, economics)."""
        return {k: v for k, v in self.query().items() if v is not None}

    @property
    def days(self) -> list[str]:
        return [
            (self.since + timedelta(days=i)).isoformat() for i in range((self.until - self.since).days + 1)
        ]


async def grouped(api: ApiClient, period: Period, *groups: str) -> list[dict[str, Any]]:
    return await api.get(DAILY, **period.query(group=list(groups)))


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = {"requests": 0, "errors": 0, "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "cost": 0.0}
    for r in rows:
        for k in out:
            out[k] += r.get(k) or 0
    out["tokens"] = out["input_tokens"] + out["output_tokens"]
    return out


def share(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with ``tokens`` and its ``width``: its share of the largest, in steps of 5 (the
    CSS bar classes w0 … w100)."""
    top = max([(r["input_tokens"] + r["output_tokens"]) for r in rows] or [0])
    out = []
    for r in rows:
        tokens = r["input_tokens"] + r["output_tokens"]
        out.append({**r, "tokens": tokens, "width": round(tokens / top * 20) * 5 if top else 0})
    return out


def tokens_chart(rows: list[dict[str, Any]], days: list[str]) -> dict[str, Any]:
    """Tokens per day, one series per model (the largest ``MAX_SERIES``; the rest as "other")."""
    by_model: dict[str, dict[str, int]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})
        by_model[r["model"]][r["day"]] = (
            by_model[r["model"]].get(r["day"], 0) + r["input_tokens"] + r["output_tokens"]
        )
    order = sorted(by_model, key=lambda m: -sum(by_model[m].values()))
    series = [{"label": m, "values": [by_model[m].get(d, 0) for d in days]} for m in order[:MAX_SERIES]]
    if len(order) > MAX_SERIES:
        rest = [sum(by_model[m].get(d, 0) for m in order[MAX_SERIES:]) for d in days]
        series.append({"label": "other", "values": rest})
    return {"kind": "line", "unit": "tokens", "x": days, "series": series}


def cost_chart(rows: list[dict[str, Any]], days: list[str]) -> dict[str, Any]:
    per_day: dict[str, float] = {}
    for r in rows:
        per_day[r["day"]] = per_day.get(r["day"], 0.0) + (r.get("cost") or 0.0)
    return {
        "kind": "bars",
        "unit": "$",
        "x": days,
        "series": [{"label": "cost", "values": [round(per_day.get(d, 0.0), 6) for d in days]}],
    }


@page("usage", "/usage", "Usage", "usage.html", who="any", order=30)
async def usage(ctx: Ctx) -> dict[str, Any]:
    assert ctx.api is not None
    period = Period(ctx)
    by_team, by_key, by_model, by_day_model = await asyncio.gather(
        grouped(ctx.api, period, "team"),
        grouped(ctx.api, period, "team", "key"),
        grouped(ctx.api, period, "model"),
        grouped(ctx.api, period, "day", "model"),
    )
    days = period.days
    per_day: dict[str, dict[str, Any]] = {}
    for r in by_day_model:
        d = per_day.setdefault(r["day"], {"day": r["day"], "requests": 0, "errors": 0, "input_tokens": 0,
                                          "output_tokens": 0, "cached_tokens": 0, "cost": 0.0})  # fmt: skip
        for k in ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "cost"):
            d[k] += r.get(k) or 0
    models = sorted({r["model"] for r in by_model} | ({period.model} if period.model else set()))
    keys = sorted(
        {(r["key_id"], r.get("key_name") or r.get("key_prefix") or f"key {r['key_id']}") for r in by_key},
        key=lambda k: k[1],
    )
    return {
        "period": period,
        "problems": period.problems,
        "total": totals(by_model),
        "by_team": share(by_team),
        "by_key": share(by_key),
        "by_model": share(by_model),
        "by_day": sorted(per_day.values(), key=lambda d: d["day"], reverse=True),
        "teams": sorted({r["team"] for r in by_team if r.get("team")}),
        "models": models,
        "keys": keys,
        "tokens_chart": tokens_chart(by_day_model, days),
        "cost_chart": cost_chart(by_day_model, days),
        "export": ctx.url("usage.csv", **period.link()),
        "economics": ctx.url("economics", since=period.since.isoformat(), until=period.until.isoformat()),
    }


@page("usage.csv", "/usage.csv", "Usage (CSV)", who="any", nav=False)
async def usage_csv(ctx: Ctx) -> Response:
    """The usage API's CSV, as it answered (one row per day, team, key and model)."""
    assert ctx.api is not None
    period = Period(ctx)
    resp = await ctx.api.request("GET", DAILY, params={k: v for k, v in period.query(format="csv").items()
                                                       if v is not None})  # fmt: skip
    if resp.status_code >= 400:
        raise error_of(resp)
    headers = {"content-disposition": resp.headers.get("content-disposition", "attachment")}
    return Response(resp.content, media_type="text/csv; charset=utf-8", headers=headers)


def economics_config(ctx: Ctx) -> EconomicsConfig:
    """The config's ``economics`` (``console_extension(economics=...)``)."""
    return ctx.console.economics


@page("economics", "/economics", "Token economics", "economics.html", who="admin", order=35)
async def economics(ctx: Ctx) -> dict[str, Any]:
    assert ctx.api is not None
    period = Period(ctx)
    period.team = period.model = period.key_id = None  # every team's tokens share the hardware
    rows, overview = await asyncio.gather(
        grouped(ctx.api, period, "day", "team", "model"), ctx.api.get("/admin/v1/overview")
    )
    served = {
        m["name"]: ((m["replicas"][0]["engine"] if m["replicas"] else None), max(1, len(m["replicas"])))
        for m in overview.get("models", [])
    }
    cfg = economics_config(ctx)
    result = compute(rows, cfg, period.since, period.until, models=served)
    names = result.external_names
    chosen = ctx.query("compare")
    compare = chosen if chosen in names else (names[0] if names else None)
    chart = None
    if compare is not None:
        series = [
            (f"savings so far vs {compare}", result.cumulative[compare]),
            ("cost here per day", [d.cost_here for d in result.days]),
            (f"{compare} per day", [d.external.get(compare, 0.0) for d in result.days]),
        ]
        chart = {
            "kind": "line",
            "unit": "$",
            "x": [d.name for d in result.days],
            "series": [{"label": label, "values": [round(v, 6) for v in values]} for label, values in series],
        }
    return {
        "period": period,
        "problems": period.problems,
        "eco": result,
        "compare": compare,
        "chart": chart,
        "serving": cfg.serving,
        "external": cfg.external_prices,
        "days_desc": list(reversed(result.days)),
        "cumulative_desc": list(reversed(result.cumulative.get(compare, []))) if compare else [],
    }
