"""What an agent token is to the gateway: the agent's principal (team quotas plus its own limits,
its priority, its guardrail profile, its models), through the real gateway app on uvicorn with the
official ``openai`` client and a fake engine; revocation stopping live tokens; the verifier's cache;
trusted issuers (a SPIRE-like JWKS on a real loopback HTTP server, or a file).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import openai
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select
from typer.testing import CliRunner

from m2a.agents import verify
from m2a.agents.credentials import AgentDirectory, AgentIdentity, VersionInfo
from m2a.agents.keys import SigningKeys
from m2a.agents.registry import Registry
from m2a.agents.tokens import Tokens
from m2a.agents.verify import (
    AgentVerifier,
    GuardrailConflict,
    agent_principal,
    delegated_principal,
    key_subject,
)
from m2a.cli import app as cli_app
from m2a.config import AgentsConfig, TrustedIssuer
from m2a.gateway.errors import GatewayError
from m2a.principal import PRIORITIES, AgentRef, Limit, Principal
from m2a.store.identity import IdentityStore
from m2a.store.quotas import QuotaStore
from m2a.store.schema import Usage
from tests import gateway_fixtures
from tests.agents.identity_env import (
    AWS,
    BOT,
    ISSUER,
    TD,
    TEAM,
    TIMEOUT,
    Env,
    auth,
    bot_manifest,
    hs256,
    serve,
    ship,
    spiffe,
)
from tests.conftest import free_port
from tests.db_fixtures import Database, database  # noqa: F401 (a fixture)
from tests.fake_engine import FakeEngine
from tests.openai_shape import assert_openai_error

pytestmark = pytest.mark.asyncio(loop_scope="session")

engine = gateway_fixtures.engine
store = gateway_fixtures.store

SPIRE = "https://spire.cluster.test"
CLUSTER = "cluster.local"


@pytest_asyncio.fixture(loop_scope="session")
async def env(engine: FakeEngine, store: IdentityStore, tmp_path: Path) -> AsyncIterator[Env]:
    async with serve(engine, store, tmp_path, with_ledger=True) as e:
        yield e


def team_principal(**over: Any) -> Principal:
    base: dict[str, Any] = dict(
        key_id=0, key_prefix="internal", team=TEAM, role="member", priority="standard",
        priority_order=PRIORITIES["standard"], models=frozenset({"alpha", "beta"}), expires_at=None,
        team_id=3, limits=(Limit("team", 3, "requests", "minute", 100),), guardrails="default",
    )  # fmt: skip
    return Principal(**{**base, **over})


AGENT = AgentIdentity(7, 3, TEAM, BOT, spiffe())


def version(**changes: Any) -> VersionInfo:
    return VersionInfo(11, 2, "production", False, bot_manifest(**changes))


# -- the principal, as a rule ------------------------------------------------------------------------
async def test_an_agents_principal_is_its_team_narrowed_by_its_manifest() -> None:
    team = team_principal()
    p = agent_principal(team, AGENT, version(models=["alpha", "gamma"]), None)
    assert p.models == frozenset({"alpha"})  # grants ∩ manifest: gamma is not granted
    assert p.agent == AgentRef(spiffe(), 7, BOT, 2, 11) and p.key_id == 0 and p.key_prefix == "agent:7"
    assert p.priority == "standard" and p.guardrails == "default" and p.limits == team.limits
    limits = [{"metric": "requests", "window": "minute", "limit": 2}, {"metric": "concurrency", "limit": 1}]
    p = agent_principal(team, AGENT, version(limits=limits, guardrails="strict", priority="batch"), None)
    own = (Limit("agent", 7, "requests", "minute", 2), Limit("agent", 7, "concurrency", "-", 1))
    assert p.limits == (*team.limits, *own)
    assert p.guardrails == "strict" and (p.priority, p.priority_order) == ("batch", PRIORITIES["batch"])
    # Never above the team's priority: critical asked, standard given.
    p = agent_principal(team, AGENT, version(priority="critical"), None)
    assert (p.priority, p.priority_order) == ("standard", PRIORITIES["standard"])
    low = team_principal(priority="batch", priority_order=250)
    p = agent_principal(low, AGENT, version(priority="standard"), None)
    assert (p.priority, p.priority_order) == ("batch", 250)
    # The vector stores it may read: its manifest's data scopes, none without (a key's are None: all).
    assert team.data_scopes is None and p.data_scopes == frozenset()
    p = agent_principal(team, AGENT, version(data_scopes=["vs_0123456789abcdef01234567"]), None)
    assert p.data_scopes == frozenset({"vs_0123456789abcdef01234567"})


async def test_a_delegated_principal_is_the_intersection_of_user_and_agent() -> None:
    until = datetime.now(UTC) + timedelta(seconds=120)
    actor = agent_principal(
        team_principal(),
        AGENT,
        version(models=["alpha", "beta"], limits=[{"metric": "tokens", "window": "day", "limit": 9}]),
        until,
    )
    user = team_principal(
        key_id=5, key_prefix="m2a-userkey", models=frozenset({"beta"}), priority="batch",
        priority_order=200, expires_at=until - timedelta(seconds=60),
        limits=(Limit("team", 3, "requests", "minute", 100), Limit("key", 5, "requests", "day", 50)),
    )  # fmt: skip
    p = delegated_principal(user, None, actor, "m2a:key:5")
    assert p.models == frozenset({"beta"}) and p.priority == "batch" and p.expires_at == user.expires_at
    assert set(p.limits) == set(actor.limits) | set(user.limits) and len(p.limits) == 3  # the team's once
    assert p.key_id == 5 and p.key_prefix == "m2a-userkey"  # the user's key: its rows, its limits
    assert p.agent is not None and p.agent.subject == "m2a:key:5" and p.agent.agent_id == 7
    assert p.guardrails == actor.guardrails  # the user's key has no profile of its own
    assert p.data_scopes == actor.data_scopes  # a key's holder brings no narrower scope
    other = replace(actor, data_scopes=frozenset({"vs_a", "vs_b"}))
    narrower = replace(actor, data_scopes=frozenset({"vs_b", "vs_c"}))
    assert delegated_principal(narrower, None, other, "spiffe://x").data_scopes == frozenset({"vs_b"})
    assert delegated_principal(user, "default", actor, "u").guardrails == "default"  # the same one
    with pytest.raises(GuardrailConflict):
        delegated_principal(user, "strict", actor, "u")
    with pytest.raises(ValueError, match="different teams"):
        delegated_principal(team_principal(team_id=4), None, actor, "u")


# -- through the gateway -----------------------------------------------------------------------------
async def test_an_agent_token_calls_chat_with_its_quota_limits_and_guardrails(
    env: Env, tmp_path: Path
) -> None:
    limits = [{"metric": "requests", "window": "minute", "limit": 2}]
    await ship(env.registry, m=bot_manifest(guardrails="block_secrets", limits=limits))
    await QuotaStore(env.store.engine).set(TEAM, [("requests", "minute", 5)])
    env.app.state.access.invalidate()
    token = await env.token()
    client = openai.AsyncOpenAI(base_url=env.url + "/v1", api_key=token, max_retries=0, timeout=TIMEOUT)
    hello = [{"role": "user", "content": "hello"}]
    answer = await client.chat.completions.create(model="alpha", messages=hello, max_tokens=8)
    assert answer.choices[0].message.content == "Paris."
    # Its guardrail profile (the manifest's block_secrets) applies; the team has none.
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": f"my key is {AWS}"}], max_tokens=8
        )
    assert refused.value.code == "content_filter"
    # A model the team has but the manifest does not: as unknown as any other.
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="beta", messages=hello, max_tokens=8)
    # Its own limit: two requests a minute (refused ones were never admitted: not counted).
    await client.chat.completions.create(model="alpha", messages=hello, max_tokens=8)
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model="alpha", messages=hello, max_tokens=8)
    assert f"agent '{BOT}'" in str(limited.value) and limited.value.response.headers["retry-after"]
    # The team's quota counted the agent's requests too: a member key has three left.
    member = openai.AsyncOpenAI(base_url=env.url + "/v1", api_key=env.member, max_retries=0, timeout=TIMEOUT)
    secret_ok = await member.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": f"my key is {AWS}"}], max_tokens=8
    )
    assert secret_ok.choices[0].message.content == "Paris."  # the team's own profile: none
    for _ in range(2):
        await member.chat.completions.create(model="beta", messages=hello, max_tokens=8)
    with pytest.raises(openai.RateLimitError) as team_limited:
        await member.chat.completions.create(model="beta", messages=hello, max_tokens=8)
    assert f"team '{TEAM}'" in str(team_limited.value)
    # The ledger names the agent; usage by agent (admin API) sums its rows.
    await asyncio.sleep(0.3)  # the ledger writes every 0.05 s
    async with env.store.engine.connect() as conn:
        q = select(Usage.agent, Usage.key_prefix).where(Usage.agent.is_not(None))
        agents = (await conn.execute(q)).all()
    assert agents and {a for a, _ in agents} == {spiffe()} and {k for _, k in agents} == {"agent:1"}
    usage = await env.http.get("/admin/v1/usage", params={"by": "agent"}, headers=auth(env.member))
    assert usage.status_code == 200, usage.text
    by_agent: dict[str | None, int] = {}
    for row in usage.json():  # a row per agent and model
        by_agent[row["group"]] = by_agent.get(row["group"], 0) + row["requests"]
    assert by_agent == {spiffe(): len(agents), None: 3}  # the member key's three
    # ... and `m2a usage --by agent` on the store.
    cli_env = {"M2A_HOME": str(tmp_path / "home"), "M2A_DATABASE_URL": ""}
    argv = ["usage", "--by", "agent", "--format", "json"]
    result = await asyncio.to_thread(CliRunner().invoke, cli_app, argv, env=cli_env)
    assert result.exit_code == 0, result.output
    assert {r["agent"]: r["requests"] for r in json.loads(result.stdout)} == {spiffe(): len(agents), "-": 3}


async def test_revoking_the_version_stops_its_live_tokens_within_seconds(env: Env) -> None:
    await ship(env.registry)
    token = await env.token()
    assert (await env.chat(token)).status_code == 200  # verified and cached
    # Revoked through the store, as another process would: no invalidate() here, only the revision.
    await env.registry.revoke_version(TEAM, BOT, 1)
    deadline = time.monotonic() + 10
    while (resp := await env.chat(token)).status_code == 200:
        assert time.monotonic() < deadline, "a revoked version's token still works after 10 s"
        await asyncio.sleep(0.1)
    assert_openai_error(resp, 401, "invalid_api_key")
    assert "revoked" in resp.json()["error"]["message"]
    # No new ones either (no production version left).
    client_id, secret, _ = await env.secret()
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    assert (await env.token_call(form)).json()["error"] == "invalid_request"


async def test_revoking_the_agent_stops_its_tokens_and_delegations(env: Env) -> None:
    await ship(env.registry)
    token = await env.token()
    exchange = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": env.member, "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "actor_token": token, "actor_token_type": "urn:ietf:params:oauth:token-type:access_token",
    }  # fmt: skip
    delegated = (await env.token_call(exchange)).json()["access_token"]
    assert (await env.chat(delegated)).status_code == 200
    # The user's key revoked: the delegated token stops (the agent's own goes on).
    key_id = next(k.id for k in await env.store.list_keys(TEAM))
    await env.store.revoke_key(key_id)
    deadline = time.monotonic() + 10
    while (await env.chat(delegated)).status_code == 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert (await env.chat(token)).status_code == 200
    await env.registry.revoke(TEAM, BOT)
    while (resp := await env.chat(token)).status_code == 200:
        assert time.monotonic() < deadline + 10
        await asyncio.sleep(0.1)
    assert_openai_error(resp, 401, "invalid_api_key")


async def test_the_verifier_caches_a_token_until_the_identity_changes(env: Env) -> None:
    await ship(env.registry)
    token = await env.token()
    verifier = env.identity.verifier
    first = await verifier(token)
    assert first.agent is not None and first.agent.version == 1
    assert await verifier(token) is first  # cached: the same object, no store read
    # A change another process makes is not seen until the revision moves ...
    env.app.state.access.on_change.remove(verifier.on_change)  # (this test drives the cache by hand)
    try:
        await env.registry.revoke_version(TEAM, BOT, 1)
        assert await verifier(token) is first
        await verifier.on_change()  # ... which the gateway's revision poll reports
        with pytest.raises(Exception, match="revoked"):
            await verifier(token)
    finally:
        env.app.state.access.on_change.append(verifier.on_change)


async def test_the_directory_and_the_verifier_on_sqlite_and_postgresql(database: Database) -> None:  # noqa: F811
    """The store's side of identity without HTTP, on both databases: agents by SPIFFE id, secrets,
    versions, a token's principal and a delegated one's, revocation."""
    db = await database.open()
    identity = IdentityStore(db)
    await identity.create_team(TEAM)
    await identity.grant(TEAM, "alpha")
    await identity.grant(TEAM, "beta")
    key, info = await identity.create_key(TEAM, "dev")
    registry = Registry(db, TD)
    limits = [{"metric": "tokens", "window": "day", "limit": 1000}]
    await ship(registry, m=bot_manifest(limits=limits, guardrails="strict", models=["alpha"]))
    directory = AgentDirectory(db, TD)
    agent = await directory.agent_by_spiffe(spiffe())
    assert agent is not None and agent.team == TEAM and await directory.agent_by_id(agent.agent_id) == agent
    assert await directory.agent_by_spiffe(spiffe().replace(TD, "elsewhere")) is None
    assert await directory.agent_by_spiffe(spiffe("ghost")) is None
    secret, cred = await directory.create_secret(agent)
    assert await directory.check_secret(spiffe(), secret) == agent
    assert await directory.check_secret(spiffe(), secret + "x") is None
    assert (await directory.version(agent.agent_id)).number == 1  # type: ignore[union-attr]
    assert await directory.version(agent.agent_id, 2) is None
    tokens = Tokens(SigningKeys(db), ISSUER, "m2a")
    verifier = AgentVerifier(tokens, directory, identity)
    ids = dict(client_id=spiffe(), team=TEAM, agent_id=agent.agent_id, agent_version=1)
    own = await verifier((await tokens.issue(sub=spiffe(), **ids)).token)
    assert own.models == frozenset({"alpha"}) and own.guardrails == "strict"
    assert Limit("agent", agent.agent_id, "tokens", "day", 1000) in own.limits
    extra = {"act": {"sub": spiffe()}, "subject_key_id": info.id}
    acting = await verifier((await tokens.issue(sub=key_subject(info.id), extra=extra, **ids)).token)
    assert (
        acting.key_id == info.id and acting.agent is not None and acting.agent.subject == key_subject(info.id)
    )
    await directory.revoke(agent, cred.id)
    assert await directory.check_secret(spiffe(), secret) is None
    await registry.revoke_version(TEAM, BOT, 1)
    verifier.clear()
    with pytest.raises(GatewayError) as refused:
        await verifier((await tokens.issue(sub=spiffe(), **ids)).token)
    assert refused.value.status == 401 and "revoked" in refused.value.message
    assert key  # the plaintext was only needed to make the key


# -- trusted issuers ---------------------------------------------------------------------------------
class JWKSServer:
    """A SPIRE-like OIDC discovery provider: its JWKS over HTTP; counts fetches; can hang."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.fetches = 0
        self.hang = False
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/keys"
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()

    async def _keys(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.hang:  # until the test ends (bounded): longer than any fetch may wait
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), 30)
        return web.json_response({"keys": self.keys})

    async def __aenter__(self) -> JWKSServer:
        app = web.Application()
        app.router.add_get("/keys", self._keys)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        self._release.set()
        await self._runner.cleanup()


