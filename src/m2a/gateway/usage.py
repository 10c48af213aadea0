"""Token usage from engine answers: parsed from JSON bodies, or watched on SSE streams.

For streams the gateway asks the engine for a final usage chunk (``stream_options.include_usage``)
even when the client did not; ``StreamTap`` reads it and, if the client did not ask, drops it, so
the client sees exactly the stream it asked for.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from m2a.gateway.engine_http import AnswerTooLarge

_EVENT_END = re.compile(rb"\r?\n\r?\n")
MAX_EVENT_BYTES = 8 << 20  # one event of a stream, held until its end: a larger one ends the stream
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"([a-z_]+)"')


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0

    @classmethod
    def parse(cls, usage: object) -> Usage | None:
        if not isinstance(usage, dict):
            return None
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        try:
            fields = (usage.get("prompt_tokens"), usage.get("completion_tokens"), cached)
            counts = [int(v or 0) for v in fields]
            return cls(*(max(0, c) for c in counts))  # never a credit
        except (TypeError, ValueError, OverflowError):  # not numbers: no usage we can trust
            return None


def from_body(data: bytes) -> Usage | None:
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):  # an engine's odd answer must not fail the request
        return None
    return Usage.parse(payload.get("usage")) if isinstance(payload, dict) else None


def finish_reasons(data: bytes) -> list[str]:
    """The ``finish_reason`` values in an answer or chunk, in order (for the trace)."""
    return [m.decode() for m in _FINISH.findall(data)]


def _data(event: bytes) -> bytes | None:
    for line in event.splitlines():
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


class StreamTap:
    """Splits an SSE byte stream into events; notes usage and content chunks; holds back ``[DONE]``."""

    def __init__(self, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.usage: Usage | None = None
        self.chunks = 0  # events with choices: about one output token each, when usage is missing
        self.finish_reasons: list[str] = []
        self._buf = b""

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """Bytes to send on now, and the ``[DONE]`` event if it arrived (send it after settling).

        An event still unfinished past ``MAX_EVENT_BYTES`` is ``AnswerTooLarge`` (an engine that
        never ends its event must not fill the gateway's memory)."""
        scanned = max(0, len(self._buf) - 3)  # what is held has no event end; one may straddle
        self._buf += data
        out: list[bytes] = []
        done: bytes | None = None
        pos = 0
        for m in _EVENT_END.finditer(self._buf, scanned):
            event = self._buf[pos : m.end()]
            pos = m.end()
            payload = _data(event)
            if payload == b"[DONE]":
                done = event
                continue
            if payload and b'"usage"' in payload and self._take_usage(payload):
                continue
            if payload and b'"choices"' in payload and b'"choices":[]' not in payload:
                self.chunks += 1
                if b'"finish_reason"' in payload:
                    self.finish_reasons += finish_reasons(payload)
            out.append(event)
        self._buf = self._buf[pos:]
        if len(self._buf) > MAX_EVENT_BYTES:
            self._buf = b""
            raise AnswerTooLarge(f"an event of the engine's stream is larger than {MAX_EVENT_BYTES} bytes")
        return b"".join(out), done

    def _take_usage(self, payload: bytes) -> bool:
        """Record the usage in a chunk; True if the chunk is the usage-only one and must be dropped."""
        try:
            chunk: Any = json.loads(payload)
        except (ValueError, RecursionError):
            return False
        usage = Usage.parse(chunk.get("usage")) if isinstance(chunk, dict) else None
        if usage is None:
            return False
        self.usage = usage
        return self.strip_usage and not chunk.get("choices")

    def rest(self) -> bytes:
        """Whatever is left unsent when the stream ends without a blank line."""
        rest, self._buf = self._buf, b""
        return rest
