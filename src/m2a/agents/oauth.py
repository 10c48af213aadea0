"""m2a as an OAuth 2.0 authorization server for its agents: the token endpoint, its metadata, its keys.

Routes (Starlette, served by the agents extension):

- ``POST /oauth/token`` — form-encoded (RFC 6749), answers JSON with ``Cache-Control: no-store``;
  errors in OAuth's shape (RFC 6749 §5.2: ``{"error": "invalid_client", "error_description": ...}``,
  400, or 401 with ``WWW-Authenticate`` for a client that failed to authenticate), since OAuth
  clients expect that here rather than OpenAI's.

  ``grant_type=client_credentials``: the client (``client_id`` = the agent's SPIFFE id, see
  ``credentials.py``) authenticates with ``client_secret_basic``, ``client_secret_post`` or
  ``private_key_jwt`` (RFC 7523: ``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:
  jwt-bearer``; the assertion signed ES256 or RS256 by a key registered for the agent, ``iss`` =
  ``sub`` = the client id, ``aud`` the token endpoint's URL or the issuer, ``exp`` at most five
  minutes ahead, a ``jti`` never seen before — in any process). Exactly one method per request.
  **The version**: ``agent_version=N`` asks for a token of version N; without it, the version the
  agent's ``production`` alias points at. A draft or revoked version gets no token
  (``unauthorized_client``); a version that does not exist, or no production version, is
  ``invalid_request``. ``scope`` is refused (m2a's tokens carry no scopes: the manifest says what
  the agent may do); ``resource`` (RFC 8707), where given, must be the tokens' audience.

  ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange`` (RFC 8693), for an agent acting
  for a user: ``subject_token`` is the user's team API key (``subject_token_type`` …:access_token)
  or a token the gateway accepts (an agent's, m2a's or a trusted issuer's; …:access_token or
  …:jwt), ``actor_token`` the acting agent's token (required). The answer is a token whose ``sub``
  is the user (``m2a:key:<id>``, or the subject agent's SPIFFE id), with ``act: {"sub": <the
  agent's SPIFFE id>}``, living at most as long as both tokens (and the key), with the rights of
  both at once (``verify.delegated_principal``). Both must be of the same team, neither may be a
  delegated token already, and an admin key is no subject. Client authentication is optional
  here (the actor token proves the agent); where given, it must be the actor's. Any problem with
  either token is ``invalid_request`` (RFC 8693 §2.2.2).

- ``GET /.well-known/oauth-authorization-server`` — RFC 8414 metadata (also under the issuer's
  path, where it has one).
- ``GET /.well-known/jwks.json`` — the public signing keys (``keys.py``): the one signing, the
  one coming next, and retired ones whose tokens may be alive.

**Lifetimes.** An access token lives ``agents.token_ttl_s`` (at most 300 s), an exchanged one no
longer than the tokens or key it came from; a client assertion at most 300 s, its ``jti`` kept
that long (and pruned every minute after).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import jwt
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from m2a.agents.credentials import ASSERTION_ALGS, AgentDirectory, AgentIdentity
from m2a.agents.keys import LEEWAY_S, SigningKeys
from m2a.agents.tokens import MAX_TTL_S, TokenError, Tokens, issuer_of
from m2a.agents.verify import AgentVerifier, delegated_principal, key_subject
from m2a.config import AgentsConfig
from m2a.gateway.access import Access, looks_like_jwt
from m2a.gateway.errors import GatewayError
from m2a.gateway.extensions import Host
from m2a.principal import Principal
from m2a.store.identity import IdentityStore

log = logging.getLogger("m2a.agents.oauth")

TOKEN_PATH = "/oauth/token"
METADATA_PATH = "/.well-known/oauth-authorization-server"
JWKS_PATH = "/.well-known/jwks.json"
CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
MAX_FORM_BYTES = 64 * 1024
MAX_FIELDS = 32
MAX_JTI = 256
PRUNE_EVERY_S = 60.0
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """An answer in OAuth's error shape (RFC 6749 §5.2)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def response(self) -> JSONResponse:
        headers = dict(NO_STORE)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="m2a", error="invalid_client"'
        body = {"error": self.error, "error_description": self.description}
        return JSONResponse(body, status_code=self.status, headers=headers)


