"""Usage and chargeback, and Token economics: the daily usage API (JSON and CSV, team scoping with
crafted requests) and the pages over it, on a live gateway with real chat requests."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from m2a.config import EconomicsConfig, ServingCost, TokenPrice
from m2a.console.economics import compute
from m2a.gateway.admin_usage_daily import to_csv
from m2a.store.usage_daily import DailyTotal
from tests.console.conftest import ADMIN, MODEL, TIMEOUT, Console, console_gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

DAILY = "/admin/v1/usage/daily"


async def until_usage(
    console: Console, requests: int, key: str = ADMIN, **query: Any
) -> list[dict[str, Any]]:
    """The daily usage rows once they add up to ``requests`` (the ledger flushes every 50 ms)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            resp = await console.api("GET", DAILY, key, params=query)
            assert resp.status_code == 200, resp.text
            rows = resp.json()
            if sum(r["requests"] for r in rows) >= requests:
                return rows
            await asyncio.sleep(0.05)


async def two_teams(console: Console) -> tuple[str, str]:
    research = await console.team("research", key_name="notebook")
    ops = await console.team("ops", key_name="pager")
    for key in (research, research, ops):
        assert (await console.chat(key, "hello there")).status_code == 200
    await until_usage(console, 3)
    return research, ops


async def test_the_daily_api_groups_and_scopes(console: Console) -> None:
    research, ops = await two_teams(console)
    rows = await until_usage(console, 3, group=["team"])
    by_team = {r["team"]: r for r in rows}
    assert set(by_team) == {"research", "ops"}
    assert by_team["research"]["requests"] == 2 and by_team["ops"]["requests"] == 1
    assert all(r["day"] is None and r["model"] is None for r in rows)

    every = await until_usage(console, 3)  # day, team, key and model
    today = datetime.now(UTC).date().isoformat()
    assert {(r["day"], r["team"], r["key_name"], r["model"]) for r in every} == {
        (today, "research", "notebook", MODEL),
        (today, "ops", "pager", MODEL),
    }
    assert all(r["input_tokens"] > 0 and r["output_tokens"] > 0 for r in every)

    # a team key sees its own team only, whatever it asks for
    mine = await until_usage(console, 2, research)
    assert {r["team"] for r in mine} == {"research"}
    assert sum(r["requests"] for r in mine) == 2
    for crafted in ({"team": "ops"}, {"team": "ops", "group": ["team"]}, {"team": "ops", "format": "csv"}):
        resp = await console.api("GET", DAILY, research, params=crafted)
        assert resp.status_code == 403, crafted
        assert resp.json()["error"]["code"] == "not_your_team"
    ops_key_id = next(r["key_id"] for r in every if r["team"] == "ops")
    resp = await console.api("GET", DAILY, research, params={"key_id": ops_key_id})
    assert resp.status_code == 200 and resp.json() == []  # another team's key: nothing of it
    resp = await console.api("GET", DAILY, research, params={"group": ["team"]})
    assert [r["team"] for r in resp.json()] == ["research"]
    assert (await console.api("GET", DAILY, None)).status_code == 401
    assert (await console.api("GET", DAILY, "sk-nope-" + "x" * 30)).status_code == 401

    # filters and bad input
    assert await until_usage(console, 1, model=MODEL, team="ops")
    resp = await console.api("GET", DAILY, params={"model": "nope"})
    assert resp.json() == []
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()
    assert (await console.api("GET", DAILY, params={"since": tomorrow})).status_code == 400
    assert (await console.api("GET", DAILY, params={"group": "replica"})).status_code == 400
    assert (await console.api("GET", DAILY, params={"since": "yesterday"})).status_code == 400


