"""The token endpoint, its metadata and keys, and the credentials API, over real HTTP (uvicorn on
loopback) against a gateway with the agents extension, a fresh SQLite store and a fake engine.

Client credentials by secret (Basic and form) and by signed assertion (ES256, RS256), the version a
token is for, token exchange (RFC 8693) for a user's key and for another agent's token, the
credentials API's team scoping, and the endpoint's answers to malformed requests: OAuth's error
shape (RFC 6749 §5.2) there, OpenAI's on the admin API.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import pytest_asyncio
import schemathesis
from click.testing import Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from schemathesis.checks import not_a_server_error
from typer.testing import CliRunner

from m2a.agents.oauth import ACCESS_TOKEN_TYPE, CLIENT_CREDENTIALS, JWT_BEARER, JWT_TOKEN_TYPE, TOKEN_EXCHANGE
from m2a.cli import app as cli_app
from m2a.store.guardrails import GuardrailStore
from m2a.store.identity import IdentityStore
from tests import gateway_fixtures
from tests.agents.identity_env import (
    ADMIN,
    BOT,
    ISSUER,
    OTHER,
    TEAM,
    TOKEN_URL,
    Env,
    add_version,
    assertion,
    auth,
    basic,
    bot_manifest,
    ec_key,
    rsa_key,
    serve,
    ship,
    spiffe,
)
from tests.fake_engine import FakeEngine
from tests.openai_shape import assert_openai_error

pytestmark = pytest.mark.asyncio(loop_scope="session")

engine = gateway_fixtures.engine
store = gateway_fixtures.store
PEM = serialization.Encoding.PEM


@pytest_asyncio.fixture(loop_scope="session")
async def env(engine: FakeEngine, store: IdentityStore, tmp_path: Path) -> AsyncIterator[Env]:
    async with serve(engine, store, tmp_path) as e:
        yield e


def claims_of(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A JWT's header and claims, read without checking (the gateway checks; the test looks)."""
    head, body, _ = token.split(".")

    def part(p: str) -> dict[str, Any]:
        return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))

    return part(head), part(body)


