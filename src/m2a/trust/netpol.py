"""Kubernetes ``networking.k8s.io/v1`` NetworkPolicies that make m2a's egress proxy the agents' only
way out of a cluster namespace.

What the policies say:

- ``m2a-agents-default-deny``: agent pods get no traffic in or out unless another policy allows it.
  Agent pods are the pods that carry the ``m2a.io/agent`` label (any value: the agent's name), not
  every pod of the namespace, so that m2a's own pods (gateway, proxy, engines) and anything else that
  shares the namespace keep working; an agent's Deployment must carry the label.
- ``m2a-agents-egress``: agent pods may open connections to the proxy pods on the proxy port, to the
  gateway pods on the gateway port, and (with ``dns``) to kube-dns on UDP and TCP 53.
- ``m2a-egress-proxy``: the proxy pods may reach DNS and the ports the agents' allow-lists name.
  A NetworkPolicy cannot name hosts, so for a port that some entry names by DNS name the rule is
  "anywhere on that port" (less the link-local range, so not the cloud metadata service); the proxy
  itself enforces which hosts. A port named only by IP entries is opened to those addresses alone.
  With no allow-list at all the proxy gets DNS and nothing else.

The proxy's policy restricts *all* egress of the pods it selects: when the proxy runs inside pods
that need more (the gateway, which talks to engines and its database), leave it out
(``proxy_policy=False``) or give the proxy its own Deployment.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from m2a.trust.allowlist import AllowList, parse_ip

API_VERSION = "networking.k8s.io/v1"
AGENT_LABEL = "m2a.io/agent"
DEFAULT_PROXY_SELECTOR = {"app.kubernetes.io/name": "m2a-egress"}
DEFAULT_GATEWAY_SELECTOR = {"app.kubernetes.io/name": "m2a"}
DEFAULT_PROXY_PORT = 3128
DEFAULT_GATEWAY_PORT = 8000
MANAGED = {"app.kubernetes.io/managed-by": "m2a"}
KUBE_DNS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}
ANYWHERE = (
    {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}},
    {"ipBlock": {"cidr": "::/0", "except": ["fe80::/10"]}},
)
_EXCEPTED = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")

Agents = Iterable[tuple[str, Iterable[str]]] | Mapping[str, Iterable[str]]


def _check_namespace(ns: str, what: str) -> str:
    if not isinstance(ns, str) or not _DNS_LABEL.fullmatch(ns):
        raise ValueError(
            f"{what} {ns!r} is not a Kubernetes namespace name (lower-case letters, digits, '-')"
        )
    return ns


def _check_port(port: int, what: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{what} is a port number from 1 to 65535, not {port!r}")
    return port


def check_label_key(key: str) -> str:
    """A Kubernetes label key: ``[prefix/]name``, the prefix a DNS subdomain."""
    prefix, sep, name = key.rpartition("/")
    if (sep and not _DNS_SUBDOMAIN.fullmatch(prefix)) or not _LABEL_NAME.fullmatch(name):
        raise ValueError(f"{key!r} is not a Kubernetes label key ([prefix/]name)")
    return key


def check_selector(selector: Mapping[str, str], what: str) -> dict[str, str]:
    """Label keys and values that a ``matchLabels`` may hold; at least one label."""
    if not selector:
        raise ValueError(f"{what} needs at least one label (an empty selector selects every pod)")
    for key, value in selector.items():
        check_label_key(key)
        if not isinstance(value, str) or (value and not _LABEL_NAME.fullmatch(value)):
            raise ValueError(f"{what}: {value!r} is not a Kubernetes label value")
    return dict(selector)


def _peer(selector: dict[str, str], namespace: str | None) -> dict[str, Any]:
    peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(selector)}}
    if namespace is not None:
        peer["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    return peer


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in sorted(set(ports))]


def _policy(name: str, namespace: str, spec: dict[str, Any], about: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(MANAGED),
            "annotations": {"m2a.io/about": about},
        },
        "spec": spec,
    }


def _allow_lists(agents: Agents) -> list[tuple[str, AllowList]]:
    items = agents.items() if isinstance(agents, Mapping) else agents
    out = []
    for name, entries in items:
        try:
            out.append((name, AllowList(entries)))
        except ValueError as exc:
            raise ValueError(f"agent {name}: {exc}") from exc
    return out


def _proxy_rules(lists: list[tuple[str, AllowList]]) -> list[dict[str, Any]]:
    """Egress rules for the proxy pods: anywhere on ports some name needs, IPs alone on the rest."""
    named_ports: set[int] = set()
    ip_ports: dict[int, set[str]] = {}
    for _, allow in lists:
        for entry in allow:
            host, _, port_text = entry.rpartition(":")
            port = int(port_text)
            ip = parse_ip(host)
            if ip is None:
                named_ports.add(port)
                continue
            ip_ports.setdefault(port, set()).add(f"{ip}/{ip.max_prefixlen}")
    rules: list[dict[str, Any]] = []
    if named_ports:
        rules.append({"to": copy.deepcopy(list(ANYWHERE)), "ports": _tcp(*named_ports)})
    for port in sorted(ip_ports):
        cidrs = sorted(c for c in ip_ports[port] if port not in named_ports or _left_out(c))
        if cidrs:
            rules.append({"to": [{"ipBlock": {"cidr": c}} for c in cidrs], "ports": _tcp(port)})
    return rules


def _left_out(cidr: str) -> bool:
    """Whether an "anywhere" rule leaves ``cidr`` out (link-local), so an entry naming it needs its own."""
    net = ipaddress.ip_network(cidr)
    return any(net.version == e.version and net.subnet_of(e) for e in _EXCEPTED)  # type: ignore[arg-type]


def _dns_rule() -> dict[str, Any]:
    return {
        "to": [copy.deepcopy(KUBE_DNS)],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }


def network_policies(
    *,
    namespace: str,
    agents: Agents = (),
    proxy_selector: Mapping[str, str] = DEFAULT_PROXY_SELECTOR,
    proxy_port: int = DEFAULT_PROXY_PORT,
    gateway_selector: Mapping[str, str] = DEFAULT_GATEWAY_SELECTOR,
    gateway_port: int = DEFAULT_GATEWAY_PORT,
    m2a_namespace: str | None = None,
    dns: bool = True,
    proxy_policy: bool = True,
    agent_label: str = AGENT_LABEL,
) -> list[dict[str, Any]]:
    """The NetworkPolicies (as Kubernetes objects) for agents in ``namespace`` whose proxy and
    gateway run in ``m2a_namespace`` (default: the same namespace). ``agents``: each agent's name
    and egress allow-list (``host:port`` entries), for the proxy's own policy. Raises ``ValueError``
    on a name, label, port or entry Kubernetes or m2a would refuse."""
    _check_namespace(namespace, "the namespace")
    if m2a_namespace is not None:
        _check_namespace(m2a_namespace, "the m2a namespace")
    proxy = check_selector(proxy_selector, "the proxy selector")
    gateway = check_selector(gateway_selector, "the gateway selector")
    _check_port(proxy_port, "the proxy port")
    _check_port(gateway_port, "the gateway port")
    check_label_key(agent_label)
    lists = _allow_lists(agents)
    agent_pods = {"matchExpressions": [{"key": agent_label, "operator": "Exists"}]}
    cross = m2a_namespace if m2a_namespace not in (None, namespace) else None

    out = [
        _policy(
            "m2a-agents-default-deny",
            namespace,
            {"podSelector": agent_pods, "policyTypes": ["Ingress", "Egress"]},
            f"Pods labelled {agent_label} get no traffic in or out unless another policy allows it.",
        )
    ]
    egress = [
        {"to": [_peer(proxy, cross)], "ports": _tcp(proxy_port)},
        {"to": [_peer(gateway, cross)], "ports": _tcp(gateway_port)},
    ]
    if dns:
        egress.append(_dns_rule())
    out.append(
        _policy(
            "m2a-agents-egress",
            namespace,
            {"podSelector": agent_pods, "policyTypes": ["Egress"], "egress": egress},
            "Agents reach the outside only through m2a's egress proxy, and m2a's gateway.",
        )
    )
    if proxy_policy:
        rules = ([_dns_rule()] if dns else []) + _proxy_rules(lists)
        spec: dict[str, Any] = {"podSelector": {"matchLabels": proxy}, "policyTypes": ["Egress"]}
        if rules:
            spec["egress"] = rules
        names = ", ".join(sorted({name for name, _ in lists})) or "none"
        out.append(
            _policy(
                "m2a-egress-proxy",
                m2a_namespace or namespace,
                spec,
                "m2a's egress proxy reaches the ports of the agents' allow-lists (it checks the hosts "
                f"itself; NetworkPolicies cannot name hosts). Agents: {names}.",
            )
        )
    return out


def to_yaml(policies: list[dict[str, Any]]) -> str:
    """The policies as one multi-document YAML text (``kubectl apply -f``)."""
    return yaml.dump_all(policies, Dumper=_NoAliases, sort_keys=False, explicit_start=True, width=4096)


class _NoAliases(yaml.SafeDumper):
    """Writes a repeated object out again rather than as a YAML alias (``&id001``/``*id001``)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True
