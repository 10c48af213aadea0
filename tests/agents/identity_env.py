"""What the agent identity tests share: a real gateway app with the agents extension, on uvicorn on a
loopback port (real HTTP), over a fresh SQLite store, a fake engine behind it; agents registered and
shipped through the real registry; helpers to get credentials and tokens over HTTP.

Teams: ``research`` (grants alpha and beta, a member key) and ``other`` (grant alpha, a member key).
The gateway knows one extra guardrail profile, ``block_secrets`` (the secrets detector, blocking).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from m2a.agents.extension import agents_extension
from m2a.agents.manifest import Manifest, parse_manifest
from m2a.agents.oauth import IdentityService
from m2a.agents.registry import RedteamReport, Registry
from m2a.agents.tokens import spiffe_id
from m2a.config import AgentsConfig, GatewayConfig, GuardrailProfile, GuardrailRule, GuardrailsConfig
from m2a.gateway.app import create_app
from m2a.gateway.guards import Guards
from m2a.router.pool import Endpoint, Pool
from m2a.store.guardrails import GuardrailStore
from m2a.store.identity import IdentityStore
from m2a.store.ledger import Ledger
from tests.agents.helpers import manifest_data, report
from tests.fake_engine import FakeEngine
from tests.live_app import live

ADMIN = "sk-agent-identity-" + "i" * 24
ISSUER = "https://gateway.m2a.test"
TOKEN_URL = ISSUER + "/oauth/token"
TD = "m2a.local"
TEAM, OTHER = "research", "other"
BOT = "support-bot"
TIMEOUT = 30.0
AWS = "AKIAIOSFODNN7EXAMPLF"  # the shape of an AWS access key id: block_secrets refuses it
PROFILES = {"block_secrets": GuardrailProfile(rules=[GuardrailRule(detector="secrets", action="block")])}
CREDS = "/admin/v1/agents/{team}/{name}/credentials"


def spiffe(name: str = BOT, team: str = TEAM) -> str:
    return spiffe_id(TD, team, name)


def bot_manifest(n: int = 1, **changes: Any) -> Manifest:
    """The test agent: model alpha only, no tools, the given changes (guardrails, limits, priority …)."""
    data = {"models": ["alpha"], "tools": [], "guardrails": None, **changes}
    return parse_manifest(manifest_data(n, **data))


async def promote(registry: Registry, team: str, name: str, number: int, m: Manifest, stage: str) -> None:
    """Walk version ``number`` up to ``stage`` (tested with a passed gate, approved as an admin)."""
    order = ["draft", "tested", "approved", "production"]
    for to in order[1 : order.index(stage) + 1]:
        gate = RedteamReport.model_validate(report(m)) if to == "tested" else None
        await registry.promote(team, name, number, to, admin=True, redteam=gate)


async def ship(
    registry: Registry,
    name: str = BOT,
    m: Manifest | None = None,
    team: str = TEAM,
    stage: str = "production",
) -> int:
    """Register the agent with ``m`` as version 1 and move it to ``stage``; the version's number."""
    m = m or bot_manifest()
    _, version = await registry.create(team, name, ["ana@example.org"], manifest=m)
    assert version is not None
    await promote(registry, team, name, version.number, m, stage)
    return version.number


async def add_version(registry: Registry, m: Manifest, stage: str, name: str = BOT, team: str = TEAM) -> int:
    version, _ = await registry.add_version(team, name, m)
    await promote(registry, team, name, version.number, m, stage)
    return version.number


def ec_key() -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
    """A P-256 key pair: the private key and the public JWK (kid ``k-<random>``)."""
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return private, {**jwk, "kid": "k-" + base64.urlsafe_b64encode(jwk["x"][:6].encode()).decode()}


