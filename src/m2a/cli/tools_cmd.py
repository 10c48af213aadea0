"""`m2a tools …` (MCP servers agents reach through m2a) and `m2a approvals …` (tool calls waiting
for a person).

These work on the store directly (the gateway need not run; a running gateway sees a new or removed
server at its next call, and an approval as soon as the agent's response continues):

- ``m2a tools add NAME URL [--header K=V]... [--timeout S] [--description TEXT]``: register a
  streamable-HTTP MCP server; headers are m2a's own credentials for it, never printed back;
- ``m2a tools list``, ``m2a tools show NAME`` (with the server's tools, asked over MCP within its
  timeout; ``--no-tools`` skips that), ``m2a tools remove NAME``;
- ``m2a approvals list [--status pending]``, ``m2a approvals approve ID [--reason R]``, ``m2a
  approvals deny ID [--reason R]``: recorded as decided by ``cli (<user>)``.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.agents.tools import ToolError, ToolFailure, ToolRegistry, masked
from m2a.cli.identity_cmd import run_store
from m2a.store.tools import APPROVAL_STATUSES, ApprovalRecord, ServerRecord, ToolStore, ToolStoreError
from m2a.trust.actions import decided_item
from m2a.trust.audit import AuditLog

tools_app = typer.Typer(no_args_is_help=True, help="MCP servers agents reach through m2a.")
approvals_app = typer.Typer(no_args_is_help=True, help="Tool calls waiting for a person's approval.")
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def run(config: Path | None, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Open the configured store, run ``work`` on it, and turn the tools' refusals into clear errors."""
    return run_store(config, lambda _settings, engine: work(engine), (ToolError, ToolStoreError))


