"""`m2a agents create | list | show | versions | promote | rollback | revoke | test`: the agent
registry, through a running gateway's admin API (``/admin/v1/agents``).

Like `m2a guardrails` these talk HTTP to the configured gateway (``--url`` elsewhere) with a key:
``--api-key``, else ``$M2A_API_KEY``, else the admin key (``$M2A_ADMIN_KEY`` or the one `m2a up`
keeps in ``$M2A_HOME``). A team key manages its own team's agents (``--team`` defaults to the key's
team); an admin key names the team with ``--team`` (or ``team:`` in agent.yaml).

`create` takes the manifest from an ``agent.yaml`` (``--file``, kept in the agent's repository:
the manifest's fields plus ``name``, ``team``, ``sponsors``) or from flags (``--model`` …). For an
agent that exists already it adds the manifest as a new version, or names the version that has it:
CI can run the same command on every commit.

`test` is the red-team gate of a version: it attacks the version's first model (``--model`` another
of the manifest's) through the gateway with the manifest's system prompt, under its guardrail
profile (the red-team runner's ``--profile``: that needs an admin key, ``--attack-key``), stores
the run in the red-team results file like `m2a redteam run`, checks the gate (the thresholds of
`m2a redteam gate`) and, when it passes, promotes the version to ``tested`` with the run's summary
attached. Exit codes: 0 done, 1 refused (by the API, or a failed gate), 2 bad input.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from m2a.agents.manifest import ManifestError, check_sponsors, load_agent_file, parse_manifest
from m2a.cli.identity_cmd import ConfigOpt, err, out
from m2a.cli.metal_cmd import admin_key_of, gateway_url

agents_app = typer.Typer(
    no_args_is_help=True, help="Agents: register, version, red-team test, promote, roll back, revoke."
)
API = "/admin/v1/agents"
TIMEOUT_S = 60.0

UrlOpt = Annotated[
    str | None, typer.Option("--url", help="Gateway base URL (default: the configured gateway).")
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="M2A_API_KEY",
        show_envvar=False,
        help="A team or admin key (default: $M2A_API_KEY, else the admin key).",
    ),
]
TeamOpt = Annotated[
    str | None, typer.Option("--team", help="The agent's team (default: the key's own; admins name it).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why: kept in the agent's history.")]
NameArg = Annotated[str, typer.Argument(help="The agent's name.")]


class ApiError(Exception):
    def __init__(self, status: int | None, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class Client:
    """The agents admin API of one gateway."""

    def __init__(self, url: str, key: str | None) -> None:
        self.url = url.rstrip("/")
        self.key = key

    def call(self, method: str, path: str = "", body: dict[str, Any] | None = None) -> Any:
        headers = {"authorization": f"Bearer {self.key}"} if self.key else {}
        try:
            with httpx.Client(timeout=TIMEOUT_S, trust_env=False) as http:
                resp = http.request(method, f"{self.url}{path}", json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ApiError(
                None,
                f"no gateway answers at {self.url} ({type(exc).__name__}): "
                "start one with `m2a up`, or pass --url",
            ) from exc
        if resp.status_code >= 400:
            try:
                error = resp.json()["error"]
                raise ApiError(resp.status_code, str(error["message"]), error.get("code"))
            except (ValueError, KeyError, TypeError):
                raise ApiError(
                    resp.status_code, resp.text.strip()[:300] or f"HTTP {resp.status_code}"
                ) from None
        return resp.json() if resp.content else None

    def agents(self, method: str, path: str = "", body: dict[str, Any] | None = None) -> Any:
        return self.call(method, API + path, body)


def _settings(config: Path | None):  # type: ignore[no-untyped-def]
    from m2a.cli import settings_or_exit  # the package imports this module

    return settings_or_exit(config)


def client(config: Path | None, url: str | None, api_key: str | None) -> Client:
    """``--url`` and ``--api-key`` (or ``$M2A_API_KEY``), else the configuration's gateway and key."""
    if url is not None and api_key is not None:
        return Client(url, api_key)
    settings = _settings(config)
    return Client(url or gateway_url(settings), api_key or admin_key_of(settings))


