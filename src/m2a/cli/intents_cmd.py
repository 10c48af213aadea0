"""`m2a intents …`: check a signed intent by hand, as an executor would, from m2a's JWKS alone.

- ``m2a intents verify TOKEN|- --jwks URL|FILE --audience AUD [--issuer ISS] [--args FILE|-]
  [--json]``: every rule of ``m2a.trust.verify`` (signature, type, expiry, audience, issuer, and the
  arguments' digest when ``--args`` gives them); exit 0 with the claims, or exit 1 with
  ``error: <code>: <message>``. It never consumes the intent.
- ``m2a intents decode TOKEN|-``: the header and claims as they are, WITHOUT verifying anything.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import jwt
import typer

from m2a.trust.verify import NOT_GIVEN, Intent, IntentError, JwksSource, verify_intent

intents_app = typer.Typer(no_args_is_help=True, help="Check m2a's signed intents (offline, from the JWKS).")

TokenArg = Annotated[str, typer.Argument(help="The intent (a compact JWS), or - to read it from stdin.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _fail(code: str, message: str, as_json: bool) -> typer.Exit:
    if as_json:
        typer.echo(json.dumps({"valid": False, "error": {"code": code, "message": message}}))
    typer.echo(f"error: {code}: {message}", err=True)
    return typer.Exit(1)


def _usage(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _token(value: str) -> str:
    return (sys.stdin.read() if value == "-" else value).strip()


def _arguments(source: str, stdin_taken: bool) -> Any:
    if source == "-" and stdin_taken:
        raise _usage("the token and --args cannot both be read from stdin")
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as exc:
        raise _usage(f"--args {source}: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _usage(f"--args {source} is not JSON: {exc}") from exc


def _jwks(source: str) -> JwksSource:
    if source.startswith(("http://", "https://")):
        return JwksSource(source)
    return JwksSource.from_file(source)


def _when(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _describe(intent: Intent, checked_args: bool) -> list[str]:
    a = intent.agent
    version = f" v{a.version}" if a.version is not None else ""
    guards = ", ".join(f"{g.detector}: {g.action}" for g in intent.guardrails) or "-"
    return [
        f"valid intent {intent.jti} for {intent.aud}",
        f"  issuer      {intent.iss}",
        f"  agent       {intent.sub} ({a.name}{version}, id {a.id}, team {a.team})",
        f"  on behalf   {' <- '.join(intent.act.chain()) if intent.act else '-'}",
        f"  tool        {intent.tool.server} / {intent.tool.name}",
        f"  tier        {intent.tier}",
        f"  policy      {intent.policy.id} {intent.policy.version} ({intent.policy.mode})",
        f"  guardrails  {guards}",
        f"  approval    {intent.approval or '-'}",
        f"  trace       {intent.trace_id or '-'}",
        f"  issued      {_when(intent.iat)}, expires {_when(intent.exp)}",
        f"  arguments   sha256 {intent.args_sha256}"
        + (" (matches --args)" if checked_args else " (not checked: no --args)"),
    ]


@intents_app.command("verify")
def verify_cmd(
    token: TokenArg,
    jwks: Annotated[str, typer.Option("--jwks", help="m2a's JWKS: a URL, or a JSON file.")],
    audience: Annotated[str, typer.Option("--audience", help="This executor's id, e.g. m2a:executor:mcp.")],
    issuer: Annotated[str | None, typer.Option("--issuer", help="The issuer the intent must name.")] = None,
    args: Annotated[
        str | None, typer.Option("--args", help="A JSON file (or -) of the arguments to check.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify an intent as an executor would (it is not consumed); exit 1 when it is refused."""
    text = _token(token)
    arguments = NOT_GIVEN if args is None else _arguments(args, token == "-")
    try:
        intent = verify_intent(text, _jwks(jwks), audience=audience, issuer=issuer, arguments=arguments)
    except IntentError as exc:
        raise _fail(exc.code, exc.message, as_json) from None
    if as_json:
        typer.echo(json.dumps({"valid": True, "args_checked": args is not None, "claims": intent.claims()}))
        return
    typer.echo("\n".join(_describe(intent, args is not None)))


@intents_app.command("decode")
def decode_cmd(token: TokenArg, as_json: JsonOpt = False) -> None:
    """Print an intent's header and claims WITHOUT verifying it (nothing here is trustworthy)."""
    text = _token(token)
    try:
        header = jwt.get_unverified_header(text)
        claims = jwt.decode(text, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise _fail("malformed", f"the token cannot be decoded: {exc}", as_json) from None
    typer.echo("WARNING: NOT VERIFIED - the signature, expiry and audience were not checked.", err=True)
    if as_json:
        typer.echo(json.dumps({"verified": False, "header": header, "claims": claims}))
        return
    typer.echo("NOT VERIFIED")
    typer.echo("header: " + json.dumps(header, indent=2))
    typer.echo("claims: " + json.dumps(claims, indent=2))
