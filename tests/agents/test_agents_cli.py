"""`m2a agents …` against a live gateway (uvicorn on loopback, the agents extension, a fake engine),
run through typer's CliRunner in a worker thread (the commands call ``asyncio.run`` themselves).

`m2a agents test` really runs the red team: probes sent through the gateway to the fake engine
with the manifest's system prompt, judged, stored in a results file, gated, and the summary posted
with the promotion to ``tested``. The fake engine's answers mean nothing: this proves the plumbing
and the rules (model, system prompt and profile bound to the version), not a model's safety.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from click.testing import Result
from typer.testing import CliRunner

from m2a.agents.extension import agents_extension
from m2a.cli import app as cli_app
from m2a.config import AgentsConfig, GatewayConfig
from m2a.gateway.app import create_app
from m2a.redteam.probes import load
from m2a.redteam.results import Store
from m2a.redteam.runner import with_system_prompt
from m2a.router.pool import Endpoint, Pool
from m2a.store.identity import IdentityStore
from tests import gateway_fixtures
from tests.agents.helpers import manifest_data
from tests.fake_engine import FakeEngine
from tests.live_app import live

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN = "sk-agents-cli-" + "a" * 24
MARKER = "You are the order desk of Example Corp (agent prompt 7f3a)."
engine = gateway_fixtures.engine
store = gateway_fixtures.store


@dataclass
class Cli:
    url: str
    home: Path
    support: str
    billing: str
    engine: FakeEngine

    async def __call__(self, *args: str, key: str | None = None, url: str | None = None) -> Result:
        opts = ["--url", url or self.url, "--api-key", key or self.support]
        env = {"M2A_HOME": str(self.home), "COLUMNS": "200", "M2A_API_KEY": ""}
        return await asyncio.to_thread(CliRunner().invoke, cli_app, ["agents", *args, *opts], env=env)

    def chats(self) -> list[dict[str, Any]]:
        return [r.json for r in self.engine.requests if r.path.endswith("/chat/completions")]


@pytest_asyncio.fixture(loop_scope="session")
async def cli(engine: FakeEngine, store: IdentityStore, tmp_path: Path) -> AsyncIterator[Cli]:
    pool = Pool()
    for model in ("alpha", "beta"):
        pool.add(Endpoint(f"{model}-0", model, engine.url, task="chat", healthy=True))
    app = create_app(
        pool, ADMIN, GatewayConfig(), identity=store, extensions=[agents_extension(AgentsConfig())]
    )
    for team in ("support", "billing"):
        await store.create_team(team)
        await store.grant(team, "alpha")
    support, _ = await store.create_key("support", "support dev")
    billing, _ = await store.create_key("billing", "billing dev")
    engine.mode, engine.requests = "ok", []
    try:
        async with live(app) as url:
            yield Cli(url, tmp_path / "home", support, billing, engine)
    finally:
        engine.mode = "ok"


def agent_yaml(path: Path, n: int = 1, **changes: Any) -> Path:
    data = {
        "name": "support-bot",
        "team": "support",
        "sponsors": ["ana@example.org"],
        **manifest_data(n, system_prompt=MARKER, guardrails=None),
        **changes,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def said(result: Result) -> str:
    return result.output + (result.stderr if result.stderr_bytes else "")


async def show(cli: Cli, name: str = "support-bot", key: str | None = None) -> dict[str, Any]:
    result = await cli("show", name, "--json", key=key)
    assert result.exit_code == 0, said(result)
    return json.loads(result.stdout)


# -- the whole way, from agent.yaml ------------------------------------------------------------------
async def test_from_agent_yaml_through_the_red_team_to_production(cli: Cli, tmp_path: Path) -> None:
    path = agent_yaml(tmp_path / "agent.yaml")
    result = await cli("create", "--file", str(path))
    assert result.exit_code == 0, said(result)
    assert (
        "registered agent support/support-bot as spiffe://m2a.local/team/support/agent/support-bot"
        in result.stdout
    )
    assert "version 1 (draft" in result.stdout
    result = await cli("create", "--file", str(path))  # CI runs it again: the same manifest, the same version
    assert result.exit_code == 0 and "this manifest is version 1" in result.stdout, said(result)

    result = await cli("promote", "support-bot", "1", "--to", "tested")
    assert result.exit_code == 2 and "m2a agents test support-bot --version 1" in said(result)
    result = await cli("promote", "support-bot", "1", "--to", "approved", "--team", "support", key=ADMIN)
    assert result.exit_code == 1 and "draft" in said(result) and "tested next" in said(result)

    db = tmp_path / "rt.db"
    before = len(cli.chats())
    args = [
        "test",
        "support-bot",
        "--category",
        "prompt_injection",
        "--limit",
        "3",
        "--seed",
        "5",
        "--db",
        str(db),
    ]
    result = await cli(*args)
    assert result.exit_code == 0, said(result)
    assert "gate passed" in result.stdout and "version 1 is tested" in result.stdout
    sent = cli.chats()[before:]
    assert len(sent) == 3 and all(b["model"] == "alpha" for b in sent)
    assert all(
        b["messages"][0]["role"] == "system" and b["messages"][0]["content"].startswith(MARKER) for b in sent
    )
    with Store(db) as s:
        (run,) = s.runs()
        assert len(s.attempts(run.id)) == 3
    assert run.profile == "support/support-bot v1" and run.meta["system_prompt_sha256"]
    agent = await show(cli)
    v1 = agent["versions"][0]
    assert v1["stage"] == "tested" and v1["redteam"]["run"] == run.id and v1["redteam"]["passed"]
    assert v1["redteam"]["system_prompt_sha256"] == run.meta["system_prompt_sha256"]
    assert v1["redteam"]["digest"] == v1["digest"] and v1["redteam"]["seed"] == 5
    result = await cli(*args)  # tested already: nothing is attacked again
    assert result.exit_code == 1 and "tested already" in said(result)
    with Store(db) as s:
        assert len(s.runs()) == 1

    result = await cli("promote", "support-bot", "1", "--to", "approved")  # a team key cannot approve
    assert result.exit_code == 1 and "admin" in said(result)
    result = await cli("promote", "support-bot", "1", "--to", "approved", "--team", "support", key=ADMIN)
    assert result.exit_code == 0 and "version 1 is approved" in result.stdout, said(result)
    result = await cli("promote", "support-bot", "1", "--to", "production", "--reason", "first release")
    assert result.exit_code == 0 and "version 1 is production" in result.stdout, said(result)

    result = await cli("create", "--file", str(agent_yaml(path, 2)))
    assert result.exit_code == 0 and "added version 2 (draft" in result.stdout, said(result)
    result = await cli("rollback", "support-bot")
    assert result.exit_code == 1 and "no earlier production version" in said(result)
    result = await cli("versions", "support-bot")
    assert result.exit_code == 0 and "production" in result.stdout and f"run {run.id}" in result.stdout
    result = await cli("list", "--json")
    assert [(a["name"], a["versions"], a["aliases"]["production"]) for a in json.loads(result.stdout)] == [
        ("support-bot", 2, 1)
    ]

    # another team's key sees nothing of it, and can do nothing to it
    for attempt in (
        ("show", "support-bot", "--team", "support"),
        ("revoke", "support-bot", "--team", "support"),
        ("promote", "support-bot", "2", "--to", "deprecated", "--team", "support"),
        ("test", "support-bot", "--team", "support", "--limit", "1", "--db", str(db)),
    ):
        result = await cli(*attempt, key=cli.billing)
        assert result.exit_code == 1 and "No agent named 'support-bot' in team 'support'" in said(result), (
            attempt
        )
    result = await cli("list", "--json", key=cli.billing)
    assert json.loads(result.stdout) == []

    result = await cli("revoke", "support-bot", "--version", "2", "--reason", "never shipped")
    assert result.exit_code == 0 and "revoked version 2 of support/support-bot" in result.stdout
    result = await cli("revoke", "support-bot")
    assert result.exit_code == 0 and "revoked support/support-bot" in result.stdout
    agent = await show(cli)
    assert agent["revoked_at"] and {v["stage"] for v in agent["versions"]} == {"revoked"}


async def test_a_failing_gate_keeps_the_draft(cli: Cli, tmp_path: Path) -> None:
    result = await cli("create", "--file", str(agent_yaml(tmp_path / "agent.yaml")))
    assert result.exit_code == 0, said(result)
    cli.engine.mode = "error"  # every attempt an error: nothing judged, no evidence of safety
    try:
        result = await cli("test", "support-bot", "--category", "prompt_injection", "--limit", "2",
                           "--db", str(tmp_path / "rt.db"), "--json")  # fmt: skip
    finally:
        cli.engine.mode = "ok"
    assert result.exit_code == 1 and "gate failed" in said(result)
    out = json.loads(result.stdout)  # --json: the report alone on stdout
    assert out["report"]["passed"] is False and out["version"]["stage"] == "draft"
    assert (await show(cli))["versions"][0]["stage"] == "draft"


async def test_a_profile_needs_an_admin_attack_key(cli: Cli, tmp_path: Path) -> None:
    path = agent_yaml(tmp_path / "agent.yaml", guardrails="off")
    assert (await cli("create", "--file", str(path))).exit_code == 0
    db = ["--db", str(tmp_path / "rt.db"), "--category", "prompt_injection", "--limit", "2"]
    result = await cli("test", "support-bot", *db)
    assert result.exit_code == 1 and "admin key" in said(result)
    result = await cli("test", "support-bot", *db, "--attack-key", ADMIN, "--json")
    assert result.exit_code == 0, said(result)
    done = json.loads(result.stdout)
    assert done["version"]["stage"] == "tested" and done["report"]["profile"] == "off"
    with Store(tmp_path / "rt.db") as s:
        assert len(s.runs()) == 1  # the refused attempt ran nothing


async def test_create_from_flags_and_bad_input(cli: Cli, tmp_path: Path) -> None:
    flags = ["create", "helper", "--model", "alpha", "--description", "Helps.", "--sponsor", "bo@example.org"]
    result = await cli(*flags, "--egress", "https://api.example.com")
    assert result.exit_code == 2 and "egress.0" in said(result)
    result = await cli(*flags, "--tool", "erp")
    assert result.exit_code == 2 and "SERVER:TOOL" in said(result)
    result = await cli("create", "helper", "--description", "Helps.", "--sponsor", "bo@example.org")
    assert result.exit_code == 2 and "--model" in said(result)
    result = await cli("create", "helper", "--model", "alpha", "--description", "Helps.")
    assert result.exit_code == 2 and "sponsor" in said(result)
    result = await cli("create", "--file", str(tmp_path / "missing.yaml"))
    assert result.exit_code == 2 and "cannot read" in said(result)
    (tmp_path / "bad.yaml").write_text("name: x\nmodles: [alpha]\n")
    result = await cli("create", "--file", str(tmp_path / "bad.yaml"))
    assert result.exit_code == 2 and "modles: unknown field" in said(result)
    result = await cli("create", "--file", str(agent_yaml(tmp_path / "a.yaml")), "--model", "beta")
    assert result.exit_code == 2 and "not both" in said(result)
    result = await cli(
        "create", "--file", str(agent_yaml(tmp_path / "a.yaml")), key=ADMIN
    )  # team from the file
    assert result.exit_code == 0, said(result)
    result = await cli("create", "other", "--sponsor", "bo@example.org", key=ADMIN)
    assert result.exit_code == 2 and "--team" in said(result)

    result = await cli(*flags, "--tool", "erp:lookup_order,list_orders", "--egress", "API.example.com:443",
                       "--system-prompt", "Be brief.", "--priority", "batch", "--json")  # fmt: skip
    assert result.exit_code == 0, said(result)
    made = json.loads(result.stdout)
    m = made["version"]["manifest"]
    assert made["team"] == "support" and m["models"] == ["alpha"] and m["egress"] == ["api.example.com:443"]
    assert (
        m["tools"] == [{"server": "erp", "tools": ["lookup_order", "list_orders"]}]
        and m["priority"] == "batch"
    )
    assert m["card"] == {"name": "helper", "description": "Helps.", "version": "0.1.0"}

    result = await cli("show", "nobody")
    assert result.exit_code == 1 and "No agent named 'nobody'" in said(result)
    result = await cli("list", url="http://127.0.0.1:9")
    assert result.exit_code == 1 and "no gateway answers" in said(result)
    result = await cli("list", key="m2a-wrong")
    assert result.exit_code == 1 and "Incorrect API key" in said(result)


# -- the runner's system prompt ----------------------------------------------------------------------
async def test_the_system_prompt_opens_every_attempt_s_system_message() -> None:
    probes, _ = load()
    with_system = next(p for p in probes if p.system)
    without = next(p for p in probes if not p.system)
    r = with_system_prompt(with_system.render(1), "AGENT PROMPT")
    assert r.messages[0] == {"role": "system", "content": f"AGENT PROMPT\n\n{with_system.render(1).system}"}
    assert r.system == r.messages[0]["content"] and r.body("m")["messages"][0] == r.messages[0]
    assert [m["role"] for m in r.messages].count("system") == 1
    r = with_system_prompt(without.render(1), "AGENT PROMPT")
    assert (
        r.messages[0] == {"role": "system", "content": "AGENT PROMPT"}
        and r.messages[1:] == without.render(1).messages
    )
    assert with_system_prompt(without.render(1), None).messages == without.render(1).messages
