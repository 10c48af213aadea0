"""The stream rail on its own: whatever the chunking, a blocked span never reaches the client, a
masked one arrives masked, clean text arrives whole and in order, and nothing is held longer than
the window (plus the check step)."""

from __future__ import annotations

import json

import pytest

from m2a.config import GuardrailProfile, GuardrailRule
from m2a.gateway.errors import GatewayError
from m2a.gateway.stream_rail import Blocked, StreamRail
from m2a.guardrails.base import Context
from m2a.guardrails.policy import Policy, Verdict

AWS = "AKIAIOSFODNN7EXAMPLF"
TEXT = f"Here is the key you asked for: {AWS} -- keep it safe, and rotate it every ninety days please."


def rail(
    action: str, hold: int = 64, on: tuple[str, ...] = ("output", "tool")
) -> tuple[StreamRail, list[Verdict]]:
    prof = GuardrailProfile(
        rules=[GuardrailRule(detector="secrets", action=action, where=list(on))], stream_hold_chars=hold
    )
    seen: list[Verdict] = []
    return StreamRail([Policy("p", prof)], Context(direction="output"), hold, seen.append), seen


def chat_event(i: int, content: str | None = None, finish: str | None = None, **delta: object) -> bytes:
    d: dict[str, object] = dict(delta)
    if content is not None:
        d["content"] = content
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": i, "delta": d, "finish_reason": finish}]}  # fmt: skip
    return f"data: {json.dumps(chunk)}\n\n".encode()


def pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def content_of(data: bytes) -> dict[int, str]:
    out: dict[int, str] = {}
    for line in data.decode().splitlines():
        if line.startswith("data: {"):
            for c in json.loads(line[6:]).get("choices") or []:
                out[c["index"]] = out.get(c["index"], "") + (
                    (c.get("delta") or {}).get("content") or c.get("text") or ""
                )
    return out


@pytest.mark.parametrize("size", [1, 3, 7, 50, 500])
def test_a_blocked_key_never_leaves_whatever_the_chunking(size: int) -> None:
    r, seen = rail("block")
    sent = b"" + r.feed(chat_event(0, "", role="assistant"))
    with pytest.raises(Blocked) as info:
        for p in pieces(TEXT, size):
            sent += r.feed(chat_event(0, p))
        sent += r.finish()
    assert AWS[:4] not in sent.decode()
    tail = r.blocked_tail(info.value.verdict, GatewayError(400, "blocked", code="content_filter"))
    events = [json.loads(line[6:]) for line in tail.decode().splitlines() if line.startswith("data: {")]
    assert (
        events[0]["choices"][0]["finish_reason"] == "content_filter"
        and events[1]["error"]["code"] == "content_filter"
    )
    assert tail.endswith(b"data: [DONE]\n\n")
    assert seen and seen[0].decision == "deny"


@pytest.mark.parametrize("size", [1, 4, 9, 500])
def test_a_masked_key_arrives_masked_and_the_rest_intact(size: int) -> None:
    r, seen = rail("redact")
    sent = b""
    for p in pieces(TEXT, size):
        sent += r.feed(chat_event(0, p))
    sent += r.feed(chat_event(0, None, "stop"))
    sent += r.finish()
    got = content_of(sent)[0]
    assert got == TEXT.replace(AWS, "[SECRET]") and b'"finish_reason": "stop"' in sent
    assert [v.decision for v in seen] == ["modify"] and len(seen[0].redacted) == 1  # counted once


def test_clean_text_passes_whole_in_order_and_is_not_held_past_the_window() -> None:
    r, _ = rail("block", hold=32)
    text = "The quick brown fox jumps over the lazy dog. " * 10
    sent_during = b""
    for n, p in enumerate(pieces(text, 5), 1):
        sent_during += r.feed(chat_event(0, p))
        held = 5 * n - len(content_of(sent_during).get(0, ""))
        assert held <= 32 + 16 + 5  # never more than the window, the check step and a chunk
    released = content_of(sent_during).get(0, "")
    assert text.startswith(released) and len(text) - len(released) <= 32 + 16 + 5  # window + step + a chunk
    rest = r.finish()
    assert released + content_of(rest).get(0, "") == text


def test_choices_and_tool_call_arguments_are_separate_channels() -> None:
    r, _ = rail("block", hold=16)
    sent = r.feed(chat_event(0, "choice zero says hello and more text here"))
    sent += r.feed(chat_event(1, "choice one says hi and also more text here"))
    sent += r.finish()
    assert content_of(sent) == {
        0: "choice zero says hello and more text here",
        1: "choice one says hi and also more text here",
    }
    r, _ = rail("block", hold=16, on=("tool",))
    call = [
        {"index": 0, "id": "c", "type": "function", "function": {"name": "upload", "arguments": '{"key": "'}}
    ]
    r.feed(chat_event(0, None, tool_calls=call))
    with pytest.raises(Blocked):
        for p in pieces(AWS + '"}', 3):
            r.feed(chat_event(0, None, tool_calls=[{"index": 0, "function": {"arguments": p}}]))
        r.finish()


def test_completion_streams_and_odd_events_pass_in_order() -> None:
    r, _ = rail("redact", hold=8)
    comp = {
        "id": "c",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "text": "hello there, general"}],
    }
    sent = r.feed(b": keep-alive comment\n\n")
    sent += r.feed(f"data: {json.dumps(comp)}\n\n".encode())
    sent += r.feed(b"data: not json\n\n")
    sent += r.finish()
    assert sent.index(b"keep-alive") < sent.index(b"hello there") < sent.index(b"not json")
    assert content_of(sent) == {0: "hello there, general"}
