"""Who may call the gateway, and on which models: bootstrap key, team keys, grants, revocation, expiry.

Each test builds ``create_app(pool, ADMIN, cfg, identity=IdentityStore(engine))`` on a fresh SQLite
store and drives it in-process (httpx over ASGI) inside the app's lifespan, so the revision poller
and the upstream session run as in production. Chats that must reach an engine go to the aiohttp
fake engine (tests/fake_engine.py), which records what it receives.

Changes made "by another process" go through the ``IdentityStore`` directly: the gateway only learns
of them from its revision poller (every 0.5 s), so those tests poll the gateway, bounded, instead of
sleeping or asserting on durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

import m2a.gateway.access as access_module
from m2a.config import GatewayConfig
from m2a.gateway.app import create_app
from m2a.router.pool import Endpoint, Pool
from m2a.store.identity import IdentityStore, Principal
from tests import gateway_fixtures
from tests.fake_engine import FakeEngine
from tests.openai_shape import assert_openai_error

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN = "sk-access-admin-" + "a" * 24
CHAT_MODELS = ("alpha", "beta")
EMBED_MODEL = "emb"
HELLO = [{"role": "user", "content": "Say hello."}]
TIMEOUT = 30.0  # per HTTP call; generous for a loaded two-core machine
POLL_S = 5.0  # the gateway polls the store every 0.5 s: changes by another process show well within this

engine = gateway_fixtures.engine  # shared fixtures: a fake engine and a SQLite store
store = gateway_fixtures.store


# ---------------------------------------------------------------------------- helpers
def auth(key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = POLL_S) -> None:
    """Poll ``check`` until it holds, failing the test (not hanging it) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(0.05)


def make_pool(engine_url: str) -> Pool:
    """Two chat models and one embedding model, all on the fake engine, all healthy."""
    pool = Pool()
    for model in CHAT_MODELS:
        pool.add(Endpoint(f"{model}-0", model, engine_url, task="chat", healthy=True))
    pool.add(Endpoint(f"{EMBED_MODEL}-0", EMBED_MODEL, engine_url, task="embed", healthy=True))
    return pool


@dataclass
class Gateway:
    app: Any
    client: httpx.AsyncClient

    async def models(self, key: str | None) -> httpx.Response:
        return await self.client.get("/v1/models", headers=auth(key))

    async def model_ids(self, key: str) -> list[str]:
        resp = await self.models(key)
        assert resp.status_code == 200, resp.text
        return [m["id"] for m in resp.json()["data"]]

    async def chat(self, key: str | None, model: str) -> httpx.Response:
        return await self.client.post(
            "/v1/chat/completions", headers=auth(key), json={"model": model, "messages": HELLO}
        )

    async def admin(self, method: str, path: str, key: str = ADMIN, **kw: Any) -> httpx.Response:
        return await self.client.request(method, f"/admin/v1{path}", headers=auth(key), **kw)


@contextlib.asynccontextmanager
async def serve(
    engine_url: str, store: IdentityStore | None, cfg: GatewayConfig | None = None
) -> AsyncIterator[Gateway]:
    """The gateway app, in-process, inside its lifespan (revision poller and upstream session run)."""
    app = create_app(make_pool(engine_url), ADMIN, cfg or GatewayConfig(), identity=store)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=TIMEOUT) as client,
    ):
        yield Gateway(app, client)


# ---------------------------------------------------------------------------- fixtures
@pytest_asyncio.fixture(loop_scope="session")
async def gw(engine: FakeEngine, store: IdentityStore) -> AsyncIterator[Gateway]:
    async with serve(engine.url, store) as gateway:
        yield gateway


@pytest_asyncio.fixture(loop_scope="session")
async def teams(store: IdentityStore) -> dict[str, str]:
    """team-a may use alpha, team-b may use beta (and an unserved org/b-only); one key each."""
    await store.create_team("team-a")
    await store.grant("team-a", "alpha")
    await store.create_team("team-b")
    await store.grant("team-b", "beta")
    await store.grant("team-b", "org/b-only")
    key_a, _ = await store.create_key("team-a", "a-key")
    key_b, _ = await store.create_key("team-b", "b-key")
    return {"a": key_a, "b": key_b}


