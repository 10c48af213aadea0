"""`m2a agents token NAME` and `m2a agents credentials create | list | revoke NAME`: an agent's
OAuth client credentials and access tokens, through a running gateway.

Like the rest of `m2a agents` these talk HTTP to the configured gateway (``--url`` elsewhere) with a
key (``--api-key``, ``$M2A_API_KEY``, else the admin key); a team key reaches its own team's agents.

- `credentials create NAME` makes a client secret (printed once: keep it) or, with ``--jwk FILE``,
  registers a public key (a JWK, or a PEM public key) for signed client assertions
  (``private_key_jwt``). Both print the ``client_id`` (the agent's SPIFFE id) and the token endpoint.
- `credentials list NAME`, `credentials revoke NAME ID`.
- `token NAME` prints an access token for the agent (alone on stdout: ``$(m2a agents token bot)``),
  got from the gateway's token endpoint by client credentials: ``--client-secret`` (or
  ``$M2A_CLIENT_SECRET``), or ``--private-key FILE`` (a PEM private key whose public half is
  registered; ``--kid`` names it) signing a one-time assertion. Without either, the key makes a
  client secret for this one token and revokes it at once (it stays listed, revoked: the history
  shows who took a token). ``--version N`` asks for a token of version N (default: production).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote_plus

import httpx
import jwt
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from rich.markup import escape
from rich.table import Table

from m2a.agents.oauth import JWT_BEARER, METADATA_PATH, TOKEN_PATH
from m2a.cli.agents_cmd import (
    TIMEOUT_S,
    ApiKeyOpt,
    JsonOpt,
    NameArg,
    TeamOpt,
    UrlOpt,
    agents_app,
    at,
    call,
    client,
    team_of,
)
from m2a.cli.identity_cmd import ConfigOpt, err, out

credentials_app = typer.Typer(
    no_args_is_help=True, help="An agent's OAuth client credentials: secrets and registered public keys."
)
agents_app.add_typer(credentials_app, name="credentials")


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/] {escape(message)}")
    return typer.Exit(code)


def read_public_jwk(path: Path) -> dict[str, Any]:
    """A public key for registration: a JWK (JSON) or a PEM public (or private: only its public
    half is sent) key, EC P-256 or RSA."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc}", 2) from exc
    if data.lstrip().startswith(b"{"):
        try:
            jwk = json.loads(data)
        except ValueError as exc:
            raise _fail(f"{path} is not JSON: {exc}", 2) from exc
        if not isinstance(jwk, dict):
            raise _fail(f"{path} holds no JWK object", 2)
        return jwk
    try:
        key: Any = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise _fail(f"{path} is neither a JWK nor a PEM key", 2) from exc
    if isinstance(key, ec.EllipticCurvePublicKey):
        return jwt.algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
    if isinstance(key, rsa.RSAPublicKey):
        return jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True)
    raise _fail("the key must be EC P-256 or RSA", 2)


