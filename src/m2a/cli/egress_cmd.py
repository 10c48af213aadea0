"""`m2a egress …`: the egress allow-lists offline.

- `m2a egress netpol --namespace NS`: the Kubernetes NetworkPolicies (multi-document YAML) that make
  m2a's egress proxy the only way out of NS for pods labelled ``m2a.io/agent``; the proxy's own
  policy opens the ports of the allow-lists given with ``--agent-file agent.yaml`` (each agent's
  ``egress``) and ``--allow host:port`` (see :mod:`m2a.trust.netpol` for what each policy says).
- `m2a egress check --allow host:port … HOST:PORT`: whether that allow-list lets HOST:PORT through,
  by the proxy's rules; exits 0 when allowed, 1 when refused, 2 on bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from m2a.agents.manifest import ManifestError, load_agent_file
from m2a.cli.identity_cmd import err
from m2a.trust.allowlist import AllowList, destination, parse_hostport
from m2a.trust.netpol import (
    AGENT_LABEL,
    DEFAULT_GATEWAY_PORT,
    DEFAULT_GATEWAY_SELECTOR,
    DEFAULT_PROXY_PORT,
    DEFAULT_PROXY_SELECTOR,
    network_policies,
    to_yaml,
)

egress_app = typer.Typer(
    no_args_is_help=True, help="Egress allow-lists: Kubernetes NetworkPolicies, and checking a destination."
)
AllowOpt = Annotated[
    list[str] | None, typer.Option("--allow", help="An allow-list entry host:port (repeat it).")
]


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/] {escape(message)}")
    return typer.Exit(2)


def _labels(values: list[str] | None, default: dict[str, str], option: str) -> dict[str, str]:
    if not values:
        return dict(default)
    labels: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise _fail(f"{option} takes key=value, not {value!r}")
        labels[key] = val
    return labels


@egress_app.command("netpol")
def netpol(
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="The agents' namespace.")],
    proxy_port: Annotated[int, typer.Option(help="The egress proxy's port.")] = DEFAULT_PROXY_PORT,
    gateway_port: Annotated[int, typer.Option(help="The m2a gateway's port.")] = DEFAULT_GATEWAY_PORT,
    m2a_namespace: Annotated[
        str | None, typer.Option(help="Where the proxy and gateway run (default: the agents' namespace).")
    ] = None,
    proxy_label: Annotated[
        list[str] | None,
        typer.Option(
            help="A label key=value of the proxy pods (repeat; default app.kubernetes.io/name=m2a-egress)."
        ),
    ] = None,
    gateway_label: Annotated[
        list[str] | None,
        typer.Option(
            help="A label key=value of the gateway's pods (repeat it; default app.kubernetes.io/name=m2a)."
        ),
    ] = None,
    agent_label: Annotated[str, typer.Option(help="The label that marks agent pods.")] = AGENT_LABEL,
    agent_file: Annotated[
        list[Path] | None,
        typer.Option("--agent-file", help="An agent.yaml whose egress the proxy needs (repeat it)."),
    ] = None,
    allow: AllowOpt = None,
    dns: Annotated[
        bool, typer.Option("--dns/--no-dns", help="Let agents and the proxy reach kube-dns.")
    ] = True,
    proxy_policy: Annotated[
        bool,
        typer.Option(
            "--proxy-policy/--no-proxy-policy",
            help="Also restrict the proxy pods' egress (not when the proxy runs in the gateway's pods).",
        ),
    ] = True,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the YAML here (default: stdout).")
    ] = None,
) -> None:
    """Print NetworkPolicies that leave agents no way out but m2a's egress proxy."""
    agents: list[tuple[str, list[str]]] = []
    for path in agent_file or []:
        try:
            found = load_agent_file(path)
        except ManifestError as exc:
            raise _fail(str(exc)) from exc
        agents.append((found.name or found.manifest.card.name, list(found.manifest.egress)))
    if allow:
        agents.append(("--allow", allow))
    try:
        policies = network_policies(
            namespace=namespace,
            agents=agents,
            proxy_selector=_labels(proxy_label, DEFAULT_PROXY_SELECTOR, "--proxy-label"),
            proxy_port=proxy_port,
            gateway_selector=_labels(gateway_label, DEFAULT_GATEWAY_SELECTOR, "--gateway-label"),
            gateway_port=gateway_port,
            m2a_namespace=m2a_namespace,
            dns=dns,
            proxy_policy=proxy_policy,
            agent_label=agent_label,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    text = to_yaml(policies)
    if out is None:
        print(text, end="")
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc.strerror or exc}") from exc
    err.print(f"wrote {len(policies)} NetworkPolicies to {escape(str(out))}")


@egress_app.command("check")
def check(
    target: Annotated[
        str, typer.Argument(metavar="HOST:PORT", help="The destination, e.g. api.example.com:443.")
    ],
    allow: AllowOpt = None,
) -> None:
    """Whether the allow-list lets HOST:PORT through (exit 0 allowed, 1 refused)."""
    try:
        allow_list = AllowList(allow or [])
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    parts = parse_hostport(target.strip())
    dest = destination(*parts) if parts else None
    if dest is None:
        raise _fail(f"{target!r} is not HOST:PORT (a host name or IP address, a port from 1 to 65535)")
    entry = allow_list.match(dest)
    if entry is None:
        why = "the allow-list is empty" if not allow_list else "no entry matches"
        print(f"refused: {dest} ({why})")
        raise typer.Exit(1)
    print(f"allowed: {dest} (by {entry})")
