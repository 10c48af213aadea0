"""`m2a guardrails …`: guardrail profiles, their attachments to teams, keys and models, and checks.

Unlike `m2a teams` these talk to a running gateway's admin API (``/admin/v1/guardrails``), so that
a profile is validated and checked by the detectors the gateway itself runs: the configured
gateway's address with its admin key ($M2A_ADMIN_KEY, else the key `m2a up` keeps in $M2A_HOME),
or ``--url`` and ``--api-key``. Only `m2a guardrails detectors` works without a gateway.

`m2a guardrails check` exits 0 when the text would pass (allow, warn or modify: a redacted text is
let through masked), 1 when the profile denies it, 2 when it could not be checked (no gateway, an
unknown profile, bad input), so scripts can tell a refusal from a failure.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from m2a.cli.identity_cmd import ConfigOpt, err, out
from m2a.cli.metal_cmd import admin_key_of, gateway_url

guardrails_app = typer.Typer(
    no_args_is_help=True, help="Guardrail profiles: list, store, attach to teams, keys, models; try them."
)
API = "/admin/v1/guardrails"
TIMEOUT_S = 60.0  # a check may wait on slow detectors (a judge model) within their timeouts
PROFILE_FIELDS = ("description", "rules", "stream_hold_chars", "max_chars", "over_budget")

UrlOpt = Annotated[
    str | None, typer.Option("--url", help="Gateway base URL (default: the configured gateway).")
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", help="An admin key (default: $M2A_ADMIN_KEY, else $M2A_HOME/admin.key)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
TeamOpt = Annotated[str | None, typer.Option("--team", help="A team, by name.")]
KeyOpt = Annotated[int | None, typer.Option("--key", help="An API key, by id (`m2a keys list`).", min=1)]
ModelOpt = Annotated[str | None, typer.Option("--model", help="A model, by the name clients send.")]


class ApiError(Exception):
    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class AdminClient:
    """The admin API of one gateway, over plain HTTP (urllib: no client library needed)."""

    url: str
    key: str | None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{API}{path}", data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.key:
            request.add_header("Authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, _message(exc.read(), exc.code)) from exc
        except (OSError, ValueError) as exc:  # refused, unreachable, timed out, a bad URL
            reason = getattr(exc, "reason", None) or exc
            raise ApiError(
                None, f"no gateway answers at {self.url} ({reason}): start one with `m2a up`, or pass --url"
            ) from exc
        return json.loads(raw) if raw else None


def _message(raw: bytes, status: int) -> str:
    """The message of an OpenAI-shaped error body (or the body itself, shortened)."""
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace").strip()[:300] or f"the gateway answered {status}"


def client(config: Path | None, url: str | None, api_key: str | None) -> AdminClient:
    """The admin API to talk to: ``--url`` and ``--api-key``, else the configuration's."""
    if url is not None and api_key is not None:
        return AdminClient(url.rstrip("/"), api_key)
    from m2a.cli import settings_or_exit  # the package imports this module

    settings = settings_or_exit(config)
    return AdminClient((url or gateway_url(settings)).rstrip("/"), api_key or admin_key_of(settings))


def call(api: AdminClient, method: str, path: str, body: dict[str, Any] | None = None, code: int = 1) -> Any:
    """The API's answer, or the error printed and exit ``code``."""
    try:
        return api.call(method, path, body)
    except ApiError as exc:
        err.print(f"[red]error:[/] {escape(exc.message)}")
        raise typer.Exit(code) from exc


def _read(file: Path, what: str) -> str:
    try:
        return sys.stdin.read() if str(file) == "-" else file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"[red]error:[/] cannot read {what} {escape(str(file))}: {escape(str(exc))}")
        raise typer.Exit(2) from exc


def _target(team: str | None, key: int | None, model: str | None) -> dict[str, Any]:
    named = {k: v for k, v in (("team", team), ("key_id", key), ("model", model)) if v is not None}
    if len(named) != 1:
        raise typer.BadParameter("name exactly one of --team, --key or --model")
    return named


def _where(a: dict[str, Any]) -> str:
    if a.get("team") is not None:
        return f"team {a['team']}"
    return f"key {a['key_id']}" if a.get("key_id") is not None else f"model {a['model']}"


def _rules(p: dict[str, Any]) -> str:
    return ", ".join(f"{r['detector']}:{r['action']}" for r in p["rules"]) or "-"


@guardrails_app.command("list")
def list_profiles(
    as_json: JsonOpt = False, url: UrlOpt = None, api_key: ApiKeyOpt = None, config: ConfigOpt = None
) -> None:
    """Every profile: built in, from the config file, and stored through the API."""
    profiles = call(client(config, url, api_key), "GET", "/profiles")
    if as_json:
        print(json.dumps(profiles, indent=2))
        return
    table = Table("profile", "source", "version", "rules (detector:action)", "description")
    for p in profiles:
        version = p["version"] if p["active"] else f"{p['version']} (not running)"
        table.add_row(*(escape(x) for x in (p["name"], p["source"], version, _rules(p), p["description"])))
    out.print(table)