@credentials_app.command("create")
def credentials_create(
    name: NameArg,
    jwk_file: Annotated[
        Path | None, typer.Option("--jwk", help="Register this public key (JWK or PEM) instead of a secret.")
    ] = None,
    team: TeamOpt = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """A new client secret for the agent (shown once), or a registered public key."""
    api = client(config, url, api_key)
    team = team_of(api, team)
    body: dict[str, Any] = {"type": "client_secret"}
    if jwk_file is not None:
        body = {"type": "jwk", "jwk": read_public_jwk(jwk_file)}
    made = call(api, "POST", at(team, name, "credentials"), body)
    if as_json:
        print(json.dumps(made, indent=2))
        return
    out.print(f"client_id       {escape(made['client_id'])}", highlight=False)
    out.print(f"token_endpoint  {escape(made['token_endpoint'])}", highlight=False)
    kind = made["type"] + (f", kid {made['kid']}" if made.get("kid") else "")
    out.print(f"credential      {made['id']} ({escape(kind)})", highlight=False)
    if made.get("client_secret"):
        out.print(f"client_secret   {made['client_secret']}", highlight=False, soft_wrap=True)
        err.print("[yellow]the secret is shown this once: keep it somewhere safe[/]")


@credentials_app.command("list")
def credentials_list(
    name: NameArg,
    team: TeamOpt = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """The agent's credentials (never a secret)."""
    api = client(config, url, api_key)
    rows = call(api, "GET", at(team_of(api, team), name, "credentials"))
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("id", "type", "kid", "alg", "created", "state")
    for c in rows:
        state = f"revoked {c['revoked_at'][:19]}" if c["revoked_at"] else "active"
        table.add_row(
            str(c["id"]), c["type"], escape(c["kid"] or "-"), c["alg"] or "-", c["created_at"][:19], state
        )
    out.print(table)


@credentials_app.command("revoke")
def credentials_revoke(
    name: NameArg,
    credential_id: Annotated[int, typer.Argument(help="The credential's id (see `credentials list`).")],
    team: TeamOpt = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke one credential: no new tokens with it (issued ones expire within five minutes)."""
    api = client(config, url, api_key)
    revoked = call(api, "POST", at(team_of(api, team), name, "credentials", credential_id, "revoke"))
    out.print(f"credential {revoked['id']} of {escape(revoked['client_id'])} revoked", highlight=False)


def _token_request(base: str, form: dict[str, str], headers: dict[str, str] | None = None) -> dict[str, Any]:
    try:
        with httpx.Client(timeout=TIMEOUT_S, trust_env=False) as http:
            resp = http.post(base + TOKEN_PATH, data=form, headers=headers or {})
    except httpx.HTTPError as exc:
        why = f"no gateway answers at {base} ({type(exc).__name__}): start one, or pass --url"
        raise _fail(why) from exc
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if resp.status_code != 200 or "access_token" not in body:
        why = f"{body.get('error', resp.status_code)}: {body.get('error_description', '')}"
        raise _fail(f"the token endpoint refused: {why}")
    return body


def _audience(base: str) -> str:
    """The token endpoint as the gateway names it (a client assertion's ``aud``)."""
    try:
        with httpx.Client(timeout=TIMEOUT_S, trust_env=False) as http:
            meta = http.get(base + METADATA_PATH).json()
        return str(meta["token_endpoint"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise _fail(f"cannot read the gateway's OAuth metadata at {base}{METADATA_PATH}") from exc


def signed_assertion(private_pem: bytes, client_id: str, audience: str, kid: str | None) -> str:
    """A client assertion (RFC 7523) valid for a minute, with a random jti."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    alg = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": now, "exp": now + 60,
              "jti": secrets.token_urlsafe(16)}  # fmt: skip
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)  # type: ignore[arg-type]


@agents_app.command("token")
def token(
    name: NameArg,
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="A version (default: production).")
    ] = None,
    client_secret: Annotated[
        str | None,
        typer.Option(
            "--client-secret",
            envvar="M2A_CLIENT_SECRET",
            show_envvar=False,
            help="The agent's client secret (default: $M2A_CLIENT_SECRET).",
        ),
    ] = None,  # fmt: skip
    private_key: Annotated[
        Path | None, typer.Option("--private-key", help="Sign a client assertion with this PEM key.")
    ] = None,
    kid: Annotated[str | None, typer.Option("--kid", help="The registered key's kid.")] = None,
    team: TeamOpt = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """An access token for the agent, from the gateway's token endpoint."""
    if client_secret and private_key:
        raise _fail("--client-secret or --private-key, not both", 2)
    api = client(config, url, api_key)
    team = team_of(api, team)
    agent = call(api, "GET", at(team, name))
    client_id = agent["spiffe_id"]
    form = {"grant_type": "client_credentials"}
    if version is not None:
        form["agent_version"] = str(version)
    made: dict[str, Any] | None = None
    if private_key is not None:
        try:
            pem = private_key.read_bytes()
            signed = signed_assertion(pem, client_id, _audience(api.url), kid)
        except (OSError, ValueError, TypeError) as exc:
            raise _fail(f"cannot sign with {private_key}: {exc}", 2) from exc
        form |= {"client_assertion_type": JWT_BEARER, "client_assertion": signed}
        headers = None
    else:
        if not client_secret:  # a secret for this one token, revoked right after
            made = call(api, "POST", at(team, name, "credentials"), {"type": "client_secret"})
            client_secret = made["client_secret"]
        raw = f"{quote_plus(client_id)}:{quote_plus(client_secret or '')}".encode()
        headers = {"authorization": "Basic " + base64.b64encode(raw).decode()}
    try:
        body = _token_request(api.url, form, headers)
    finally:
        if made is not None:
            call(api, "POST", at(team, name, "credentials", made["id"], "revoke"))
    if as_json:
        print(json.dumps(body, indent=2))
        return
    print(body["access_token"])
    if os.isatty(2):
        err.print(f"[dim]expires in {body['expires_in']} s[/]")
