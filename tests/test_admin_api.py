"""The admin HTTP API (/admin): teams, grants and keys for admin keys, and nothing at all for members.

The gateway app runs in-process (httpx over ASGI) inside its lifespan, on a fresh SQLite store; the
cross-tenant matrix (a member key of one team against every admin endpoint) also runs on a throwaway
PostgreSQL database (``database`` from tests/db_fixtures.py). The OpenAPI document is checked, then
fuzzed with schemathesis: a bounded, derandomized Hypothesis run per operation, positive and negative
inputs, with the admin key, asserting only that the API never answers 5xx.
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

from m2a.config import GatewayConfig
from m2a.gateway.app import create_app
from m2a.router.pool import Endpoint, Pool
from m2a.store.identity import IdentityStore
from tests import gateway_fixtures
from tests.db_fixtures import Database, database  # noqa: F401 (a fixture)
from tests.fake_engine import FakeEngine
from tests.openai_shape import assert_openai_error

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN = "sk-admin-api-" + "a" * 24
HELLO = [{"role": "user", "content": "Say hello."}]
TIMEOUT = 30.0  # per HTTP call; generous for a loaded two-core machine
# Examples per operation and run: generated inputs, invalid ones, and (where the path names a team)
# generated inputs on an existing team. The whole run stays well under a minute on two cores.
FUZZ_RUNS = (("positive", 30, False), ("negative", 15, False), ("positive", 20, True))

engine = gateway_fixtures.engine  # shared fixtures: a fake engine and a SQLite store
store = gateway_fixtures.store


# ---------------------------------------------------------------------------- helpers
def auth(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def make_pool(engine_url: str) -> Pool:
    pool = Pool()
    for model in ("alpha", "beta"):
        pool.add(Endpoint(f"{model}-0", model, engine_url, task="chat", healthy=True))
    pool.add(Endpoint("emb-0", "emb", engine_url, task="embed", healthy=True))
    return pool


@dataclass
class Gateway:
    app: Any
    client: httpx.AsyncClient

    async def admin(self, method: str, path: str, key: str | None = ADMIN, **kw: Any) -> httpx.Response:
        return await self.client.request(method, f"/admin/v1{path}", headers=auth(key), **kw)


@contextlib.asynccontextmanager
async def serve(engine_url: str, store: IdentityStore) -> AsyncIterator[Gateway]:
    app = create_app(make_pool(engine_url), ADMIN, GatewayConfig(), identity=store)
    # An unexpected exception still answers 500 (what the fuzzer looks for) instead of raising here.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=TIMEOUT) as client,
    ):
        yield Gateway(app, client)


async def snapshot(store: IdentityStore) -> tuple[object, ...]:
    """Everything an admin endpoint could change, as the store sees it."""
    return await store.revision(), await store.list_teams(), await store.list_keys()


# ---------------------------------------------------------------------------- fixtures
@pytest_asyncio.fixture(loop_scope="session")
async def gw(engine: FakeEngine, store: IdentityStore) -> AsyncIterator[Gateway]:
    async with serve(engine.url, store) as gateway:
        yield gateway


# ---------------------------------------------------------------------------- teams
async def test_team_lifecycle(gw: Gateway, store: IdentityStore) -> None:
    resp = await gw.admin("POST", "/teams", json={"name": "research"})
    assert resp.status_code == 201, resp.text
    team = resp.json()
    assert team["name"] == "research" and team["priority"] == "standard" and team["models"] == []
    assert team["priority_order"] == 100
    datetime.fromisoformat(team["created_at"])

    err = assert_openai_error(await gw.admin("POST", "/teams", json={"name": "research"}), 409, "conflict")
    assert "research" in err["message"]
    assert_openai_error(await gw.admin("POST", "/teams", json={"name": "Bad Name"}), 400)
    assert_openai_error(await gw.admin("POST", "/teams", json={"name": "x" * 65}), 400)
    assert_openai_error(await gw.admin("POST", "/teams", json={"name": ""}), 400)
    assert_openai_error(await gw.admin("POST", "/teams", json={"name": "ok", "priority": "urgent"}), 400)
    err = assert_openai_error(await gw.admin("POST", "/teams", json={"name": "ok", "colour": "red"}), 400)
    assert "colour" in err["message"] and err["param"] == "colour"
    assert_openai_error(await gw.admin("POST", "/teams", content=b"{not json"), 400)
    assert_openai_error(await gw.admin("POST", "/teams"), 400)
    assert [t.name for t in await store.list_teams()] == ["research"]  # none of those made a team

    resp = await gw.admin("POST", "/teams", json={"name": "ops", "priority": "critical", "priority_order": 5})
    assert resp.status_code == 201 and resp.json()["priority_order"] == 5
    assert [t["name"] for t in (await gw.admin("GET", "/teams")).json()] == ["ops", "research"]
    assert (await gw.admin("GET", "/teams/research")).json()["name"] == "research"
    assert_openai_error(await gw.admin("GET", "/teams/nobody"), 404, "not_found")

    resp = await gw.admin("PATCH", "/teams/research", json={"priority": "batch"})
    assert resp.status_code == 200 and resp.json()["priority"] == "batch"
    assert resp.json()["priority_order"] == 200
    resp = await gw.admin("PATCH", "/teams/research", json={"priority_order": 150})
    assert resp.json()["priority"] == "batch" and resp.json()["priority_order"] == 150
    err = assert_openai_error(await gw.admin("PATCH", "/teams/research", json={"name": "renamed"}), 400)
    assert "name" in err["message"]
    assert_openai_error(await gw.admin("PATCH", "/teams/nobody", json={"priority": "batch"}), 404)
    assert (await store.get_team("research")).priority_order == 150

    resp = await gw.admin("DELETE", "/teams/research")
    assert resp.status_code == 204 and resp.content == b""
    assert_openai_error(await gw.admin("GET", "/teams/research"), 404)
    assert_openai_error(await gw.admin("DELETE", "/teams/research"), 404)
    assert [t["name"] for t in (await gw.admin("GET", "/teams")).json()] == ["ops"]
    assert (await gw.admin("POST", "/teams", json={"name": "research"})).status_code == 201  # name free


async def test_grants(gw: Gateway, store: IdentityStore) -> None:
    await store.create_team("research")
    # A model this gateway does not serve: refused with the served names, unless forced.
    resp = await gw.admin("PUT", "/teams/research/grants/org/model")
    err = assert_openai_error(resp, 404, "model_not_found")
    assert "alpha" in err["message"] and "force" in err["message"]
    assert (await store.get_team("research")).models == ()
    force = {"force": "true"}
    resp = await gw.admin("PUT", "/teams/research/grants/org/model", params=force)  # a slash, as in HF ids
    assert resp.status_code == 200, resp.text
    assert resp.json()["models"] == ["org/model"]
    resp = await gw.admin("PUT", "/teams/research/grants/org/model", params=force)
    assert resp.json()["models"] == ["org/model"]
    resp = await gw.admin("PUT", "/teams/research/grants/alpha")
    assert resp.json()["models"] == ["alpha", "org/model"]
    assert (await store.get_team("research")).models == ("alpha", "org/model")

    resp = await gw.admin("DELETE", "/teams/research/grants/org/model")
    assert resp.status_code == 200 and resp.json()["models"] == ["alpha"]
    assert_openai_error(await gw.admin("DELETE", "/teams/research/grants/org/model"), 404, "not_found")
    assert_openai_error(await gw.admin("PUT", "/teams/nobody/grants/alpha"), 404, "not_found")
    assert_openai_error(await gw.admin("DELETE", "/teams/nobody/grants/alpha"), 404, "not_found")

    key = (await gw.admin("POST", "/keys", json={"team": "research", "name": "k"})).json()["key"]
    models = (await gw.client.get("/v1/models", headers=auth(key))).json()["data"]
    assert [m["id"] for m in models] == ["alpha"]


# ---------------------------------------------------------------------------- keys
async def test_keys(gw: Gateway, store: IdentityStore) -> None:
    await store.create_team("research")
    await store.grant("research", "alpha")
    resp = await gw.admin("POST", "/keys", json={"team": "research", "name": "ci"})
    assert resp.status_code == 201, resp.text
    made = resp.json()
    key = made["key"]
    assert key.startswith("m2a-") and made["prefix"] == key[:12]
    assert made["team"] == "research" and made["role"] == "member" and made["name"] == "ci"
    assert made["expires_at"] is None and made["revoked_at"] is None
    assert (await gw.client.get("/v1/models", headers=auth(key))).status_code == 200

    listed = await gw.admin("GET", "/keys")
    assert listed.status_code == 200
    assert key not in listed.text and all("key" not in k for k in listed.json())
    assert [k["id"] for k in listed.json()] == [made["id"]]
    assert [k["prefix"] for k in (await gw.admin("GET", "/keys", params={"team": "research"})).json()] == [
        made["prefix"]
    ]
    assert_openai_error(await gw.admin("GET", "/keys", params={"team": "nobody"}), 404)

    before = datetime.now(UTC)
    resp = await gw.admin("POST", "/keys", json={"team": "research", "name": "temp", "expires_in_days": 2})
    assert resp.status_code == 201, resp.text
    expires = datetime.fromisoformat(resp.json()["expires_at"])
    assert before + timedelta(days=2) <= expires <= datetime.now(UTC) + timedelta(days=2)
    assert_openai_error(
        await gw.admin("POST", "/keys", json={"team": "research", "name": "t", "expires_in_days": 0}), 400
    )
    resp = await gw.admin("POST", "/keys", json={"team": "research", "name": "b", "priority": "batch"})
    assert resp.json()["priority"] == "batch"
    me = (await gw.admin("GET", "/whoami", key=resp.json()["key"])).json()
    assert me["priority"] == "batch" and me["priority_order"] == 200

    assert_openai_error(await gw.admin("POST", "/keys", json={"name": "orphan"}), 400, "invalid")
    assert_openai_error(await gw.admin("POST", "/keys", json={"team": "nobody", "name": "x"}), 404)
    body = {"team": "research", "name": "x", "expires_in": 3}
    err = assert_openai_error(await gw.admin("POST", "/keys", json=body), 400)
    assert err["param"] == "expires_in" and "expires_in" in err["message"]
    assert_openai_error(
        await gw.admin("POST", "/keys", json={"team": "research", "name": "x", "role": "x"}), 400
    )

    resp = await gw.admin("DELETE", f"/keys/{made['id']}")
    assert resp.status_code == 200
    revoked = resp.json()
    assert revoked["id"] == made["id"] and revoked["revoked_at"] is not None and "key" not in revoked
    assert_openai_error(await gw.client.get("/v1/models", headers=auth(key)), 401, "invalid_api_key")
    again = await gw.admin("DELETE", f"/keys/{made['id']}")  # idempotent: the first revocation stays
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked["revoked_at"]
    assert_openai_error(await gw.admin("DELETE", "/keys/999999"), 404, "not_found")
    assert_openai_error(await gw.admin("DELETE", "/keys/not-a-number"), 400)


async def test_admin_keys_from_the_store_are_admins(gw: Gateway) -> None:
    resp = await gw.admin("POST", "/keys", json={"name": "ops", "role": "admin"})
    assert resp.status_code == 201 and resp.json()["team"] is None
    ops = resp.json()["key"]
    assert (await gw.admin("POST", "/teams", json={"name": "made-by-ops"}, key=ops)).status_code == 201
    me = (await gw.admin("GET", "/whoami", key=ops)).json()
    assert me["role"] == "admin" and me["models"] is None and me["team"] is None
    ids = [m["id"] for m in (await gw.client.get("/v1/models", headers=auth(ops))).json()["data"]]
    assert sorted(ids) == ["alpha", "beta", "emb"]


async def test_admin_api_needs_a_valid_key(gw: Gateway) -> None:
    assert_openai_error(await gw.admin("GET", "/teams", key=None), 401, "missing_api_key")
    assert_openai_error(await gw.admin("POST", "/teams", key="m2a-nope", json={"name": "x"}), 401)
    assert_openai_error(await gw.admin("GET", "/whoami", key=None), 401, "missing_api_key")
    assert_openai_error(await gw.admin("GET", "/nothing-here"), 404)


async def test_callers_are_checked_before_their_bodies(gw: Gateway, store: IdentityStore) -> None:
    await store.create_team("team-a")
    member, _ = await store.create_key("team-a", "member")

    async def post_broken(key: str | None) -> httpx.Response:
        headers = {**auth(key), "content-type": "application/json"}
        return await gw.client.post("/admin/v1/teams", content=b'{"name": ', headers=headers)

    assert_openai_error(await post_broken(None), 401, "missing_api_key")
    assert_openai_error(await post_broken(member), 403, "admin_only")
    assert_openai_error(await post_broken(ADMIN), 400)  # an admin learns what is wrong


async def test_inputs_the_database_cannot_hold_are_refused(
    database: Database,  # noqa: F811 (the fixture)
    engine: FakeEngine,
) -> None:
    """400, not 500, on SQLite and PostgreSQL: ids past 32 bits, NUL bytes, over-long grants, bad names."""
    store = IdentityStore(await database.open())
    await store.create_team("ok")
    async with serve(engine.url, store) as gw:
        before = await snapshot(store)
        for key_id in ("0", "-1", "2147483648", "99999999999999999999999", "-99999999999999999999999"):
            assert_openai_error(await gw.admin("DELETE", f"/keys/{key_id}"), 400)
        assert_openai_error(await gw.admin("DELETE", "/keys/2147483647"), 404, "not_found")
        for method in ("GET", "DELETE"):
            assert_openai_error(await gw.admin(method, "/teams/a%00b"), 400)
        assert_openai_error(await gw.admin("PATCH", "/teams/a%00b", json={"priority": "batch"}), 400)
        for method in ("PUT", "DELETE"):
            assert_openai_error(await gw.admin(method, "/teams/ok/grants/a%00b"), 400)
            assert_openai_error(await gw.admin(method, "/teams/a%00b/grants/alpha"), 400)
            assert_openai_error(await gw.admin(method, "/teams/ok/grants/" + "m" * 257), 400)
        assert_openai_error(await gw.admin("GET", "/keys", params={"team": "a\x00b"}), 400)
        assert_openai_error(await gw.admin("POST", "/keys", json={"team": "ok", "name": "a\x00b"}), 400)
        assert_openai_error(await gw.admin("POST", "/keys", json={"team": "a\x00b", "name": "x"}), 400)
        for name in ("a\x00b", "abc\n", "x" * 63 + "\n"):
            assert_openai_error(await gw.admin("POST", "/teams", json={"name": name}), 400)
        assert await snapshot(store) == before

        longest = "org/" + "m" * 252  # 256 characters: what the column holds
        resp = await gw.admin("PUT", f"/teams/ok/grants/{longest}", params={"force": "true"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["models"] == [longest]


# ---------------------------------------------------------------------------- cross-tenant matrix
async def test_member_keys_cannot_administer_or_see_other_teams(
    database: Database,  # noqa: F811 (the fixture)
    engine: FakeEngine,
) -> None:
    """A member key of team-a, against every admin endpoint, on SQLite and on PostgreSQL."""
    store = IdentityStore(await database.open())
    await store.create_team("team-a")
    await store.grant("team-a", "alpha")
    await store.create_team("team-b")
    await store.grant("team-b", "beta")
    await store.grant("team-b", "org/b-private")
    key_a, info_a = await store.create_key("team-a", "a-key")
    key_b, info_b = await store.create_key("team-b", "b-secret-key-name")
    # What team-a must never learn (it never names them itself).
    secrets_of_b = ("team-b", "org/b-private", "b-secret-key-name", info_b.prefix, key_b)

    async with serve(engine.url, store) as gw:
        before = await snapshot(store)
        a, b = info_a.id, info_b.id
        calls: list[tuple[str, str, dict[str, Any] | None]] = [
            ("GET", "/teams", None),
            ("POST", "/teams", {"name": "evil"}),
            ("POST", "/teams", {"name": "team-a"}),
            ("POST", "/teams", {"bogus": True}),  # even an invalid body: no hint beyond "admin only"
            ("GET", "/teams/team-a", None),
            ("GET", "/teams/team-b", None),
            ("GET", "/teams/nobody", None),
            ("PATCH", "/teams/team-a", {"priority": "critical"}),
            ("PATCH", "/teams/team-b", {"priority": "batch"}),
            ("PATCH", "/teams/nobody", {"priority": "batch"}),
            ("DELETE", "/teams/team-a", None),
            ("DELETE", "/teams/team-b", None),
            ("DELETE", "/teams/nobody", None),
            ("PUT", "/teams/team-a/grants/beta", None),
            ("PUT", "/teams/team-a/grants/org/b-private", None),
            ("PUT", "/teams/team-b/grants/alpha", None),
            ("DELETE", "/teams/team-a/grants/alpha", None),
            ("DELETE", "/teams/team-b/grants/beta", None),
            ("GET", "/keys", None),
            ("GET", "/keys?team=team-a", None),
            ("GET", "/keys?team=team-b", None),
            ("POST", "/keys", {"team": "team-a", "name": "more"}),
            ("POST", "/keys", {"team": "team-b", "name": "more"}),
            ("POST", "/keys", {"name": "root", "role": "admin"}),
            ("DELETE", f"/keys/{a}", None),
            ("DELETE", f"/keys/{b}", None),
            ("DELETE", "/keys/999999", None),
            ("GET", "/quotas", None),
            ("GET", "/quotas?team=team-b", None),
            ("PUT", "/teams/team-a/quotas", {"limits": [{"metric": "tokens", "window": "day", "limit": 9}]}),
            ("PUT", "/teams/team-b/quotas", {"limits": [{"metric": "tokens", "window": "hour", "limit": 0}]}),
            ("DELETE", "/teams/team-a/quotas", None),
        ]
        for method, path, body in calls:
            resp = await gw.admin(method, path, key=key_a, json=body)
            err = assert_openai_error(resp, 403, "admin_only")
            assert err["type"] == "permission_error", (method, path)
            for secret in secrets_of_b:
                assert secret not in resp.text, (method, path, secret)
        assert await snapshot(store) == before, "a member key changed something"

        # whoami: its own team and models only.
        me = (await gw.admin("GET", "/whoami", key=key_a)).json()
        assert me["team"] == "team-a" and me["role"] == "member" and me["models"] == ["alpha"]
        assert me["key_prefix"] == info_a.prefix
        them = (await gw.admin("GET", "/whoami", key=key_b)).json()
        assert them["team"] == "team-b" and them["models"] == ["beta", "org/b-private"]

        # The OpenAI routes show team-a nothing of team-b either.
        seen: list[httpx.Response] = [
            await gw.admin("GET", "/whoami", key=key_a),
            await gw.client.get("/v1/models", headers=auth(key_a)),
            await gw.client.get("/v1/models/beta", headers=auth(key_a)),
            await gw.client.get("/v1/models/org/b-private", headers=auth(key_a)),
            await gw.client.post(
                "/v1/chat/completions", headers=auth(key_a), json={"model": "nope", "messages": HELLO}
            ),
        ]
        assert [m["id"] for m in seen[1].json()["data"]] == ["alpha"]
        assert_openai_error(seen[2], 404, "model_not_found")
        assert_openai_error(seen[3], 404, "model_not_found")
        assert_openai_error(seen[4], 404, "model_not_found")
        for resp in seen:
            for secret in (*secrets_of_b, "beta"):
                asked = secret in str(resp.request.url) or secret.encode() in resp.request.content
                assert asked or secret not in resp.text, (resp.request.url, secret)
        before_chat = len(engine.requests)
        resp = await gw.client.post(
            "/v1/chat/completions", headers=auth(key_a), json={"model": "beta", "messages": HELLO}
        )
        assert_openai_error(resp, 404, "model_not_found")
        assert all(s not in resp.text for s in secrets_of_b)
        assert len(engine.requests) == before_chat
        assert await snapshot(store) == before


# ---------------------------------------------------------------------------- OpenAPI
ADMIN_PATHS = {
    "/v1/whoami": {"get"},
    "/v1/teams": {"get", "post"},
    "/v1/teams/{team}": {"get", "patch", "delete"},
    "/v1/teams/{team}/grants/{model}": {"put", "delete"},
    "/v1/keys": {"get", "post"},
    "/v1/keys/{key_id}": {"delete"},
    "/v1/quotas": {"get"},
    "/v1/quotas/usage": {"get"},
    "/v1/overview": {"get"},
    "/v1/teams/{team}/quotas": {"put", "delete"},
    "/v1/usage": {"get"},
    "/v1/usage/daily": {"get"},
    "/v1/traces": {"get"},
    "/v1/traces/spans": {"get"},
    "/v1/guardrails/profiles": {"get"},
    "/v1/guardrails/profiles/{name}": {"get", "put", "delete"},
    "/v1/guardrails/attachments": {"get", "put", "delete"},
    "/v1/guardrails/check": {"post"},
}


async def test_openapi_document(gw: Gateway) -> None:
    resp = await gw.client.get("/admin/openapi.json")  # public, like the docs page
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"].startswith("3.")
    assert doc["servers"] == [{"url": "/admin"}]
    assert {p: set(ops) for p, ops in doc["paths"].items()} == ADMIN_PATHS
    for schema_name in ("TeamIn", "TeamOut", "KeyIn", "KeyOut", "NewKeyOut", "WhoAmI"):
        assert schema_name in doc["components"]["schemas"]
    assert "key" not in doc["components"]["schemas"]["KeyOut"]["properties"]
    assert (await gw.client.get("/admin/docs")).status_code == 200

    schema = schemathesis.openapi.from_dict(doc)  # schemathesis resolves and validates every operation
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.path, op.method.lower()) for op in operations} == {
        (p, m) for p, methods in ADMIN_PATHS.items() for m in methods
    }


async def test_the_api_description_can_be_closed(engine: FakeEngine, store: IdentityStore) -> None:
    app = create_app(make_pool(engine.url), ADMIN, GatewayConfig(admin_docs=False), identity=store)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=TIMEOUT) as client,
    ):
        for path in ("/admin/openapi.json", "/admin/docs"):
            assert_openai_error(await client.get(path), 401)
            assert (await client.get(path, headers=auth(ADMIN))).status_code == 404
        # Suffixes are no way around the key: only the exact open paths ever were open.
        assert_openai_error(await client.get("/admin/v1/teams/x/docs"), 401)


async def test_admin_api_never_answers_5xx(gw: Gateway, store: IdentityStore) -> None:
    """Schemathesis-generated requests (valid and invalid) with the admin key: never a server error.

    Hypothesis runs in a worker thread (it is synchronous); each example's request is sent by the
    test's own async client on the test's event loop, so the app runs exactly as it does elsewhere.
    """
    await store.create_team("research")  # something for generated names to hit now and then
    await store.grant("research", "org/model")
    await store.create_key("research", "k")
    doc = (await gw.client.get("/admin/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in schema.get_all_operations()]
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
            kwargs["method"],
            kwargs["url"],
            params=kwargs.get("params"),
            headers=headers,
            cookies=kwargs.get("cookies") or None,
            content=content,
        )

    def fuzz(operation: Any, mode: str, examples: int, pinned: dict[str, str] | None) -> None:
        strategy = operation.as_strategy(
            generation_mode=schemathesis.GenerationMode(mode), path_parameters=pinned
        )

        @hypothesis.settings(
            max_examples=examples,
            derandomize=True,  # the same examples on every run: it cannot flake
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure reports its first case
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            kwargs = case.as_transport_kwargs(base_url="http://gw/admin", headers=auth(ADMIN))
            resp = asyncio.run_coroutine_threadsafe(send(kwargs), loop).result(TIMEOUT)
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            case.validate_response(resp, checks=[not_a_server_error])

        check()

    unsatisfiable = []
    for operation in operations:
        for mode, examples, pin in FUZZ_RUNS:
            if pin and "{team}" not in operation.path:
                continue
            if pin and not any(t.name == "research" for t in await store.list_teams()):
                await store.create_team("research")  # an earlier run deleted it
            try:
                await asyncio.to_thread(
                    fuzz, operation, mode, examples, {"team": "research"} if pin else None
                )
            except hypothesis.errors.Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode == "negative", operation.label
                unsatisfiable.append(operation.label)
    print(f"statuses: {statuses}; no negative cases for: {unsatisfiable}")
    assert all(status < 500 for status in statuses), statuses
    assert any(200 <= s < 300 for s in statuses) and any(400 <= s < 500 for s in statuses), statuses