@guardrails_app.command("show")
def show(
    name: str,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """One profile, as YAML that `m2a guardrails put` takes back (or all about it with --json)."""
    p = call(client(config, url, api_key), "GET", f"/profiles/{urllib.parse.quote(name, safe='')}")
    if as_json:
        print(json.dumps(p, indent=2))
        return
    print(f"# {p['name']}: {p['source']}, version {p['version']}")
    print(yaml.safe_dump({k: p[k] for k in PROFILE_FIELDS}, sort_keys=False), end="")


@guardrails_app.command("put")
def put(
    name: str,
    file: Annotated[Path, typer.Option("--file", "-f", help="The profile, YAML or JSON ('-': stdin).")],
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Store a profile under NAME, or replace the stored one (its version goes up by one)."""
    try:
        spec = yaml.safe_load(_read(file, "profile"))
    except yaml.YAMLError as exc:
        err.print(f"[red]error:[/] {escape(str(file))} is not YAML or JSON: {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if not isinstance(spec, dict):
        err.print("[red]error:[/] a profile is a mapping (description, rules, …)")
        raise typer.Exit(2)
    p = call(client(config, url, api_key), "PUT", f"/profiles/{urllib.parse.quote(name, safe='')}", spec)
    if as_json:
        print(json.dumps(p, indent=2))
        return
    out.print(f"stored profile [bold]{escape(p['name'])}[/] {p['version']}: {escape(_rules(p))}")


@guardrails_app.command("delete")
def delete(name: str, url: UrlOpt = None, api_key: ApiKeyOpt = None, config: ConfigOpt = None) -> None:
    """Delete a stored profile (refused while a team, key or model has it)."""
    call(client(config, url, api_key), "DELETE", f"/profiles/{urllib.parse.quote(name, safe='')}")
    out.print(f"deleted profile [bold]{escape(name)}[/]")


@guardrails_app.command("attach")
def attach(
    profile: str,
    team: TeamOpt = None,
    key: KeyOpt = None,
    model: ModelOpt = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Attach PROFILE to one team, key or model (a key's wins over its team's; a model's adds to both)."""
    target = _target(team, key, model)
    a = call(client(config, url, api_key), "PUT", "/attachments", {"profile": profile, **target})
    out.print(f"profile [bold]{escape(a['profile'])}[/] attached to {escape(_where(a))}")


@guardrails_app.command("detach")
def detach(
    team: TeamOpt = None,
    key: KeyOpt = None,
    model: ModelOpt = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Detach the profile of one team, key or model (it falls back to the default profile)."""
    target = _target(team, key, model)
    call(client(config, url, api_key), "DELETE", "/attachments", target)
    out.print(f"detached the profile of {escape(_where(target))}")


@guardrails_app.command("attachments")
def attachments(
    as_json: JsonOpt = False, url: UrlOpt = None, api_key: ApiKeyOpt = None, config: ConfigOpt = None
) -> None:
    """Which profile is attached to which team, key and model."""
    rows = call(client(config, url, api_key), "GET", "/attachments")
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("attached to", "profile")
    for a in rows:
        table.add_row(escape(_where(a)), escape(a["profile"]))
    out.print(table)
    if not rows:
        out.print("nothing attached: every caller has the default profile")


@guardrails_app.command("check")
def check(
    profile: str,
    text: Annotated[str | None, typer.Argument(help="The text to check (or --file).")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Read the text from a file ('-': stdin).")
    ] = None,
    direction: Annotated[
        str, typer.Option(help="input (a prompt), output (an answer) or tool (a tool call or result).")
    ] = "input",
    system_prompt: Annotated[
        str | None, typer.Option(help="The system prompt, for the system-prompt leak detector.")
    ] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Check a text against PROFILE in the gateway. Exit 0: passes (allow, warn, modify); 1: denied;
    2: not checked."""
    if (text is None) == (file is None):
        err.print("[red]error:[/] give the text, or --file (not both)")
        raise typer.Exit(2)
    if direction not in ("input", "output", "tool"):
        err.print("[red]error:[/] --direction is input, output or tool")
        raise typer.Exit(2)
    body = {"profile": profile, "direction": direction, "text": text if file is None else _read(file, "text")}
    if system_prompt is not None:
        body["system_prompt"] = system_prompt
    v = call(client(config, url, api_key), "POST", "/check", body, code=2)
    if as_json:
        print(json.dumps(v, indent=2))
    else:
        colour = {"allow": "green", "warn": "yellow", "modify": "yellow", "deny": "red"}[v["decision"]]
        why = f": {escape(v['reason'])}" if v["reason"] else ""
        out.print(f"[{colour}]{v['decision']}[/] by profile {escape(v['profile'])} ({v['version']}){why}")
        if v["findings"]:
            table = Table("action", "category", "kind", "detector", "score", "span", "description")
            for f in v["findings"]:
                cells = (f["action"], f["category"], f["kind"], f["detector"], f"{f['score']:.2f}",
                         f"{f['start']}-{f['end']}", f["description"])  # fmt: skip
                table.add_row(*(escape(c) for c in cells))
            out.print(table)
        for name, error in v["errors"].items():
            out.print(f"detector {escape(name)} failed: {escape(error)}")
        if v["redacted"] is not None:
            out.print("redacted:", style="bold")
            print(v["redacted"])
    raise typer.Exit(1 if v["decision"] == "deny" else 0)


@guardrails_app.command("detectors")
def detectors(as_json: JsonOpt = False) -> None:
    """The detectors a profile's rules may name (this installation's; no gateway needed)."""
    from m2a.guardrails import known

    names = known()
    if as_json:
        print(json.dumps(names))
        return
    for name in names:
        print(name)
