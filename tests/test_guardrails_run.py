"""The runner: messages, the budget, crashing and malformed detectors, merging, redaction, the registry."""

from __future__ import annotations

from typing import Any

import pytest

from m2a.guardrails import (
    Budget,
    Context,
    Finding,
    Prepared,
    UnknownDetector,
    build,
    build_all,
    check,
    known,
    redact,
    redact_messages,
    register_detector,
)

EMAIL = "jane.doe@example.org"


@register_detector("test_boom")
class Boom:
    def check(self, ctx: Context, text: Prepared) -> list[Finding] | None:
        raise RuntimeError(f"leaks the text: {text.original}")


@register_detector("test_malformed")
class Malformed:
    def check(self, ctx: Context, text: Prepared) -> list[Finding] | None:
        return [Finding("x", "x", "test_malformed", 2.0, 0, 10**6, "bad")]


@register_detector("test_abstain")
class Abstain:
    def check(self, ctx: Context, text: Prepared) -> list[Finding] | None:
        return None


def test_registry_builds_by_name_with_params() -> None:
    assert {"pii", "secrets", "denylist", "system_prompt_leak"} <= set(known())
    det = build("denylist", {"terms": ["x"]})
    assert det.name == "denylist"
    assert [d.name for d in build_all(["pii", {"name": "secrets", "params": {"kinds": ["jwt"]}}])] == [
        "pii", "secrets"]  # fmt: skip
    with pytest.raises(UnknownDetector, match="known detectors"):
        build("nope")
    with pytest.raises(ValueError, match="bad params"):
        build("pii", {"colour": "red"})


def test_a_crash_is_an_error_result_without_the_exception_message() -> None:
    r = check([build("test_boom"), build("pii")], f"mail {EMAIL}")
    assert r.errors == {"test_boom": "RuntimeError"}
    assert [f.kind for f in r.findings] == ["email"]  # the others still ran
    assert EMAIL not in str(r.summary()) and not r.complete


def test_a_malformed_finding_is_an_error() -> None:
    r = check([build("test_malformed")], "short")
    assert r.errors == {"test_malformed": "TypeError"} and r.findings == []


def test_abstaining_is_not_an_error() -> None:
    r = check([build("test_abstain")], "text")
    assert r.complete and not r.flagged


def test_messages_newest_first_within_the_budget() -> None:
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": f"old: {EMAIL}"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "new: bob@example.com"},
                                     {"type": "image_url", "image_url": {"url": "data:..."}}]},  # fmt: skip
    ]
    r = check([build("pii")], messages)
    assert [(f.message, f.part) for f in r.findings] == [(1, None), (3, 0)]
    assert r.complete and r.total == r.examined
    tight = check([build("pii")], messages, Budget(max_chars=len("new: bob@example.com") + 2))
    assert [(f.message, f.part) for f in tight.findings] == [(3, 0)]  # the newest was examined
    assert tight.over_budget == ["pii"] and tight.examined < tight.total


def test_over_budget_is_explicit_for_a_long_text() -> None:
    text = "x" * 100 + f" {EMAIL}"
    r = check([build("pii"), build("secrets")], text, Budget(max_chars=50))
    assert r.over_budget == ["pii", "secrets"] and r.findings == []
    assert r.examined == 50 and r.total == len(text)
    assert check([build("pii")], text, Budget(max_chars=1000)).complete


def test_tool_call_arguments_are_checked() -> None:
    messages = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "send", "arguments": f'{{"to": "{EMAIL}"}}'}}]}]
    r = check([build("pii")], messages)
    assert [(f.message, f.part, f.kind) for f in r.findings] == [(0, -1, "email")]
    out = redact_messages(messages, r.findings)
    assert out[0]["tool_calls"][0]["function"]["arguments"] == '{"to": "[EMAIL]"}'
    assert EMAIL in messages[0]["tool_calls"][0]["function"]["arguments"]  # a copy


def test_redact_masks_and_merges_overlaps() -> None:
    text = f"mail {EMAIL} key ghp_aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6 end"
    r = check([build("pii"), build("secrets")], text)
    assert redact(text, r.findings) == "mail [EMAIL] key [SECRET] end"
    f1 = Finding("pii", "email", "d", 0.5, 0, 6, "a", "EMAIL")
    f2 = Finding("secret", "k", "d", 0.9, 4, 10, "b", "SECRET")
    assert redact("0123456789xyz", [f1, f2]) == "[SECRET]xyz"


def test_redact_messages_content_and_parts() -> None:
    messages: list[Any] = [{"role": "user", "content": f"a {EMAIL}"},
                           {"role": "user", "content": [{"type": "text", "text": f"b {EMAIL}"}]}]  # fmt: skip
    out = redact_messages(messages, check([build("pii")], messages).findings)
    assert out[0]["content"] == "a [EMAIL]" and out[1]["content"][0]["text"] == "b [EMAIL]"


def test_duplicates_from_two_views_of_the_same_place_are_merged() -> None:
    r = check([build("pii"), build("pii")], f"{EMAIL}")
    assert len(r.findings) == 1