def rsa_key() -> tuple[rsa.RSAPrivateKey, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return private, {**jwk, "kid": "rsa-1"}


def assertion(
    private: Any, kid: str | None, client_id: str, alg: str = "ES256", aud: Any = TOKEN_URL, **over: Any
) -> str:
    """A signed client assertion (RFC 7523) with a fresh jti."""
    now = int(time.time())
    jti = base64.urlsafe_b64encode(os.urandom(12)).decode()
    claims = {"iss": client_id, "sub": client_id, "aud": aud, "iat": now, "exp": now + 60, "jti": jti, **over}
    headers = {"kid": kid} if kid else None
    payload = {k: v for k, v in claims.items() if v is not None}  # None: leave the claim out
    return jwt.encode(payload, private, algorithm=alg, headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(secret: bytes, claims: dict[str, Any], **header: Any) -> str:
    """An HS256 JWT made by hand with ``secret`` (the algorithm-confusion attack signs with the
    verifier's *public* key as the HMAC secret; PyJWT refuses to make one, so it is done here)."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", **header}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def basic(client_id: str, secret: str) -> dict[str, str]:
    from urllib.parse import quote_plus

    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"authorization": "Basic " + base64.b64encode(raw).decode()}


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@dataclass
class Env:
    app: Any
    url: str
    http: httpx.AsyncClient
    store: IdentityStore
    registry: Registry
    engine: FakeEngine
    member: str  # a member key of research
    other: str  # a member key of other
    ledger: Ledger | None

    @property
    def identity(self) -> IdentityService:
        return self.app.state.extensions[0].identity

    async def credential(
        self, body: dict[str, Any], name: str = BOT, team: str = TEAM, key: str | None = None
    ) -> httpx.Response:
        path = CREDS.format(team=team, name=name)
        return await self.http.post(path, json=body, headers=auth(key or self.member))

    async def secret(self, name: str = BOT, team: str = TEAM) -> tuple[str, str, int]:
        """A new client secret of the agent: (client_id, secret, credential id)."""
        resp = await self.credential({"type": "client_secret"}, name, team)
        assert resp.status_code == 201, resp.text
        body = resp.json()
        return body["client_id"], body["client_secret"], body["id"]

    async def token_call(self, form: dict[str, str], headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.http.post("/oauth/token", data=form, headers=headers or {})

    async def token(self, name: str = BOT, team: str = TEAM, **form: str) -> str:
        """A fresh access token of the agent, by a new client secret (client_secret_basic)."""
        client_id, secret, _ = await self.secret(name, team)
        resp = await self.token_call({"grant_type": "client_credentials", **form}, basic(client_id, secret))
        assert resp.status_code == 200, resp.text
        return resp.json()["access_token"]

    async def chat(self, token: str, model: str = "alpha", content: str = "hello") -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8}
        return await self.http.post("/v1/chat/completions", json=body, headers=auth(token))


@contextlib.asynccontextmanager
async def serve(
    engine: FakeEngine,
    store: IdentityStore,
    home: Path,
    agents: AgentsConfig | None = None,
    with_ledger: bool = False,
) -> AsyncIterator[Env]:
    pool = Pool()
    for model in ("alpha", "beta"):
        pool.add(Endpoint(f"{model}-0", model, engine.url, task="chat", healthy=True))
    guardrails = GuardrailsConfig(default_profile=None, profiles=PROFILES)
    guards = Guards(guardrails, store=GuardrailStore(store.engine))
    ledger = Ledger(store.engine, home / "ledger", flush_s=0.05) if with_ledger else None
    cfg = agents or AgentsConfig(trust_domain=TD, issuer=ISSUER)
    app = create_app(
        pool, ADMIN, GatewayConfig(), identity=store, guards=guards, ledger=ledger, usage_store=store.engine,
        extensions=[agents_extension(cfg)],
    )  # fmt: skip
    for team, models in ((TEAM, ("alpha", "beta")), (OTHER, ("alpha",))):
        await store.create_team(team)
        for model in models:
            await store.grant(team, model)
    member, _ = await store.create_key(TEAM, "research dev")
    other, _ = await store.create_key(OTHER, "other dev")
    registry = Registry(store.engine, TD)
    async with (
        live(app, TIMEOUT) as url,
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT, trust_env=False) as http,
    ):
        yield Env(app, url, http, store, registry, engine, member, other, ledger)
