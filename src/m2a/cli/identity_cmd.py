"""`m2a teams …`, `m2a keys …`, `m2a models grant|revoke`: who may use which model.

These work on the store directly (the gateway need not run); a running gateway sees each change
within about half a second.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.cli.models_cmd import models_app
from m2a.config import ConfigError, Settings, load_settings
from m2a.store.db import open_store
from m2a.store.identity import IdentityError, IdentityStore

teams_app = typer.Typer(no_args_is_help=True, help="Teams and their priorities.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys (shown once, stored as a hash).")
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """`90m`, `12h`, `30d`, `2w`."""
    match = _DURATION.match(text.strip())
    if not match:
        raise typer.BadParameter("use a number and a unit: 90m, 12h, 30d or 2w")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def run_store(
    config: Path | None,
    work: Callable[[Settings, AsyncEngine], Awaitable[T]],
    refusals: tuple[type[Exception], ...] = (IdentityError,),
) -> T:
    """Open the configured store, run ``work`` on it, and turn refusals (exceptions of those types,
    each with a ``message``) into clear errors."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc

    async def go() -> T:
        engine = await open_store(settings.database_url, settings.home)
        try:
            return await work(settings, engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(go())
    except refusals as exc:
        err.print(f"[red]error:[/] {escape(getattr(exc, 'message', str(exc)))}")
        raise typer.Exit(1) from exc


def run(config: Path | None, work: Callable[[IdentityStore], Awaitable[T]]) -> T:
    return run_store(config, lambda _settings, engine: work(IdentityStore(engine)))


@teams_app.command("create")
def teams_create(
    name: str,
    priority: Annotated[str, typer.Option(help="critical, standard or batch.")] = "standard",
    order: Annotated[int | None, typer.Option(help="Finer order within priorities (lower first).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Create a team."""
    team = run(config, lambda s: s.create_team(name, priority, order))
    out.print(f"created team [bold]{escape(team.name)}[/] ({team.priority}, order {team.priority_order})")


@teams_app.command("list")
def teams_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False, config: ConfigOpt = None
) -> None:
    """Teams with their priority and granted models."""
    teams = run(config, lambda s: s.list_teams())
    if as_json:
        print(json.dumps([{**t.__dict__, "created_at": t.created_at.isoformat()} for t in teams], indent=2))
        return
    table = Table("team", "priority", "order", "models", "created")
    for t in teams:
        table.add_row(
            t.name, t.priority, str(t.priority_order), ", ".join(t.models) or "-", f"{t.created_at:%Y-%m-%d}"
        )
    out.print(table)


@teams_app.command("update")
def teams_update(
    name: str,
    priority: Annotated[str | None, typer.Option(help="critical, standard or batch.")] = None,
    order: Annotated[int | None, typer.Option(help="Finer order (lower first).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Change a team's priority."""
    team = run(config, lambda s: s.update_team(name, priority, order))
    out.print(f"team [bold]{escape(team.name)}[/] is now {team.priority} (order {team.priority_order})")


@teams_app.command("delete")
def teams_delete(name: str, config: ConfigOpt = None) -> None:
    """Delete a team: its keys stop working at once."""
    run(config, lambda s: s.delete_team(name))
    out.print(f"deleted team [bold]{escape(name)}[/]")


def known_models(settings: Settings) -> list[str]:
    """Model names this installation knows: the configuration's, the built-ins, the catalog's."""
    from m2a.catalog.builtin import BUILTINS
    from m2a.catalog.store import Catalog

    names = {m.name for m in settings.models} | set(BUILTINS)
    names |= {m.name for m in Catalog(settings.home).all()}
    return sorted(names)


@models_app.command("grant")
def models_grant(
    team: str,
    model: str,
    force: Annotated[
        bool, typer.Option("--force", help="Grant a model unknown here (one another gateway serves).")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Let a team use a model."""

    async def grant(settings: Settings, engine: AsyncEngine) -> None:
        known = known_models(settings)
        if not force and model not in known:
            raise IdentityError(
                "not_found",
                f"no model named {model!r} here (known: {', '.join(known) or 'none'}); "
                "--force grants it anyway, for a model another gateway serves",
            )
        await IdentityStore(engine).grant(team, model)

    run_store(config, grant)
    out.print(f"team [bold]{escape(team)}[/] may use [bold]{escape(model)}[/]")


@models_app.command("revoke")
def models_revoke(team: str, model: str, config: ConfigOpt = None) -> None:
    """Take a model away from a team."""
    run(config, lambda s: s.ungrant(team, model))
    out.print(f"team [bold]{escape(team)}[/] may no longer use [bold]{escape(model)}[/]")


@keys_app.command("create")
def keys_create(
    team: Annotated[str | None, typer.Argument(help="The key's team (omit with --admin).")] = None,
    name: Annotated[str, typer.Option(help="What the key is for.")] = "default",
    expires: Annotated[str | None, typer.Option(help="Lifetime: 90m, 12h, 30d, 2w.")] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="An admin key (every model, the admin API).")
    ] = False,
    priority: Annotated[str | None, typer.Option(help="Override the team's priority.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Create a key and print it once: only its hash is kept."""
    expires_at = datetime.now(UTC) + parse_duration(expires) if expires else None
    role = "admin" if admin else "member"
    key, info = run(
        config, lambda s: s.create_key(team, name, role=role, expires_at=expires_at, priority=priority)
    )
    err.print(
        f"key {info.id} ({info.prefix}…) for {escape(team or 'admin')}; copy it now, it is not shown again:"
    )
    print(key)


@keys_app.command("list")
def keys_list(
    team: Annotated[str | None, typer.Option(help="Only this team's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Keys with prefix, team, role, expiry and revocation (never the keys themselves)."""
    keys = run(config, lambda s: s.list_keys(team))
    if as_json:
        rows = [
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in x.__dict__.items()}
            for x in keys
        ]
        print(json.dumps(rows, indent=2))
        return
    table = Table("id", "prefix", "team", "name", "role", "expires", "revoked")
    for k in keys:
        table.add_row(
            str(k.id),
            k.prefix,
            k.team or "-",
            k.name,
            k.role,
            f"{k.expires_at:%Y-%m-%d %H:%M}" if k.expires_at else "never",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: int, config: ConfigOpt = None) -> None:
    """Revoke a key by id: it stops working within a second."""
    run(config, lambda s: s.revoke_key(key_id))
    out.print(f"revoked key {key_id}")