def assert_oauth_error(resp: httpx.Response, status: int, error: str) -> str:
    """An RFC 6749 §5.2 error: exactly error and error_description, not cached; the description."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert set(body) == {"error", "error_description"} and body["error"] == error, body
    if status == 401:
        assert resp.headers["www-authenticate"].startswith("Basic")
    return body["error_description"]


async def models_of(env: Env, token: str) -> list[str]:
    resp = await env.http.get("/v1/models", headers=auth(token))
    assert resp.status_code == 200, resp.text
    return [m["id"] for m in resp.json()["data"]]


# -- metadata and keys ------------------------------------------------------------------------------
async def test_metadata_advertises_the_token_endpoint_and_the_keys(env: Env) -> None:
    resp = await env.http.get("/.well-known/oauth-authorization-server")
    assert resp.status_code == 200
    meta = resp.json()
    assert meta["issuer"] == ISSUER and meta["token_endpoint"] == TOKEN_URL
    assert meta["jwks_uri"] == ISSUER + "/.well-known/jwks.json"
    assert meta["grant_types_supported"] == ["client_credentials", TOKEN_EXCHANGE]
    assert set(meta["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic", "client_secret_post", "private_key_jwt",
    }  # fmt: skip
    assert set(meta["token_endpoint_auth_signing_alg_values_supported"]) == {"ES256", "RS256"}
    jwks = await env.http.get("/.well-known/jwks.json")
    assert jwks.status_code == 200 and "max-age" in jwks.headers["cache-control"]
    keys = jwks.json()["keys"]
    assert len(keys) == 1 and keys[0]["alg"] == "ES256" and keys[0]["kty"] == "EC"
    assert not {"d", "p", "q"} & set(keys[0])  # public halves only


# -- client credentials ------------------------------------------------------------------------------
async def test_a_client_secret_gets_a_token_for_the_production_version(env: Env) -> None:
    await ship(env.registry)
    client_id, secret, _ = await env.secret()
    assert client_id == spiffe()
    resp = await env.token_call({"grant_type": "client_credentials"}, basic(client_id, secret))
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300 and "scope" not in body
    head, claims = claims_of(body["access_token"])
    assert head["alg"] == "ES256" and head["typ"] == "at+jwt"
    kids = [k["kid"] for k in (await env.http.get("/.well-known/jwks.json")).json()["keys"]]
    assert head["kid"] in kids
    assert claims["iss"] == ISSUER and claims["aud"] == "m2a" and claims["sub"] == spiffe()
    assert claims["client_id"] == spiffe() and claims["team"] == TEAM and claims["agent_version"] == 1
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] == claims["iat"] and claims["jti"]
    # The token works where an API key does: the models are the team's grants ∩ the manifest's.
    assert await models_of(env, body["access_token"]) == ["alpha"]
    assert await models_of(env, env.member) == ["alpha", "beta"]
    # client_secret_post works the same; each token is new.
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    post = await env.token_call(form)
    assert post.status_code == 200 and post.json()["access_token"] != body["access_token"]


@pytest.mark.parametrize("kind", ["ES256", "RS256"])
async def test_a_signed_client_assertion_gets_a_token(env: Env, kind: str) -> None:
    await ship(env.registry)
    private, jwk = ec_key() if kind == "ES256" else rsa_key()
    resp = await env.credential({"type": "jwk", "jwk": jwk})
    assert resp.status_code == 201, resp.text
    made = resp.json()
    assert made["type"] == "jwk" and made["kid"] == jwk["kid"] and made["alg"] == kind
    assert "client_secret" not in made and made["token_endpoint"] == TOKEN_URL
    for aud in (TOKEN_URL, ISSUER, [TOKEN_URL, "https://elsewhere"]):
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion(private, jwk["kid"], spiffe(), alg=kind, aud=aud),
        }
        got = await env.token_call(form)
        assert got.status_code == 200, got.text
        assert claims_of(got.json()["access_token"])[1]["sub"] == spiffe()
    # Without a kid, the agent's registered keys are tried.
    form["client_assertion"] = assertion(private, None, spiffe(), alg=kind)
    assert (await env.token_call(form)).status_code == 200


async def test_the_version_a_token_is_for(env: Env) -> None:
    v1 = await ship(env.registry)
    v2 = await add_version(env.registry, bot_manifest(2), "tested")
    v3 = await add_version(env.registry, bot_manifest(3), "draft")
    client_id, secret, _ = await env.secret()

    async def ask(**form: str) -> httpx.Response:
        return await env.token_call({"grant_type": "client_credentials", **form}, basic(client_id, secret))

    assert claims_of((await ask()).json()["access_token"])[1]["agent_version"] == v1
    assert claims_of((await ask(agent_version=str(v2))).json()["access_token"])[1]["agent_version"] == v2
    assert "draft" in assert_oauth_error(await ask(agent_version=str(v3)), 400, "unauthorized_client")
    assert_oauth_error(await ask(agent_version="9"), 400, "invalid_request")
    assert_oauth_error(await ask(agent_version="two"), 400, "invalid_request")
    await env.registry.revoke_version(TEAM, BOT, v2)
    assert "revoked" in assert_oauth_error(await ask(agent_version=str(v2)), 400, "unauthorized_client")
    await env.registry.revoke_version(TEAM, BOT, v1)  # production goes with it
    assert "production" in assert_oauth_error(await ask(), 400, "invalid_request")
    assert_oauth_error(await ask(scope="chat"), 400, "invalid_scope")
    assert_oauth_error(await ask(resource="https://elsewhere"), 400, "invalid_target")


# -- token exchange ----------------------------------------------------------------------------------
def exchange(
    subject: str, actor: str | None, subject_type: str = ACCESS_TOKEN_TYPE, **more: str
) -> dict[str, str]:
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": subject, "subject_token_type": subject_type}
    form |= more
    if actor is not None:
        form |= {"actor_token": actor, "actor_token_type": ACCESS_TOKEN_TYPE}
    return form


async def test_an_agent_acting_for_a_user_gets_a_token_with_act(env: Env) -> None:
    await ship(env.registry)
    actor = await env.token()
    resp = await env.token_call(exchange(env.member, actor))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE and body["token_type"] == "Bearer"
    _, claims = claims_of(body["access_token"])
    key_id = next(k.id for k in await env.store.list_keys(TEAM))
    assert claims["sub"] == f"m2a:key:{key_id}" and claims["act"] == {"sub": spiffe()}
    assert claims["subject_key_id"] == key_id and claims["client_id"] == spiffe()
    assert claims["exp"] <= claims_of(actor)[1]["exp"]  # never past the actor's token
    # The rights: the user's grants (alpha, beta) ∩ the agent's (alpha).
    assert await models_of(env, body["access_token"]) == ["alpha"]
    chat = await env.chat(body["access_token"])
    assert chat.status_code == 200, chat.text
    # An agent may act for another agent of its team (its token as the subject, type jwt).
    await ship(env.registry, "planner")
    planner = await env.token("planner")
    resp = await env.token_call(exchange(planner, actor, JWT_TOKEN_TYPE))
    assert resp.status_code == 200, resp.text
    _, claims = claims_of(resp.json()["access_token"])
    assert claims["sub"] == spiffe("planner") and claims["act"] == {"sub": spiffe()}
    assert claims["subject_agent_id"] and claims["subject_agent_version"] == 1
    assert (await env.chat(resp.json()["access_token"])).status_code == 200
    # With client authentication too: it must be the actor's.
    client_id, secret, _ = await env.secret()
    assert (await env.token_call(exchange(env.member, actor), basic(client_id, secret))).status_code == 200
    p_id, p_secret, _ = await env.secret("planner")
    refused = await env.token_call(exchange(env.member, actor), basic(p_id, p_secret))
    assert "not the actor" in assert_oauth_error(refused, 400, "invalid_request")


async def test_token_exchange_refuses_what_it_cannot_intersect(env: Env) -> None:
    await ship(env.registry, m=bot_manifest(guardrails="block_secrets"))
    actor = await env.token()
    delegated = (await env.token_call(exchange(env.member, actor))).json()["access_token"]
    admin_key, _ = await env.store.create_key(None, "root", role="admin")
    revoked_key, info = await env.store.create_key(TEAM, "gone")
    await env.store.revoke_key(info.id)
    strict_key, strict_info = await env.store.create_key(TEAM, "strict user")
    await GuardrailStore(env.store.engine).attach("strict", key_id=strict_info.id)
    cases = {
        "no actor token": exchange(env.member, None),
        "an actor token without its type": {**exchange(env.member, None), "actor_token": actor},
        "an admin key as the subject": exchange(admin_key, actor),
        "another team's key": exchange(env.other, actor),
        "a revoked key": exchange(revoked_key, actor),
        "an unknown key": exchange("m2a-not-a-key", actor),
        "a delegated actor": exchange(env.member, delegated),
        "a delegated subject": exchange(delegated, actor, JWT_TOKEN_TYPE),
        "a key as a jwt": exchange(env.member, actor, JWT_TOKEN_TYPE),
        "an unknown subject type": exchange(env.member, actor, "urn:x:saml"),
        "a user key with another guardrail profile": exchange(strict_key, actor),
        "a forged actor": exchange(env.member, actor[:-4] + "AAAA"),
    }
    for name, form in cases.items():
        resp = await env.token_call(form)
        assert resp.status_code == 400, (name, resp.text)
        assert resp.json()["error"] == "invalid_request", (name, resp.text)
    assert_oauth_error(await env.token_call(exchange(env.member, actor, scope="x")), 400, "invalid_scope")
    wrong_aud = exchange(env.member, actor, audience="https://elsewhere")
    assert_oauth_error(await env.token_call(wrong_aud), 400, "invalid_target")


# -- the credentials API -----------------------------------------------------------------------------
async def test_credentials_are_made_listed_and_revoked_by_the_agents_team_only(env: Env) -> None:
    await ship(env.registry)
    made = await env.credential({"type": "client_secret"})
    assert made.status_code == 201
    secret = made.json()["client_secret"]
    assert secret.startswith("m2a-cs-") and made.json()["client_id"] == spiffe()
    listed = await env.http.get(f"/admin/v1/agents/{TEAM}/{BOT}/credentials", headers=auth(env.member))
    assert listed.status_code == 200 and len(listed.json()) == 1
    assert secret not in listed.text and "client_secret" not in listed.json()[0]
    # Another team's member: 404 for everything, as if the agent did not exist.
    for method, path, body in (
        ("GET", "", None),
        ("POST", "", {"type": "client_secret"}),
        ("POST", f"/{made.json()['id']}/revoke", None),
    ):
        resp = await env.http.request(
            method, f"/admin/v1/agents/{TEAM}/{BOT}/credentials{path}", json=body, headers=auth(env.other)
        )
        assert_openai_error(resp, 404, "agent_not_found")
    # An admin key may; an agent's own token may not.
    assert (await env.credential({"type": "client_secret"}, key=ADMIN)).status_code == 201
    token = await env.token()
    assert_openai_error(await env.credential({"type": "client_secret"}, key=token), 403)
    # Bad keys are refused with the reason.
    private, jwk = ec_key()
    secret_jwk = ECAlgorithm.to_jwk(private, as_dict=True)
    small = RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 1024).public_key(), as_dict=True)
    for bad in (secret_jwk, small, {"kty": "oct", "k": "c2VjcmV0"}, {**jwk, "crv": "P-384"}, {"kty": "EC"}):
        assert_openai_error(await env.credential({"type": "jwk", "jwk": bad}), 400)
    assert_openai_error(await env.credential({"type": "jwk"}), 400)
    assert_openai_error(await env.credential({"type": "password"}), 400)
    # Revoking one: the secret stops at once.
    cid = made.json()["id"]
    path = f"/admin/v1/agents/{TEAM}/{BOT}/credentials"
    revoked = await env.http.post(f"{path}/{cid}/revoke", headers=auth(env.member))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    resp = await env.token_call({"grant_type": "client_credentials"}, basic(spiffe(), secret))
    assert_oauth_error(resp, 401, "invalid_client")
    missing = await env.http.post(f"{path}/99999/revoke", headers=auth(env.member))
    assert_openai_error(missing, 404)
    # A revoked agent gets no new credentials.
    await env.registry.revoke(TEAM, BOT)
    assert_openai_error(await env.credential({"type": "client_secret"}), 409)


# -- what the endpoint refuses -----------------------------------------------------------------------
async def test_the_token_endpoint_answers_malformed_requests_in_oauth_shape(env: Env) -> None:
    await ship(env.registry)
    client_id, secret, _ = await env.secret()
    cc = {"grant_type": "client_credentials"}
    as_json = await env.http.post("/oauth/token", json=cc, headers=basic(client_id, secret))
    assert_oauth_error(as_json, 400, "invalid_request")
    twice = await env.http.post(
        "/oauth/token", content="grant_type=client_credentials&grant_type=client_credentials",
        headers={"content-type": "application/x-www-form-urlencoded", **basic(client_id, secret)},
    )  # fmt: skip
    assert_oauth_error(twice, 400, "invalid_request")
    assert_oauth_error(await env.token_call({}), 400, "invalid_request")
    assert_oauth_error(await env.token_call({"grant_type": "password"}), 400, "unsupported_grant_type")
    assert_oauth_error(await env.token_call(cc), 401, "invalid_client")
    assert_oauth_error(await env.token_call(cc, {"authorization": "Basic !!!"}), 401, "invalid_client")
    assert_oauth_error(await env.token_call(cc, auth(env.member)), 401, "invalid_client")
    assert_oauth_error(await env.token_call(cc, basic(client_id, "m2a-cs-wrong")), 401, "invalid_client")
    assert_oauth_error(await env.token_call(cc, basic(spiffe("nobody"), secret)), 401, "invalid_client")
    both = {**cc, "client_id": client_id, "client_secret": secret}
    assert_oauth_error(await env.token_call(both, basic(client_id, secret)), 400, "invalid_request")
    huge = await env.http.post(
        "/oauth/token", content="grant_type=" + "x" * 70_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert_oauth_error(huge, 400, "invalid_request")
    bad_utf8 = await env.http.post(
        "/oauth/token", content=b"grant_type=%ff%fe",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert bad_utf8.status_code == 400
    assert (await env.http.get("/oauth/token")).status_code == 405
    # The other team's agent is not this team's client, whatever the secret.
    await ship(env.registry, team=OTHER)
    assert_oauth_error(await env.token_call(cc, basic(spiffe(team=OTHER), secret)), 401, "invalid_client")


# -- the CLI -----------------------------------------------------------------------------------------
async def test_the_cli_makes_credentials_and_gets_tokens(env: Env, tmp_path: Path) -> None:
    await ship(env.registry)

    async def m2a(*args: str) -> Result:
        argv = ["agents", *args, "--url", env.url, "--api-key", env.member]
        cli_env = {"M2A_HOME": str(tmp_path / "cli"), "M2A_API_KEY": "", "M2A_CLIENT_SECRET": ""}
        return await asyncio.to_thread(CliRunner().invoke, cli_app, argv, env=cli_env)

    made = await m2a("credentials", "create", BOT, "--json")
    assert made.exit_code == 0, made.output
    secret = json.loads(made.stdout)["client_secret"]
    got = await m2a("token", BOT, "--client-secret", secret)
    assert got.exit_code == 0, got.output
    token = got.stdout.strip()
    assert claims_of(token)[1]["sub"] == spiffe() and await models_of(env, token) == ["alpha"]
    # Without a secret: one is made for this token and revoked at once.
    got = await m2a("token", BOT, "--json")
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["expires_in"] == 300
    listed = await m2a("credentials", "list", BOT, "--json")
    states = [c["revoked_at"] is None for c in json.loads(listed.stdout)]
    assert states == [True, False]  # the first stays live; the CLI's own is revoked
    # A registered PEM key and a signed assertion.
    private = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "agent.pem"
    pkcs8, spki = serialization.PrivateFormat.PKCS8, serialization.PublicFormat.SubjectPublicKeyInfo
    pem.write_bytes(private.private_bytes(PEM, pkcs8, serialization.NoEncryption()))
    public = tmp_path / "agent.pub"
    public.write_bytes(private.public_key().public_bytes(PEM, spki))
    registered = await m2a("credentials", "create", BOT, "--jwk", str(public), "--json")
    assert registered.exit_code == 0, registered.output
    kid = json.loads(registered.stdout)["kid"]
    got = await m2a("token", BOT, "--private-key", str(pem), "--kid", kid)
    assert got.exit_code == 0, got.output
    assert claims_of(got.stdout.strip())[1]["client_id"] == spiffe()
    # Revoke the secret: the CLI says so, and the secret no longer works.
    first = json.loads(made.stdout)["id"]
    revoked = await m2a("credentials", "revoke", BOT, str(first))
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    refused = await m2a("token", BOT, "--client-secret", secret)
    assert refused.exit_code == 1 and "invalid_client" in refused.output
    other = await m2a("credentials", "list", "no-such-agent")
    assert other.exit_code == 1


# -- fuzzing -----------------------------------------------------------------------------------------
FUZZ_RUNS = (("positive", 10, False), ("negative", 8, False), ("positive", 12, True))
FORM_FIELDS = (
    "grant_type", "client_id", "client_secret", "client_assertion", "client_assertion_type", "scope",
    "agent_version", "resource", "audience", "subject_token", "subject_token_type", "actor_token",
    "actor_token_type", "requested_token_type",
)  # fmt: skip


async def test_the_credentials_api_and_the_token_endpoint_never_answer_5xx(env: Env) -> None:
    """Schemathesis on the credentials routes (admin key; bounded, derandomized; some aimed at an
    agent that exists), Hypothesis on the token endpoint's form: never a server error, and the
    token endpoint always in OAuth's error shape when it refuses."""
    await ship(env.registry)
    client_id, secret, _ = await env.secret()
    doc = (await env.http.get("/admin/v1/agents/openapi.json")).json()
    operations = [r.ok() for r in schemathesis.openapi.from_dict(doc).get_all_operations()]
    operations = [op for op in operations if "/credentials" in op.path]
    assert len(operations) == 3, [op.label for op in operations]
    loop = asyncio.get_running_loop()
    statuses: dict[int, int] = {}

    async def send(kwargs: dict[str, Any]) -> httpx.Response:
        headers = dict(kwargs.get("headers") or {})
        content: bytes | None = None
        if "json" in kwargs:
            content = json.dumps(kwargs["json"]).encode()
            headers.setdefault("Content-Type", "application/json")
        return await env.http.request(
            kwargs["method"], kwargs["url"], params=kwargs.get("params"), headers=headers, content=content
        )

    settings = hypothesis.settings(
        derandomize=True, database=None, deadline=None, phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip

    def fuzz(operation: Any, mode: str, examples: int, pinned: dict[str, str] | None) -> None:
        strategy = operation.as_strategy(
            generation_mode=schemathesis.GenerationMode(mode), path_parameters=pinned
        )

        @hypothesis.settings(settings, max_examples=examples)
        @hypothesis.given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            kwargs = case.as_transport_kwargs(base_url=env.url, headers={"authorization": f"Bearer {ADMIN}"})
            resp = asyncio.run_coroutine_threadsafe(send(kwargs), loop).result(60)
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            case.validate_response(resp, checks=[not_a_server_error])

        check()

    for operation in operations:
        for mode, examples, pin in FUZZ_RUNS:
            pinned = {"team": TEAM, "name": BOT} if pin else None
            with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                await asyncio.to_thread(fuzz, operation, mode, examples, pinned)
    assert all(s < 500 for s in statuses) and any(200 <= s < 300 for s in statuses), statuses

    values = st.one_of(
        st.text(max_size=40),
        st.sampled_from(
            [CLIENT_CREDENTIALS, TOKEN_EXCHANGE, JWT_BEARER, ACCESS_TOKEN_TYPE, client_id, secret]
        ),
    )
    forms = st.dictionaries(st.one_of(st.sampled_from(FORM_FIELDS), st.text(max_size=8)), values, max_size=8)
    answers: dict[int, int] = {}

    @hypothesis.settings(settings, max_examples=120)
    @hypothesis.given(form=forms, basic_auth=st.booleans())
    def post(form: dict[str, str], basic_auth: bool) -> None:
        headers = basic(client_id, secret) if basic_auth else {}
        resp = asyncio.run_coroutine_threadsafe(env.token_call(form, headers), loop).result(60)
        answers[resp.status_code] = answers.get(resp.status_code, 0) + 1
        assert resp.status_code in (200, 400, 401), resp.text
        if resp.status_code != 200:
            assert set(resp.json()) == {"error", "error_description"}, resp.text

    await asyncio.to_thread(post)
    assert 400 in answers, answers