def invalid_client(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, 401)


async def read_form(request: Request) -> dict[str, str]:
    """The form's fields (each at most once: RFC 6749 §3.2), or invalid_request."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the token endpoint takes application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise OAuthError("invalid_request", f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        pairs = urllib.parse.parse_qsl(
            bytes(body).decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError("invalid_request", f"the form cannot be read: {exc}") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError("invalid_request", f"the parameter {name!r} is given more than once")
        if "\x00" in value:
            raise OAuthError("invalid_request", f"the parameter {name!r} holds a NUL character")
        form[name] = value
    return form


def _basic(header: str) -> tuple[str, str]:
    """client_id and secret of ``Authorization: Basic`` (each form-encoded first: RFC 6749 §2.3.1)."""
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise invalid_client("the Basic credentials are not base64 of client_id:client_secret") from None
    client_id, sep, secret = raw.partition(":")
    if not sep:
        raise invalid_client("the Basic credentials are not client_id:client_secret")
    return urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)


class OAuthServer:
    """The token endpoint and its metadata over the agents' directory, keys and verifier."""

    def __init__(
        self,
        tokens: Tokens,
        directory: AgentDirectory,
        identity: IdentityStore,
        verifier: AgentVerifier,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tokens = tokens
        self.directory = directory
        self.identity = identity
        self.verifier = verifier
        self.clock = clock
        self.issuer = tokens.issuer
        self.token_endpoint = self.issuer + TOKEN_PATH
        self.assertion_audiences = [self.token_endpoint, self.issuer]

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route(TOKEN_PATH, self.token, methods=["POST"]),
            Route(METADATA_PATH, self.metadata, methods=["GET"]),
            Route(JWKS_PATH, self.jwks, methods=["GET"]),
        ]
        path = urllib.parse.urlsplit(self.issuer).path.rstrip("/")
        if path:  # RFC 8414 §3: the issuer's path goes after the well-known name
            routes.append(Route(METADATA_PATH + path, self.metadata, methods=["GET"]))
        return routes

    # -- metadata and keys -------------------------------------------------------------------------

    def metadata_document(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "jwks_uri": self.issuer + JWKS_PATH,
            "grant_types_supported": [CLIENT_CREDENTIALS, TOKEN_EXCHANGE],
            "response_types_supported": [],  # no authorization endpoint: machines only
            "token_endpoint_auth_methods_supported": AUTH_METHODS,
            "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        }

    async def metadata(self, request: Request) -> Response:
        return JSONResponse(self.metadata_document(), headers={"Cache-Control": "public, max-age=300"})

    async def jwks(self, request: Request) -> Response:
        keys = self.tokens.keys
        max_age = int(max(1, min(300, keys.ahead_s / 2)))  # caches see the next key before it signs
        return JSONResponse(await keys.jwks(), headers={"Cache-Control": f"public, max-age={max_age}"})

    # -- the token endpoint ------------------------------------------------------------------------

    async def token(self, request: Request) -> Response:
        try:
            form = await read_form(request)
            grant = form.get("grant_type")
            if grant == CLIENT_CREDENTIALS:
                body = await self._client_credentials(request, form)
            elif grant == TOKEN_EXCHANGE:
                body = await self._exchange(request, form)
            elif not grant:
                raise OAuthError("invalid_request", "grant_type is missing")
            else:
                raise OAuthError(
                    "unsupported_grant_type", f"grant_type must be {CLIENT_CREDENTIALS} or {TOKEN_EXCHANGE}"
                )
        except OAuthError as exc:
            return exc.response()
        return JSONResponse(body, headers=NO_STORE)

    async def _client(self, request: Request, form: dict[str, str], required: bool) -> AgentIdentity | None:
        """The authenticated client (one method: RFC 6749 §2.3), or None where none is tried."""
        header = request.headers.get("authorization")
        methods = []
        if header is not None:
            if not header[:6].lower() == "basic ":
                raise invalid_client("the token endpoint takes Basic client authentication only")
            methods.append("client_secret_basic")
        if "client_secret" in form:
            methods.append("client_secret_post")
        if "client_assertion" in form or "client_assertion_type" in form:
            methods.append("private_key_jwt")
        if len(methods) > 1:
            used = ", ".join(methods)
            raise OAuthError("invalid_request", f"one client authentication method only, not {used}")
        if not methods:
            if required:
                raise invalid_client(
                    "the client must authenticate: client_secret_basic, client_secret_post or private_key_jwt"
                )
            if "client_id" in form:
                raise invalid_client("a client_id without a client secret or assertion")
            return None
        method = methods[0]
        if method == "private_key_jwt":
            return await self._assertion(form)
        if method == "client_secret_basic":
            assert header is not None
            client_id, secret = _basic(header)
            if "client_id" in form and form["client_id"] != client_id:
                raise OAuthError("invalid_request", "client_id differs from the Basic credentials")
        else:
            client_id, secret = form.get("client_id", ""), form["client_secret"]
        if not client_id or not secret:
            raise invalid_client("client_id and client_secret are both needed")
        agent = await self.directory.check_secret(client_id, secret)
        if agent is None:
            raise invalid_client("unknown client, or wrong or revoked secret")
        return agent

    async def _assertion(self, form: dict[str, str]) -> AgentIdentity:
        """The client a signed client assertion proves (RFC 7523 §3), its ``jti`` spent."""
        if form.get("client_assertion_type") != JWT_BEARER:
            raise invalid_client(f"client_assertion_type must be {JWT_BEARER}")
        assertion = form.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            claimed = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise invalid_client(f"the client assertion is not a JWT: {exc}") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ASSERTION_ALGS:
            raise invalid_client(f"client assertions are signed with {' or '.join(ASSERTION_ALGS)}")
        client_id = claimed.get("iss")
        if not isinstance(client_id, str) or claimed.get("sub") != client_id:
            raise invalid_client("the assertion's iss and sub must both be the client_id")
        if "client_id" in form and form["client_id"] != client_id:
            raise invalid_client("the assertion is not the client_id's")
        found = await self.directory.assertion_keys(client_id)
        if found is None:
            raise invalid_client("unknown client")
        agent, keys = found
        candidates = [k for k in keys if k.get("alg") == alg and (kid is None or k.get("kid") == kid)]
        if not candidates:
            raise invalid_client("no registered key of this client matches the assertion (kid, alg)")
        claims = None
        for jwk in candidates:
            try:
                claims = jwt.decode(
                    assertion,
                    jwt.PyJWK(jwk, alg).key,
                    algorithms=[alg],
                    audience=self.assertion_audiences,
                    issuer=client_id,
                    leeway=LEEWAY_S,
                    options={"require": ["iss", "sub", "aud", "exp", "jti"]},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                why = f"{type(exc).__name__}: {exc}"
                raise invalid_client(f"the client assertion is refused: {why}") from None
        if claims is None:
            raise invalid_client("the client assertion's signature does not verify")
        exp, jti = claims["exp"], claims["jti"]
        if not isinstance(exp, int | float) or exp - self.clock() > MAX_TTL_S + LEEWAY_S:
            raise invalid_client(f"a client assertion expires within {MAX_TTL_S} s")
        if not isinstance(jti, str) or not 1 <= len(jti) <= MAX_JTI:
            raise invalid_client(f"the assertion's jti is text of 1-{MAX_JTI} characters")
        if not await self.directory.spend_jti(client_id, jti, datetime.fromtimestamp(exp + LEEWAY_S, UTC)):
            raise invalid_client("this client assertion was used before (jti replayed)")
        return agent

    @staticmethod
    def _no_scope(form: dict[str, str]) -> None:
        if form.get("scope", "").strip():
            raise OAuthError(
                "invalid_scope", "m2a's tokens carry no scopes: the agent's manifest says what it may do"
            )

    def _audience(self, form: dict[str, str], names: tuple[str, ...]) -> None:
        for name in names:
            if name in form and form[name] not in (self.tokens.audience, self.issuer):
                raise OAuthError("invalid_target", f"{name} must be {self.tokens.audience!r}")

    async def _client_credentials(self, request: Request, form: dict[str, str]) -> dict[str, Any]:
        agent = await self._client(request, form, required=True)
        assert agent is not None
        self._no_scope(form)
        self._audience(form, ("resource",))
        number: int | None = None
        asked = form.get("agent_version")
        if asked is not None:
            if not (asked.isascii() and asked.isdigit() and 1 <= len(asked) <= 10):
                raise OAuthError("invalid_request", "agent_version is a version number")
            number = int(asked)
        version = await self.directory.version(agent.agent_id, number)
        if version is None:
            raise OAuthError(
                "invalid_request",
                f"agent {agent.name!r} has no version {number}"
                if number is not None
                else f"agent {agent.name!r} has no production version: name one with agent_version",
            )
        if not version.usable:
            raise OAuthError(
                "unauthorized_client",
                f"version {version.number} of agent {agent.name!r} is {version.stage}: no tokens",
            )
        issued = await self.tokens.issue(
            sub=agent.spiffe_id, client_id=agent.spiffe_id, team=agent.team, agent_id=agent.agent_id,
            agent_version=version.number,
        )  # fmt: skip
        return {"access_token": issued.token, "token_type": "Bearer", "expires_in": issued.expires_in}

    async def _verified(self, token: str, what: str) -> Principal:
        """An agent token's principal (not a delegated one), or invalid_request."""
        try:
            principal = await self.verifier(token)
        except GatewayError as exc:
            raise OAuthError("invalid_request", f"the {what} is not valid: {exc.message}") from None
        if principal.agent is None:
            raise OAuthError("invalid_request", f"the {what} is not an agent's token")
        if principal.agent.subject is not None:
            raise OAuthError(
                "invalid_request", f"the {what} is delegated already: m2a does not chain delegations"
            )
        return principal

    async def _exchange(self, request: Request, form: dict[str, str]) -> dict[str, Any]:
        client = await self._client(request, form, required=False)
        self._no_scope(form)
        self._audience(form, ("resource", "audience"))
        requested = form.get("requested_token_type")
        if requested not in (None, ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE):
            raise OAuthError("invalid_request", f"requested_token_type must be {ACCESS_TOKEN_TYPE}")
        subject_token, subject_type = form.get("subject_token"), form.get("subject_token_type")
        actor_token, actor_type = form.get("actor_token"), form.get("actor_token_type")
        if not subject_token or not subject_type:
            raise OAuthError("invalid_request", "subject_token and subject_token_type are required")
        if not actor_token:
            raise OAuthError("invalid_request", "actor_token (the acting agent's token) is required")
        if actor_type not in (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE):
            raise OAuthError(
                "invalid_request", f"actor_token_type must be {ACCESS_TOKEN_TYPE} or {JWT_TOKEN_TYPE}"
            )
        if subject_type not in (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE):
            raise OAuthError(
                "invalid_request", f"subject_token_type must be {ACCESS_TOKEN_TYPE} or {JWT_TOKEN_TYPE}"
            )
        actor = await self._verified(actor_token, "actor_token")
        assert actor.agent is not None
        if client is not None and client.agent_id != actor.agent.agent_id:
            raise OAuthError("invalid_request", "the authenticated client is not the actor")
        extra: dict[str, Any] = {"act": {"sub": actor.agent.spiffe_id}}
        if looks_like_jwt(subject_token):
            subject = await self._verified(subject_token, "subject_token")
            assert subject.agent is not None
            sub = subject.agent.spiffe_id
            version = await self.directory.version(subject.agent.agent_id, subject.agent.version)
            own = version.manifest.guardrails if version is not None else None
            extra["subject_agent_id"] = subject.agent.agent_id
            extra["subject_agent_version"] = subject.agent.version
        elif subject_type == ACCESS_TOKEN_TYPE:
            found = await self.identity.lookup(subject_token)
            if isinstance(found, str):
                raise OAuthError("invalid_request", f"the subject_token is not a valid API key ({found})")
            if found.is_admin or found.team_id is None:
                raise OAuthError(
                    "invalid_request", "the subject_token must be a team member's key, not an admin key"
                )
            if found.expires_at is not None and found.expires_at <= datetime.now(UTC):
                raise OAuthError("invalid_request", "the subject_token (an API key) has expired")
            subject, sub = found, key_subject(found.key_id)
            own = await self.directory.key_guardrails(found.key_id)
            extra["subject_key_id"] = found.key_id
        else:
            raise OAuthError("invalid_request", "a subject_token of type jwt must be a JWT")
        if subject.team_id != actor.team_id:
            raise OAuthError("invalid_request", "the subject and the acting agent belong to different teams")
        try:
            rights = delegated_principal(subject, own, actor, sub)
        except ValueError as exc:
            raise OAuthError("invalid_request", str(exc)) from None
        assert rights.expires_at is not None  # the actor token's expiry at least
        try:
            issued = await self.tokens.issue(
                sub=sub, client_id=actor.agent.spiffe_id, team=actor.team or "",
                agent_id=actor.agent.agent_id, agent_version=actor.agent.version or 0,
                not_after=rights.expires_at.timestamp(), extra=extra,
            )  # fmt: skip
        except TokenError as exc:
            raise OAuthError("invalid_request", str(exc)) from None
        return {
            "access_token": issued.token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
        }


class IdentityService:
    """Agent identity in one gateway process: keys, tokens, the verifier and the OAuth routes.

    ``start`` makes the verifier the gateway's ``Access.tokens`` and drops its cache on every
    identity change; it also forgets spent assertion ``jti``s once they expire."""

    def __init__(self, host: Host, cfg: AgentsConfig) -> None:
        if host.db is None or host.identity is None:
            raise ValueError("agent identity needs the gateway's store")
        self.access: Access = host.access
        self.issuer = issuer_of(cfg, host.cfg)
        self.keys = SigningKeys(host.db, cfg.key_rotation_hours, cfg.token_ttl_s)
        self.tokens = Tokens(self.keys, self.issuer, cfg.audience, cfg.token_ttl_s)
        self.directory = AgentDirectory(host.db, cfg.trust_domain)
        self.verifier = AgentVerifier(self.tokens, self.directory, host.identity, cfg.trusted_issuers)
        self.oauth = OAuthServer(self.tokens, self.directory, host.identity, self.verifier)
        self._pruner: asyncio.Task[None] | None = None

    def routes(self) -> list[BaseRoute]:
        return self.oauth.routes()

    async def start(self) -> None:
        self.access.tokens = self.verifier
        self.access.on_change.append(self.verifier.on_change)
        self._pruner = asyncio.create_task(self._every(PRUNE_EVERY_S, self.directory.prune_jtis))

    @staticmethod
    async def _every(seconds: float, work: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except Exception:  # the database may blip: next time
                log.warning("could not forget expired client assertion ids", exc_info=True)

    async def close(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        if self.access.tokens is self.verifier:
            self.access.tokens = None
        with contextlib.suppress(ValueError):
            self.access.on_change.remove(self.verifier.on_change)
        await self.verifier.close()
