"""Token usage from engine answers: JSON bodies, and SSE streams watched by ``StreamTap``."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import pytest

from m2a.gateway.usage import StreamTap, Usage, from_body


def event(payload: dict[str, Any] | str, sep: bytes = b"\n\n") -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return b"data: " + data.encode() + sep


def chunk(content: str | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta: dict[str, Any] = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-5f2a",
        "object": "chat.completion.chunk",
        "created": 1764300000,
        "model": "smollm2-135m-instruct",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


USAGE = {
    "prompt_tokens": 12,
    "total_tokens": 20,
    "completion_tokens": 8,
    "prompt_tokens_details": {"cached_tokens": 4},
}
USAGE_CHUNK = {
    "id": "chatcmpl-5f2a",
    "object": "chat.completion.chunk",
    "created": 1764300000,
    "model": "smollm2-135m-instruct",
    "choices": [],
    "usage": USAGE,
}
DONE = b"data: [DONE]\n\n"


def vllm_events(sep: bytes = b"\n\n") -> list[bytes]:
    """What vLLM streams for a chat with ``stream_options.include_usage``: content chunks, usage, [DONE]."""
    first = chunk("")
    first["choices"][0]["delta"]["role"] = "assistant"
    words = ["Hello", "!", " How", " can", " I", " help", " you", "?"]
    return [
        event({**first, "usage": None}, sep),
        *(event({**chunk(w), "usage": None}, sep) for w in words),
        event({**chunk("", "stop"), "usage": None}, sep),
        event(USAGE_CHUNK, sep),
        event("[DONE]", sep),
    ]


@dataclass(frozen=True)
class Case:
    events: list[bytes]
    strip: bool
    sent: list[int]  # indexes of the events the client gets
    usage: Usage | None
    chunks: int | None  # None: not checked
    done: bytes | None
    rest: bytes = b""


V = vllm_events()
VR = vllm_events(b"\r\n\r\n")
VMIX = [e if i % 2 else e.replace(b"\n\n", b"\r\n\r\n") for i, e in enumerate(V)]
PARSED = Usage(12, 8, 4)
WITH_CHOICES = event(chunk("", "stop", usage={"prompt_tokens": 3, "completion_tokens": 2}))
PING = b": ping\n\n"

CASES = {
    "vllm, usage stripped": Case(V, True, list(range(10)), PARSED, 10, DONE),
    "vllm, usage kept": Case(V, False, list(range(11)), PARSED, None, DONE),
    "vllm with CRLF separators": Case(VR, True, list(range(10)), PARSED, 10, b"data: [DONE]\r\n\r\n"),
    "mixed separators": Case(VMIX, True, list(range(10)), PARSED, 10, VMIX[-1]),
    "no usage at all": Case([*V[:10], DONE], True, list(range(10)), None, 10, DONE),
    "usage on a chunk with choices is never stripped": Case(
        [V[0], V[1], WITH_CHOICES, DONE], True, [0, 1, 2], Usage(3, 2, 0), 3, DONE
    ),
    "keep-alive comments pass": Case([PING, V[0], PING, V[10], DONE], True, [0, 1, 2], PARSED, 1, DONE),
    "error event passes": Case(
        [V[0], event({"error": {"message": "boom", "type": "api_error"}})], True, [0, 1], None, 1, None
    ),
    "no [DONE]: cut off": Case(V[:5], True, [0, 1, 2, 3, 4], None, 5, None),
    "torn last event stays in rest": Case(
        [*V[:3], V[3][:20]], True, [0, 1, 2], None, 3, None, rest=V[3][:20]
    ),
    "unparsable usage chunk passes": Case(
        [V[0], b'data: {"usage": {"prompt_tokens": 1}\n\n', DONE], True, [0, 1], None, 1, DONE
    ),
    "usage null is no usage": Case(
        # No choices: no token counted.
        [V[0], event({"choices": [], "usage": None}), DONE],
        True,
        [0, 1],
        None,
        1,
        DONE,
    ),
    "[DONE] without a space": Case([V[0], b"data:[DONE]\n\n"], True, [0], None, 1, b"data:[DONE]\n\n"),
}


def run(tap: StreamTap, pieces: list[bytes]) -> tuple[bytes, list[bytes]]:
    out, dones = b"", []
    for p in pieces:
        data, done = tap.feed(p)
        out += data
        if done is not None:
            dones.append(done)
    return out, dones


def check(case: Case, tap: StreamTap, out: bytes, dones: list[bytes]) -> None:
    assert out == b"".join(case.events[i] for i in case.sent)
    assert dones == ([case.done] if case.done is not None else [])
    assert tap.usage == case.usage
    if case.chunks is not None:
        assert tap.chunks == case.chunks
    assert tap.rest() == case.rest
    assert tap.rest() == b""


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_tap_by_event(case: Case) -> None:
    tap = StreamTap(case.strip)
    check(case, tap, *run(tap, case.events))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_tap_whole_stream_at_once(case: Case) -> None:
    tap = StreamTap(case.strip)
    check(case, tap, *run(tap, [b"".join(case.events)]))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_tap_byte_by_byte(case: Case) -> None:
    stream = b"".join(case.events)
    tap = StreamTap(case.strip)
    check(case, tap, *run(tap, [stream[i : i + 1] for i in range(len(stream))]))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_tap_random_chunks(case: Case) -> None:
    stream = b"".join(case.events)
    rng = random.Random(len(stream))
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(stream)), min(8, len(stream) - 1)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        tap = StreamTap(case.strip)
        check(case, tap, *run(tap, pieces))


@pytest.mark.parametrize(("events", "done"), [(V, DONE), (VR, b"data: [DONE]\r\n\r\n")], ids=["LF", "CRLF"])
@pytest.mark.parametrize("strip", [True, False])
def test_vllm_stream_split_at_every_position(events: list[bytes], done: bytes, strip: bool) -> None:
    """Every cut of a real stream into two reads: the client gets the same bytes, usage is read."""
    stream = b"".join(events)
    usage_event = events[-2]
    assert usage_event in stream and done == events[-1]
    expect = stream.replace(usage_event, b"" if strip else usage_event).removesuffix(done)
    for i in range(len(stream) + 1):
        tap = StreamTap(strip)
        out, dones = run(tap, [stream[:i], stream[i:]])
        assert out == expect, i
        assert dones == [done], i
        assert tap.usage == PARSED, i
        assert tap.rest() == b"", i


# -- JSON bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expect"),
    [
        ({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}, Usage(5, 7, 0)),
        ({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 3}}, Usage(5, 0, 3)),
        ({"prompt_tokens": 5, "prompt_tokens_details": None}, Usage(5, 0, 0)),
        ({"prompt_tokens": None, "completion_tokens": None}, Usage(0, 0, 0)),
        ({"prompt_tokens": 9, "total_tokens": 9}, Usage(9, 0, 0)),  # embeddings
        ({}, Usage(0, 0, 0)),
        (None, None),
        ("12", None),
        ([1, 2], None),
    ],
)
def test_usage_parse(usage: object, expect: Usage | None) -> None:
    assert Usage.parse(usage) == expect


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        (json.dumps({"id": "x", "choices": [], "usage": USAGE}).encode(), PARSED),
        (
            json.dumps(
                {"object": "list", "data": [], "usage": {"prompt_tokens": 4, "total_tokens": 4}}
            ).encode(),
            Usage(4, 0, 0),
        ),
        (b'{"id": "x", "choices": []}', None),
        (b'{"usage": null}', None),
        (b"not json", None),
        (b"[1, 2]", None),
        (b"", None),
        (b'"usage"', None),
    ],
)
def test_from_body(body: bytes, expect: Usage | None) -> None:
    assert from_body(body) == expect


def test_an_event_that_never_ends_is_too_large_not_held_forever() -> None:
    from m2a.gateway.engine_http import AnswerTooLarge
    from m2a.gateway.usage import MAX_EVENT_BYTES

    tap = StreamTap(strip_usage=False)
    piece = b"data: " + b"x" * (1 << 20)
    sent, _ = tap.feed(event(chunk("a")) + piece)  # a whole event, then the start of an endless one
    assert sent == event(chunk("a"))
    with pytest.raises(AnswerTooLarge):
        for _ in range(MAX_EVENT_BYTES // len(piece) + 1):
            tap.feed(b"x" * len(piece))
    assert tap.rest() == b""  # what it held is dropped, not sent
