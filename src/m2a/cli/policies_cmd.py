"""`m2a policies …`: the Cedar policies of trusted execution, on the store directly.

- ``m2a policies list [--scope S]``, ``m2a policies show SCOPE NAME``;
- ``m2a policies set SCOPE NAME --file F [--mode enforce|log_only|inherit]``: the text is checked
  as the admin API checks it (Cedar's message when refused); without ``--mode`` a row keeps its
  mode, ``inherit`` clears it; recorded as written by ``cli (<user>)``;
- ``m2a policies rm SCOPE NAME``;
- ``m2a policies check --agent TEAM/NAME --tool SERVER/TOOL --tier T [--granted/--not-granted]
  [--args JSON] [--on-behalf-of SUBJECT]``: the decision the gateway would make now, over the
  configured policy folder and the table; exit status 0 when allowed, 3 when it would be refused.

A running gateway sees a change within about a second (it polls the table's change marker).
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.cli.identity_cmd import run_store
from m2a.config import Settings
from m2a.store.policies import PolicyRecord, PolicyStore, PolicyStoreError, check_name, parse_scope
from m2a.trust.policy import CallRequest, Decision, PolicyEngine
from m2a.trust.policy_schema import TIERS

policies_app = typer.Typer(no_args_is_help=True, help="Cedar policies for agents' actions.")
out = Console()
err = Console(stderr=True)
REFUSED_EXIT = 3

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _json(r: PolicyRecord) -> dict[str, Any]:
    return {
        "scope": r.scope,
        "name": r.name,
        "text": r.text,
        "version": r.version,
        "mode": r.mode,
        "created_at": r.created_at.isoformat(),
        "updated_at": r.updated_at.isoformat(),
        "updated_by": r.updated_by,
    }


def _by() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown user"
    return f"cli ({user})"


def _scope(scope: str) -> str:
    try:
        return str(parse_scope(scope))
    except PolicyStoreError as exc:
        raise typer.BadParameter(exc.message, param_hint="SCOPE") from None


def policy_engine(settings: Settings, db: AsyncEngine) -> PolicyEngine:
    """The engine the gateway would build from this config."""
    trust = settings.trust
    return PolicyEngine(db, trust.policy_dir or settings.home / "policies", trust.mode)


@policies_app.command("list")
def policies_list(
    scope: Annotated[str | None, typer.Option(help="Only this scope.")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Policies in the table (files in the policy folder are not listed)."""
    wanted = _scope(scope) if scope is not None else None
    found = run_store(config, lambda _s, db: PolicyStore(db).list(wanted), (PolicyStoreError,))
    if as_json:
        print(json.dumps([_json(r) for r in found], indent=2))
        return
    table = Table("scope", "name", "version", "mode", "updated", "by")
    for r in found:
        table.add_row(
            r.scope, r.name, str(r.version), r.mode or "-", f"{r.updated_at:%Y-%m-%d %H:%M:%S}", r.updated_by
        )
    out.print(table)


@policies_app.command("show")
def policies_show(scope: str, name: str, as_json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """One policy's text."""
    scope = _scope(scope)
    found = run_store(config, lambda _s, db: PolicyStore(db).get(scope, name), (PolicyStoreError,))
    if found is None:
        err.print(f"[red]error:[/] no policy {escape(name)!r} in scope {escape(scope)!r}")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(_json(found), indent=2))
        return
    out.print(
        f"[bold]{escape(found.scope)}/{escape(found.name)}[/] v{found.version}"
        f"{' mode ' + found.mode if found.mode else ''} ({escape(found.updated_by)})"
    )
    print(found.text)


