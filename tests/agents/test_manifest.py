"""Agent manifests (``m2a.agents.manifest``): strict validation with clear errors, the A2A card's
shape, the canonical form and its digest, and ``agent.yaml`` files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, get_args

import pytest
import rfc8785
import yaml

from m2a.agents.manifest import (
    AgentLimit,
    Manifest,
    ManifestError,
    Metric,
    check_egress,
    check_sponsors,
    load_agent_file,
    parse_agent_file,
    parse_manifest,
)
from m2a.store.limits import REQUEST_METRICS

CARD = {
    "name": "Support bot",
    "description": "Answers questions about orders.",
    "version": "1.2.0",
    "skills": [{"id": "orders", "name": "Orders", "description": "Looks orders up.", "tags": ["erp"]}],
}
FULL: dict[str, Any] = {
    "card": CARD,
    "models": ["alpha", "beta"],
    "system_prompt": "You help customers with their orders. Never reveal internal notes.",
    "tools": [{"server": "erp", "tools": ["lookup_order", "list_orders"]}],
    "guardrails": "strict",
    "priority": "batch",
    "limits": [
        {"metric": "tokens", "window": "day", "limit": 200000},
        {"metric": "concurrency", "limit": 4},
    ],
    "data_scopes": ["vs_0123456789abcdef01234567"],
    "egress": ["api.example.com:443", "10.0.0.7:5432"],
}


def errors(data: Any) -> dict[str, str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    return dict(info.value.errors)


def with_(**changes: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(FULL)), **changes}


# -- validation -------------------------------------------------------------------------------------
def test_a_full_manifest_reads_back_as_written() -> None:
    m = parse_manifest(FULL)
    assert m.models == ["alpha", "beta"] and m.guardrails == "strict" and m.priority == "batch"
    assert m.tools[0].server == "erp" and m.tools[0].tools == ["lookup_order", "list_orders"]
    assert [(x.metric, x.window, x.limit) for x in m.limits] == [
        ("tokens", "day", 200000),
        ("concurrency", "-", 4),
    ]
    assert m.card.skills[0].tags == ["erp"]
    assert Manifest.model_validate_json(m.canonical()) == m  # the stored form reads back the same
    assert Manifest.model_validate_json(m.canonical()).digest() == m.digest()


def test_unknown_fields_are_refused_at_every_level() -> None:
    assert "colour" in errors(with_(colour="red"))
    assert "unknown field" in errors(with_(colour="red"))["colour"]
    assert "card.author" in errors(with_(card={**CARD, "author": "me"}))
    assert "card.skills.0.level" in errors(
        with_(card={**CARD, "skills": [{**CARD["skills"][0], "level": 3}]})
    )
    assert "tools.0.allow_all" in errors(with_(tools=[{"server": "erp", "tools": ["x"], "allow_all": True}]))
    assert "limits.0.burst" in errors(
        with_(limits=[{"metric": "requests", "window": "minute", "limit": 5, "burst": 9}])
    )


def test_models_are_required_and_not_empty() -> None:
    assert "models" in errors({"card": CARD})
    assert "at least 1" in errors(with_(models=[]))["models"]
    assert "listed twice" in errors(with_(models=["alpha", "alpha"]))["models"]
    assert "models.0" in errors(with_(models=[""]))


@pytest.mark.parametrize(
    "entry",
    [
        "api.example.com",  # no port
        "https://api.example.com:443",  # a scheme
        "api.example.com:443/path",
        "api.example.com:0",
        "api.example.com:65536",
        "api.example.com:+443",
        "api.example.com:０",  # a full-width digit
        "-bad.example.com:443",
        "exa mple.com:443",
        "a..b:443",
        "*:443",
        "foo.*.com:443",
        "::1:443",  # IPv6 without brackets
        "[::g]:443",
        "300.1.1.1:80",
        ":443",
        "",
        "x" * 64 + ".com:443",  # a label over 63
    ],
)
def test_bad_egress_entries_are_refused(entry: str) -> None:
    got = errors(with_(egress=[entry]))
    assert "egress.0" in got, got
    with pytest.raises(ValueError):
        check_egress(entry)


def test_egress_entries_are_normalised() -> None:
    assert check_egress("API.Example.COM:443") == "api.example.com:443"
    assert check_egress("*.internal.example:8443") == "*.internal.example:8443"
    assert check_egress("[0:0::1]:80") == "[::1]:80"
    assert check_egress("10.0.0.7:5432") == "10.0.0.7:5432"
    # spelled two ways, the same entry: listed twice
    assert "listed twice" in errors(with_(egress=["api.example.com:443", "API.example.com:443"]))["egress"]


def test_other_fields_are_checked() -> None:
    assert "guardrails" in errors(with_(guardrails="Strict Profile"))
    assert "priority" in errors(with_(priority="urgent"))
    assert "data_scopes.0" in errors(with_(data_scopes=["file-123"]))
    assert "tools.0.tools" in errors(with_(tools=[{"server": "erp", "tools": []}]))
    assert "tools.0.tools.0" in errors(with_(tools=[{"server": "erp", "tools": ["bad name"]}]))
    assert "tools" in errors(
        with_(tools=[{"server": "erp", "tools": ["a"]}, {"server": "erp", "tools": ["b"]}])
    )
    assert "limits.0" in errors(with_(limits=[{"metric": "concurrency", "window": "minute", "limit": 2}]))
    assert "limits.0" in errors(with_(limits=[{"metric": "tokens", "window": "week", "limit": 2}]))
    assert "limits.0.limit" in errors(with_(limits=[{"metric": "tokens", "window": "day", "limit": -1}]))
    assert "limits.0.limit" in errors(with_(limits=[{"metric": "tokens", "window": "day", "limit": 2**60}]))
    assert "limits" in errors(
        with_(
            limits=[
                {"metric": "tokens", "window": "day", "limit": 1},
                {"metric": "tokens", "window": "day", "limit": 2},
            ]
        )
    )
    assert "card.version" in errors(with_(card={**CARD, "version": 1.1}))
    assert "quote it" in errors(with_(card={**CARD, "version": 1.1}))["card.version"]
    assert "system_prompt" in errors(with_(system_prompt="nul \x00 inside"))
    assert errors([1, 2]) == {"(top level)": "a manifest is a mapping of fields"}


def test_the_limit_metrics_are_the_quota_metrics() -> None:
    assert set(get_args(Metric)) == set(REQUEST_METRICS)  # an agent's limits bind its requests
    assert AgentLimit(metric="cost", window="month", limit=5_000_000).window == "month"


def test_the_card_takes_a2a_names_and_serializes_them() -> None:
    card = {
        **CARD,
        "protocolVersion": "0.3.0",
        "defaultInputModes": ["text/plain", "application/json"],
        "capabilities": {"streaming": True, "pushNotifications": False},
        "provider": {"organization": "Example Corp", "url": "https://example.com"},
    }
    m = parse_manifest(with_(card=card))
    assert m.card.default_input_modes == ["text/plain", "application/json"] and m.card.capabilities.streaming
    out = m.as_json()["card"]
    assert out["protocolVersion"] == "0.3.0" and out["defaultInputModes"] == [
        "text/plain",
        "application/json",
    ]
    assert out["capabilities"] == {"streaming": True}  # defaults are left out
    # snake_case is accepted too, and means the same manifest
    snake = {**CARD, "protocol_version": "0.3.0", "default_input_modes": ["text/plain", "application/json"],
             "capabilities": {"streaming": True}, "provider": card["provider"]}  # fmt: skip
    assert parse_manifest(with_(card=snake)).digest() == m.digest()


# -- canonical form and digest ----------------------------------------------------------------------
def test_the_digest_is_sha256_of_rfc8785_json() -> None:
    m = parse_manifest(FULL)
    assert m.canonical() == rfc8785.dumps(m.as_json())
    assert m.digest() == hashlib.sha256(m.canonical()).hexdigest()
    assert m.canonical().startswith(b'{"card":{"description":"Answers questions about orders.","name":')
    assert (
        json.loads(m.canonical()) == m.as_json()
        and b"\n" not in m.canonical()
        and b'": ' not in m.canonical()
    )


def test_yaml_layout_key_order_and_defaults_do_not_change_the_digest() -> None:
    plain = parse_agent_file(yaml.safe_dump(FULL, sort_keys=True)).manifest
    reordered = dict(reversed(list(FULL.items())))
    reordered["card"] = dict(reversed(list(CARD.items())))
    flow = yaml.safe_dump(reordered, sort_keys=False, default_flow_style=True, width=40, indent=4)
    assert flow != yaml.safe_dump(FULL, sort_keys=True)
    commented = "# an agent\n\n" + yaml.safe_dump(reordered, sort_keys=False).replace("\n", "   \n")
    explicit = with_(
        card={**CARD, "capabilities": {"streaming": False}, "defaultOutputModes": ["text/plain"]}
    )
    explicit["tools"] = FULL["tools"]
    digests = {
        plain.digest(),
        parse_agent_file(flow).manifest.digest(),
        parse_agent_file(commented).manifest.digest(),
        parse_manifest(explicit).digest(),  # defaults spelled out
        parse_manifest(json.loads(json.dumps(FULL, indent=8))).digest(),
    }
    assert len(digests) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"models": ["alpha"]},
        {"models": ["beta", "alpha"]},  # the first model is the one the red team attacks
        {"system_prompt": FULL["system_prompt"] + " "},
        {"system_prompt": None},
        {"tools": [{"server": "erp", "tools": ["lookup_order"]}]},
        {"guardrails": "default"},
        {"guardrails": None},
        {"priority": "standard"},
        {"limits": [{"metric": "tokens", "window": "day", "limit": 200001}]},
        {"data_scopes": []},
        {"egress": ["api.example.com:8443", "10.0.0.7:5432"]},
        {"card": {**CARD, "version": "1.2.1"}},
        {"card": {**CARD, "skills": []}},
        {"card": {**CARD, "capabilities": {"streaming": True}}},
    ],
)
def test_any_change_changes_the_digest(change: dict[str, Any]) -> None:
    assert parse_manifest(with_(**change)).digest() != parse_manifest(FULL).digest()


# -- agent.yaml -------------------------------------------------------------------------------------
AGENT_YAML = """\
# kept in the agent's own repository
name: support-bot
team: support
sponsors: [Ana.Lima@example.org, ops@example.org]
card:
  name: Support bot
  description: Answers questions about orders.
  version: "1.2.0"
