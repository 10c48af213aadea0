"""`m2a quotas set|show|clear` and `m2a usage`, on SQLite and on PostgreSQL, with a config in M2A_HOME.

The commands run through typer's CliRunner in a worker thread (they call ``asyncio.run`` themselves),
against the database of the ``database`` fixture: SQLite in ``$M2A_HOME``, or a throwaway PostgreSQL
database given by ``M2A_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import typer
import yaml
from click.testing import Result
from sqlalchemy import insert
from typer.testing import CliRunner

from m2a.cli import app
from m2a.cli.usage_cmd import parse_limit
from m2a.store.identity import IdentityStore, Principal
from m2a.store.schema import Usage
from tests import db_fixtures
from tests.db_fixtures import Database

pytestmark = pytest.mark.asyncio(loop_scope="session")

database = db_fixtures.database  # each test runs on SQLite and on PostgreSQL

PRICES = {
    "llama": {"input_per_1m": 2.0, "output_per_1m": 6.0},
    "qwen": {"input_per_1m": 0.5, "output_per_1m": 1.5, "cached_input_per_1m": 0.25},
}

# -- parse_limit ----------------------------------------------------------------------------------

GOOD = [
    ("200k/day", False, (200_000, "day")),
    ("1.5M/month", False, (1_500_000, "month")),
    ("60/min", False, (60, "minute")),
    ("20000/minute", False, (20_000, "minute")),
    ("10/h", False, (10, "hour")),
    ("5/d", False, (5, "day")),
    ("3/mo", False, (3, "month")),
    (" 7 / hour ", False, (7, "hour")),
    ("2K/day", False, (2_000, "day")),
    ("1.005k/day", False, (1_005, "day")),  # 1.005 * 1e3 is 1004.999… in floating point
    ("0/day", False, (0, "day")),
    ("50/month", True, (50_000_000, "month")),
    ("0.5/day", True, (500_000, "day")),
    ("1.5k/month", True, (1_500_000_000, "month")),
    ("0.07/hour", True, (70_000, "hour")),
]


@pytest.mark.parametrize(("text", "money", "expect"), GOOD)
async def test_parse_limit(text: str, money: bool, expect: tuple[int, str]) -> None:
    assert parse_limit(text, money) == expect


BAD = ["200k", "abc/day", "-5/day", "5/week", "5/days", "", "1e3/day", "5 per day", "5g/day", "/day", "5/"]


@pytest.mark.parametrize("text", BAD)
async def test_parse_limit_refuses(text: str) -> None:
    with pytest.raises(typer.BadParameter, match="AMOUNT/WINDOW"):
        parse_limit(text)


# -- the commands ---------------------------------------------------------------------------------


class Cli:
    def __init__(self, database: Database) -> None:
        self.env = {
            "M2A_HOME": str(database.home),
            "M2A_DATABASE_URL": database.url,  # None: unset, SQLite in the home
            "M2A_CONFIG": None,
            "COLUMNS": "200",
        }
        database.home.mkdir(parents=True, exist_ok=True)
        models = [
            {"name": name, "engine": "remote", "url": "http://127.0.0.1:9/v1", "price": price}
            for name, price in PRICES.items()
        ] + [{"name": "unpriced", "engine": "remote", "url": "http://127.0.0.1:9/v1"}]
        (database.home / "config.yaml").write_text(yaml.safe_dump({"models": models}))

    async def __call__(self, *args: str, code: int = 0) -> Result:
        runner = CliRunner()
        result = await asyncio.to_thread(runner.invoke, app, list(args), env=self.env)
        assert result.exit_code == code, (result.output, result.exception)
        return result


async def test_quotas_set_show_clear(database: Database) -> None:
    cli = Cli(database)
    store = IdentityStore(await database.open())
    await store.create_team("research")
    plain, key = await store.create_key("research", "notebook")

    r = await cli(
        "quotas", "set", "research",
        "--tokens", "200000/day", "--tokens", "20000/minute", "--requests", "60/minute", "--concurrency", "8",
        "--storage-bytes", "1000000",
    )  # fmt: skip
    assert "limits set for team research" in r.output
    assert "200000 tokens/day, 20000 tokens/minute, 60 requests/minute, 8 concurrent" in r.output
    assert "1000000 bytes stored" in r.output
    r = await cli("quotas", "set", "research", "--key", str(key.id), "--cost", "12.5/month")
    assert f"limits set for key {key.id} of team research: $12.5/month" in r.output

    r = await cli("quotas", "show", "--json")
    shown = sorted(
        ((q["team"], q["key_id"], q["metric"], q["window"], q["limit"]) for q in json.loads(r.stdout)),
        key=str,
    )
    assert shown == sorted(
        [
            ("research", None, "tokens", "day", 200_000),
            ("research", None, "tokens", "minute", 20_000),
            ("research", None, "requests", "minute", 60),
            ("research", None, "concurrency", "-", 8),
            ("research", None, "storage_bytes", "-", 1_000_000),
            ("research", key.id, "cost", "month", 12_500_000),
        ],
        key=str,
    )
    r = await cli("quotas", "show", "research")
    for text in (
        "200000 tokens/day",
        "20000 tokens/minute",
        "60 requests/minute",
        "8 concurrent",
        "$12.5/month",
        "1000000 bytes stored",
    ):
        assert text in r.stdout
    assert r.stdout.count("all") == 5 and str(key.id) in r.stdout

    principal = await store.lookup(plain)  # storage is not a request's limit: admission never sees it
    assert isinstance(principal, Principal)
    assert sorted((x.scope, x.metric, x.window, x.limit) for x in principal.limits) == [
        ("key", "cost", "month", 12_500_000),
        ("team", "concurrency", "-", 8),
        ("team", "requests", "minute", 60),
        ("team", "tokens", "day", 200_000),
        ("team", "tokens", "minute", 20_000),
    ]

    r = await cli("quotas", "set", "research", "--tokens", "300k/day")  # replaces the day's tokens only
    r = await cli("quotas", "show", "research", "--json")
    assert sorted(
        (q["metric"], q["window"], q["limit"]) for q in json.loads(r.stdout) if q["key_id"] is None
    ) == [
        ("concurrency", "-", 8),
        ("requests", "minute", 60),
        ("storage_bytes", "-", 1_000_000),
        ("tokens", "day", 300_000),
        ("tokens", "minute", 20_000),
    ]
    r = await cli("quotas", "clear", "research", "--metric", "tokens")
    assert "removed 2 limit(s)" in r.output
    r = await cli("quotas", "clear", "research", "--key", str(key.id))
    assert "removed 1 limit(s)" in r.output
    r = await cli("quotas", "show", "--json")
    assert sorted(q["metric"] for q in json.loads(r.stdout)) == ["concurrency", "requests", "storage_bytes"]


async def test_quotas_refusals(database: Database) -> None:
    cli = Cli(database)
    store = IdentityStore(await database.open())
    await store.create_team("research")
    r = await cli("quotas", "set", "research", code=2)  # no limit named
    assert "name at least one limit" in r.output
    r = await cli("quotas", "set", "research", "--tokens", "lots", code=2)
    assert "AMOUNT/WINDOW" in r.output
    r = await cli("quotas", "set", "nobody", "--tokens", "5/day", code=1)
    assert "no team named 'nobody'" in r.output
    r = await cli("quotas", "set", "research", "--key", "999", "--tokens", "5/day", code=1)
    assert "has no key with id 999" in r.output
    r = await cli("quotas", "clear", "research", "--metric", "watts")
    assert "removed 0 limit(s)" in r.output


# -- usage ----------------------------------------------------------------------------------------


def row(rid: str, ago: timedelta, team: str | None, model: str, **fields: Any) -> dict[str, Any]:
    started = datetime.now(UTC) - ago
    return {
        "request_id": rid,
        "started_at": started,
        "finished_at": started + timedelta(seconds=1),
        "team": team,
        "team_id": TEAM_IDS.get(team),  # type: ignore[arg-type]
        "key_id": 1,
        "key_prefix": "m2a-aaaa",
        "model": model,
        "route": "chat",
        "replica": f"{model}-0",
        "priority": "standard",
        "stream": False,
        "status": "ok",
        "http_status": 200,
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_tokens": 0,
        "ttft_ms": None,
        "duration_ms": 10.0,
        **fields,
    }


TEAM_IDS = {"research": 1, "ops": 2}
H = timedelta(hours=1)
ROWS = [
    row("1", H, "research", "llama", input_tokens=1000, output_tokens=2000),
    row("2", 2 * H, "research", "llama", input_tokens=500, cached_tokens=200),
    row(
        "3",
        3 * H,
        "research",
        "qwen",
        input_tokens=10_000,
        output_tokens=4000,
        cached_tokens=2000,
        status="error",
        http_status=500,
    ),
    row("4", 4 * H, "ops", "llama", input_tokens=300, status="interrupted", http_status=None),
    row("5", 5 * H, "ops", "unpriced", input_tokens=7, output_tokens=7, status="cancelled", http_status=499),
    row("6", timedelta(days=30), "research", "llama", input_tokens=10**6),  # before --since 7d
]
# research: llama 1300 fresh + 200 cached at $2, 2000 out at $6 = $0.015; qwen 8000 at $0.5, 2000 cached at
# $0.25, 4000 out at $1.5 = $0.0105. ops: llama 300 at $2 = $0.0006; unpriced: 0.
RESEARCH = {"requests": 3, "errors": 1, "interrupted": 0, "input": 11_500, "output": 6000, "cached": 2200}
OPS = {"requests": 2, "errors": 0, "interrupted": 2, "input": 307, "output": 7, "cached": 0}


async def with_rows(database: Database, rows: list[dict[str, Any]] = ROWS) -> Cli:
    """The CLI over a store holding ``rows`` (by default records from before costs were stored:
    priced at the configured prices) and the teams they belong to."""
    cli = Cli(database)
    engine = await database.open()
    store = IdentityStore(engine)
    for name in TEAM_IDS:  # ids 1 and 2, in this order
        await store.create_team(name)
    async with engine.begin() as conn:
        await conn.execute(insert(Usage), rows)
    return cli


async def test_usage_by_team_json_and_csv(database: Database) -> None:
    cli = await with_rows(database)
    r = await cli("usage", "--by", "team", "--format", "json")
    assert json.loads(r.stdout) == [{"team": "ops", **OPS}, {"team": "research", **RESEARCH}]

    r = await cli("usage", "--by", "team", "--format", "csv", "--cost")
    lines = r.stdout.splitlines()
    assert lines[0] == "team,requests,errors,interrupted,input,output,cached,cost"
    assert lines[1:] == ["ops,2,0,2,307,7,0,0.0006", "research,3,1,0,11500,6000,2200,0.0255"]
    parsed = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [float(p["cost"]) for p in parsed] == [0.0006, 0.0255]

    r = await cli("usage", "--by", "team", "--since", "60d", "--format", "json")
    assert json.loads(r.stdout)[1] == {
        "team": "research",
        **RESEARCH,
        "requests": 4,
        "input": 11_500 + 10**6,
    }


async def test_usage_by_model_with_cost(database: Database) -> None:
    cli = await with_rows(database)
    r = await cli("usage", "--by", "model", "--cost", "--format", "json")
    assert json.loads(r.stdout) == [
        {"model": "llama", "requests": 3, "errors": 0, "interrupted": 1, "input": 1800, "output": 2000,
         "cached": 200, "cost": 0.0156},
        {"model": "qwen", "requests": 1, "errors": 1, "interrupted": 0, "input": 10_000, "output": 4000,
         "cached": 2000, "cost": 0.0105},
        {"model": "unpriced", "requests": 1, "errors": 0, "interrupted": 1, "input": 7, "output": 7,
         "cached": 0, "cost": 0.0},
    ]  # fmt: skip
    r = await cli("usage", "--by", "model", "--cost", "--team", "ops", "--format", "json")
    assert [(x["model"], x["requests"], x["cost"]) for x in json.loads(r.stdout)] == [
        ("llama", 1, 0.0006),
        ("unpriced", 1, 0.0),
    ]
    r = await cli("usage", "--by", "model", "--cost")  # the table
    assert "$0.0156" in r.stdout and "$0.0105" in r.stdout and "$0.0000" in r.stdout


async def test_usage_buckets_and_refusals(database: Database) -> None:
    cli = await with_rows(database)
    r = await cli("usage", "--by", "team", "--bucket", "month", "--since", "60d", "--format", "json")
    expect = Counter((x["started_at"].strftime("%Y-%m"), x["team"]) for x in ROWS)
    assert [((x["bucket"], x["team"]), x["requests"]) for x in json.loads(r.stdout)] == sorted(expect.items())
    r = await cli("usage", "--by", "key", "--bucket", "hour", "--format", "csv")
    lines = r.stdout.splitlines()
    assert lines[0] == "bucket,key,requests,errors,interrupted,input,output,cached"
    hours = sorted(x["started_at"].strftime("%Y-%m-%dT%H:00") for x in ROWS[:5])
    assert [line.split(",")[:3] for line in lines[1:]] == [[h, "m2a-aaaa", "1"] for h in hours]

    r = await cli("usage", "--team", "nobody", "--format", "json")
    assert json.loads(r.stdout) == []
    r = await cli("usage", "--team", "nobody")
    assert "no usage in the last 7d" in r.output
    for args in (["--by", "color"], ["--bucket", "week"], ["--format", "xml"], ["--since", "yesterday"]):
        await cli("usage", *args, code=2)


async def test_stored_costs_need_no_prices_in_the_config(database: Database) -> None:
    """A record carries the cost it was priced at: the report shows it without the gateway's config
    (and even after the prices changed), and older records without one are priced as configured."""
    rows = [
        row("s1", H, "research", "other-model", input_tokens=10, output_tokens=10, cost=0.25),
        row("s2", 2 * H, "research", "llama", input_tokens=1000, output_tokens=2000, cost=1.0),
        row("s3", 3 * H, "research", "llama", input_tokens=1000, output_tokens=2000, cost=None),  # $0.014
    ]
    cli = await with_rows(database, rows)
    r = await cli("usage", "--by", "model", "--cost", "--format", "json")
    costs = [(x["model"], x["cost"]) for x in json.loads(r.stdout)]
    assert costs == [("llama", 1.014), ("other-model", 0.25)]


async def test_a_team_recreated_under_a_deleted_name_starts_with_no_usage(database: Database) -> None:
    cli = await with_rows(database)
    store = IdentityStore(await database.open())
    await store.delete_team("ops")
    await store.create_team("ops")
    r = await cli("usage", "--by", "model", "--team", "ops", "--format", "json")
    assert json.loads(r.stdout) == []
    r = await cli("usage", "--by", "team", "--format", "json")
    assert [x["team"] for x in json.loads(r.stdout)] == ["ops (deleted)", "research"]


async def test_granting_a_model_nobody_knows_is_refused(database: Database) -> None:
    cli = Cli(database)
    await IdentityStore(await database.open()).create_team("research")
    r = await cli("models", "grant", "research", "no-such-model", code=1)
    assert "no model named 'no-such-model'" in r.output
    assert "llama" in r.output and "smollm2-135m-instruct" in r.output  # the config's and the built-ins
    await cli("models", "grant", "research", "llama")
    await cli("models", "grant", "research", "served-elsewhere", "--force")
    team = await IdentityStore(await database.open()).get_team("research")
    assert team.models == ("llama", "served-elsewhere")
