"""The Cedar side of m2a's policies: the schema (namespace ``M2A``), the baseline policies m2a ships,
the checks a policy text must pass (``check_text``), and how a call's arguments become a Cedar value.

``policy.py`` describes the model and owns the decisions; this module has no state.

A text is checked the same way whether it comes through the admin API, the CLI or a file: it must
parse, validate against the schema in Cedar's strict mode (so ``principal.teem`` or a ``Long``
compared with a ``String`` is refused at write, not found at the first call), hold no templates,
claim no ``@id`` starting with ``m2a.`` (the baseline's), and, in a ``team:`` or ``agent:`` scope,
hold only ``forbid`` policies. Since a call's arguments differ per tool, ``context.args`` is an
empty record in the schema: every use of an argument must be guarded, ``context.args has amount &&
context.args.amount > 1000``, which the validator accepts and which cannot error on a call without
that argument.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import cedarpy

NAMESPACE = "M2A"
TIERS = ("read", "write", "destructive")
BASELINE_PREFIX = "m2a."
MAX_DEPTH = 16  # deeper argument values reach Cedar as their JSON text
I64 = (-(2**63), 2**63 - 1)
_ESCAPES = ("__entity", "__extn", "__expr")  # Cedar's JSON escapes: never let an argument use one

_STR = {"type": "String"}
SCHEMA: dict[str, Any] = {
    NAMESPACE: {
        "entityTypes": {
            "Team": {},
            "User": {},
            "Agent": {
                "memberOfTypes": ["Team"],
                "shape": {
                    "type": "Record",
                    "attributes": {
                        "team": _STR,
                        "name": _STR,
                        "version": {"type": "Long"},
                        "spiffe": _STR,
                    },
                },
            },
            "Key": {
                "memberOfTypes": ["Team"],
                "shape": {"type": "Record", "attributes": {"team": _STR, "admin": {"type": "Boolean"}}},
            },
            "Tool": {
                "shape": {"type": "Record", "attributes": {"server": _STR, "name": _STR, "tier": _STR}},
            },
        },
        "actions": {
            "call": {
                "appliesTo": {
                    "principalTypes": ["Agent"],
                    "resourceTypes": ["Tool"],
                    "context": {
                        "type": "Record",
                        "attributes": {
                            "granted": {"type": "Boolean"},
                            "tier": _STR,
                            "on_behalf_of": _STR,
                            "args": {"type": "Record", "attributes": {}},
                            "guardrails": {"type": "Set", "element": _STR},
                        },
                    },
                }
            },
            "approve": {
                "appliesTo": {
                    "principalTypes": ["Key"],
                    "resourceTypes": ["Tool"],
                    "context": {
                        "type": "Record",
                        "attributes": {"agent_team": _STR, "tier": _STR},
                    },
                }
            },
        },
    }
}
CEDAR_SCHEMA = cedarpy.Schema.from_json_str(json.dumps(SCHEMA))

CALL = f'{NAMESPACE}::Action::"call"'
APPROVE = f'{NAMESPACE}::Action::"approve"'
BASELINE = f"""\
@id("m2a.granted")
permit(principal is {NAMESPACE}::Agent, action == {CALL}, resource is {NAMESPACE}::Tool)
when {{ context.granted }};

@id("m2a.ungranted")
forbid(principal, action == {CALL}, resource)
unless {{ context.granted }};

@id("m2a.approve.admin")
permit(principal is {NAMESPACE}::Key, action == {APPROVE}, resource is {NAMESPACE}::Tool)
when {{ principal.admin }};