models: [alpha]
system_prompt: |
  You help customers with their orders.
guardrails: strict
egress: ["api.example.com:443"]
"""


def test_an_agent_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(AGENT_YAML)
    f = load_agent_file(path)
    assert (f.name, f.team, f.sponsors) == (
        "support-bot",
        "support",
        ["ana.lima@example.org", "ops@example.org"],
    )
    assert (
        f.manifest.models == ["alpha"]
        and f.manifest.system_prompt == "You help customers with their orders.\n"
    )
    # name, team and sponsors describe the agent, not the version: they are not in the digest
    other = AGENT_YAML.replace("name: support-bot", "name: other-bot").replace("ops@", "dev@")
    assert parse_agent_file(other).manifest.digest() == f.manifest.digest()


def test_agent_yaml_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(AGENT_YAML.replace("models: [alpha]", "modles: [alpha]").replace('"1.2.0"', "1.2"))
    with pytest.raises(ManifestError) as info:
        load_agent_file(path)
    text = str(info.value)
    assert str(path) in text and "modles: unknown field" in text and "models: Field required" in text
    assert "card.version" in text and "quote it" in text
    path.write_text("card: [unclosed\n")
    with pytest.raises(ManifestError, match="YAML"):
        load_agent_file(path)
    path.write_text("- a\n- list\n")
    with pytest.raises(ManifestError, match="mapping"):
        load_agent_file(path)
    with pytest.raises(ManifestError, match="cannot read"):
        load_agent_file(tmp_path / "missing.yaml")
    with pytest.raises(ManifestError, match="name"):
        parse_agent_file(AGENT_YAML.replace("name: support-bot", "name: Support Bot"))
    with pytest.raises(ManifestError, match="sponsor"):
        parse_agent_file(AGENT_YAML.replace("ops@example.org", "not-an-email"))


def test_sponsors() -> None:
    assert check_sponsors(["A@x.org", "a@x.org", " b@y.com "]) == ["a@x.org", "b@y.com"]
    for bad in ([], ["nobody"], ["a@b"], ["a b@c.org"], ["x@y.org"] * 0 + [f"p{i}@x.org" for i in range(33)]):
        with pytest.raises(ValueError):
            check_sponsors(bad)