def call(api: Client, method: str, path: str = "", body: dict[str, Any] | None = None) -> Any:
    """The agents API's answer, or the error printed and exit 1."""
    try:
        return api.agents(method, path, body)
    except ApiError as exc:
        err.print(f"[red]error:[/] {escape(exc.message)}")
        raise typer.Exit(1) from exc


def team_of(api: Client, team: str | None) -> str:
    """``--team``, else the key's own team (an admin key has none: it must name one)."""
    if team:
        return team
    try:
        who = api.call("GET", "/admin/v1/whoami")
    except ApiError as exc:
        err.print(f"[red]error:[/] {escape(exc.message)}")
        raise typer.Exit(1) from exc
    if not who.get("team"):
        err.print("[red]error:[/] an admin key has no team of its own: name the agent's team with --team")
        raise typer.Exit(2)
    return str(who["team"])


def at(team: str, name: str, *rest: object) -> str:
    """The API path of an agent (and below it), each part quoted: a name cannot reach another path."""
    return "".join("/" + urllib.parse.quote(str(p), safe="") for p in (team, name, *rest))


def _bad(message: str) -> typer.Exit:
    err.print(f"[red]error:[/] {escape(message)}")
    return typer.Exit(2)


def _aliases(a: dict[str, int]) -> str:
    return ", ".join(f"{k} → {v}" for k, v in a.items()) or "-"


def _print_agent(a: dict[str, Any]) -> None:
    state = f"revoked {a['revoked_at'][:19]}" if a.get("revoked_at") else "active"
    out.print(f"[bold]{escape(a['team'])}/{escape(a['name'])}[/] ({state})", highlight=False)
    out.print(f"  id        {escape(a['spiffe_id'])}", highlight=False)
    out.print(f"  sponsors  {escape(', '.join(a['sponsors']))}", highlight=False)
    out.print(f"  aliases   {escape(_aliases(a['aliases']))}", highlight=False)
    out.print(f"  versions  {a['versions']}", highlight=False)


def _versions_table(versions: list[dict[str, Any]]) -> Table:
    table = Table("version", "stage", "aliases", "digest", "models", "guardrails", "red team", "created")
    for v in versions:
        m = v["manifest"]
        rt = v.get("redteam")
        table.add_row(
            str(v["number"]),
            v["stage"],
            ", ".join(v["aliases"]) or "-",
            v["digest"][:12],
            escape(", ".join(m.get("models", []))),
            escape(str(m.get("guardrails") or "-")),
            f"run {rt['run']}" if rt else "-",
            v["created_at"][:19],
        )
    return table


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(f"cannot read {what} {path}: {exc}") from exc


def _tools(specs: list[str]) -> list[dict[str, Any]]:
    tools = []
    for spec in specs:
        server, sep, names = spec.partition(":")
        if not sep or not server or not names:
            raise _bad(f"--tool {spec!r}: use SERVER:TOOL[,TOOL...], e.g. erp:lookup_order,list_orders")
        tools.append({"server": server, "tools": [n.strip() for n in names.split(",") if n.strip()]})
    return tools


