"""The `m2a` command: `up`, `models`, `teams`, `keys`, `config`, `--version`."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

import m2a.cli.agent_identity_cmd  # noqa: F401  (adds `m2a agents token` and `m2a agents credentials`)
from m2a import __version__
from m2a.catalog.sources import SourceError
from m2a.cli.agents_cmd import agents_app
from m2a.cli.audit_cmd import audit_app
from m2a.cli.config_cmd import config_app
from m2a.cli.data_cmd import data_app
from m2a.cli.egress_cmd import egress_app
from m2a.cli.guardrails_cmd import guardrails_app
from m2a.cli.identity_cmd import keys_app, teams_app
from m2a.cli.intents_cmd import intents_app
from m2a.cli.metal_cmd import metal
from m2a.cli.models_cmd import interrupt_on_sigterm, models_app
from m2a.cli.policies_cmd import policies_app
from m2a.cli.redteam_cmd import redteam_app
from m2a.cli.sim_cmd import sim
from m2a.cli.tools_cmd import approvals_app, tools_app
from m2a.cli.traces_cmd import traces_app
from m2a.cli.usage_cmd import quotas_app, usage
from m2a.config import ConfigError, EngineKind, Settings, load_settings
from m2a.engines.base import EngineConfigError
from m2a.engines.registry import EngineChoiceError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="m2a: metal to agent.")
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")
app.add_typer(teams_app, name="teams")
app.add_typer(keys_app, name="keys")
app.add_typer(quotas_app, name="quotas")
app.add_typer(traces_app, name="traces")
app.add_typer(redteam_app, name="redteam")
app.add_typer(guardrails_app, name="guardrails")
app.add_typer(data_app, name="data")
app.add_typer(agents_app, name="agents")
app.add_typer(tools_app, name="tools")
app.add_typer(approvals_app, name="approvals")
app.add_typer(policies_app, name="policies")
app.add_typer(intents_app, name="intents")
app.add_typer(egress_app, name="egress")
app.add_typer(audit_app, name="audit")
app.command("usage")(usage)
app.command("sim")(sim)
app.command("metal")(metal)
console = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.", exists=False)]


def settings_or_exit(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc


def _version(value: bool) -> None:
    if value:
        print(f"m2a {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Run open models on your own hardware and serve them through one OpenAI-compatible gateway."""


@app.command()
def up(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Serve this model (name, HF id, folder or .gguf); repeatable."),
    ] = None,
    engine: Annotated[EngineKind | None, typer.Option(help="Engine for --model models.")] = None,
    host: Annotated[str | None, typer.Option(help="Gateway address.")] = None,
    port: Annotated[int | None, typer.Option(help="Gateway port.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Start the engines and the gateway; Ctrl-C stops everything."""
    from m2a.metal.inventory import detect
    from m2a.serve import admin_key, listen_socket, models_from_cli, plan, run_up

    settings = settings_or_exit(config)
    try:
        if model:
            settings.models = models_from_cli(model, engine)
        elif engine:
            for m in settings.models:
                if m.engine == "auto" and not m.url:
                    m.engine = engine
        if host:
            settings.gateway.host = host
        if port is not None:
            settings.gateway.port = port
    except ValueError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc

    def say(msg: str, bold: str = "") -> None:
        # Messages carry engine log lines and user input: never read them as rich markup.
        emphasis = f"[bold]{escape(bold)}[/]" if bold else ""
        console.print(f"[dim]m2a[/] {escape(msg)}{emphasis}", highlight=False)

    if not settings.models:
        console.print("[red]error:[/] no models to serve: list some under `models:` or pass --model")
        raise typer.Exit(2)
    try:
        sock = listen_socket(settings.gateway.host, settings.gateway.port)
    except OSError as exc:
        console.print(
            f"[red]error:[/] cannot listen on {settings.gateway.host}:{settings.gateway.port}: {exc.strerror}"
            " (use --port or gateway.port)"
        )
        raise typer.Exit(1) from exc
    inventory = detect()
    say(f"machine: {inventory.describe()}; state in {settings.home}")
    received = interrupt_on_sigterm()  # until run_up takes SIGINT and SIGTERM over
    try:
        specs = plan(settings, inventory, say)
    except (SourceError, EngineChoiceError, EngineConfigError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM while importing: nothing was started yet
        console.print("interrupted before any engine started (an import under way was stopped)")
        raise typer.Exit(128 + (received[0] if received else signal.SIGINT)) from None
    for s in specs:
        say(f"{s.replica_id}: {s.engine} ({s.task}) at {s.base_url}")
    key, generated = admin_key(settings)
    if generated:
        say(f"generated an API key (kept in {settings.home / 'admin.key'}): ", bold=key)
    else:
        say("API key: ", bold=key)
    try:
        code = run_loop(run_up(settings, specs, key, say, sock))
    except KeyboardInterrupt:  # before run_up took the signals over: no engine was started yet
        console.print("interrupted before any engine started")
        code = 128 + (received[0] if received else signal.SIGINT)
    raise typer.Exit(code)


def run_loop(coro):  # type: ignore[no-untyped-def]
    """Run the server on uvloop where installed (as `uvicorn` itself does), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    app()
