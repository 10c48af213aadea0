"""Attacks on agent identity, each against the real gateway over HTTP (uvicorn on loopback, a fake
engine behind it that must see none of them): every bad bearer token is 401 in OpenAI's error shape,
every bad client authentication 401 ``invalid_client`` in OAuth's, another team's agent 404.

Tokens here are made the way an attacker would: signed with m2a's real key but with a bad claim
(so only that claim can be the reason), signed with another key under m2a's kid, unsigned
(``alg: none``), HMAC-signed with m2a's public key (algorithm confusion), edited after signing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from m2a.agents.credentials import AgentDirectory
from m2a.agents.extension import agents_extension
from m2a.agents.oauth import JWT_BEARER
from m2a.config import AgentsConfig, GatewayConfig
from m2a.gateway.app import create_app
from m2a.router.pool import Endpoint, Pool
from m2a.store.db import open_store
from m2a.store.identity import IdentityStore
from tests import gateway_fixtures
from tests.agents.identity_env import (
    ADMIN,
    BOT,
    ISSUER,
    OTHER,
    TEAM,
    TIMEOUT,
    Env,
    add_version,
    assertion,
    auth,
    b64url,
    basic,
    bot_manifest,
    ec_key,
    hs256,
    serve,
    ship,
    spiffe,
)
from tests.agents.test_oauth import assert_oauth_error, claims_of
from tests.db_fixtures import Database, database  # noqa: F401 (a fixture)
from tests.fake_engine import FakeEngine
from tests.live_app import live
from tests.openai_shape import assert_openai_error

pytestmark = pytest.mark.asyncio(loop_scope="session")

engine = gateway_fixtures.engine
store = gateway_fixtures.store


@pytest_asyncio.fixture(loop_scope="session")
async def env(engine: FakeEngine, store: IdentityStore, tmp_path: Path) -> AsyncIterator[Env]:
    async with serve(engine, store, tmp_path) as e:
        await ship(e.registry)
        yield e


def edited(token: str, **changes: Any) -> str:
    """The token with claims changed after signing (the signature left as it was)."""
    head, body, sig = token.split(".")
    _, claims = claims_of(token)
    return f"{head}.{b64url(json.dumps({**claims, **changes}).encode())}.{sig}"


async def refused(env: Env, token: str, why: str) -> None:
    """``token`` gets 401 invalid_api_key in OpenAI's shape on the API, and reaches no engine."""
    before = len(env.engine.requests)
    resp = await env.chat(token)
    assert resp.status_code == 401, (why, resp.text)
    assert_openai_error(resp, 401, "invalid_api_key")
    assert (await env.http.get("/v1/models", headers=auth(token))).status_code == 401, why
    assert len(env.engine.requests) == before, f"{why}: reached the engine"


async def test_bad_bearer_tokens_are_refused_and_reach_nothing(env: Env) -> None:
    await ship(env.registry, "planner")  # agent 2: a real agent another token may try to pass for
    good = await env.token()
    assert (await env.chat(good)).status_code == 200  # the real one works: the refusals mean something
    head, claims = claims_of(good)
    signer = await env.identity.keys.signer()
    now = int(time.time())

    ours = {"kid": signer.kid, "typ": "at+jwt"}

    def signed(**changes: Any) -> str:
        payload = {k: v for k, v in {**claims, **changes}.items() if v is not None}
        return jwt.encode(payload, signer.key, algorithm="ES256", headers=ours)

    assert (await env.chat(signed())).status_code == 200  # re-signed as is: accepted
    jwks = (await env.http.get("/.well-known/jwks.json")).json()["keys"]
    public = next(k for k in jwks if k["kid"] == signer.kid)
    public_pem = signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    attacker = ec.generate_private_key(ec.SECP256R1())
    attacks = {
        "forged: another key under m2a's kid": jwt.encode(
            claims, attacker, algorithm="ES256", headers={"kid": signer.kid, "typ": "at+jwt"}
        ),
        "expired": signed(iat=now - 700, nbf=now - 700, exp=now - 400),
        "not yet valid": signed(nbf=now + 120, exp=now + 240),
        "issued in the future": signed(iat=now + 120, nbf=now + 120, exp=now + 300),
        "wrong audience": signed(aud="another-service"),
        "two audiences": signed(aud=["m2a", "another-service"]),
        "another issuer, m2a's key": signed(iss="https://evil.example"),
        "another issuer, its own key": jwt.encode(
            {**claims, "iss": "https://evil.example"}, attacker, algorithm="ES256", headers={"kid": "evil"}
        ),
        "lives an hour": signed(exp=now + 3600),
        "no exp": signed(exp=None),
        "alg none": jwt.encode(claims, None, algorithm="none", headers={"kid": signer.kid, "typ": "at+jwt"}),
        "alg none, signature kept": jwt.encode(claims, None, algorithm="none", headers={"kid": signer.kid})
        + good.split(".")[2],
        "HS256 signed with the public key (PEM)": hs256(public_pem, claims, **ours),
        "HS256 signed with the public JWK": hs256(json.dumps(public).encode(), claims, **ours),
        "RS256 from the attacker": jwt.encode(
            claims, rsa.generate_private_key(65537, 2048), algorithm="RS256", headers={"kid": signer.kid}
        ),
        "kid not in the JWKS": jwt.encode(
            claims, signer.key, algorithm="ES256", headers={"kid": "not-a-published-kid", "typ": "at+jwt"}
        ),
        "no kid": jwt.encode(claims, signer.key, algorithm="ES256", headers={"typ": "at+jwt"}),
        "not an access token (typ JWT)": jwt.encode(
            claims, signer.key, algorithm="ES256", headers={"kid": signer.kid}
        ),
        "tampered: another version": edited(good, agent_version=2),
        "tampered: another team": edited(good, team=OTHER),
        "tampered: later exp": edited(good, exp=claims["exp"] + 3600),
        "tampered: signature cut": good.rsplit(".", 1)[0] + ".",
        "tampered: header alg": good.replace(good.split(".")[0], hs256(b"x", {}).split(".")[0], 1),
        "an agent that does not exist": signed(agent_id=999, sub=spiffe("ghost"), client_id=spiffe("ghost")),
        "another agent's id under this sub": signed(agent_id=2),
        "another agent's sub under this id": signed(sub=spiffe("planner")),
        "an exchange without its subject": signed(act={"sub": spiffe()}, sub="m2a:key:1"),
        "garbage shaped like a JWT": "eyJhbGciOiJFUzI1NiJ9.e30.AAAA",
    }
    for why, token in attacks.items():
        await refused(env, token, why)
    assert head["kid"] == signer.kid


