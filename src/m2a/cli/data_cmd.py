"""`m2a data …`: files and vector stores through a running gateway's OpenAI API.

- ``m2a data ingest PATH... --store NAME``: uploads each file (folders: their files, recursively),
  creates the store by name if the team has none, attaches the files, and polls with a progress bar
  until each is ``completed`` or ``failed`` (with its reason);
- ``m2a data stores``: the team's vector stores, their files and ``usage_bytes``;
- ``m2a data search STORE QUERY``: the best chunks (STORE is a name or a ``vs_`` id).

Data belongs to a team: the key is ``--api-key``, else ``$M2A_API_KEY``, and must be a team's key
(admin keys own no data). The URL is ``--url``, else the configured gateway.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from m2a.cli.metal_cmd import gateway_url as configured_gateway
from m2a.config import ConfigError, load_settings

data_app = typer.Typer(no_args_is_help=True, help="Files and vector stores (the OpenAI API of the gateway).")
out = Console()
err = Console(stderr=True)

UrlOpt = Annotated[
    str | None, typer.Option("--url", help="The gateway's OpenAI base URL (default: the configured one).")
]
KeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", help="A team's API key (default $M2A_API_KEY).", show_default=False),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
DONE = ("completed", "failed", "cancelled")


class Gateway:
    """The few calls the commands make, with the gateway's errors as clean exits."""

    def __init__(self, url: str, key: str, timeout: float = 120.0) -> None:
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"authorization": f"Bearer {key}"},
            timeout=timeout,
            trust_env=False,
        )

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            err.print(f"[red]error:[/] cannot reach the gateway at {escape(str(self.http.base_url))}: {exc}")
            raise typer.Exit(1) from exc
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:300]
            err.print(f"[red]error:[/] {method} {path}: {resp.status_code} {escape(str(message))}")
            raise typer.Exit(1)
        return resp.json()

    def pages(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100, "order": "asc"}
        while True:
            page = self.call("GET", path, params=params)
            items += page["data"]
            if not page.get("has_more") or not page["data"]:
                return items
            params["after"] = page["data"][-1]["id"]

    def store_by_name(self, name: str) -> dict[str, Any] | None:
        if name.startswith("vs_"):
            return self.call("GET", f"/vector_stores/{name}")
        found = [s for s in self.pages("/vector_stores") if s["name"] == name]
        return found[-1] if found else None


def _connect(config: Path | None, url: str | None, key: str | None) -> Gateway:
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    key = key or os.environ.get("M2A_API_KEY")
    if not key:
        err.print("[red]error:[/] data belongs to a team: give a team's key with --api-key or $M2A_API_KEY")
        raise typer.Exit(2)
    return Gateway(url or f"{configured_gateway(settings)}/v1", key)


def _files(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif p.is_file():
            found.append(p)
        else:
            err.print(f"[red]error:[/] no such file or folder: {escape(str(p))}")
            raise typer.Exit(2)
    return found


def _attributes(values: list[str] | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for v in values or []:
        k, sep, raw = v.partition("=")
        if not sep or not k:
            raise typer.BadParameter(f"{v!r}: use KEY=VALUE")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        attrs[k] = value if isinstance(value, str | int | float | bool) else raw
    return attrs


@data_app.command("ingest")
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to ingest.")],
    store: Annotated[
        str, typer.Option("--store", "-s", help="Vector store name (created if missing) or id.")
    ],
    attr: Annotated[
        list[str] | None, typer.Option("--attr", help="An attribute KEY=VALUE (repeatable).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Longest wait for ingestion, in seconds.")] = 3600.0,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Upload files into a vector store and wait until each is indexed (or failed, and why)."""
    files = _files(paths)
    gw = _connect(config, url, api_key)
    attributes = _attributes(attr)
    vs = gw.store_by_name(store) or gw.call("POST", "/vector_stores", json={"name": store})
    attached: dict[str, Path] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as progress:
        up = progress.add_task("upload", total=len(files))
        for path in files:
            with path.open("rb") as fh:
                f = gw.call("POST", "/files", files={"file": (path.name, fh)}, data={"purpose": "assistants"})
            body: dict[str, Any] = {"file_id": f["id"]}
            if attributes:
                body["attributes"] = attributes
            gw.call("POST", f"/vector_stores/{vs['id']}/files", json=body)
            attached[f["id"]] = path
            progress.advance(up)
        index = progress.add_task("index", total=len(files))
        status: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(status) < len(attached) and time.monotonic() < deadline:
            for file_id in attached:
                if file_id in status:
                    continue
                vf = gw.call("GET", f"/vector_stores/{vs['id']}/files/{file_id}")
                if vf["status"] in DONE:
                    status[file_id] = vf
                    progress.advance(index)
            if len(status) < len(attached):
                time.sleep(0.5)
    table = Table("file", "status", "usage bytes", "error")
    failed = 0
    for file_id, path in attached.items():
        vf = status.get(file_id, {"status": "in_progress", "usage_bytes": 0})
        error = (vf.get("last_error") or {}).get("message", "")
        failed += vf["status"] != "completed"
        colour = "green" if vf["status"] == "completed" else "red"
        table.add_row(
            escape(str(path)), f"[{colour}]{vf['status']}[/]", str(vf["usage_bytes"]), escape(error)
        )
    out.print(table)
    final = gw.call("GET", f"/vector_stores/{vs['id']}")
    out.print(f"store [bold]{escape(final['name'])}[/] ({final['id']}): {final['usage_bytes']} bytes")
    if failed:
        raise typer.Exit(1)


@data_app.command("stores")
def stores(
    url: UrlOpt = None, api_key: KeyOpt = None, config: ConfigOpt = None, as_json: JsonOpt = False
) -> None:
    """The team's vector stores."""
    found = _connect(config, url, api_key).pages("/vector_stores")
    if as_json:
        print(json.dumps(found, indent=2))
        return
    table = Table("id", "name", "status", "files", "failed", "usage bytes")
    for s in found:
        c = s["file_counts"]
        table.add_row(
            s["id"], escape(s["name"]), s["status"], f"{c['completed']}/{c['total']}", str(c["failed"]),
            str(s["usage_bytes"]),
        )  # fmt: skip
    out.print(table)


@data_app.command("search")
def search(
    store: Annotated[str, typer.Argument(help="Vector store name or id.")],
    query: Annotated[str, typer.Argument(help="What to look for.")],
    n: Annotated[int, typer.Option("-n", "--max-results", min=1, max=50, help="Results.")] = 5,
    filters: Annotated[str | None, typer.Option("--filter", help="OpenAI's filter, as JSON.")] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The chunks of a store that best match the query."""
    gw = _connect(config, url, api_key)
    vs = gw.store_by_name(store)
    if vs is None:
        err.print(f"[red]error:[/] no vector store named {escape(store)!r}")
        raise typer.Exit(1)
    body: dict[str, Any] = {"query": query, "max_num_results": n}
    if filters:
        try:
            body["filters"] = json.loads(filters)
        except ValueError as exc:
            raise typer.BadParameter(f"--filter is not JSON: {exc}") from exc
    res = gw.call("POST", f"/vector_stores/{vs['id']}/search", json=body)
    if as_json:
        print(json.dumps(res, indent=2))
        return
    for hit in res["data"]:
        text = " ".join(hit["content"][0]["text"].split()) if hit["content"] else ""
        out.print(f"[bold]{hit['score']:.3f}[/] {escape(hit['filename'])} [dim]{hit['file_id']}[/]")
        out.print(f"  {escape(text[:300])}{'…' if len(text) > 300 else ''}")
    if not res["data"]:
        out.print("no results")
