"""Chat completion chunks (SSE) as Responses API stream events, each with its ``sequence_number``.

A streamed response is ``response.created`` and ``response.in_progress`` (the Response object with
no output yet), then per output item: ``response.output_item.added``; for a message
``response.content_part.added``, ``response.output_text.delta`` …, ``response.output_text.done``,
``response.content_part.done``; for a function call ``response.function_call_arguments.delta`` …,
``response.function_call_arguments.done``; then ``response.output_item.done``. A message's
annotations (a hosted tool's citations, ``RoundStream(annotate=...)``) are known once its text is
whole: each is a ``response.output_text.annotation.added`` event just before
``response.output_text.done``. A hosted tool's item comes whole once its call has run (added, the
call's own phase events where OpenAI has them, ``CALL_PHASES``: ``response.file_search_call.in_progress``,
``.searching``, ``.completed``; done). It ends with
``response.completed``, ``response.incomplete`` or ``response.failed`` carrying the whole Response
object (an ``error`` event first where the model call failed). Every event is ``event: <type>`` and
``data: <json>``, as OpenAI sends them; there is no ``[DONE]``.

``EventWriter`` numbers and frames the events of one response (its numbers run on across the model
calls a response with hosted tools makes). ``RoundStream`` reads one model call's chat stream: a
message item opens with the first text, a function call item once its name is known (text after a
call has begun opens a new message item); the message closes when a call begins, calls stay open
until the call's stream ends and then close in order (each event names its item, so interleaved
calls stay right). Calls of hosted tools (``hosted(name)``) get no function call item: the tool's
own item comes when it has run. Decisions:

- the engine's usage chunk (the gateway asks for it) is summed into the response's ``usage``;
  where an engine sends none (llama.cpp), the gateway's own estimate is, as the ledger bills it
  (``responses_api.estimated``: the prompt from its text, one output token per chat event);
- an error event in the chat stream (the engine died: 502; a guardrail stopped the answer:
  ``content_filter``) ends the round; ``content_filter`` makes the response ``incomplete``
  (``incomplete_details.reason: content_filter``), anything else ``failed`` after an ``error``
  event;
- an SSE event larger than ``MAX_EVENT_BYTES`` from an engine fails the response instead of
  growing a buffer without bound.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from m2a.gateway.responses_translate import (
    Annotate,
    Draft,
    Round,
    ToolCall,
    function_call_item,
    message_item,
    new_id,
)

MAX_EVENT_BYTES = 8 << 20
# A hosted call item's own events between added and done, as OpenAI streams them (the last one only
# when the call completed): what the item's ``status`` went through.
CALL_PHASES: dict[str, tuple[str, ...]] = {"file_search_call": ("in_progress", "searching", "completed")}
_EVENT_END = re.compile(rb"\r?\n\r?\n")


class EventWriter:
    """Frames one response's events as SSE, numbering them from 0."""

    def __init__(self) -> None:
        self.seq = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def started(self, draft: Draft) -> bytes:
        snapshot = draft.snapshot(output=False)
        return self("response.created", response=snapshot) + self("response.in_progress", response=snapshot)

    def finished(self, draft: Draft) -> bytes:
        """The last event (``error`` first for a failed response)."""
        out = b""
        if draft.status == "failed" and draft.error is not None:
            out += self("error", code=draft.error.get("code"), message=draft.error.get("message"), param=None)
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
            draft.status, "response.failed"
        )
        return out + self(kind, response=draft.snapshot())

    def item(self, draft: Draft, item: dict[str, Any]) -> bytes:
        """A whole item at once (a hosted tool's), added and done (with its phases between)."""
        index = len(draft.output)
        draft.output.append(item)
        kind = item.get("type")
        phases = CALL_PHASES.get(kind) if isinstance(kind, str) else None
        if not phases:
            return self("response.output_item.added", output_index=index, item=item) + self(
                "response.output_item.done", output_index=index, item=item
            )
        out = self("response.output_item.added", output_index=index, item={**item, "status": "in_progress"})
        for phase in phases:
            if phase == "completed" and item.get("status") != "completed":
                break
            out += self(f"response.{kind}.{phase}", output_index=index, item_id=item.get("id"))
        return out + self("response.output_item.done", output_index=index, item=item)


@dataclass
class _Call:
    """One tool call of the chat stream, by its chat index."""

    id: str | None = None
    name: str = ""
    arguments: str = ""
    hosted: bool = False
    index: int | None = None  # its output item's index, once opened (never for hosted ones)
    item: dict[str, Any] | None = None