async def test_a_revoked_versions_token_is_refused(env: Env) -> None:
    v2 = await add_version(env.registry, bot_manifest(2), "tested")
    token = await env.token(agent_version=str(v2))
    assert (await env.chat(token)).status_code == 200
    await env.registry.revoke_version(TEAM, BOT, v2)
    env.app.state.access.invalidate()  # this process (the admin API does it); others poll
    await refused(env, token, "a revoked version")
    fresh = await env.token()  # the production version is untouched
    assert (await env.chat(fresh)).status_code == 200


async def test_an_agent_asking_for_a_model_outside_its_manifest_is_refused(env: Env) -> None:
    token = await env.token()
    before = len(env.engine.requests)
    resp = await env.chat(token, model="beta")  # granted to the team, not in the manifest
    assert_openai_error(resp, 404, "model_not_found")
    assert "beta" not in resp.json()["error"]["message"].split("Served models:")[1]
    assert len(env.engine.requests) == before
    assert (await env.http.get("/v1/models/beta", headers=auth(token))).status_code == 404
    assert (await env.chat(env.member, model="beta")).status_code == 200  # the team may


async def test_bad_client_assertions_are_refused(env: Env) -> None:
    private, jwk = ec_key()
    assert (await env.credential({"type": "jwk", "jwk": jwk})).status_code == 201
    kid, client = jwk["kid"], spiffe()

    def form(token: str) -> dict[str, str]:
        grant = {"grant_type": "client_credentials", "client_assertion_type": JWT_BEARER}
        return {**grant, "client_assertion": token}

    once = assertion(private, kid, client)
    assert (await env.token_call(form(once))).status_code == 200
    replay = await env.token_call(form(once))
    assert "used before" in assert_oauth_error(replay, 401, "invalid_client")
    now = int(time.time())
    attacker, _ = ec_key()
    fields = {"iss": client, "sub": client, "aud": ISSUER, "exp": now + 60}
    bad = {
        "wrong audience": assertion(private, kid, client, aud="https://other-server/oauth/token"),
        "expired": assertion(private, kid, client, iat=now - 600, exp=now - 300),
        "lives an hour": assertion(private, kid, client, exp=now + 3600),
        "no jti": assertion(private, kid, client, jti=None),
        "no exp": assertion(private, kid, client, exp=None),
        "iss is not sub": assertion(private, kid, client, sub=spiffe("planner")),
        "another agent's id": assertion(private, kid, spiffe("planner")),
        "signed by another key": assertion(attacker, kid, client),
        "alg none": jwt.encode({**fields, "jti": "n"}, None, algorithm="none", headers={"kid": kid}),
        "HS256 with the public JWK": hs256(json.dumps(jwk).encode(), {**fields, "jti": "h"}, kid=kid),
        "not a JWT": "not-a-jwt",
    }
    for why, token in bad.items():
        resp = await env.token_call(form(token))
        assert resp.status_code == 401, (why, resp.text)
        assert_oauth_error(resp, 401, "invalid_client")
    wrong_type = {**form(assertion(private, kid, client)), "client_assertion_type": "urn:x"}
    assert_oauth_error(await env.token_call(wrong_type), 401, "invalid_client")
    # A revoked key: its assertions stop.
    listed = await env.http.get(f"/admin/v1/agents/{TEAM}/{BOT}/credentials", headers=auth(env.member))
    cid = next(c["id"] for c in listed.json() if c["kid"] == kid)
    await env.http.post(f"/admin/v1/agents/{TEAM}/{BOT}/credentials/{cid}/revoke", headers=auth(env.member))
    assert_oauth_error(await env.token_call(form(assertion(private, kid, client))), 401, "invalid_client")


