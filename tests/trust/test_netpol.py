"""Kubernetes NetworkPolicies for agents (m2a.trust.netpol) and the `m2a egress` commands: the YAML
parses, every object has the shape the Kubernetes API accepts (checked field by field, unknown
fields refused as a strict API server would), and what the policies allow, evaluated by
NetworkPolicy's rules, is what m2a means: agents reach the proxy, the gateway and DNS, nothing else;
the proxy reaches the allow-listed ports (and IPs), never the metadata service unless named."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from m2a.cli.egress_cmd import egress_app
from m2a.trust.netpol import network_policies, to_yaml

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
NS = "agents"
AGENTS = [
    ("mailer", ["smtp.example.com:587", "*.example.com:443"]),
    (
        "billing",
        ["10.0.0.5:5432", "10.0.0.6:443", "169.254.169.254:80", "169.254.170.2:443", "[2001:db8::7]:8443"],
    ),
]


# ---- the Kubernetes API's shape of a NetworkPolicy (networking.k8s.io/v1), field by field


def only(obj: Any, allowed: set[str], required: set[str] = frozenset(), where: str = "") -> dict[str, Any]:  # type: ignore[assignment]
    assert isinstance(obj, dict), f"{where} is an object"
    assert set(obj) <= allowed, f"{where}: unknown fields {set(obj) - allowed}"
    assert required <= set(obj), f"{where}: missing {required - set(obj)}"
    return obj


def label_key(key: str) -> None:
    prefix, sep, name = key.rpartition("/")
    assert LABEL_NAME.fullmatch(name), key
    if sep:
        assert DNS_SUBDOMAIN.fullmatch(prefix) and len(prefix) <= 253, key


def labels(obj: Any, where: str) -> None:
    assert isinstance(obj, dict), where
    for k, v in obj.items():
        label_key(k)
        assert isinstance(v, str) and (v == "" or LABEL_NAME.fullmatch(v)), (where, v)


def selector(obj: Any, where: str) -> None:
    only(obj, {"matchLabels", "matchExpressions"}, where=where)
    if "matchLabels" in obj:
        labels(obj["matchLabels"], where)
    for expr in obj.get("matchExpressions", []):
        only(expr, {"key", "operator", "values"}, {"key", "operator"}, where)
        label_key(expr["key"])
        assert expr["operator"] in ("In", "NotIn", "Exists", "DoesNotExist")
        if expr["operator"] in ("In", "NotIn"):
            assert expr.get("values"), where
        else:
            assert not expr.get("values"), where


def cidr(text: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    assert isinstance(text, str) and "/" in text
    return ipaddress.ip_network(text)  # strict: host bits must be zero


def peer(obj: Any, where: str) -> None:
    only(obj, {"podSelector", "namespaceSelector", "ipBlock"}, where=where)
    assert obj, where
    if "ipBlock" in obj:
        assert set(obj) == {"ipBlock"}, f"{where}: ipBlock stands alone"
        block = only(obj["ipBlock"], {"cidr", "except"}, {"cidr"}, where)
        net = cidr(block["cidr"])
        for e in block.get("except", []):
            sub = cidr(e)
            assert sub.version == net.version and sub.subnet_of(net), where  # type: ignore[arg-type]
    for key in ("podSelector", "namespaceSelector"):
        if key in obj:
            selector(obj[key], f"{where}.{key}")


def port(obj: Any, where: str) -> None:
    only(obj, {"protocol", "port", "endPort"}, where=where)
    assert obj.get("protocol", "TCP") in ("TCP", "UDP", "SCTP")
    assert isinstance(obj["port"], int) and 1 <= obj["port"] <= 65535, where


def network_policy(doc: Any) -> None:
    only(doc, {"apiVersion", "kind", "metadata", "spec"}, {"apiVersion", "kind", "metadata", "spec"})
    assert doc["apiVersion"] == "networking.k8s.io/v1" and doc["kind"] == "NetworkPolicy"
    meta = only(doc["metadata"], {"name", "namespace", "labels", "annotations"}, {"name", "namespace"})
    assert DNS_SUBDOMAIN.fullmatch(meta["name"]) and DNS_LABEL.fullmatch(meta["namespace"])
    labels(meta.get("labels", {}), "metadata.labels")
    for k, v in meta.get("annotations", {}).items():
        label_key(k)
        assert isinstance(v, str)
    spec = only(doc["spec"], {"podSelector", "policyTypes", "ingress", "egress"}, {"podSelector"})
    selector(spec["podSelector"], "spec.podSelector")
    types = spec.get("policyTypes", [])
    assert types and set(types) <= {"Ingress", "Egress"} and len(set(types)) == len(types)
    if "egress" in spec:
        assert "Egress" in types
    for i, rule in enumerate(spec.get("egress", [])):
        only(rule, {"to", "ports"}, {"to", "ports"}, f"egress[{i}]")  # m2a always names both
        assert rule["to"] and rule["ports"]
        for j, p in enumerate(rule["to"]):
            peer(p, f"egress[{i}].to[{j}]")
        for j, p in enumerate(rule["ports"]):
            port(p, f"egress[{i}].ports[{j}]")
    assert "ingress" not in spec  # m2a only denies ingress


# ---- NetworkPolicy's semantics, for what m2a's policies mean


def selects(sel: dict[str, Any], pod_labels: dict[str, str]) -> bool:
    if any(pod_labels.get(k) != v for k, v in sel.get("matchLabels", {}).items()):
        return False
    for expr in sel.get("matchExpressions", []):
        present = expr["key"] in pod_labels
        if expr["operator"] == "Exists" and not present:
            return False
        if expr["operator"] == "DoesNotExist" and present:
            return False
        if expr["operator"] == "In" and pod_labels.get(expr["key"]) not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and pod_labels.get(expr["key"]) in expr["values"]:
            return False
    return True


def peer_matches(p: dict[str, Any], policy_ns: str, dest: dict[str, Any]) -> bool:
    if "ipBlock" in p:
        if "ip" not in dest:
            return False
        ip = ipaddress.ip_address(dest["ip"])
        block = p["ipBlock"]
        net = ipaddress.ip_network(block["cidr"])
        if ip.version != net.version or ip not in net:
            return False
        return not any(ip in ipaddress.ip_network(e) for e in block.get("except", []))
    if "pod" not in dest:
        return False
    ns, pod_labels = dest["pod"]
    if "namespaceSelector" in p:
        if not selects(p["namespaceSelector"], {"kubernetes.io/metadata.name": ns}):
            return False
    elif ns != policy_ns:
        return False
    return selects(p.get("podSelector", {}), pod_labels)


def egress_allowed(
    policies: list[dict[str, Any]],
    ns: str,
    pod: dict[str, str],
    dest: dict[str, Any],
    port_: int,
    proto: str = "TCP",
) -> bool:
    chosen = [
        p
        for p in policies
        if p["metadata"]["namespace"] == ns
        and "Egress" in p["spec"]["policyTypes"]
        and selects(p["spec"]["podSelector"], pod)
    ]
    if not chosen:
        return True  # no policy isolates this pod's egress
    for p in chosen:
        for rule in p["spec"].get("egress", []):
            to_ok = any(peer_matches(x, p["metadata"]["namespace"], dest) for x in rule["to"])
            port_ok = any(x["port"] == port_ and x.get("protocol", "TCP") == proto for x in rule["ports"])
            if to_ok and port_ok:
                return True
    return False


def ingress_isolated(policies: list[dict[str, Any]], ns: str, pod: dict[str, str]) -> bool:
    return any(
        p["metadata"]["namespace"] == ns
        and "Ingress" in p["spec"]["policyTypes"]
        and selects(p["spec"]["podSelector"], pod)
        for p in policies
    )


AGENT_POD = {"m2a.io/agent": "mailer", "app": "mailer"}
PROXY = {"pod": (NS, {"app.kubernetes.io/name": "m2a-egress"})}
GATEWAY = {"pod": (NS, {"app.kubernetes.io/name": "m2a"})}
KUBE_DNS = {"pod": ("kube-system", {"k8s-app": "kube-dns"})}
PROXY_POD = {"app.kubernetes.io/name": "m2a-egress"}


def test_yaml_is_multi_document_and_every_object_is_a_valid_network_policy() -> None:
    policies = network_policies(namespace=NS, agents=AGENTS)
    docs = list(yaml.safe_load_all(to_yaml(policies)))
    assert docs == policies
    assert "&id" not in to_yaml(policies)  # no YAML aliases for repeated objects
    assert [d["metadata"]["name"] for d in docs] == [
        "m2a-agents-default-deny",
        "m2a-agents-egress",
        "m2a-egress-proxy",
    ]
    for doc in docs:
        network_policy(doc)
    deny = docs[0]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "egress" not in deny and "ingress" not in deny


def test_agents_reach_only_the_proxy_the_gateway_and_dns() -> None:
    policies = network_policies(namespace=NS, agents=AGENTS)
    allowed = lambda dest, p, proto="TCP": egress_allowed(policies, NS, AGENT_POD, dest, p, proto)  # noqa: E731
    assert allowed(PROXY, 3128)
    assert allowed(GATEWAY, 8000)
    assert allowed(KUBE_DNS, 53, "UDP") and allowed(KUBE_DNS, 53, "TCP")
    assert not allowed(PROXY, 8000) and not allowed(GATEWAY, 3128)
    assert not allowed({"ip": "93.184.216.34"}, 443)  # allow-listed for the proxy, not for the agent
    assert not allowed({"ip": "169.254.169.254"}, 80)
    assert not allowed({"pod": (NS, {"app": "database"})}, 5432)
    assert not allowed(
        {"pod": ("other", {"app.kubernetes.io/name": "m2a-egress"})}, 3128
    )  # another namespace
    assert not allowed(KUBE_DNS, 5353, "UDP")
    assert ingress_isolated(policies, NS, AGENT_POD)
    # pods without the agent label are left alone (m2a's own, and anything else in the namespace)
    assert not ingress_isolated(policies, NS, {"app": "database"})
    assert egress_allowed(policies, NS, {"app": "database"}, {"ip": "93.184.216.34"}, 443)


def test_the_proxy_reaches_the_allow_listed_ports_and_ips_only() -> None:
    policies = network_policies(namespace=NS, agents=AGENTS)
    allowed = lambda dest, p, proto="TCP": egress_allowed(policies, NS, PROXY_POD, dest, p, proto)  # noqa: E731
    assert allowed(KUBE_DNS, 53, "UDP")
    # names on 443 and 587: anywhere on those ports (the proxy checks the host), IPv4 and IPv6
    assert allowed({"ip": "93.184.216.34"}, 443) and allowed({"ip": "2606:2800:220:1::1"}, 587)
    assert allowed({"ip": "10.0.0.6"}, 443)
    # ...but never the link-local range (the metadata service) through the "anywhere" rule
    assert not allowed({"ip": "169.254.169.254"}, 443)
    assert not allowed({"ip": "fe80::1"}, 443)
    # a port named only by IP entries is open to those IPs alone
    assert allowed({"ip": "10.0.0.5"}, 5432) and not allowed({"ip": "10.0.0.9"}, 5432)
    assert allowed({"ip": "2001:db8::7"}, 8443) and not allowed({"ip": "2001:db8::8"}, 8443)
    # an entry that names the metadata address literally is the one way to reach it
    assert allowed({"ip": "169.254.169.254"}, 80) and not allowed({"ip": "169.254.169.253"}, 80)
    assert allowed({"ip": "169.254.170.2"}, 443)  # named on a port that names also use
    assert not allowed({"ip": "93.184.216.34"}, 22)
    assert not allowed({"ip": "93.184.216.34"}, 443, "UDP")


def test_without_allow_lists_the_proxy_gets_dns_alone_and_without_dns_nothing() -> None:
    proxy = network_policies(namespace=NS)[2]
    assert len(proxy["spec"]["egress"]) == 1 and proxy["spec"]["egress"][0]["ports"][0]["port"] == 53
    no_dns = network_policies(namespace=NS, dns=False)
    for doc in no_dns:
        network_policy(doc)
    assert "egress" not in no_dns[2]["spec"]  # Egress isolated, no rule: nothing goes out
    assert not egress_allowed(no_dns, NS, PROXY_POD, KUBE_DNS, 53, "UDP")
    assert not egress_allowed(no_dns, NS, AGENT_POD, KUBE_DNS, 53, "UDP")
    assert egress_allowed(no_dns, NS, AGENT_POD, PROXY, 3128)


def test_options_namespaces_selectors_and_no_proxy_policy() -> None:
    policies = network_policies(
        namespace="team-a",
        agents={"x": ["api.example.com:443"]},
        proxy_selector={"app": "egress", "tier": "m2a"},
        proxy_port=8888,
        gateway_selector={"app": "gw"},
        gateway_port=9000,
        m2a_namespace="m2a-system",
        agent_label="example.com/agent",
    )
    for doc in policies:
        network_policy(doc)
    assert [d["metadata"]["namespace"] for d in policies] == ["team-a", "team-a", "m2a-system"]
    pod = {"example.com/agent": "x"}
    assert egress_allowed(
        policies, "team-a", pod, {"pod": ("m2a-system", {"app": "egress", "tier": "m2a"})}, 8888
    )
    assert egress_allowed(policies, "team-a", pod, {"pod": ("m2a-system", {"app": "gw"})}, 9000)
    assert not egress_allowed(policies, "team-a", pod, {"pod": ("team-a", {"app": "gw"})}, 9000)
    assert not egress_allowed(policies, "team-a", pod, {"pod": ("m2a-system", {"app": "egress"})}, 8888)
    assert egress_allowed(policies, "m2a-system", {"app": "egress", "tier": "m2a"}, {"ip": "1.2.3.4"}, 443)
    assert len(network_policies(namespace=NS, proxy_policy=False)) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"namespace": "Agents"}, "namespace"),
        ({"namespace": NS, "m2a_namespace": "a_b"}, "m2a namespace"),
        ({"namespace": NS, "proxy_port": 0}, "proxy port"),
        ({"namespace": NS, "gateway_port": 70000}, "gateway port"),
        ({"namespace": NS, "proxy_selector": {}}, "at least one label"),
        ({"namespace": NS, "gateway_selector": {"app": "bad value"}}, "label value"),
        ({"namespace": NS, "proxy_selector": {"-bad": "x"}}, "label key"),
        ({"namespace": NS, "agent_label": "no/such/key"}, "label key"),
        ({"namespace": NS, "agents": [("mailer", ["https://example.com"])]}, "agent mailer"),
    ],
)
def test_bad_input_is_refused_clearly(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        network_policies(**options)


# ---- the commands

runner = CliRunner()


def _agent_file(tmp: Path, name: str, egress: list[str]) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "card": {"name": name, "description": "test agent", "version": "1.0.0"},
                "models": ["m"],
                "egress": egress,
            }
        )
    )
    return path


def test_netpol_command_writes_valid_yaml_from_agent_files(tmp_path: Path) -> None:
    out = tmp_path / "policies.yaml"
    files = [
        _agent_file(tmp_path, "mailer", ["smtp.example.com:587"]),
        _agent_file(tmp_path, "db", ["10.0.0.5:5432"]),
    ]
    args = ["netpol", "--namespace", NS, "--proxy-port", "3129", "--gateway-port", "8080", "--out", str(out)]
    args += [a for f in files for a in ("--agent-file", str(f))] + ["--allow", "api.example.com:443"]
    result = runner.invoke(egress_app, args)
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(out.read_text()))
    for doc in docs:
        network_policy(doc)
    assert egress_allowed(docs, NS, AGENT_POD, PROXY, 3129) and not egress_allowed(
        docs, NS, AGENT_POD, PROXY, 3128
    )
    assert egress_allowed(docs, NS, AGENT_POD, GATEWAY, 8080)
    assert egress_allowed(docs, NS, PROXY_POD, {"ip": "1.2.3.4"}, 587)
    assert egress_allowed(docs, NS, PROXY_POD, {"ip": "1.2.3.4"}, 443)
    assert egress_allowed(docs, NS, PROXY_POD, {"ip": "10.0.0.5"}, 5432)
    assert not egress_allowed(docs, NS, PROXY_POD, {"ip": "10.0.0.6"}, 5432)
    assert "db, mailer" in docs[2]["metadata"]["annotations"]["m2a.io/about"]


def test_netpol_command_prints_to_stdout_and_takes_labels() -> None:
    result = runner.invoke(
        egress_app,
        [
            "netpol",
            "-n",
            NS,
            "--proxy-label",
            "app=px",
            "--gateway-label",
            "app=gw",
            "--no-dns",
            "--no-proxy-policy",
        ],
    )
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.stdout))
    assert len(docs) == 2
    for doc in docs:
        network_policy(doc)
    assert egress_allowed(docs, NS, AGENT_POD, {"pod": (NS, {"app": "px"})}, 3128)
    assert not egress_allowed(docs, NS, AGENT_POD, KUBE_DNS, 53, "UDP")


@pytest.mark.parametrize(
    "args",
    [
        ["netpol", "-n", "Bad_NS"],
        ["netpol", "-n", NS, "--proxy-label", "novalue"],
        ["netpol", "-n", NS, "--allow", "example.com"],
        ["netpol", "-n", NS, "--agent-file", "/nonexistent/agent.yaml"],
        ["check", "--allow", "example.com:443", "example.com"],
        ["check", "--allow", "https://example.com", "example.com:443"],
    ],
)
def test_commands_refuse_bad_input_with_exit_2(args: list[str]) -> None:
    result = runner.invoke(egress_app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "error" in result.output


def test_check_command() -> None:
    allow = ["--allow", "*.example.com:443", "--allow", "10.0.0.5:5432"]
    ok = runner.invoke(egress_app, ["check", *allow, "API.example.com:443"])
    assert ok.exit_code == 0 and ok.stdout.strip() == "allowed: api.example.com:443 (by *.example.com:443)"
    assert runner.invoke(egress_app, ["check", *allow, "10.0.0.5:5432"]).exit_code == 0
    for target in ("example.com:443", "a.example.com:80", "10.0.0.6:5432"):
        no = runner.invoke(egress_app, ["check", *allow, target])
        assert no.exit_code == 1 and no.stdout.startswith(f"refused: {target}"), no.output
    empty = runner.invoke(egress_app, ["check", "example.com:443"])
    assert empty.exit_code == 1 and "the allow-list is empty" in empty.stdout
