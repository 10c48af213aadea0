"""`m2a models list|import|show`: the catalog of imported models."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from m2a.catalog.builtin import BUILTINS
from m2a.catalog.importer import import_model
from m2a.catalog.sources import SourceError
from m2a.catalog.store import Catalog
from m2a.config import ConfigError, load_settings

models_app = typer.Typer(no_args_is_help=True, help="Import and list models.")
out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]


def interrupt_on_sigterm() -> list[int]:
    """Make SIGTERM interrupt like Ctrl-C (KeyboardInterrupt), so that an import under way stops its
    converter process and cleans up instead of dying on the spot; the list gets the signal's number."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    return received


def _home(config: Path | None) -> Path:
    try:
        return load_settings(config).home
    except ConfigError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


@models_app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """What is imported, with size, format, source and license; built-ins not yet imported too."""
    manifests = Catalog(_home(config)).all()
    if as_json:
        print(json.dumps([m.model_dump() for m in manifests], indent=2))
        return
    table = Table("name", "task", "formats", "size", "source", "license")
    for m in manifests:
        formats = ", ".join(sorted(m.paths))
        size = " + ".join(human(m.size_bytes[f]) for f in sorted(m.paths))
        table.add_row(m.name, m.task, formats, size, m.source, m.license or "?")
    imported = {m.name for m in manifests}
    for b in BUILTINS.values():
        if b.name not in imported:
            table.add_row(f"[dim]{b.name}[/]", b.task, "[dim]not imported[/]", "", b.source, b.license)
    out.print(table)


@models_app.command("import")
def import_(
    reference: Annotated[
        str, typer.Argument(help="Built-in name, HF id, folder, .gguf file or pkg:<package>/<path>.")
    ],
    name: Annotated[str | None, typer.Option(help="Name to serve it under (default: the reference).")] = None,
    to: Annotated[
        str | None, typer.Option("--format", help="Also convert to this format: hf or gguf.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Import a model into the catalog (downloading or converting it once)."""
    home = _home(config)
    builtin = BUILTINS.get(reference)
    served = name or reference
    source = builtin.source if builtin else reference
    if to not in (None, "hf", "gguf"):
        err.print("[red]error:[/] --format must be hf or gguf")
        raise typer.Exit(2)
    received = interrupt_on_sigterm()
    try:
        m = import_model(
            home,
            served,
            source,
            want=to,  # type: ignore[arg-type]
            progress=lambda s: err.print(f"[dim]m2a[/] {escape(s)}"),
        )
    except SourceError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        err.print("interrupted: nothing was imported")
        raise typer.Exit(128 + (received[0] if received else signal.SIGINT)) from None
    out.print(f"imported [bold]{m.name}[/] ({m.task}; {', '.join(sorted(m.paths))})")


@models_app.command("show")
def show(name: str, config: ConfigOpt = None) -> None:
    """Everything the catalog knows of one model, as JSON."""
    m = Catalog(_home(config)).get(name)
    if m is None:
        err.print(f"[red]error:[/] {escape(repr(name))} is not imported (see `m2a models list`)")
        raise typer.Exit(1)
    print(m.model_dump_json(indent=2))
