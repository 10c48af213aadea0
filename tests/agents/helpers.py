"""What the agents tests share: manifests, red-team reports made to fit (or not fit) a manifest."""

from __future__ import annotations

from typing import Any

from m2a.agents.manifest import Manifest, parse_manifest


def manifest_data(n: int = 1, **changes: Any) -> dict[str, Any]:
    """A valid manifest's data; ``n`` makes different ones (the card's version)."""
    data: dict[str, Any] = {
        "card": {
            "name": "Support bot",
            "description": "Answers questions about orders.",
            "version": f"1.{n}.0",
            "skills": [
                {"id": "orders", "name": "Orders", "description": "Looks orders up.", "tags": ["erp"]}
            ],
        },
        "models": ["alpha"],
        "system_prompt": "You help customers with their orders.",
        "guardrails": "strict",
        "tools": [{"server": "erp", "tools": ["lookup_order"]}],
    }
    data.update(changes)
    return data


def manifest(n: int = 1, **changes: Any) -> Manifest:
    return parse_manifest(manifest_data(n, **changes))


def report(m: Manifest, **changes: Any) -> dict[str, Any]:
    """A red-team summary whose gate passed, for ``m``'s first model, profile and system prompt."""
    data: dict[str, Any] = {
        "run": 7,
        "model": m.models[0],
        "profile": m.guardrails,
        "system_prompt_sha256": m.system_prompt_sha256(),
        "passed": True,
        "verdicts": [
            {
                "category": "prompt_injection",
                "verdict": "pass",
                "rate": 0.1,
                "compared": 0.1,
                "limit": 0.25,
                "judged": 10,
                "errors": 0,
                "reason": "rate 10.0% <= 25.0%",
            },
            {
                "category": "jailbreak",
                "verdict": "not run",
                "rate": None,
                "compared": None,
                "limit": 0.25,
                "judged": 0,
                "errors": 0,
                "reason": "not in this run",
            },
        ],  # fmt: skip
        "probes": 10,
        "seed": 3,
    }
    data.update(changes)
    return data


def failed_report(m: Manifest) -> dict[str, Any]:
    bad = report(m, passed=False)
    bad["verdicts"][0].update(verdict="fail", rate=0.6, compared=0.6, reason="rate 60.0% > 25.0%")
    return bad