async def test_a_replayed_assertion_is_refused_by_another_gateway_process(
    engine: FakeEngine, store: IdentityStore, tmp_path: Path
) -> None:
    """Two gateways on one store (the second on its own engine, as another process would be)."""
    second = IdentityStore(await open_store(None, tmp_path / "home"))
    try:
        async with serve(engine, store, tmp_path / "one") as one:
            await ship(one.registry)
            private, jwk = ec_key()
            assert (await one.credential({"type": "jwk", "jwk": jwk})).status_code == 201
            token = assertion(private, jwk["kid"], spiffe())
            form = {"grant_type": "client_credentials", "client_assertion_type": JWT_BEARER,
                    "client_assertion": token}  # fmt: skip
            pool = Pool()
            pool.add(Endpoint("alpha-0", "alpha", engine.url, task="chat", healthy=True))
            app = create_app(
                pool, ADMIN, GatewayConfig(), identity=second,
                extensions=[agents_extension(AgentsConfig(trust_domain="m2a.local", issuer=ISSUER))],
            )  # fmt: skip
            async with live(app, TIMEOUT) as url, httpx.AsyncClient(base_url=url, trust_env=False) as other:
                first = await one.token_call(form)
                assert first.status_code == 200, first.text
                again = await other.post("/oauth/token", data=form)
                assert_oauth_error(again, 401, "invalid_client")
                # The other process verifies the first one's tokens (one key store).
                access = first.json()["access_token"]
                resp = await other.get("/v1/models", headers=auth(access))
                assert resp.status_code == 200 and [m["id"] for m in resp.json()["data"]] == ["alpha"]
    finally:
        await second.engine.dispose()


async def test_a_jti_is_spent_once_in_every_process(database: Database) -> None:  # noqa: F811
    """The store's rule itself, on SQLite and PostgreSQL: two engines, one jti, one success."""
    dirs = [AgentDirectory(await database.open(), "m2a.local") for _ in range(4)]
    until = datetime.now(UTC) + timedelta(minutes=5)
    results = await asyncio.gather(*(d.spend_jti(spiffe(), "the-jti", until) for d in dirs for _ in range(3)))
    assert sorted(results) == [False] * 11 + [True]
    assert await dirs[0].spend_jti(spiffe(), "another-jti", until)
    assert await dirs[1].spend_jti(spiffe("planner"), "the-jti", until)  # per client
    past = datetime.now(UTC) - timedelta(minutes=1)
    assert await dirs[2].spend_jti(spiffe(), "old", past)
    assert await dirs[3].prune_jtis() == 1


async def test_a_revoked_credentials_secret_is_refused(env: Env) -> None:
    client_id, secret, cid = await env.secret()
    ok = await env.token_call({"grant_type": "client_credentials"}, basic(client_id, secret))
    assert ok.status_code == 200
    path = f"/admin/v1/agents/{TEAM}/{BOT}/credentials/{cid}/revoke"
    assert (await env.http.post(path, headers=auth(env.member))).status_code == 200
    for headers, body in (
        (basic(client_id, secret), {}),
        ({}, {"client_id": client_id, "client_secret": secret}),
    ):
        resp = await env.token_call({"grant_type": "client_credentials", **body}, headers)
        assert_oauth_error(resp, 401, "invalid_client")


async def test_a_member_of_team_a_cannot_make_credentials_for_team_bs_agent(env: Env) -> None:
    await ship(env.registry, team=OTHER)
    for body in ({"type": "client_secret"}, {"type": "jwk", "jwk": ec_key()[1]}):
        resp = await env.credential(body, team=OTHER, key=env.member)
        assert_openai_error(resp, 404, "agent_not_found")
    resp = await env.http.get(f"/admin/v1/agents/{OTHER}/{BOT}/credentials", headers=auth(env.member))
    assert_openai_error(resp, 404, "agent_not_found")
    # ... nor get a token for it with its own agent's secret.
    _, secret, _ = await env.secret()
    resp = await env.token_call({"grant_type": "client_credentials"}, basic(spiffe(team=OTHER), secret))
    assert_oauth_error(resp, 401, "invalid_client")
    assert (await env.credential({"type": "client_secret"}, team=OTHER, key=env.other)).status_code == 201