def count_lookups(store: IdentityStore) -> list[str]:
    """Wrap ``store.lookup`` (the gateway's only per-key read) so each call is recorded."""
    calls: list[str] = []
    original = store.lookup

    async def lookup(key: str) -> Principal | str:
        calls.append(key)
        return await original(key)

    store.lookup = lookup  # type: ignore[method-assign]
    return calls


# ---------------------------------------------------------------------------- bootstrap admin key
async def test_bootstrap_key_without_a_store(engine: FakeEngine) -> None:
    async with serve(engine.url, None) as gw:
        assert sorted(await gw.model_ids(ADMIN)) == ["alpha", "beta", "emb"]
        assert (await gw.chat(ADMIN, "alpha")).status_code == 200

        err = assert_openai_error(await gw.models(None), 401, "missing_api_key")
        assert err["type"] == "authentication_error"
        err = assert_openai_error(await gw.models("sk-wrong"), 401, "invalid_api_key")
        assert err["type"] == "authentication_error"
        assert "sk-wrong" not in err["message"]
        assert_openai_error(await gw.chat("sk-wrong", "alpha"), 401, "invalid_api_key")
        # Without a store there are no teams, hence no admin API.
        assert_openai_error(await gw.admin("GET", "/whoami"), 404, "unknown_url")


async def test_bootstrap_key_with_a_store(gw: Gateway, teams: dict[str, str]) -> None:
    assert sorted(await gw.model_ids(ADMIN)) == ["alpha", "beta", "emb"]
    assert (await gw.chat(ADMIN, "beta")).status_code == 200
    me = (await gw.admin("GET", "/whoami")).json()
    assert me["role"] == "admin" and me["team"] is None and me["models"] is None

    assert_openai_error(await gw.models(None), 401, "missing_api_key")
    assert_openai_error(await gw.models("m2a-not-a-key"), 401, "invalid_api_key")
    assert_openai_error(await gw.admin("GET", "/teams", key=""), 401, "missing_api_key")
    assert_openai_error(await gw.admin("GET", "/teams", key="m2a-not-a-key"), 401, "invalid_api_key")
    # A malformed Authorization header counts as no key.
    resp = await gw.client.get("/v1/models", headers={"authorization": f"Basic {ADMIN}"})
    assert_openai_error(resp, 401, "missing_api_key")


# ---------------------------------------------------------------------------- team keys and grants
async def test_team_key_sees_and_uses_only_granted_models(
    gw: Gateway, engine: FakeEngine, teams: dict[str, str]
) -> None:
    key = teams["a"]
    assert await gw.model_ids(key) == ["alpha"]
    assert (await gw.client.get("/v1/models/alpha", headers=auth(key))).json()["id"] == "alpha"
    for other in ("beta", "emb", "org/b-only", "nope"):
        resp = await gw.client.get(f"/v1/models/{other}", headers=auth(key))
        assert_openai_error(resp, 404, "model_not_found")

    before = len(engine.requests)
    resp = await gw.chat(key, "alpha")
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "Paris."
    assert len(engine.requests) == before + 1
    assert engine.requests[-1].json["model"] == "alpha"

    # Served, but not granted: refused before anything reaches the engine, as unknown as any name.
    err = assert_openai_error(await gw.chat(key, "beta"), 404, "model_not_found")
    assert err["type"] == "not_found_error" and err["param"] == "model"
    resp = await gw.client.post("/v1/embeddings", headers=auth(key), json={"model": "emb", "input": "hi"})
    assert_openai_error(resp, 404, "model_not_found")
    assert len(engine.requests) == before + 1

    # Unknown: the message lists what this team may use, never what other teams were granted.
    err = assert_openai_error(await gw.chat(key, "nope"), 404, "model_not_found")
    assert "alpha" in err["message"]
    for hidden in ("beta", "emb", "org/b-only", "team-b"):
        assert hidden not in err["message"]
    # Granted to team-b but not served: as unknown as any other name, for both teams.
    assert_openai_error(await gw.chat(teams["b"], "org/b-only"), 404, "model_not_found")
    assert len(engine.requests) == before + 1


async def test_an_operator_may_explain_missing_grants(
    engine: FakeEngine, store: IdentityStore, teams: dict[str, str]
) -> None:
    """With ``gateway.explain_ungranted`` a served but ungranted model gets 403 naming the grant."""
    async with serve(engine.url, store, GatewayConfig(explain_ungranted=True)) as gw:
        err = assert_openai_error(await gw.chat(teams["a"], "beta"), 403, "model_not_allowed")
        assert err["type"] == "permission_error" and "grant" in err["message"]
        assert_openai_error(await gw.chat(teams["a"], "nope"), 404, "model_not_found")