def svid(private: Any, kid: str, sub: str, alg: str = "RS256", **over: Any) -> str:
    now = int(time.time())
    claims = {"iss": SPIRE, "sub": sub, "aud": ["m2a", "other-service"], "iat": now, "exp": now + 300, **over}
    return jwt.encode(claims, private, algorithm=alg, headers={"kid": kid})


async def test_a_trusted_issuers_jwt_svid_is_the_agents_production_version(
    engine: FakeEngine, store: IdentityStore, tmp_path: Path
) -> None:
    rsa_private = rsa.generate_private_key(65537, 2048)
    ec_private = ec.generate_private_key(ec.SECP256R1())
    rsa_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_private.public_key(), as_dict=True)
    rsa_jwk |= {"kid": "r1", "use": "sig"}
    ec_jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(ec_private.public_key(), as_dict=True), "kid": "e1"}
    async with JWKSServer([rsa_jwk]) as spire:
        cfg = AgentsConfig(
            trust_domain=TD, issuer=ISSUER,
            trusted_issuers=[TrustedIssuer(issuer=SPIRE, jwks_url=spire.url, trust_domain=CLUSTER)],
        )  # fmt: skip
        async with serve(engine, store, tmp_path, agents=cfg) as env:
            await ship(env.registry)
            sub = f"spiffe://{CLUSTER}/team/{TEAM}/agent/{BOT}"
            token = svid(rsa_private, "r1", sub)
            resp = await env.chat(token)
            assert resp.status_code == 200, resp.text
            p = await env.identity.verifier(token)
            assert p.agent is not None and p.agent.spiffe_id == spiffe() and p.agent.version == 1
            assert p.models == frozenset({"alpha"})
            now = int(time.time())
            good = {"iss": SPIRE, "aud": "m2a", "exp": now + 60}
            public_pem = rsa_private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            refused = {
                "another trust domain": svid(rsa_private, "r1", sub.replace(CLUSTER, "elsewhere")),
                "an unregistered agent": svid(rsa_private, "r1", sub.replace(BOT, "ghost")),
                "not a SPIFFE id": svid(rsa_private, "r1", "alice"),
                "another audience": svid(rsa_private, "r1", sub, aud="other-service"),
                "expired": svid(rsa_private, "r1", sub, iat=now - 900, exp=now - 600),
                "delegated": svid(rsa_private, "r1", sub, act={"sub": "x"}),
                "HS256 with the public key": hs256(public_pem, {**good, "sub": sub}, kid="r1"),
                "HS256 with the JWK": hs256(json.dumps(rsa_jwk).encode(), {**good, "sub": sub}, kid="r1"),
                "alg none": jwt.encode({**good, "sub": sub}, None, algorithm="none", headers={"kid": "r1"}),
                "signed by another key": svid(rsa.generate_private_key(65537, 2048), "r1", sub),
            }
            for name, bad in refused.items():
                resp = await env.chat(bad)
                assert resp.status_code == 401, (name, resp.text)
                assert_openai_error(resp, 401, "invalid_api_key")
            # A new key at the issuer: an unknown kid fetches the JWKS again, at most every few seconds.
            jwks = env.identity.verifier.trusted[SPIRE][1]
            spire.keys = [rsa_jwk, ec_jwk]
            fetched = spire.fetches
            flood = [svid(ec_private, f"unknown-{i}", sub, alg="ES256") for i in range(5)]
            for bad in flood:
                assert (await env.chat(bad)).status_code == 401
            assert spire.fetches <= fetched + 1  # five unknown kids, one fetch at most
            jwks.clock = lambda: time.monotonic() + verify.REFETCH_S + 1  # a few seconds later
            assert (await env.chat(svid(ec_private, "e1", sub, alg="ES256"))).status_code == 200
            # An issuer that hangs: the fetch is bounded, the keys it had still work.
            spire.hang = True
            jwks.clock = lambda: time.monotonic() + 2 * (verify.REFETCH_S + 1)
            started = time.monotonic()
            assert (await env.chat(svid(ec_private, "e9", sub, alg="ES256"))).status_code == 401
            assert time.monotonic() - started < verify.FETCH_TIMEOUT_S + 5  # bounded, not a hang
            assert (await env.chat(token)).status_code == 200


async def test_a_trusted_issuers_keys_from_a_file(
    engine: FakeEngine, store: IdentityStore, tmp_path: Path
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": "f1"}
    path = tmp_path / "bundle.jwks"
    path.write_text(json.dumps({"keys": [jwk, {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}]}))
    cfg = AgentsConfig(
        trust_domain=TD, issuer=ISSUER,
        trusted_issuers=[TrustedIssuer(issuer=SPIRE, jwks_file=path, trust_domain=CLUSTER)],
    )  # fmt: skip
    async with serve(engine, store, tmp_path, agents=cfg) as env:
        await ship(env.registry)
        sub = f"spiffe://{CLUSTER}/team/{TEAM}/agent/{BOT}"
        assert (await env.chat(svid(private, "f1", sub, alg="ES256"))).status_code == 200
        # The symmetric key in the file is never used: HS256 "signed" with it is refused.
        claims = {"iss": SPIRE, "sub": sub, "aud": "m2a", "exp": int(time.time()) + 60}
        hs = hs256(b"secret", claims, kid="hmac")
        assert_openai_error(await env.chat(hs), 401, "invalid_api_key")