async def test_csv_export(console: Console) -> None:
    research, _ = await two_teams(console)
    resp = await console.api("GET", DAILY, params={"format": "csv"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    assert resp.headers["content-disposition"].startswith('attachment; filename="m2a-usage-')
    table = list(csv.DictReader(io.StringIO(resp.text)))
    assert {r["team"] for r in table} == {"research", "ops"}
    assert sum(int(r["requests"]) for r in table) == 3
    mine = await console.api("GET", DAILY, research, params={"format": "csv"})
    assert {r["team"] for r in csv.DictReader(io.StringIO(mine.text))} == {"research"}

    # through the console: the page's export link relays the API's CSV, as the signed-in key
    browser = console.browser()
    await browser.signin(research)
    page = await browser.get("/console/usage")
    assert page.status_code == 200
    assert 'href="/console/usage.csv?' in page.text
    export = await browser.get("/console/usage.csv")
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    assert {r["team"] for r in csv.DictReader(io.StringIO(export.text))} == {"research"}
    assert (
        await browser.get("/console/usage.csv?team=ops")
    ).text == export.text  # a member's team filter is ignored


async def test_csv_cells_that_a_spreadsheet_would_run_are_defused() -> None:
    from m2a.gateway.admin_usage_daily import DailyOut

    row = DailyOut(
        day="2026-03-10", team_id=1, team="research", key_id=2, key_prefix="m2a-ab",
        key_name='=HYPERLINK("http://evil")', model="+model", requests=1, errors=0,
        input_tokens=1, output_tokens=2, cached_tokens=0, cost=0.5, avg_duration_ms=None,
    )  # fmt: skip
    [_, line] = list(csv.reader(io.StringIO(to_csv([row]))))
    assert '\'=HYPERLINK("http://evil")' in line and "'+model" in line
    assert "1" in line and "0.5" in line


async def test_the_usage_page(console: Console) -> None:
    research, ops = await two_teams(console)
    admin = console.browser()
    await admin.signin(ADMIN)
    page = await admin.get("/console/usage")
    assert page.status_code == 200
    html = page.text
    for text in (
        "Usage and chargeback",
        "By team",
        "By key",
        "By model",
        "By day",
        "notebook",
        "pager",
        MODEL,
    ):
        assert text in html, text
    assert 'class="chart card" data-chart=' in html
    assert "vendor/uplot/uPlot.iife.min.js" in html and "charts.js" in html
    assert 'id="f-team"' in html  # admins may pick a team

    filtered = await admin.get("/console/usage", params={"team": "ops"})
    assert "pager" in filtered.text and "notebook" not in filtered.text
    bad = await admin.get(
        "/console/usage", params={"since": "<script>alert(1)</script>", "until": "2020-13-40"}
    )
    assert bad.status_code == 200
    assert "<script>alert(1)" not in bad.text and "&lt;script&gt;" in bad.text
    backwards = await admin.get("/console/usage", params={"since": "2026-03-10", "until": "2026-03-01"})
    assert "The first day is after the last" in backwards.text

    member = console.browser()
    await member.signin(research)
    mine = await member.get("/console/usage", params={"team": "ops"})
    assert mine.status_code == 200
    assert "notebook" in mine.text and "pager" not in mine.text and 'id="f-team"' not in mine.text
    assert "By team" not in mine.text


async def test_economics_is_for_admins(console: Console) -> None:
    research, _ = await two_teams(console)
    member = console.browser()
    await member.signin(research)
    assert (await member.get("/console/economics")).status_code == 403
    admin = console.browser()
    await admin.signin(ADMIN)
    page = await admin.get("/console/economics")
    assert page.status_code == 200
    assert "No external prices configured" in page.text  # the test gateway configures none
    assert "chargeback price" in page.text


async def test_economics_page_with_prices(tmp_path: Any) -> None:
    cfg = EconomicsConfig(
        serving={MODEL: ServingCost(hardware_cost_per_hour=0.5)},
        external_prices={"big-api": TokenPrice(input_per_million=2.0, output_per_million=8.0)},
    )
    async with console_gateway(tmp_path / "home", console={"economics": cfg}) as console:
        key = await console.team("research")
        assert (await console.chat(key, "hello")).status_code == 200
        await until_usage(console, 1)
        admin = console.browser()
        await admin.signin(ADMIN)
        page = await admin.get("/console/economics")
        assert page.status_code == 200
        html = page.text
        assert "Savings over time vs big-api" in html and "data-chart=" in html
        assert "hardware: $0.50/h × 1 replica" in html
        assert "research" in html and "big-api per 1M" in html


async def test_economics_hardware_price_and_chargeback() -> None:
    """Hardware cost over the measured tokens (idle hours included, shared by tokens), a set
    price, the ledger's chargeback cost; external prices; savings per day and so far."""
    cfg = EconomicsConfig(
        serving={
            "vllm": ServingCost(hardware_cost_per_hour=1.0),  # by engine kind
            "priced": ServingCost(
                price_per_million=TokenPrice(input_per_million=1.0, output_per_million=2.0)
            ),
        },
        external_prices={"api": TokenPrice(input_per_million=10.0, output_per_million=30.0)},
    )
    d1, d2, d3 = "2026-03-01", "2026-03-02", "2026-03-03"

    def row(day: str, team: str, model: str, inp: int, out: int, cost: float = 0.0) -> dict[str, Any]:
        return {"day": day, "team": team, "model": model, "input_tokens": inp, "output_tokens": out,
                "requests": 1, "cost": cost}  # fmt: skip

    rows = [
        row(d1, "a", "big", 300_000, 100_000),
        row(d1, "b", "big", 100_000, 0),
        row(d3, "a", "big", 50_000, 50_000),  # d2: no request, the hardware still ran
        row(d2, "a", "priced", 1_000_000, 1_000_000),
        row(d2, "b", "other", 10, 10, cost=0.25),
    ]
    now = datetime(2026, 3, 3, 12, tzinfo=UTC)  # d3 is half over
    eco = compute(rows, cfg, date(2026, 3, 1), date(2026, 3, 3), now, models={"big": ("vllm", 2)})
    big = next(m for m in eco.models if m.name == "big")
    assert big.source == "hardware" and big.replicas == 2 and big.hours == pytest.approx(60.0)
    assert big.cost_here == pytest.approx(2 * 60.0)  # $1/h × 2 replicas × 60 h
    assert big.tokens == 600_000
    assert big.per_million_here == pytest.approx(120.0 / 0.6)
    assert big.tokens_per_hour == pytest.approx(10_000)
    assert big.external["api"] == pytest.approx((450_000 * 10 + 150_000 * 30) / 1e6)
    priced = next(m for m in eco.models if m.name == "priced")
    assert priced.source == "price" and priced.cost_here == pytest.approx(3.0)
    other = next(m for m in eco.models if m.name == "other")
    assert other.source == "chargeback" and other.cost_here == pytest.approx(0.25)

    teams = {t.name: t for t in eco.teams}
    assert teams["a"].cost_here == pytest.approx(48 * 0.8 + 12 * 2 + 3.0)  # 80% of d1, all of d3's hours
    assert teams["b"].cost_here == pytest.approx(48 * 0.2 + 0.25)
    assert teams["(idle hardware)"].cost_here == pytest.approx(48.0)  # d2's 24 h × 2 replicas
    assert sum(t.cost_here for t in eco.teams) == pytest.approx(eco.total.cost_here)

    assert [d.name for d in eco.days] == [d1, d2, d3]
    assert eco.days[1].cost_here == pytest.approx(48.0 + 3.0 + 0.25)
    running = 0.0
    for d, so_far in zip(eco.days, eco.cumulative["api"], strict=True):
        running += d.external["api"] - d.cost_here
        assert so_far == pytest.approx(running)
    assert eco.total.savings("api") == pytest.approx(eco.cumulative["api"][-1])
    assert eco.total.savings("nope") is None

    nothing = compute([], EconomicsConfig(), date(2026, 3, 1), date(2026, 3, 3), now)
    assert nothing.models == [] and nothing.total.cost_here == 0 and not nothing.configured


async def test_daily_total_helpers() -> None:
    t = DailyTotal(None, None, None, None, None, None, "m", 4, 1, 10, 20, 0, 1.0, 400.0)
    assert t.tokens == 30 and t.avg_duration_ms == 100.0


async def test_the_economics_config() -> None:
    from pydantic import ValidationError

    from m2a.config import Settings

    s = Settings.model_validate(
        {
            "economics": {
                "serving": {"vllm": {"hardware_cost_per_hour": 2.4}},
                "external_prices": {"api": {"input_per_million": 0.15, "output_per_million": 0.6}},
            }
        }
    )
    assert s.economics.serving["vllm"].hardware_cost_per_hour == 2.4
    assert s.economics.external_prices["api"].cost(1_000_000, 1_000_000) == pytest.approx(0.75)
    for bad in (
        {"serving": {"m": {}}},
        {"external_prices": {"api": {"input_per_million": -1, "output_per_million": 0}}},
    ):
        with pytest.raises(ValidationError):
            Settings.model_validate({"economics": bad})
    assert Settings().economics == EconomicsConfig()