@agents_app.command("create")
def create(
    name: Annotated[str | None, typer.Argument(help="The agent's name (default: agent.yaml's).")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="An agent.yaml: the manifest, name, team, sponsors.")
    ] = None,
    team: TeamOpt = None,
    sponsor: Annotated[
        list[str] | None,
        typer.Option("--sponsor", help="A person answerable for it, by e-mail (repeatable)."),
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="A model it may use (repeatable).")
    ] = None,
    description: Annotated[str | None, typer.Option(help="What it does (its card's description).")] = None,
    display_name: Annotated[str | None, typer.Option("--display-name", help="Its card's name.")] = None,
    card_version: Annotated[str, typer.Option("--card-version", help="Its card's version.")] = "0.1.0",
    system_prompt: Annotated[str | None, typer.Option("--system-prompt", help="Its system prompt.")] = None,
    system_prompt_file: Annotated[
        Path | None, typer.Option("--system-prompt-file", help="Its system prompt, from a file.")
    ] = None,
    guardrails: Annotated[str | None, typer.Option("--guardrails", help="Its guardrail profile.")] = None,
    priority: Annotated[
        str | None, typer.Option(help="critical, standard or batch (default: the team's).")
    ] = None,
    tool: Annotated[
        list[str] | None, typer.Option("--tool", help="SERVER:TOOL[,TOOL...] it may call (repeatable).")
    ] = None,
    egress: Annotated[
        list[str] | None, typer.Option("--egress", help="HOST:PORT it may reach (repeatable).")
    ] = None,
    data_scope: Annotated[
        list[str] | None, typer.Option("--data-scope", help="A vector store id it may search (repeatable).")
    ] = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Register an agent (with its manifest as version 1), or add the manifest to an existing one."""
    flags = [description, display_name, system_prompt, system_prompt_file, guardrails, priority, tool, egress]
    manifest: dict[str, Any] | None = None
    sponsors = list(sponsor or [])
    if file is not None:
        if model or data_scope or any(f is not None for f in flags):
            raise _bad("give the manifest in --file or as flags, not both")
        try:
            loaded = load_agent_file(file)
        except ManifestError as exc:
            raise _bad(str(exc)) from exc
        name = name or loaded.name
        team = team or loaded.team
        sponsors = sponsors or loaded.sponsors
        manifest = loaded.manifest.as_json()
    elif model:
        if system_prompt_file is not None:
            if system_prompt is not None:
                raise _bad("give --system-prompt or --system-prompt-file, not both")
            system_prompt = _read_text(system_prompt_file, "the system prompt")
        data: dict[str, Any] = {
            "card": {
                "name": display_name or name or "",
                "description": description or "",
                "version": card_version,
            },
            "models": model,
            "system_prompt": system_prompt,
            "guardrails": guardrails,
            "priority": priority,
            "tools": _tools(tool or []),
            "egress": egress or [],
            "data_scopes": data_scope or [],
        }
        try:
            manifest = parse_manifest({k: v for k, v in data.items() if v is not None}, "the flags").as_json()
        except ManifestError as exc:
            raise _bad(str(exc)) from exc
    elif data_scope or any(f is not None for f in flags):
        raise _bad("a manifest needs at least one --model (or an agent.yaml with --file)")
    if not name:
        raise _bad("name the agent (NAME, or name: in agent.yaml)")
    try:
        sponsors = check_sponsors(sponsors)
    except ValueError as exc:
        raise _bad(f"{exc}: --sponsor EMAIL (or sponsors: in agent.yaml)") from exc
    api = client(config, url, api_key)
    team = team_of(api, team)
    body = {"name": name, "team": team, "sponsors": sponsors, "manifest": manifest}
    try:
        made = api.agents("POST", "", body)
    except ApiError as exc:
        if exc.status != 409 or exc.code != "conflict" or manifest is None:
            err.print(f"[red]error:[/] {escape(exc.message)}")
            raise typer.Exit(1) from exc
        version = call(api, "POST", at(team, name, "versions"), {"manifest": manifest})
        if as_json:
            print(json.dumps(version, indent=2))
            return
        said = "added version" if version["created"] else "this manifest is version"
        out.print(
            f"agent {escape(team)}/{escape(name)} exists: {said} {version['number']} "
            f"({version['stage']}, sha256 {version['digest'][:12]})",
            highlight=False,
        )
        return
    if as_json:
        print(json.dumps(made, indent=2))
        return
    out.print(
        f"registered agent [bold]{escape(team)}/{escape(name)}[/] as {escape(made['spiffe_id'])}",
        highlight=False,
    )
    if made.get("version"):
        v = made["version"]
        out.print(f"version {v['number']} ({v['stage']}, sha256 {v['digest'][:12]})", highlight=False)


@agents_app.command("list")
def list_agents(
    team: TeamOpt = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """The agents the key may see (an admin key: every team's, or --team's)."""
    query = "?" + urllib.parse.urlencode({"team": team}) if team else ""
    agents = call(client(config, url, api_key), "GET", query)
    if as_json:
        print(json.dumps(agents, indent=2))
        return
    table = Table("team", "agent", "versions", "aliases", "sponsors", "state")
    for a in agents:
        table.add_row(
            escape(a["team"]), escape(a["name"]), str(a["versions"]), escape(_aliases(a["aliases"])),
            escape(", ".join(a["sponsors"])), "revoked" if a["revoked_at"] else "active",
        )  # fmt: skip
    out.print(table)


@agents_app.command("show")
def show(
    name: NameArg,
    team: TeamOpt = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """An agent: its identity, sponsors, aliases and versions."""
    api = client(config, url, api_key)
    team = team_of(api, team)
    agent = call(api, "GET", at(team, name))
    versions = call(api, "GET", at(team, name, "versions"))
    if as_json:
        print(json.dumps({**agent, "versions": versions}, indent=2))
        return
    _print_agent(agent)
    if versions:
        out.print(_versions_table(versions))


@agents_app.command("versions")
def versions(
    name: NameArg,
    team: TeamOpt = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """An agent's versions: stage, aliases, digest, models, red-team run."""
    api = client(config, url, api_key)
    team = team_of(api, team)
    found = call(api, "GET", at(team, name, "versions"))
    if as_json:
        print(json.dumps(found, indent=2))
        return
    out.print(_versions_table(found))