async def test_team_without_grants_sees_nothing(gw: Gateway, store: IdentityStore) -> None:
    await store.create_team("empty")
    key, _ = await store.create_key("empty", "k")
    assert await gw.model_ids(key) == []
    err = assert_openai_error(await gw.chat(key, "nope"), 404, "model_not_found")
    assert "alpha" not in err["message"] and "beta" not in err["message"]
    assert_openai_error(await gw.chat(key, "alpha"), 404, "model_not_found")


async def test_grant_by_another_process_shows_within_a_second(
    gw: Gateway, store: IdentityStore, teams: dict[str, str]
) -> None:
    key = teams["a"]
    assert await gw.model_ids(key) == ["alpha"]  # cached now
    await store.grant("team-a", "beta")

    async def granted() -> bool:
        return await gw.model_ids(key) == ["alpha", "beta"]

    await eventually(granted, "a grant made through the store shows in /v1/models")
    assert (await gw.chat(key, "beta")).status_code == 200

    await store.ungrant("team-a", "beta")

    async def ungranted() -> bool:
        return await gw.model_ids(key) == ["alpha"]

    await eventually(ungranted, "an ungrant made through the store shows in /v1/models")
    assert_openai_error(await gw.chat(key, "beta"), 404, "model_not_found")


# ---------------------------------------------------------------------------- revocation, expiry, deletion
async def test_revocation_by_another_process_takes_effect_within_a_second(
    gw: Gateway, store: IdentityStore, teams: dict[str, str]
) -> None:
    key = teams["a"]
    assert (await gw.models(key)).status_code == 200  # cached now
    key_id = next(k.id for k in await store.list_keys("team-a"))
    await store.revoke_key(key_id)

    async def refused() -> bool:
        return (await gw.models(key)).status_code == 401

    await eventually(refused, "a key revoked through the store is refused")
    err = assert_openai_error(await gw.chat(key, "alpha"), 401, "invalid_api_key")
    assert "revoked" in err["message"]
    assert (await gw.models(teams["b"])).status_code == 200  # only that key


async def test_revocation_through_the_admin_api_is_immediate(gw: Gateway, teams: dict[str, str]) -> None:
    key = teams["a"]
    assert (await gw.models(key)).status_code == 200  # cached now
    keys = (await gw.admin("GET", "/keys", params={"team": "team-a"})).json()
    resp = await gw.admin("DELETE", f"/keys/{keys[0]['id']}")
    assert resp.status_code == 200 and resp.json()["revoked_at"] is not None
    err = assert_openai_error(await gw.models(key), 401, "invalid_api_key")  # the very next request
    assert "revoked" in err["message"]
    assert (await gw.models(teams["b"])).status_code == 200


async def test_expired_key_is_refused(gw: Gateway, store: IdentityStore) -> None:
    await store.create_team("temp")
    await store.grant("temp", "alpha")
    made = time.monotonic()
    key, info = await store.create_key("temp", "short", expires_at=datetime.now(UTC) + timedelta(seconds=2))
    assert info.expires_at is not None
    first = await gw.models(key)  # cached from here on: expiry is checked on the cached record
    if time.monotonic() - made < 1.5:  # unless this machine is slower than any reasonable one
        assert first.status_code == 200, first.text

    async def refused() -> bool:
        return (await gw.models(key)).status_code == 401

    await eventually(refused, "an expired key is refused", timeout=10.0)
    err = assert_openai_error(await gw.chat(key, "alpha"), 401, "invalid_api_key")
    assert "expired" in err["message"]
    gw.app.state.access.invalidate()  # and from a fresh store lookup, too
    err = assert_openai_error(await gw.models(key), 401, "invalid_api_key")
    assert "expired" in err["message"]