@policies_app.command("set")
def policies_set(
    scope: str,
    name: str,
    file: Annotated[Path, typer.Option("--file", "-f", help="The Cedar text ('-': standard input).")],
    mode: Annotated[
        str | None, typer.Option(help="enforce, log_only, or inherit (the configured mode); kept if omitted.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Create or change a policy (checked as the admin API checks it)."""
    scope = _scope(scope)
    try:
        check_name(name)
    except PolicyStoreError as exc:
        raise typer.BadParameter(exc.message, param_hint="NAME") from None
    if mode is not None and mode not in ("enforce", "log_only", "inherit"):
        raise typer.BadParameter("one of enforce, log_only, inherit", param_hint="--mode")
    try:
        text = typer.get_text_stream("stdin").read() if str(file) == "-" else file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read it: {exc}", param_hint="--file") from None

    async def put(settings: Settings, db: AsyncEngine) -> PolicyRecord | list[str]:
        problems = policy_engine(settings, db).validate(text, scope)
        if problems:
            return problems
        store = PolicyStore(db)
        keep = await store.get(scope, name)
        chosen = None if mode == "inherit" else mode if mode is not None else (keep.mode if keep else None)
        return await store.put(scope, name, text, chosen, _by())

    result = run_store(config, put, (PolicyStoreError,))
    if isinstance(result, list):
        err.print("[red]error:[/] Cedar refused the policy:")
        for problem in result:
            err.print(f"  {escape(problem)}")
        raise typer.Exit(1)
    verb = "created" if result.created else "saved"
    out.print(f"{verb} policy [bold]{escape(result.scope)}/{escape(result.name)}[/] v{result.version}")


@policies_app.command("rm")
def policies_rm(scope: str, name: str, config: ConfigOpt = None) -> None:
    """Remove a policy."""
    scope = _scope(scope)
    if not run_store(config, lambda _s, db: PolicyStore(db).delete(scope, name), (PolicyStoreError,)):
        err.print(f"[red]error:[/] no policy {escape(name)!r} in scope {escape(scope)!r}")
        raise typer.Exit(1)
    out.print(f"removed policy [bold]{escape(scope)}/{escape(name)}[/]")


def _pair(value: str, hint: str) -> tuple[str, str]:
    left, sep, right = value.partition("/")
    if not sep or not left or not right or "/" in right:
        raise typer.BadParameter(f"{value!r}: write it as A/B", param_hint=hint)
    return left, right


@policies_app.command("check")
def policies_check(
    agent: Annotated[str, typer.Option(help="TEAM/NAME of the agent.")],
    tool: Annotated[str, typer.Option(help="SERVER/TOOL it calls.")],
    tier: Annotated[str, typer.Option(help="read, write or destructive.")],
    granted: Annotated[
        bool, typer.Option("--granted/--not-granted", help="Its manifest grants the tool.")
    ] = True,
    args: Annotated[str | None, typer.Option("--args", help="The call's arguments, a JSON object.")] = None,
    on_behalf_of: Annotated[str | None, typer.Option(help="The user it acts for.")] = None,
    version: Annotated[int | None, typer.Option(help="The agent's version number.")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """The decision for a call, as the gateway would make it now (nothing runs)."""
    team, name = _pair(agent, "--agent")
    server, tool_name = _pair(tool, "--tool")
    if tier not in TIERS:
        raise typer.BadParameter(f"one of {', '.join(TIERS)}", param_hint="--tier")
    arguments = None
    if args is not None:
        try:
            arguments = json.loads(args)
        except ValueError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="--args") from None
        if not isinstance(arguments, dict):
            raise typer.BadParameter("a JSON object", param_hint="--args")

    async def decide(settings: Settings, db: AsyncEngine) -> tuple[Decision, list[str]]:
        engine = policy_engine(settings, db)
        decision = await engine.decide_call(
            CallRequest(
                agent_spiffe="",
                agent_id=0,
                agent_name=name,
                team=team,
                version=version,
                on_behalf_of=on_behalf_of,
                server=server,
                tool=tool_name,
                tier=tier,
                granted=granted,
                arguments=arguments,
            )  # fmt: skip
        )
        return decision, engine.problems()

    decision, problems = run_store(config, decide, (PolicyStoreError,))
    if as_json:
        print(json.dumps({**decision.as_dict(), "problems": problems}, indent=2))
    else:
        verdict = "[green]allowed[/]" if decision.allowed else "[red]refused[/]"
        if decision.allowed and not decision.cedar_allowed:
            verdict += " [yellow](log_only: Cedar denied it)[/]"
        out.print(f"{verdict}  mode {decision.mode}  policy set {decision.policy_version}")
        out.print(
            "determining policies: " + (escape(", ".join(decision.policy_ids)) or "none (default deny)")
        )
        for e in decision.errors:
            out.print(f"[red]error:[/] {escape(e)}")
        for problem in problems:
            if problem not in decision.errors:
                err.print(f"[yellow]warning:[/] {escape(problem)}")
    if not decision.allowed:
        raise typer.Exit(REFUSED_EXIT)