def parse_headers(values: list[str] | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for value in values or []:
        name, sep, text = value.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{value!r}: write a header as NAME=VALUE", param_hint="--header")
        headers[name.strip()] = text
    return headers


def _server_json(s: ServerRecord) -> dict[str, Any]:
    return {
        "name": s.name,
        "url": s.url,
        "headers": masked(s.headers),
        "timeout_s": s.timeout_s,
        "description": s.description,
        "created_at": s.created_at.isoformat(),
        "updated_at": s.updated_at.isoformat(),
    }


def _approval_json(a: ApprovalRecord) -> dict[str, Any]:
    return {
        "id": a.id,
        "agent": a.agent,
        "agent_version": a.version,
        "server": a.server,
        "tool": a.tool,
        "arguments": a.arguments,
        "status": a.status,
        "reason": a.reason,
        "response_id": a.response_id,
        "created_at": a.created_at.isoformat(),
        "expires_at": a.expires_at.isoformat(),
        "decided_by": a.decided_by,
        "decided_at": a.decided_at.isoformat() if a.decided_at else None,
        "used": a.used_at is not None,
    }


# -- m2a tools -------------------------------------------------------------------------------------


@tools_app.command("add")
def tools_add(
    name: Annotated[str, typer.Argument(help="The name agents' manifests use (a-z, 0-9, '_', '-').")],
    url: Annotated[str, typer.Argument(help="Its streamable-HTTP endpoint, e.g. http://host:8800/mcp.")],
    header: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", help="NAME=VALUE sent on every call (m2a's credential); repeatable."),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Seconds one call may take (30).")
    ] = None,
    description: Annotated[str | None, typer.Option(help="What the server is for.")] = None,
    tier: Annotated[
        list[str] | None,
        typer.Option(
            "--tier", help="TOOL=read|write|destructive (destructive: a person approves); repeatable."
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Register an MCP server."""
    headers = parse_headers(header)
    tiers = dict(t.partition("=")[::2] for t in tier or [])
    s = run(
        config, lambda db: ToolRegistry(ToolStore(db)).add(name, url, headers, timeout, description, tiers)
    )
    names = ", ".join(s.headers) or "no headers"
    out.print(
        f"registered MCP server [bold]{escape(s.name)}[/] at {escape(s.url)} "
        f"({escape(names)}, timeout {s.timeout_s:g}s)"
    )


@tools_app.command("list")
def tools_list(as_json: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Registered MCP servers (header names only, never their values)."""
    servers = run(config, lambda db: ToolRegistry(ToolStore(db)).list())
    if as_json:
        print(json.dumps([_server_json(s) for s in servers], indent=2))
        return
    table = Table("name", "url", "headers", "timeout", "description")
    for s in servers:
        table.add_row(s.name, s.url, ", ".join(s.headers) or "-", f"{s.timeout_s:g}s", s.description or "")
    out.print(table)


@tools_app.command("show")
def tools_show(
    name: str,
    tools: Annotated[bool, typer.Option("--tools/--no-tools", help="Ask the server for its tools.")] = True,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """One server, and the tools it offers now (MCP tools/list, within its timeout)."""

    async def show(db: AsyncEngine) -> tuple[ServerRecord, list[Any] | None, str | None]:
        registry = ToolRegistry(ToolStore(db))
        server = await registry.get(name)
        if not tools:
            return server, None, None
        try:
            return server, await registry.tools(server, fresh=True), None
        except ToolFailure as exc:
            return server, None, exc.message

    server, offered, failure = run(config, show)
    if as_json:
        data = _server_json(server)
        if tools:
            data["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                for t in offered or []
            ]
            data["tools_error"] = failure
        print(json.dumps(data, indent=2))
        return
    out.print(f"[bold]{escape(server.name)}[/]  {escape(server.url)}  timeout {server.timeout_s:g}s")
    if server.description:
        out.print(escape(server.description))
    out.print("headers: " + (", ".join(f"{escape(h)}: ***" for h in server.headers) or "none"))
    if failure is not None:
        err.print(f"[yellow]its tools could not be listed:[/] {escape(failure)}")
    elif offered is not None:
        table = Table("tool", "description")
        for t in offered:
            table.add_row(t.name, (t.description or "").splitlines()[0] if t.description else "")
        out.print(table)


@tools_app.command("remove")
def tools_remove(name: str, config: ConfigOpt = None) -> None:
    """Forget a server: agents can no longer call it (its calls stay recorded)."""
    run(config, lambda db: ToolRegistry(ToolStore(db)).remove(name))
    out.print(f"removed MCP server [bold]{escape(name)}[/]")


# -- m2a approvals ---------------------------------------------------------------------------------


def _decider() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown user"
    return f"cli ({user})"


@approvals_app.command("list")
def approvals_list(
    status: Annotated[
        str | None, typer.Option(help=f"Only these: {', '.join(APPROVAL_STATUSES)}.")
    ] = "pending",
    all_: Annotated[bool, typer.Option("--all", help="Every status.")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Tool calls waiting for approval (or decided: --status, --all)."""
    if status is not None and status not in APPROVAL_STATUSES:
        raise typer.BadParameter(f"one of {', '.join(APPROVAL_STATUSES)}", param_hint="--status")
    found = run(config, lambda db: ToolStore(db).list_approvals(status=None if all_ else status))
    if as_json:
        print(json.dumps([_approval_json(a) for a in found], indent=2))
        return
    table = Table("id", "agent", "tool", "tier", "arguments", "status", "expires")
    for a in found:
        args = a.arguments if len(a.arguments) <= 60 else a.arguments[:57] + "..."
        agent = a.agent.rsplit("/team/", 1)[-1] + (f" v{a.version}" if a.version else "")
        table.add_row(
            a.id,
            agent,
            f"{a.server}/{a.tool}",
            a.tier or "-",
            args,
            a.status,
            f"{a.expires_at:%Y-%m-%d %H:%M:%S}",
        )
    out.print(table)


def _decide(approval_id: str, approve: bool, reason: str | None, config: Path | None) -> ApprovalRecord:
    """Decide on the store as its operator (whoever may open the store decides as an admin would),
    and append the decision to the audit log (unsigned here: the gateway's next checkpoint covers it)."""

    async def work(db: AsyncEngine) -> ApprovalRecord:
        decided = await ToolStore(db).decide(approval_id, approve, _decider(), reason)
        await AuditLog(db, None, issuer="m2a-cli").append_many([decided_item(decided, approve)])
        return decided

    return run(config, work)


@approvals_app.command("approve")
def approvals_approve(
    approval_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str | None, typer.Option(help="Why (kept with the approval).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Let a waiting tool call run (once, when the agent's response continues)."""
    a = _decide(approval_id, True, reason, config)
    out.print(f"approved [bold]{escape(a.id)}[/]: {escape(a.server)}/{escape(a.tool)} for {escape(a.agent)}")


@approvals_app.command("deny")
def approvals_deny(
    approval_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str | None, typer.Option(help="Why (the agent's model is told).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Refuse a waiting tool call."""
    a = _decide(approval_id, False, reason, config)
    out.print(f"denied [bold]{escape(a.id)}[/]: {escape(a.server)}/{escape(a.tool)} for {escape(a.agent)}")
