"""`m2a config show`: the effective configuration, defaults included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from m2a.config import ConfigError, config_path, load_settings

config_app = typer.Typer(no_args_is_help=True, help="Inspect the configuration.")
err = Console(stderr=True)


@config_app.command("show")
def show(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="yaml or json.")] = "yaml",
    reveal: Annotated[bool, typer.Option(help="Show secrets instead of masking them.")] = False,
) -> None:
    """Print the configuration in force: file, environment and defaults merged."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    data = settings.model_dump(mode="json")
    if not reveal:
        if data.get("admin_key"):
            data["admin_key"] = "***"
        for m in data["models"]:
            if m.get("api_key"):
                m["api_key"] = "***"
    src = config_path(explicit=config)
    err.print(f"[dim]# from {src or 'defaults'} and M2A_* environment variables[/]")
    if fmt == "json":
        print(json.dumps(data, indent=2))
    elif fmt == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        err.print("[red]error:[/] --format must be yaml or json")
        raise typer.Exit(2)