@id("m2a.approve.team")
permit(principal is {NAMESPACE}::Key, action == {APPROVE}, resource is {NAMESPACE}::Tool)
when {{
  principal.team != "" && principal.team == context.agent_team && context.tier != "destructive"
}};
"""


@dataclass(frozen=True)
class Unit:
    """One checked text: its policies in Cedar's JSON form under m2a's ids, or why it was refused."""

    origin: str  # "policies table" or a file's path
    scope: str
    name: str
    policies: tuple[tuple[str, str | None, dict[str, Any]], ...]  # (positional id, @id, policy JSON)
    error: str | None = None


def _scope_kind(scope: str) -> str:
    return scope.partition(":")[0]


def check_text(text: str, scope: str, baseline: bool = False) -> tuple[list[str], dict[str, Any] | None]:
    """Cedar's and m2a's objections to ``text`` in ``scope`` (``[]``: fine), and its JSON form."""
    try:
        as_json = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as exc:
        return [f"does not parse: {exc}"], None
    problems: list[str] = []
    if as_json.get("templates") or as_json.get("templateLinks"):
        problems.append("templates (policies with ?principal or ?resource) are not supported")
    result = cedarpy.validate_policies(text, CEDAR_SCHEMA)
    if not result.validation_passed:
        problems.extend(str(e) for e in result.errors)
        if not result.errors:
            problems.append("does not validate against m2a's schema")
    for pid, policy in as_json.get("staticPolicies", {}).items():
        annotated = (policy.get("annotations") or {}).get("id")
        if annotated is not None and annotated.startswith(BASELINE_PREFIX) and not baseline:
            problems.append(
                f"[{pid}] @id(\"{annotated}\"): ids starting with '{BASELINE_PREFIX}' are m2a's own"
            )
        if _scope_kind(scope) in ("team", "agent") and policy.get("effect") != "forbid":
            problems.append(
                f"[{pid}] a {_scope_kind(scope)} scope holds only forbid policies (they narrow what the "
                "grant and the global policies allow); permits belong in the global scope"
            )
    return problems, as_json


def compile_unit(text: str, scope: str, name: str, origin: str, baseline: bool = False) -> Unit:
    """``text`` checked and numbered: ids ``<scope>/<name>/<n>`` (n: its place in the text)."""
    problems, as_json = check_text(text, scope, baseline)
    if problems or as_json is None:
        return Unit(origin, scope, name, (), "; ".join(problems))
    policies = []
    for n, (_, policy) in enumerate(as_json.get("staticPolicies", {}).items()):
        annotated = (policy.get("annotations") or {}).get("id")
        policies.append((f"{scope}/{name}/{n}", annotated, policy))
    return Unit(origin, scope, name, tuple(policies))


BASELINE_UNIT = compile_unit(BASELINE, "global", "m2a", "m2a's baseline", baseline=True)
assert BASELINE_UNIT.error is None, BASELINE_UNIT.error


def cedar_value(value: Any, depth: int = 0) -> Any:
    """A JSON value as Cedar can hold it, or ``None`` to leave it out.

    Strings and bools as they are; integers within i64 as Longs, integral floats within i64 too;
    other numbers as their text (comparing one with ``>`` is an evaluation error, which denies);
    lists as Sets; objects as records, except one using a Cedar JSON escape (``__entity``,
    ``__extn``, ``__expr``: an argument must never become an entity reference or an extension
    value) and anything nested past ``MAX_DEPTH``, which become their JSON text; ``null`` is left
    out (as if the argument were absent).
    """
    if value is None:
        return None
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if I64[0] <= value <= I64[1] else str(value)
    if isinstance(value, float):
        if value.is_integer() and I64[0] <= value <= I64[1]:
            return int(value)
        return repr(value)
    if depth >= MAX_DEPTH:
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, list | tuple):
        return [v for v in (cedar_value(x, depth + 1) for x in value) if v is not None]
    if isinstance(value, dict):
        if any(k in _ESCAPES for k in value):
            return json.dumps(value, sort_keys=True, default=str)
        out = {}
        for k, v in value.items():
            converted = cedar_value(v, depth + 1)
            if converted is not None:
                out[str(k)] = converted
        return out
    return str(value)


def cedar_args(arguments: dict[str, Any] | None) -> dict[str, Any]:
    """A call's arguments as the record ``context.args`` (see ``cedar_value``)."""
    if not isinstance(arguments, dict):
        return {}
    return cedar_value(arguments)


def uid(kind: str, id_: str) -> dict[str, str]:
    return {"type": f"{NAMESPACE}::{kind}", "id": id_}