@agents_app.command("promote")
def promote(
    name: NameArg,
    version: Annotated[int, typer.Argument(help="The version number.", min=1)],
    to: Annotated[str, typer.Option("--to", help="approved, production, deprecated or revoked.")],
    reason: ReasonOpt = None,
    team: TeamOpt = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Move a version to a stage (draft → tested → approved → production; deprecated, revoked)."""
    if to == "tested":
        raise _bad(
            "a version reaches tested through its red-team gate: "
            f"`m2a agents test {name} --version {version}`"
        )
    api = client(config, url, api_key)
    team = team_of(api, team)
    v = call(api, "POST", at(team, name, "versions", version, "promote"), {"to": to, "reason": reason})
    if as_json:
        print(json.dumps(v, indent=2))
        return
    out.print(f"{escape(team)}/{escape(name)} version {v['number']} is {v['stage']}", highlight=False)


@agents_app.command("rollback")
def rollback(
    name: NameArg,
    reason: ReasonOpt = None,
    team: TeamOpt = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Point production back at the version that held it before."""
    api = client(config, url, api_key)
    team = team_of(api, team)
    v = call(api, "POST", at(team, name, "rollback"), {"reason": reason})
    if as_json:
        print(json.dumps(v, indent=2))
        return
    out.print(f"{escape(team)}/{escape(name)}: production is version {v['number']} again", highlight=False)


@agents_app.command("revoke")
def revoke(
    name: NameArg,
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="Only this version (default: the whole agent).")
    ] = None,
    reason: ReasonOpt = None,
    team: TeamOpt = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Revoke an agent (every version) or one version: its tokens stop working within seconds."""
    api = client(config, url, api_key)
    team = team_of(api, team)
    path = at(team, name, "versions", version, "revoke") if version else at(team, name, "revoke")
    done = call(api, "POST", path, {"reason": reason})
    if as_json:
        print(json.dumps(done, indent=2))
        return
    what = f"version {version} of " if version else ""
    out.print(f"revoked {what}{escape(team)}/{escape(name)}", highlight=False)


@agents_app.command("test")
def test(
    name: NameArg,
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="The version (default: the latest draft).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Another of the manifest's models (default: its first)."),
    ] = None,
    attack_key: Annotated[
        str | None,
        typer.Option(
            "--attack-key",
            help="The key to attack with (default: --api-key); with a guardrail profile, an admin key.",
        ),
    ] = None,
    category: Annotated[
        list[str] | None, typer.Option("--category", help="Only this category (repeatable; default all).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many probes per category.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Attempts in flight at once.")] = 4,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds per attempt (no retries).")] = 120.0,
    seed: Annotated[int | None, typer.Option(help="Seed of the planted values (default: random).")] = None,
    thresholds: Annotated[
        Path | None, typer.Option("--thresholds", help="YAML file of thresholds per category.")
    ] = None,
    max_rate: Annotated[
        list[str] | None, typer.Option("--max", help="CATEGORY=RATE, as `m2a redteam gate` (repeatable).")
    ] = None,
    promote_: Annotated[
        bool, typer.Option("--promote/--no-promote", help="Promote to tested when the gate passes.")
    ] = True,
    db: Annotated[
        Path | None, typer.Option("--db", help="Results file (default $M2A_HOME/redteam.db).")
    ] = None,
    team: TeamOpt = None,
    url: UrlOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Red-team a version (its model, system prompt, guardrail profile) and, if the gate passes,
    promote it to tested with the run attached."""
    import secrets

    from m2a.agents.manifest import Manifest
    from m2a.cli.redteam_cmd import _attack, _attacker_key
    from m2a.redteam.gate import GateConfigError, Policy, evaluate
    from m2a.redteam.probes import PackError, load, select
    from m2a.redteam.results import Store, default_path
    from m2a.redteam.score import tally

    settings = _settings(config)
    policy = Policy()
    try:
        if thresholds is not None:
            policy.update_from_file(thresholds)
        policy.update_from_options(max_rate or [])
        probes, cats = load(None)
        chosen = select(probes, category, limit)
    except (GateConfigError, PackError) as exc:
        raise _bad(str(exc)) from exc
    if not chosen:
        raise _bad("no probes to run")
    api = client(config, url, api_key)
    team = team_of(api, team)
    if version is None:
        agent = call(api, "GET", at(team, name))
        version = agent["aliases"].get("draft") or agent["latest"]
        if version is None:
            raise _bad(f"{team}/{name} has no version yet: `m2a agents create {name} --file agent.yaml`")
    v = call(api, "GET", at(team, name, "versions", version))
    if v["stage"] not in ("draft", "tested") or (v["stage"] == "tested" and "tested" in v["aliases"]):
        err.print(
            f"[red]error:[/] version {version} is {v['stage']} already: the red-team gate is for drafts"
        )
        raise typer.Exit(1)
    manifest = Manifest.model_validate(v["manifest"])
    target = model or manifest.models[0]
    if target not in manifest.models:
        raise _bad(f"{target!r} is not a model of version {version} ({', '.join(manifest.models)})")
    base_url = f"{api.url}/v1"
    seed = secrets.randbelow(2**31) if seed is None else seed
    started = datetime.now(UTC)
    label = f"{team}/{name} v{version}"
    quiet = out.capture() if as_json else contextlib.nullcontext()  # --json: only JSON on stdout
    with _attacker_key(base_url, attack_key or api.key, target, manifest.guardrails) as key, quiet:
        run = _attack(
            settings, target, base_url, key, chosen, cats, label, concurrency, timeout, seed, None, db, False,
            manifest.system_prompt,
        )  # fmt: skip
    with Store(db or default_path(settings.home)) as store:
        stats = tally(store.attempts(run.id), run.categories)
    passed, verdicts = evaluate(stats, policy)
    report = {
        "run": run.id,
        "model": target,
        "profile": manifest.guardrails,
        "system_prompt_sha256": manifest.system_prompt_sha256(),
        "passed": passed,
        "verdicts": [vd.as_dict() for vd in verdicts],
        "thresholds": policy.thresholds,
        "categories": [s.as_dict() for s in stats],
        "probes": len(chosen),
        "seed": seed,
        "source": "m2a",
        "gateway": base_url,
        "digest": v["digest"],
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
    }
    failed = [vd.category for vd in verdicts if vd.verdict == "fail"]
    if not passed:
        err.print(
            f"[red]gate failed[/] for {escape(', '.join(failed))}: version {version} stays {v['stage']} "
            f"(`m2a redteam report {run.id}` shows the attempts)"
        )
        if as_json:
            print(json.dumps({"report": report, "version": v}, indent=2))
        raise typer.Exit(1)
    if not promote_:
        out.print(f"[green]gate passed[/] (red team run {run.id}); not promoted (--no-promote)")
        if as_json:
            print(json.dumps({"report": report, "version": v}, indent=2))
        return
    promoted = call(
        api, "POST", at(team, name, "versions", version, "promote"), {"to": "tested", "redteam": report}
    )
    if as_json:
        print(json.dumps({"report": report, "version": promoted}, indent=2))
        return
    out.print(
        f"[green]gate passed[/] (red team run {run.id}): {escape(team)}/{escape(name)} version "
        f"{promoted['number']} is {promoted['stage']}",
        highlight=False,
    )
