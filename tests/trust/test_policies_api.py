"""The policies' admin API (``/admin/v1/policies``) over a real store (SQLite and PostgreSQL), with
real keys resolved by the gateway's ``Access`` and a real ES256 agent token, served in process
through httpx's ASGI transport; and ``m2a policies`` (typer's CliRunner) on the same store.

Who may do what (admin, a team's key, another team's key, an agent), Cedar's refusals as 400s in
OpenAI's error shape, modes kept for admins, the dry run, and that a change through the API is what
the engine decides on at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from click.testing import Result
from typer.testing import CliRunner

from m2a.agents.keys import SigningKeys
from m2a.agents.tokens import Tokens
from m2a.cli.policies_cmd import REFUSED_EXIT, policies_app
from m2a.gateway.access import Access
from m2a.principal import AgentRef, Principal
from m2a.store.identity import IdentityStore
from m2a.store.policies import PolicyStore
from m2a.trust.policies_api import create_policies_api
from m2a.trust.policy import PolicyEngine
from tests.db_fixtures import Database
from tests.openai_shape import assert_openai_error

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN = "sk-policies-admin-" + "p" * 24
ISSUER, AUDIENCE = "https://gateway.m2a.test", "m2a"
FORBID_ALL = 'forbid(principal, action == M2A::Action::"call", resource);\n'
NO_DELETE = """@id("no-delete")
forbid(principal, action == M2A::Action::"call", resource) when { resource.name == "delete_customer" };
"""
CALL = {"team": "sales", "agent_name": "order-bot", "server": "erp", "tool": "delete_customer",
        "tier": "destructive"}  # fmt: skip


@dataclass
class Api:
    http: httpx.AsyncClient
    engine: PolicyEngine
    store: PolicyStore
    sales: str  # a key of team sales
    support: str  # a key of team support
    agent: str  # an agent's token (sales/order-bot)

    async def __call__(self, method: str, path: str, key: str | None = ADMIN, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return await self.http.request(method, "/admin/v1/policies" + path, headers=headers, **kw)


@pytest_asyncio.fixture(loop_scope="session")
async def api(database: Database) -> AsyncIterator[Api]:
    db = await database.open()
    identity = IdentityStore(db)
    for team in ("sales", "support"):
        await identity.create_team(team)
    sales, _ = await identity.create_key("sales", "sales dev")
    support, _ = await identity.create_key("support", "support dev")
    access = Access(ADMIN, identity)
    tokens = Tokens(SigningKeys(db), ISSUER, AUDIENCE)
    team = await identity.lookup(sales)
    assert isinstance(team, Principal)

    async def verify(token: str) -> Principal:  # a real signature check; the agent is the claims'
        claims = await tokens.verify(token)
        return replace(team, agent=AgentRef(claims["sub"], claims["agent_id"], "order-bot", 1))

    access.tokens = verify
    spiffe = "spiffe://m2a.local/team/sales/agent/order-bot"
    issued = await tokens.issue(sub=spiffe, client_id=spiffe, team="sales", agent_id=1, agent_version=1)
    engine, store = PolicyEngine(db, None), PolicyStore(db)
    app = create_policies_api(engine, store, access, docs=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m2a.test") as http:
        yield Api(http, engine, store, sales, support, issued.token)


async def test_admin_writes_reads_and_removes(api: Api) -> None:
    made = await api("PUT", "/global/limits", json={"text": NO_DELETE})
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["object"] == "policy" and body["version"] == 1 and body["scope"] == "global"
    assert body["updated_by"].startswith("admin key") and body["mode"] is None
    same = await api("PUT", "/global/limits", json={"text": NO_DELETE})
    assert same.status_code == 200 and same.json()["version"] == 1
    changed = await api("PUT", "/global/limits", json={"text": NO_DELETE + FORBID_ALL})
    assert changed.status_code == 200 and changed.json()["version"] == 2
    agent_scope = await api(
        "PUT", "/agent:sales/order-bot/tight", json={"text": FORBID_ALL, "mode": "log_only"}
    )
    assert agent_scope.status_code == 201 and agent_scope.json()["mode"] == "log_only"
    shown = await api("GET", "/agent:sales/order-bot/tight")
    assert shown.status_code == 200 and shown.json()["text"] == FORBID_ALL
    listed = (await api("GET", "")).json()
    assert [(p["scope"], p["name"]) for p in listed] == [
        ("agent:sales/order-bot", "tight"),
        ("global", "limits"),
    ]
    assert [p["name"] for p in (await api("GET", "", params={"scope": "global"})).json()] == ["limits"]
    assert (await api("DELETE", "/agent:sales/order-bot/tight")).status_code == 204
    assert_openai_error(await api("GET", "/agent:sales/order-bot/tight"), 404, "policy_not_found")
    assert_openai_error(await api("DELETE", "/agent:sales/order-bot/tight"), 404, "policy_not_found")


@pytest.mark.parametrize(
    ("path", "body", "param", "code"),
    [
        ("/global/x", {"text": "permit(principal, action, resource"}, "text", "invalid_policy"),
        ("/global/x", {"text": 'forbid(principal, action, resource) when { principal.teem == "" };'}, "text",
         "invalid_policy"),
        ("/team:sales/x", {"text": 'permit(principal, action, resource);'}, "text", "invalid_policy"),
        ("/global/x", {"text": '@id("m2a.granted")\n' + FORBID_ALL}, "text", "invalid_policy"),
        ("/teams:sales/x", {"text": FORBID_ALL}, "scope", "invalid_scope"),
        ("/team:Sales/x", {"text": FORBID_ALL}, "scope", "invalid_scope"),
        ("/agent:sales/x", {"text": FORBID_ALL}, "scope", "invalid_scope"),
        ("/global/Bad Name", {"text": FORBID_ALL}, "name", "invalid_request"),
        ("/global/x", {"text": FORBID_ALL, "mode": "enforce"}, "mode", "invalid_request"),
        ("/team:sales/x", {"text": FORBID_ALL, "mode": "loud"}, "mode", "invalid_request"),
        ("/global/x", {"text": FORBID_ALL, "colour": "red"}, "colour", "invalid_request"),
        ("/global/x", {}, "text", "invalid_request"),
    ],
)  # fmt: skip
async def test_refused_writes_are_400(
    api: Api, path: str, body: dict[str, Any], param: str, code: str
) -> None:
    err = assert_openai_error(await api("PUT", path, json=body), 400, code)
    assert err["param"] == param, err
    assert (await api("GET", "")).json() == []


async def test_cedars_message_is_given_back(api: Api) -> None:
    text = "forbid(principal, action, resource) when { principal.teem };"
    err = assert_openai_error(await api("PUT", "/global/x", json={"text": text}), 400, "invalid_policy")
    assert "teem" in err["message"] and "Traceback" not in err["message"]


async def test_a_teams_key_manages_its_own_scopes_only(api: Api) -> None:
    assert (await api("PUT", "/team:support/theirs", json={"text": FORBID_ALL})).status_code == 201
    mine = await api("PUT", "/team:sales/mine", key=api.sales, json={"text": FORBID_ALL})
    assert mine.status_code == 201 and "team sales" in mine.json()["updated_by"]
    bot = await api("PUT", "/agent:sales/order-bot/bot", key=api.sales, json={"text": FORBID_ALL})
    assert bot.status_code == 201
    for method, body in (("GET", None), ("PUT", {"text": FORBID_ALL}), ("DELETE", None)):
        assert_openai_error(await api(method, "/team:support/theirs", key=api.sales, json=body), 404,
                            "policy_not_found")  # fmt: skip
        assert_openai_error(await api(method, "/global/base", key=api.sales, json=body), 403, "admin_only")
    listed = (await api("GET", "", key=api.sales)).json()
    assert sorted(p["scope"] for p in listed) == ["agent:sales/order-bot", "team:sales"]
    assert (await api("GET", "", key=api.sales, params={"scope": "team:support"})).json() == []
    assert [p["scope"] for p in (await api("GET", "", key=api.support)).json()] == ["team:support"]
    assert (await api("GET", "/team:support/theirs")).json()["version"] == 1  # untouched

    # the mode is an admin's: a team key may not set it, keeps it, and may not remove its row
    assert_openai_error(
        await api("PUT", "/team:sales/mine", key=api.sales, json={"text": FORBID_ALL, "mode": "log_only"}),
        403, "admin_only",
    )  # fmt: skip
    assert (
        await api("PUT", "/team:sales/mine", json={"text": FORBID_ALL, "mode": "enforce"})
    ).status_code == 200
    kept = await api("PUT", "/team:sales/mine", key=api.sales, json={"text": NO_DELETE})
    assert kept.status_code == 200 and kept.json()["mode"] == "enforce" and kept.json()["version"] == 3
    assert_openai_error(await api("DELETE", "/team:sales/mine", key=api.sales), 403, "admin_only")
    assert (await api("DELETE", "/agent:sales/order-bot/bot", key=api.sales)).status_code == 204


async def test_who_may_call_it_at_all(api: Api) -> None:
    for method, path, body in (
        ("GET", "", None), ("GET", "/global/x", None), ("PUT", "/team:sales/x", {"text": FORBID_ALL}),
        ("DELETE", "/team:sales/x", None), ("POST", "/check", {"call": CALL}),
    ):  # fmt: skip
        assert_openai_error(await api(method, path, key=None, json=body), 401)
        assert_openai_error(await api(method, path, key="sk-nope", json=body), 401)
        assert_openai_error(await api(method, path, key=api.agent, json=body), 403, "agents_cannot_manage")
    assert (await api("GET", "")).json() == []
    docs = await api.http.get("/admin/v1/policies/openapi.json")
    assert docs.status_code == 200 and "/admin/v1/policies/check" in docs.json()["paths"]


async def test_a_body_past_the_limit_is_413(api: Api) -> None:
    big = {"text": "// " + "x" * (300 << 10)}
    assert_openai_error(await api("PUT", "/global/big", json=big), 413, "body_too_large")


async def test_the_dry_run_sees_a_change_at_once(api: Api) -> None:
    before = await api("POST", "/check", json={"call": CALL})
    assert before.status_code == 200, before.text
    assert before.json()["allowed"] and before.json()["policy_ids"] == ["m2a.granted"]
    assert (
        await api("PUT", "/team:sales/no-delete", key=api.sales, json={"text": NO_DELETE})
    ).status_code == 201
    after = (await api("POST", "/check", key=api.sales, json={"call": CALL})).json()
    assert not after["allowed"] and not after["cedar_allowed"] and after["policy_ids"] == ["no-delete"]
    assert after["policy_version"] != before.json()["policy_version"]
    assert (await api.engine.decide_call(_call())).policy_ids == ("no-delete",)  # the engine itself
    support_agent = {**CALL, "team": "support"}
    assert_openai_error(await api("POST", "/check", key=api.sales, json={"call": support_agent}), 404)
    assert (await api("POST", "/check", key=api.support, json={"call": support_agent})).json()["allowed"]
    ungranted = (await api("POST", "/check", json={"call": {**support_agent, "granted": False}})).json()
    assert not ungranted["allowed"] and ungranted["policy_ids"] == ["m2a.ungranted"]

    approval = {"agent_team": "sales", "server": "erp", "tool": "delete_customer", "tier": "destructive"}
    by_team = (
        await api("POST", "/check", key=api.sales, json={"approve": {**approval, "key_team": "sales"}})
    ).json()
    assert not by_team["allowed"]
    by_admin = (await api("POST", "/check", json={"approve": {**approval, "admin": True}})).json()
    assert (
        by_admin["allowed"]
        and by_admin["policy_ids"] == ["m2a.approve.admin"]
        and by_admin["mode"] == "enforce"
    )
    for body in ({}, {"call": CALL, "approve": approval}, {"call": {**CALL, "tier": "admin"}}):
        assert_openai_error(await api("POST", "/check", json=body), 400)


def _call() -> Any:
    from m2a.trust.policy import CallRequest

    return CallRequest(
        "", 1, "order-bot", "sales", 1, None, "erp", "delete_customer", "destructive", True, None
    )


# -- m2a policies ----------------------------------------------------------------------------------


async def test_cli(api: Api, database: Database, tmp_path: Path) -> None:
    """`m2a policies` on the store the API serves."""
    env = {"M2A_HOME": str(database.home), "COLUMNS": "200", "M2A_ADMIN_KEY": ADMIN}
    if database.url:
        env["M2A_DATABASE_URL"] = database.url

    async def m2a(*args: str) -> Result:
        return await asyncio.to_thread(CliRunner().invoke, policies_app, list(args), env=env)

    policy = tmp_path / "limits.cedar"
    policy.write_text(NO_DELETE)
    made = await m2a("set", "team:sales", "limits", "--file", str(policy), "--mode", "log_only")
    assert made.exit_code == 0, made.output
    assert "created" in made.output and "v1" in made.output
    shown = (await api("GET", "/team:sales/limits")).json()  # the API sees it
    assert shown["mode"] == "log_only" and shown["updated_by"].startswith("cli (")
    listed = json.loads((await m2a("list", "--json")).output)
    assert [(p["scope"], p["name"], p["version"]) for p in listed] == [("team:sales", "limits", 1)]
    assert NO_DELETE.strip() in (await m2a("show", "team:sales", "limits")).output

    check = ["check", "--agent", "sales/order-bot", "--tool", "erp/delete_customer", "--tier", "destructive"]
    logged = await m2a(*check, "--json")
    assert logged.exit_code == 0, logged.output
    decided = json.loads(logged.output)
    assert decided["allowed"] and not decided["cedar_allowed"] and decided["policy_ids"] == ["no-delete"]
    policy.write_text(NO_DELETE + FORBID_ALL)
    again = await m2a("set", "team:sales", "limits", "--file", str(policy), "--mode", "inherit")
    assert again.exit_code == 0 and "v2" in again.output
    refused = await m2a(*check)
    assert refused.exit_code == REFUSED_EXIT and "refused" in refused.output and "no-delete" in refused.output
    ungranted = await m2a(*check[:-2], "--tier", "read", "--not-granted", "--args", '{"id": 1}')
    assert ungranted.exit_code == REFUSED_EXIT and "m2a.ungranted" in ungranted.output

    # a policy file under the home's policy folder counts, and a broken one refuses its scope
    broken = database.home / "policies" / "teams" / "support" / "bad.cedar"
    broken.parent.mkdir(parents=True)
    broken.write_text("forbid(principal, action, resource")
    support = await m2a("check", "--agent", "support/helper", "--tool", "erp/lookup", "--tier", "read")
    assert support.exit_code == REFUSED_EXIT and "bad.cedar" in support.output

    bad = tmp_path / "bad.cedar"
    bad.write_text("permit(principal, action, resource);")
    refused_write = await m2a("set", "team:sales", "other", "--file", str(bad))
    assert refused_write.exit_code == 1 and "only forbid" in refused_write.output
    assert (await m2a("set", "teams:x", "n", "--file", str(policy))).exit_code == 2
    assert (await m2a("check", "--agent", "sales", "--tool", "erp/x", "--tier", "read")).exit_code == 2
    assert (await m2a("check", *check[1:], "--args", "[1]")).exit_code == 2
    assert (await m2a("rm", "team:sales", "limits")).exit_code == 0
    assert (await m2a("rm", "team:sales", "limits")).exit_code == 1
    assert (await m2a("show", "team:sales", "limits")).exit_code == 1
    assert (await api("GET", "")).json() == []