async def test_deleted_team_keys_are_refused_and_stay_dead(
    gw: Gateway, store: IdentityStore, teams: dict[str, str]
) -> None:
    key_a, key_b = teams["a"], teams["b"]
    assert (await gw.models(key_a)).status_code == 200
    assert (await gw.models(key_b)).status_code == 200

    assert (await gw.admin("DELETE", "/teams/team-a")).status_code == 204  # through the API: at once
    err = assert_openai_error(await gw.models(key_a), 401, "invalid_api_key")
    assert "team" in err["message"]

    await store.delete_team("team-b")  # by another process: within a second

    async def refused() -> bool:
        return (await gw.models(key_b)).status_code == 401

    await eventually(refused, "a key of a team deleted through the store is refused")

    # A new team with the old name gets none of the old keys back (nor their grants).
    assert (await gw.admin("POST", "/teams", json={"name": "team-a"})).status_code == 201
    await store.create_team("team-b")
    for name in ("team-a", "team-b"):
        assert (await gw.admin("GET", "/keys", params={"team": name})).json() == []
        assert (await gw.admin("GET", f"/teams/{name}")).json()["models"] == []
    gw.app.state.access.invalidate()
    for old in (key_a, key_b):
        assert_openai_error(await gw.models(old), 401, "invalid_api_key")
    new = (await gw.admin("POST", "/keys", json={"team": "team-a", "name": "new"})).json()["key"]
    assert await gw.model_ids(new) == []
    assert (await gw.admin("GET", "/whoami", key=new)).json()["team"] == "team-a"
    assert_openai_error(await gw.models(key_a), 401, "invalid_api_key")


# ---------------------------------------------------------------------------- the lookup cache
async def test_key_lookups_are_cached(gw: Gateway, store: IdentityStore, teams: dict[str, str]) -> None:
    calls = count_lookups(store)
    for _ in range(20):
        assert (await gw.models(teams["a"])).status_code == 200
        assert (await gw.chat(teams["a"], "beta")).status_code == 404
        assert (await gw.models("m2a-unknown")).status_code == 401
        assert (await gw.models(ADMIN)).status_code == 200
    assert 1 <= calls.count(teams["a"]) <= 2, calls
    assert 1 <= calls.count("m2a-unknown") <= 2, calls
    assert ADMIN not in calls  # the bootstrap key never touches the store


async def test_a_flood_of_unknown_keys_does_not_evict_valid_ones(
    gw: Gateway, store: IdentityStore, teams: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(access_module, "REFUSED_CACHE_SIZE", 5)
    access = gw.app.state.access
    for _ in range(100):  # let the poller see the fixtures' changes, or it may drop the cache below
        if access._revision == await store.revision():
            break
        await asyncio.sleep(0.1)
    calls = count_lookups(store)
    assert (await gw.models(teams["a"])).status_code == 200
    for n in range(20):
        assert (await gw.models(f"m2a-random-{n}")).status_code == 401
    assert (await gw.models(teams["a"])).status_code == 200
    assert calls.count(teams["a"]) == 1, calls  # still cached after 20 refusals
    assert (await gw.models("m2a-random-0")).status_code == 401
    assert calls.count("m2a-random-0") == 2  # refusals are bounded: the oldest was dropped


async def test_lookup_racing_a_change_is_not_cached(
    gw: Gateway, store: IdentityStore, teams: dict[str, str]
) -> None:
    """A lookup that read the store before a revocation, and finished after the gateway dropped its
    cache, must not put its stale answer back into the cache (the key would work until the next change).
    """
    key, other = teams["a"], teams["b"]
    read, release = asyncio.Event(), asyncio.Event()
    original = store.lookup
    calls: list[str] = []

    async def slow_lookup(k: str) -> Principal | str:
        calls.append(k)
        found = await original(k)
        if k == key and not release.is_set():
            read.set()
            await release.wait()
        return found

    store.lookup = slow_lookup  # type: ignore[method-assign]
    assert (await gw.models(other)).status_code == 200  # cached
    inflight = asyncio.create_task(gw.models(key))
    try:
        await asyncio.wait_for(read.wait(), TIMEOUT)  # the lookup has read the (still valid) key
        key_id = next(k.id for k in await store.list_keys("team-a"))
        await store.revoke_key(key_id)  # another process

        async def cache_dropped() -> bool:  # the poller saw the change: `other` is looked up again
            before = calls.count(other)
            await gw.models(other)
            return calls.count(other) > before

        await eventually(cache_dropped, "the gateway drops its cache after a change")
    finally:
        release.set()
    await asyncio.wait_for(inflight, TIMEOUT)  # answered from what it read; that one request may pass
    err = assert_openai_error(await gw.models(key), 401, "invalid_api_key")
    assert "revoked" in err["message"]
