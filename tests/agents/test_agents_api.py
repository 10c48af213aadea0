"""The agent registry's admin API (``/admin/v1/agents``), served by the agents extension of a real
gateway app (httpx over ASGI, inside its lifespan, on a fresh SQLite store, a fake engine behind).

What a team key may and may not do (its own team only: another team's agent is 404, creating in
another team 403, approving 403), what an admin key does, the red-team condition of ``tested``, a
concurrent double promote over HTTP, and bad input: always OpenAI's error shape, never a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import hypothesis
import pytest
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error

from m2a.agents.extension import agents_extension
from m2a.config import AgentsConfig, GatewayConfig
from m2a.gateway.app import create_app
from m2a.gateway.errors import GatewayError
from m2a.principal import AgentRef, Principal
from m2a.router.pool import Endpoint, Pool
from m2a.store.identity import IdentityStore
from tests import gateway_fixtures
from tests.agents.helpers import failed_report, manifest, manifest_data, report
from tests.fake_engine import FakeEngine
from tests.openai_shape import assert_openai_error

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN = "sk-agents-admin-" + "a" * 24
API = "/admin/v1/agents"
TIMEOUT = 30.0
SPONSORS = ["ana@example.org"]

engine = gateway_fixtures.engine
store = gateway_fixtures.store


@dataclass
class Gateway:
    app: Any
    client: httpx.AsyncClient
    store: IdentityStore
    support: str  # a member key of team support
    billing: str  # a member key of team billing

    async def call(self, method: str, path: str = "", key: str | None = ADMIN, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        headers.update(kw.pop("headers", {}))
        return await self.client.request(method, f"{API}{path}", headers=headers, **kw)


@contextlib.asynccontextmanager
async def serve(engine_url: str, store: IdentityStore, **gateway: Any) -> AsyncIterator[Gateway]:
    pool = Pool()
    for model in ("alpha", "beta"):
        pool.add(Endpoint(f"{model}-0", model, engine_url, task="chat", healthy=True))
    app = create_app(
        pool,
        ADMIN,
        GatewayConfig(**gateway),
        identity=store,
        extensions=[agents_extension(AgentsConfig(trust_domain="example.org"))],
    )
    # An unexpected exception answers 500 (what the tests look for) instead of raising here.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    await store.create_team("support")
    await store.create_team("billing")
    support, _ = await store.create_key("support", "support dev")
    billing, _ = await store.create_key("billing", "billing dev")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=TIMEOUT) as client,
    ):
        yield Gateway(app, client, store, support, billing)


@pytest_asyncio.fixture(loop_scope="session")
async def gw(engine: FakeEngine, store: IdentityStore) -> AsyncIterator[Gateway]:
    async with serve(engine.url, store) as gateway:
        yield gateway


def new_agent(name: str = "support-bot", **extra: Any) -> dict[str, Any]:
    return {"name": name, "sponsors": SPONSORS, "manifest": manifest_data(1), **extra}


async def ok(resp: httpx.Response, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json()


# -- a team's own agent, end to end -----------------------------------------------------------------
async def test_a_team_registers_tests_and_ships_its_agent(gw: Gateway) -> None:
    made = await ok(await gw.call("POST", json=new_agent(), key=gw.support), 201)
    assert (
        made["team"] == "support"
        and made["spiffe_id"] == "spiffe://example.org/team/support/agent/support-bot"
    )
    assert made["version"]["number"] == 1 and made["version"]["stage"] == "draft"
    assert made["version"]["digest"] == manifest(1).digest() and made["aliases"] == {"draft": 1}
    assert made["version"]["manifest"] == manifest(1).as_json()

    same = await ok(
        await gw.call(
            "POST", "/support/support-bot/versions", gw.support, json={"manifest": manifest_data(1)}
        )
    )
    assert same["number"] == 1 and same["created"] is False  # 200: the existing version
    v2 = await ok(
        await gw.call(
            "POST", "/support/support-bot/versions", gw.support, json={"manifest": manifest_data(2)}
        ),
        201,
    )
    assert v2["number"] == 2 and v2["created"] is True
    listed = await ok(await gw.call("GET", key=gw.support))
    assert [(a["name"], a["versions"], a["latest"]) for a in listed] == [("support-bot", 2, 2)]
    versions = await ok(await gw.call("GET", "/support/support-bot/versions", gw.support))
    assert [(v["number"], v["stage"], v["aliases"]) for v in versions] == [
        (1, "draft", []),
        (2, "draft", ["draft"]),
    ]

    rev = await gw.store.revision()
    promote = "/support/support-bot/versions/1/promote"
    tested = await ok(
        await gw.call("POST", promote, gw.support, json={"to": "tested", "redteam": report(manifest(1))})
    )
    assert (
        tested["stage"] == "tested"
        and tested["redteam"]["model"] == "alpha"
        and tested["redteam"]["by_key"] > 0
    )
    assert await gw.store.revision() == rev + 1
    err = assert_openai_error(await gw.call("POST", promote, gw.support, json={"to": "approved"}), 403)
    assert err["code"] == "approval_needs_admin" and "admin" in err["message"]
    assert (await ok(await gw.call("GET", "/support/support-bot/versions/1", gw.support)))[
        "stage"
    ] == "tested"
    approved = await ok(await gw.call("POST", promote, json={"to": "approved", "reason": "reviewed"}))
    assert approved["stage"] == "approved"
    prod = await ok(await gw.call("POST", promote, gw.support, json={"to": "production"}))
    assert prod["aliases"] == ["tested", "approved", "production"]
    assert (await ok(await gw.call("GET", "/support/support-bot/versions/production", gw.support)))[
        "number"
    ] == 1

    # version 2 the same way, then back to 1
    p2 = "/support/support-bot/versions/2/promote"
    await ok(await gw.call("POST", p2, gw.support, json={"to": "tested", "redteam": report(manifest(2))}))
    await ok(await gw.call("POST", p2, json={"to": "approved"}))
    await ok(await gw.call("POST", p2, gw.support, json={"to": "production"}))
    back = await ok(
        await gw.call("POST", "/support/support-bot/rollback", gw.support, json={"reason": "regression"})
    )
    assert back["number"] == 1 and "production" in back["aliases"]
    agent = await ok(await gw.call("GET", "/support/support-bot", gw.support))
    assert agent["aliases"] == {"draft": 2, "tested": 2, "approved": 2, "production": 1}

    rev = await gw.store.revision()
    revoked = await ok(await gw.call("POST", "/support/support-bot/versions/1/revoke", gw.support, json={}))
    assert revoked["stage"] == "revoked" and revoked["aliases"] == [] and revoked["revoked_at"]
    assert await gw.store.revision() == rev + 1  # every gateway drops its cached principals
    # v2 was rolled back from, v1 is revoked: nothing left to roll back to
    assert_openai_error(
        await gw.call("POST", "/support/support-bot/rollback", gw.support), 409, "nothing_to_roll_back"
    )

    events = await ok(await gw.call("GET", "/support/support-bot/events", gw.support))
    actions = [(e["action"], e["version"], e["to_stage"]) for e in events]
    assert actions[:3] == [("create", None, None), ("version", 1, "draft"), ("version", 2, "draft")]
    assert ("rollback", 1, "production") in actions and actions[-1] == ("revoke", 1, "revoked")
    assert {e["by_key"] for e in events if e["action"] == "promote" and e["to_stage"] == "approved"} == {0}

    whole = await ok(await gw.call("POST", "/support/support-bot/revoke", gw.support))
    assert whole["revoked_at"] and whole["aliases"] == {}
    assert_openai_error(
        await gw.call(
            "POST", "/support/support-bot/versions", gw.support, json={"manifest": manifest_data(3)}
        ),
        409,
        "agent_revoked",
    )


async def test_the_gateway_s_own_admin_api_is_still_there(gw: Gateway) -> None:
    teams = await ok(await gw.client.get("/admin/v1/teams", headers={"authorization": f"Bearer {ADMIN}"}))
    assert {t["name"] for t in teams} == {"support", "billing"}
    assert_openai_error(
        await gw.client.get("/admin/v1/teams", headers={"authorization": f"Bearer {gw.support}"}), 403
    )
    assert (await gw.call("GET", "/")).status_code in (200, 307)  # the trailing slash is not an error


# -- tenants ----------------------------------------------------------------------------------------
async def test_a_team_key_never_reaches_another_team_s_agents(gw: Gateway) -> None:
    await ok(await gw.call("POST", json=new_agent(), key=gw.support), 201)
    await ok(await gw.call("POST", "/support/support-bot/versions/1/promote", gw.support,
                           json={"to": "tested", "redteam": report(manifest(1))}))  # fmt: skip
    await ok(await gw.call("POST", "/support/support-bot/versions/1/promote", json={"to": "approved"}))
    before = await ok(await gw.call("GET", "/support/support-bot/versions"))
    rev = await gw.store.revision()

    b = gw.billing
    missing = await gw.call("GET", "/support/nobody", b)  # what an agent that does not exist looks like
    assert_openai_error(missing, 404, "agent_not_found")
    attempts = [
        ("GET", "/support/support-bot", None),
        ("PATCH", "/support/support-bot", {"sponsors": ["mallory@example.org"]}),
        ("GET", "/support/support-bot/versions", None),
        ("GET", "/support/support-bot/versions/1", None),
        ("GET", "/support/support-bot/versions/production", None),
        ("GET", "/support/support-bot/events", None),
        ("POST", "/support/support-bot/versions", {"manifest": manifest_data(9)}),
        ("POST", "/support/support-bot/versions/1/promote", {"to": "production"}),
        ("POST", "/support/support-bot/versions/1/promote", {"to": "deprecated"}),
        ("POST", "/support/support-bot/versions/1/promote", {"to": "revoked"}),
        ("POST", "/support/support-bot/versions/1/revoke", None),
        ("POST", "/support/support-bot/rollback", None),
        ("POST", "/support/support-bot/revoke", None),
    ]
    for method, path, body in attempts:
        resp = (
            await gw.call(method, path, b, json=body) if body is not None else await gw.call(method, path, b)
        )
        err = assert_openai_error(resp, 404, "agent_not_found")
        assert err["message"] == json.loads(missing.content)["error"]["message"].replace(
            "nobody", "support-bot"
        )
    for body in (new_agent("sneaky", team="support"), new_agent("support-bot", team="support")):
        assert_openai_error(await gw.call("POST", json=body, key=b), 403, "not_your_team")
    assert await ok(await gw.call("GET", key=b)) == []
    assert await ok(await gw.call("GET", params={"team": "support"}, key=b)) == []
    # nothing changed
    assert await ok(await gw.call("GET", "/support/support-bot/versions")) == before
    assert await gw.store.revision() == rev
    assert [a["name"] for a in await ok(await gw.call("GET", params={"team": "support"}))] == ["support-bot"]
    # billing's own agent, in its own team, by default
    own = await ok(await gw.call("POST", json=new_agent("helper"), key=b), 201)
    assert own["team"] == "billing"
    assert [a["name"] for a in await ok(await gw.call("GET", key=b))] == ["helper"]
    assert {a["team"] for a in await ok(await gw.call("GET"))} == {"support", "billing"}


async def test_an_admin_names_the_team(gw: Gateway) -> None:
    assert_openai_error(await gw.call("POST", json=new_agent()), 400, "missing_team")
    assert_openai_error(await gw.call("POST", json=new_agent(team="nosuch")), 404, "team_not_found")
    made = await ok(await gw.call("POST", json=new_agent(team="billing")), 201)
    assert made["team"] == "billing" and made["created_by"] == 0
    assert_openai_error(await gw.call("POST", json=new_agent(team="billing")), 409, "conflict")
    bare = await ok(
        await gw.call("POST", json={"name": "bare", "team": "support", "sponsors": SPONSORS}), 201
    )
    assert bare["version"] is None and bare["versions"] == 0
    patched = await ok(
        await gw.call("PATCH", "/support/bare", gw.support, json={"sponsors": ["Bo@example.org"]})
    )
    assert patched["sponsors"] == ["bo@example.org"]


async def test_an_agent_s_own_token_cannot_manage_the_registry(gw: Gateway) -> None:
    await ok(await gw.call("POST", json=new_agent(), key=gw.support), 201)
    team = await gw.store.lookup(gw.support)
    assert isinstance(team, Principal)

    async def verifier(token: str) -> Principal:  # the seam the token verifier fills (Access.tokens)
        if token != "eyJ.agent.token":
            raise GatewayError(401, "bad token", code="invalid_token")
        ref = AgentRef("spiffe://example.org/team/support/agent/support-bot", 1, "support-bot", 1, 1)
        return Principal(
            0, "agent:1", "support", "member", "standard", 100, frozenset(), None, team.team_id, agent=ref
        )

    gw.app.state.access.tokens = verifier
    try:
        for method, path in (
            ("GET", ""),
            ("GET", "/support/support-bot"),
            ("POST", "/support/support-bot/revoke"),
        ):
            assert_openai_error(await gw.call(method, path, "eyJ.agent.token"), 403, "agents_cannot_manage")
        assert_openai_error(await gw.call("GET", "", "eyJ.forged.token"), 401)
    finally:
        gw.app.state.access.tokens = None
    assert (await ok(await gw.call("GET", "/support/support-bot")))["revoked_at"] is None


# -- the red-team condition -------------------------------------------------------------------------
async def test_tested_is_refused_without_a_fitting_passed_report(gw: Gateway) -> None:
    await ok(await gw.call("POST", json=new_agent(), key=gw.support), 201)
    promote = "/support/support-bot/versions/1/promote"
    m = manifest(1)
    cases = [
        ({"to": "tested"}, "redteam_required"),
        ({"to": "tested", "redteam": failed_report(m)}, "redteam_failed"),
        ({"to": "tested", "redteam": report(m, model="gamma")}, "redteam_mismatch"),
        ({"to": "tested", "redteam": report(m, profile="default")}, "redteam_mismatch"),
        ({"to": "tested", "redteam": report(m, system_prompt_sha256="ab" * 32)}, "redteam_mismatch"),
    ]
    for body, code in cases:
        err = assert_openai_error(await gw.call("POST", promote, gw.support, json=body), 400, code)
        assert err["param"] and err["param"].startswith("redteam")
    for bad in (
        report(m, passed="maybe"),
        report(m, verdicts=[]),
        {**report(m), "forged": True},
        report(m, run=0),
    ):
        assert_openai_error(
            await gw.call("POST", promote, gw.support, json={"to": "tested", "redteam": bad}), 400
        )
    assert (await ok(await gw.call("GET", "/support/support-bot/versions/1")))["stage"] == "draft"
    for to in ("approved", "production"):
        assert_openai_error(await gw.call("POST", promote, json={"to": to}), 409, "invalid_transition")


async def test_a_concurrent_double_promote_over_http(gw: Gateway) -> None:
    await ok(await gw.call("POST", json=new_agent(), key=gw.support), 201)
    body = {"to": "tested", "redteam": report(manifest(1))}
    answers = await asyncio.gather(
        *(gw.call("POST", "/support/support-bot/versions/1/promote", gw.support, json=body) for _ in range(5))
    )
    assert sorted(r.status_code for r in answers) == [200, 409, 409, 409, 409], [r.text for r in answers]
    events = await ok(await gw.call("GET", "/support/support-bot/events"))
    assert [e["to_stage"] for e in events if e["action"] == "promote"] == ["tested"]
    agent = await ok(await gw.call("GET", "/support/support-bot"))
    assert agent["aliases"] == {"draft": 1, "tested": 1}


# -- bad input --------------------------------------------------------------------------------------
async def test_bad_requests_get_openai_errors_never_a_5xx(gw: Gateway) -> None:
    await ok(await gw.call("POST", json=new_agent(), key=gw.support), 201)
    assert_openai_error(await gw.call("GET", key=None), 401, "missing_api_key")
    assert_openai_error(await gw.call("GET", key="m2a-not-a-key"), 401, "invalid_api_key")
    expired, info = await gw.store.create_key(
        "support", "short", expires_at=datetime.now(UTC) + timedelta(seconds=1)
    )
    await gw.store.revoke_key(info.id)
    assert_openai_error(await gw.call("GET", key=expired), 401)

    bodies = [
        (json.dumps({"name": "x"}).encode(), "sponsors"),
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"", None),
        (json.dumps(new_agent("Bad Name")).encode(), "name"),
        (json.dumps(new_agent("ok-name", colour="red")).encode(), "colour"),
        (json.dumps(new_agent("ok-name", sponsors=[])).encode(), "sponsors"),
        (json.dumps(new_agent("ok-name", sponsors=["nobody"])).encode(), "sponsors"),
        (
            json.dumps(new_agent("ok-name", manifest={**manifest_data(), "models": []})).encode(),
            "manifest.models",
        ),
        (
            json.dumps(new_agent("ok-name", manifest={**manifest_data(), "egress": ["http://x"]})).encode(),
            "manifest.egress.0",
        ),
        (
            json.dumps(new_agent("ok-name", manifest={**manifest_data(), "extra": 1})).encode(),
            "manifest.extra",
        ),
        (json.dumps(new_agent("ok-name", manifest={"models": ["alpha"]})).encode(), "manifest.card"),
        (json.dumps(new_agent("ok-name", manifest="a string")).encode(), "manifest"),
        (json.dumps(new_agent("ok-name", team="\x00")).encode(), "team"),
    ]
    for raw, param in bodies:
        resp = await gw.call(
            "POST", key=gw.support, content=raw, headers={"content-type": "application/json"}
        )
        err = assert_openai_error(resp, 400)
        if param is not None:
            assert err["param"] == param, (raw, err)
    assert [a["name"] for a in await ok(await gw.call("GET", key=gw.support))] == ["support-bot"]

    v = "/support/support-bot/versions"
    assert_openai_error(await gw.call("POST", v, gw.support, json={}), 400)
    assert_openai_error(
        await gw.call("POST", v, gw.support, json={"manifest": {**manifest_data(), "priority": "top"}}), 400
    )
    for ref in ("0", "abc", "99999999999", "-1", "1.5", "staging"):
        assert_openai_error(await gw.call("GET", f"{v}/{ref}", gw.support), 400)
        assert_openai_error(
            await gw.call("POST", f"{v}/{ref}/promote", gw.support, json={"to": "deprecated"}), 400
        )
    assert_openai_error(await gw.call("GET", f"{v}/7", gw.support), 404, "version_not_found")
    assert_openai_error(await gw.call("POST", f"{v}/7/promote", gw.support, json={"to": "deprecated"}), 404)
    for body in (
        {},
        {"to": "staging"},
        {"to": "tested", "redteam": "yes"},
        {"to": "tested", "extra": 1},
        {"to": None},
    ):
        assert_openai_error(await gw.call("POST", f"{v}/1/promote", gw.support, json=body), 400)
    assert_openai_error(await gw.call("POST", f"{v}/1/promote", gw.support, json={"to": "draft"}), 409)
    assert_openai_error(
        await gw.call("POST", "/support/support-bot/rollback", gw.support, json={"x": 1}), 400
    )
    assert_openai_error(
        await gw.call("POST", "/support/support-bot/rollback", gw.support), 409, "nothing_to_roll_back"
    )
    assert_openai_error(await gw.call("GET", "/support/Bad_Name", gw.support), 400)
    assert_openai_error(await gw.call("GET", "/support/support-bot/nothing-here", gw.support), 404)
    assert_openai_error(await gw.call("DELETE", "/support/support-bot", gw.support), 405)
    huge = {"manifest": manifest_data(system_prompt="x" * (2 << 20))}
    assert_openai_error(await gw.call("POST", v, gw.support, json=huge), 413, "body_too_large")

    async def chunked():  # no content-length: the limit must hold while reading
        for _ in range(3):
            yield b" " * (1 << 20)

    assert_openai_error(
        await gw.call("POST", v, gw.support, content=chunked(), headers={"content-type": "application/json"}),
        413,
        "body_too_large",
    )
    long_prompt = {"manifest": manifest_data(system_prompt="x" * 100_001)}
    assert_openai_error(await gw.call("POST", v, gw.support, json=long_prompt), 400)
    assert len(await ok(await gw.call("GET", v, gw.support))) == 1


async def test_the_openapi_document_needs_no_key(gw: Gateway) -> None:
    doc = await ok(await gw.client.get(f"{API}/openapi.json"))
    assert f"{API}/{{team}}/{{name}}/versions/{{number}}/promote" in doc["paths"]
    assert "Manifest" in doc["components"]["schemas"]


async def test_without_admin_docs_the_document_is_not_served(
    engine: FakeEngine, store: IdentityStore
) -> None:
    async with serve(engine.url, store, admin_docs=False) as gw:
        assert_openai_error(await gw.client.get(f"{API}/openapi.json"), 401)
        assert (await gw.call("GET")).status_code == 200


# -- fuzzing ----------------------------------------------------------------------------------------
FUZZ_RUNS = (("positive", 10, False), ("negative", 8, False), ("positive", 10, True))


async def test_the_agents_api_never_answers_5xx(gw: Gateway) -> None:
    """Schemathesis-generated requests (valid and invalid) with the admin key: never a server error.

    Bounded and derandomized (the same examples every run); pinned runs aim at an agent that exists.
    Hypothesis runs in a worker thread; each request goes through the test's own client and loop.
    """
    await ok(await gw.call("POST", json=new_agent(), key=gw.support), 201)
    doc = (await gw.client.get(f"{API}/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(doc)
    operations = [r.ok() for r in schema.get_all_operations()]
    operations = [op for op in operations if "/credentials" not in op.path]  # another module's routes
    assert len(operations) == 12, [op.label for op in operations]
    loop = asyncio.get_running_loop()
    statuses: dict[int, int] = {}

    async def send(kwargs: dict[str, Any]) -> httpx.Response:
        headers = dict(kwargs.get("headers") or {})
        content: bytes | None = None
        if "json" in kwargs:
            content = json.dumps(kwargs["json"]).encode()
            headers.setdefault("Content-Type", "application/json")
        elif kwargs.get("data") is not None:
            data = kwargs["data"]
            content = data.encode() if isinstance(data, str) else data
        return await gw.client.request(
            kwargs["method"], kwargs["url"], params=kwargs.get("params"), headers=headers, content=content
        )

    def fuzz(operation: Any, mode: str, examples: int, pinned: dict[str, str] | None) -> None:
        strategy = operation.as_strategy(
            generation_mode=schemathesis.GenerationMode(mode), path_parameters=pinned
        )

        @hypothesis.settings(
            max_examples=examples, derandomize=True, database=None, deadline=None,
            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @hypothesis.given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            kwargs = case.as_transport_kwargs(
                base_url="http://gw", headers={"authorization": f"Bearer {ADMIN}"}
            )
            resp = asyncio.run_coroutine_threadsafe(send(kwargs), loop).result(TIMEOUT)
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            case.validate_response(resp, checks=[not_a_server_error])

        check()

    for operation in operations:
        for mode, examples, pin in FUZZ_RUNS:
            if pin and "{name}" not in operation.path:
                continue
            pinned = {"team": "support", "name": "support-bot"} if pin else None
            with contextlib.suppress(hypothesis.errors.Unsatisfiable):  # nothing to make invalid
                await asyncio.to_thread(fuzz, operation, mode, examples, pinned)
    assert all(status < 500 for status in statuses), statuses
    assert any(200 <= s < 300 for s in statuses) and any(400 <= s < 500 for s in statuses), statuses