class RoundStream:
    """One model call's chat SSE stream, translated into the response's events."""

    def __init__(
        self, draft: Draft, emit: EventWriter, hosted: Callable[[str], bool], annotate: Annotate | None = None
    ) -> None:
        self.draft = draft
        self.emit = emit
        self.hosted = hosted
        self.annotate = annotate  # a message's text → its annotations (hosted tools' citations)
        self.result = Round()
        self.chunks = 0  # chat events with choices: the output count where the engine sends no usage
        self._buf = b""
        self._text: list[str] = []  # the whole round's text (all its message items)
        self._msg: dict[str, Any] | None = None  # the open message item
        self._msg_index = -1
        self._msg_text: list[str] = []
        self._calls: dict[int, _Call] = {}
        self._stopped = False  # an error ended the round: later chunks are ignored

    # -- input ---------------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """Events for the chat stream's bytes so far (whole SSE events only)."""
        self._buf += data
        out: list[bytes] = []
        pos = 0
        for m in _EVENT_END.finditer(self._buf):
            raw = self._buf[pos : m.start()]
            pos = m.end()
            out.append(self._event(raw))
        self._buf = self._buf[pos:]
        if len(self._buf) > MAX_EVENT_BYTES and not self._stopped:
            self._buf = b""
            self._fail("server_error", "the engine sent an event too large to relay")
        return b"".join(out)

    def _event(self, raw: bytes) -> bytes:
        data = b"".join(line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:"))
        if data == b"[DONE]":
            self.result.ended = True
            return b""
        if not data or self._stopped:
            return b""
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            return b""  # not JSON (a comment, a keep-alive): nothing to relay
        if not isinstance(chunk, dict):
            return b""
        if chunk.get("error") is not None:
            err = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
            self.result.error = err
            self._stopped = True
            return b""
        if isinstance(chunk.get("usage"), dict):
            self.result.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return b""
        out = b""
        if choices:
            self.chunks += 1
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # one answer per response (n is never asked for)
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            content = delta.get("content")
            if isinstance(content, str) and content:
                out += self._content(content)
            for tc in delta.get("tool_calls") or ():
                if isinstance(tc, dict):
                    out += self._tool_delta(tc)
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                self.result.finish_reason = reason
        return out

    def _fail(self, code: str, message: str) -> None:
        self.result.error = {"code": code, "message": message}
        self._stopped = True

    # -- message text --------------------------------------------------------------------------

    def _content(self, text: str) -> bytes:
        out = b""
        if self._msg is None:
            out += self._open_message()
        assert self._msg is not None
        self._msg_text.append(text)
        self._text.append(text)
        return out + self.emit(
            "response.output_text.delta",
            item_id=self._msg["id"],
            output_index=self._msg_index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _open_message(self) -> bytes:
        item = message_item("", "in_progress")
        item["content"] = []
        self._msg, self._msg_index, self._msg_text = item, len(self.draft.output), []
        self.draft.output.append(item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return self.emit("response.output_item.added", output_index=self._msg_index, item=item) + self.emit(
            "response.content_part.added",
            item_id=item["id"],
            output_index=self._msg_index,
            content_index=0,
            part=part,
        )

    def _close_message(self, status: str) -> bytes:
        item, index = self._msg, self._msg_index
        if item is None:
            return b""
        self._msg = None
        text = "".join(self._msg_text)
        notes = self.annotate(text) if self.annotate is not None and text else []
        done = message_item(text, status, item["id"], notes)
        self.draft.output[index] = done
        part = done["content"][0]
        ids = {"item_id": done["id"], "output_index": index, "content_index": 0}
        added = b"".join(
            self.emit("response.output_text.annotation.added", **ids, annotation_index=i, annotation=note)
            for i, note in enumerate(notes)
        )
        return (
            added
            + self.emit("response.output_text.done", **ids, text=text, logprobs=[])
            + self.emit("response.content_part.done", **ids, part=part)
            + self.emit("response.output_item.done", output_index=index, item=done)
        )

    # -- tool calls ----------------------------------------------------------------------------

    def _tool_delta(self, tc: dict[str, Any]) -> bytes:
        index = tc.get("index") if isinstance(tc.get("index"), int) else len(self._calls)
        call = self._calls.setdefault(index, _Call())
        if isinstance(tc.get("id"), str) and tc["id"] and call.id is None:
            call.id = tc["id"]
        fn = tc.get("function") if isinstance(tc.get("function"), dict) else {}
        if isinstance(fn.get("name"), str):
            call.name += fn["name"]
        args = fn.get("arguments") if isinstance(fn.get("arguments"), str) else ""
        out = b""
        if call.index is None and not call.hosted and call.name:
            if self.hosted(call.name):
                call.hosted = True
            else:
                out += self._open_call(call)
                if call.arguments:  # what came before the name was known
                    out += self._args_delta(call, call.arguments)
        call.arguments += args
        if args and call.index is not None:
            out += self._args_delta(call, args)
        return out

    def _open_call(self, call: _Call) -> bytes:
        out = self._close_message("completed")
        if call.id is None:
            call.id = new_id("call_")
        call.item = function_call_item(call.id, call.name, "", "in_progress")
        call.index = len(self.draft.output)
        self.draft.output.append(call.item)
        return out + self.emit("response.output_item.added", output_index=call.index, item=call.item)

    def _args_delta(self, call: _Call, delta: str) -> bytes:
        assert call.item is not None
        return self.emit(
            "response.function_call_arguments.delta",
            item_id=call.item["id"],
            output_index=call.index,
            delta=delta,
        )

    # -- the end -------------------------------------------------------------------------------

    def close(self) -> bytes:
        """The round's stream ended (or was cut): close the open items; ``result`` is complete."""
        r = self.result
        out = self._close_message(r.item_status)
        for key in sorted(self._calls):
            call = self._calls[key]
            if call.id is None:
                call.id = new_id("call_")
            call.arguments = call.arguments or "{}"
            if not call.hosted and call.index is None:
                if self.hosted(call.name):
                    call.hosted = True
                else:
                    out += self._open_call(call)
                    if call.arguments:
                        out += self._args_delta(call, call.arguments)
            r.calls.append(ToolCall(call.id, call.name, call.arguments))
            if call.hosted or call.item is None or call.index is None:
                continue
            done = function_call_item(call.id, call.name, call.arguments, "completed", call.item["id"])
            self.draft.output[call.index] = done
            out += self.emit(
                "response.function_call_arguments.done",
                item_id=done["id"],
                output_index=call.index,
                name=call.name,
                arguments=call.arguments,
            ) + self.emit("response.output_item.done", output_index=call.index, item=done)
        r.text = "".join(self._text) if self._text else None
        if r.text is None and not r.calls and r.error is None and r.ended:
            # An answer with no text and no calls is still a message (as a whole answer is).
            out += self._open_message() + self._close_message(r.item_status)
        return out
