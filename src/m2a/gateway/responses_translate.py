"""The Responses API in terms of chat completions: a ``/v1/responses`` request becomes a chat request,
and a chat answer becomes a Response object. Pure functions and small classes, no I/O.

Request → chat (decisions):

- ``instructions`` → a system message first. It applies to this response only: as in OpenAI's API
  it is not carried over to a response that continues with ``previous_response_id`` (the stored
  history holds no instructions).
- ``input``: a string is one user message. Items: ``message`` (roles user, system, developer,
  assistant; content a string or parts ``input_text``, ``input_image``, assistant ``output_text``
  / ``refusal``); ``function_call`` items join the assistant message before them as its
  ``tool_calls`` (``call_id`` → the tool call's id); ``function_call_output`` → a ``tool`` message.
  Text-only content becomes one string (chat templates of small engines expect strings), parts
  joined by newlines. ``developer`` becomes ``system`` (templates that know no developer role).
  ``input_image`` becomes an ``image_url`` part where the model may take images (the engine
  decides), else a 400; ``input_file`` and images by ``file_id`` are refused with a 400 naming them.
  ``reasoning`` items a client sends back are kept with its input but not sent to the engine
  (chat engines take no reasoning input). A ``function_call_output`` must answer a call made
  earlier in the conversation (400 otherwise, as OpenAI).
- tools of type ``function`` → chat tools; other types belong to hosted (server-side) tools
  (``gateway/responses_api.py`` registry) or are refused with a 400 naming the type.
  ``tool_choice`` (auto, none, required, a function, ``allowed_tools``) maps to chat's.
- ``temperature``, ``top_p``, ``user``, ``parallel_tool_calls`` pass as they are;
  ``max_output_tokens`` → ``max_tokens``; ``text.format`` (``json_schema`` / ``json_object``) →
  ``response_format``. ``metadata`` and ``store`` stay with the response (not sent to engines);
  ``reasoning``, ``truncation``, ``include``, ``service_tier`` … are accepted and echoed, not
  acted on (chat engines have no such knobs). ``background``, ``conversation`` and ``prompt``
  (features of OpenAI's platform m2a does not have) are refused with a 400.

Chat → Response: the answer's text is a ``message`` item with one ``output_text`` part (its
``annotations`` are those the request's hosted tools give its text, ``file_search``'s citations, else
``[]``), each tool call a ``function_call`` item (``call_id`` is the chat tool call's id); usage as
``input_tokens`` / ``output_tokens`` / ``total_tokens`` with ``cached_tokens`` and
``reasoning_tokens`` details; ``finish_reason`` ``length`` → ``incomplete`` (``max_output_tokens``),
``content_filter`` → ``incomplete`` (``content_filter``), else ``completed``. Ids are ``resp_…``,
``msg_…``, ``fc_…`` (and ``fco_…`` for a function call output among input items).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from m2a.gateway import schemas
from m2a.gateway.errors import GatewayError

# ---------------------------------------------------------------- ids


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(24)


# ---------------------------------------------------------------- the request body


class _M(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class FunctionTool(_M):
    type: Literal["function"]
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FormatText(_M):
    type: Literal["text"]


class FormatJSONObject(_M):
    type: Literal["json_object"]


class FormatJSONSchema(_M):
    type: Literal["json_schema"]
    name: FunctionName
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextParam(_M):
    format: (
        Annotated[FormatText | FormatJSONObject | FormatJSONSchema, Field(discriminator="type")] | None
    ) = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningParam(_M):
    effort: str | None = None
    summary: str | None = None


MetaKey = Annotated[str, Field(max_length=64)]
MetaValue = Annotated[str, Field(max_length=512)]


class CreateRequest(_M):
    """POST /v1/responses (items in ``input`` and ``tools`` are checked by the functions below)."""

    model: Annotated[str, Field(min_length=1)] | None = None
    input: str | list[Any] | None = None
    instructions: str | None = None
    previous_response_id: Annotated[str, Field(min_length=1)] | None = None
    tools: list[Any] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    temperature: schemas.Temperature | None = None
    top_p: schemas.TopP | None = None
    max_output_tokens: schemas.PositiveInt | None = None
    max_tool_calls: schemas.PositiveInt | None = None
    text: TextParam | None = None
    parallel_tool_calls: bool | None = None
    metadata: Annotated[dict[MetaKey, MetaValue], Field(max_length=16)] | None = None
    user: str | None = None
    store: bool | None = None
    stream: schemas.StreamFlag = False
    reasoning: ReasoningParam | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    service_tier: str | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


def validate_request(body: object) -> CreateRequest:
    """The request, checked: 400 naming the field for a body that breaks the schema."""
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.", code="invalid_request")
    try:
        req = CreateRequest.model_validate(body)
    except ValidationError as exc:
        err = schemas._request_error(body, exc)  # the gateway's one way to name a field's error
        raise GatewayError(400, err.message, param=err.param, code="invalid_request") from None
    for name, what in (
        ("background", "Background responses"),
        ("conversation", "The Conversations API"),
        ("prompt", "Stored prompt templates"),
    ):
        value = getattr(req, name)
        if value not in (None, False):
            raise GatewayError(
                400, f"{what} ('{name}') are not supported by this gateway.", param=name, code="unsupported"
            )
    if req.input is None:
        raise GatewayError(
            400, "Missing required parameter: 'input'.", param="input", code="missing_required"
        )
    if isinstance(req.input, list) and not req.input and req.previous_response_id is None:
        raise GatewayError(400, "input: must not be empty.", param="input", code="invalid_request")
    return req


def _bad(param: str, message: str, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, f"{param}: {message}", param=param, code=code)


# ---------------------------------------------------------------- input items


@dataclass
class Turn:
    """One request's input: the items as stored (each with an id) and the chat messages they make."""

    items: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)


def _text_of(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _bad(param, "must be a string")
    return value


def _parts(
    content: Any, role: str, param: str, images: bool
) -> tuple[list[dict[str, Any]], str | list[dict[str, Any]]]:
    """(the parts as stored, the chat content) of a message's content."""
    if isinstance(content, str):
        kind = "output_text" if role == "assistant" else "input_text"
        part: dict[str, Any] = {"type": kind, "text": content}
        if kind == "output_text":
            part["annotations"] = []
        return [part], content
    if not isinstance(content, list) or not content:
        raise _bad(param, "must be a string or a non-empty array of content parts")
    stored: list[dict[str, Any]] = []
    chat: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        where = f"{param}.{j}"
        if not isinstance(p, dict):
            raise _bad(where, "must be an object")
        kind = p.get("type")
        if kind in ("input_text", "output_text", "text"):
            text = _text_of(p.get("text"), f"{where}.text")
            stored.append({**p, "text": text})
            chat.append({"type": "text", "text": text})
        elif kind == "refusal" and role == "assistant":
            text = _text_of(p.get("refusal"), f"{where}.refusal")
            stored.append(p)
            chat.append({"type": "text", "text": text})
        elif kind == "input_image" and role == "user":
            url = p.get("image_url")
            if not isinstance(url, str) or not url:
                raise _bad(
                    where,
                    "images are taken by 'image_url' (a URL or a data URL) here; 'file_id' is not supported",
                    "unsupported_image",
                )
            if not images:
                raise _bad(where, "this model does not take image input", "image_input_not_supported")
            detail = p.get("detail")
            image: dict[str, Any] = {"url": url}
            if detail in ("auto", "low", "high"):
                image["detail"] = detail
            stored.append(p)
            chat.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            raise _bad(
                f"{where}.type", "'input_file' content is not supported by this gateway", "unsupported"
            )
        else:
            allowed = "input_text, input_image" if role == "user" else "input_text"
            if role == "assistant":
                allowed = "output_text, refusal"
            raise _bad(f"{where}.type", f"'{kind}' is not a content part of a {role} message ({allowed})")
    if all(c["type"] == "text" for c in chat):
        return stored, "\n".join(c["text"] for c in chat)
    return stored, chat


def _tool_output(output: Any, param: str) -> str:
    """A function call's output as the tool message's text."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = []
        for j, p in enumerate(output):
            if not isinstance(p, dict) or p.get("type") not in ("input_text", "output_text"):
                raise _bad(
                    f"{param}.{j}", "only text parts ('input_text') are supported in a function call output"
                )
            texts.append(_text_of(p.get("text"), f"{param}.{j}.text"))
        return "\n".join(texts)
    raise _bad(param, "must be a string or an array of text parts")


def known_calls(history: Iterable[dict[str, Any]]) -> set[str]:
    """The tool call ids of assistant messages in a chat history."""
    ids: set[str] = set()
    for m in history:
        for tc in m.get("tool_calls") or ():
            if isinstance(tc, dict) and isinstance(tc.get("id"), str):
                ids.add(tc["id"])
    return ids


HostedInput = Callable[[dict[str, Any], str], list[dict[str, Any]] | None]


def read_input(
    value: str | list[Any],
    calls: set[str],
    images: bool = True,
    hosted: HostedInput | None = None,
) -> Turn:
    """The request's ``input`` as stored items and chat messages (``calls``: the tool call ids made
    earlier in the conversation; those of this input are added). ``hosted`` turns items of hosted
    tools (an MCP approval …) into chat messages, or returns None for a type it does not know."""
    turn = Turn()
    if isinstance(value, str):
        turn.items.append(
            {
                "type": "message",
                "id": new_id("msg_"),
                "role": "user",
                "content": [{"type": "input_text", "text": value}],
                "status": "completed",
            }
        )
        turn.messages.append({"role": "user", "content": value})
        return turn
    msgs = turn.messages
    for i, item in enumerate(value):
        where = f"input.{i}"
        if not isinstance(item, dict):
            raise _bad(where, "must be an object (an input item)")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad(f"{where}.role", "must be one of user, assistant, system, developer")
            stored, content = _parts(item.get("content"), role, f"{where}.content", images)
            if role != "user" and not isinstance(content, str):
                raise _bad(f"{where}.content", f"a {role} message takes text only")
            turn.items.append(
                {
                    "type": "message",
                    "id": item.get("id") if isinstance(item.get("id"), str) else new_id("msg_"),
                    "role": role,
                    "content": stored,
                    "status": item.get("status") if isinstance(item.get("status"), str) else "completed",
                }
            )
            msgs.append({"role": "system" if role == "developer" else role, "content": content})
        elif kind == "function_call":
            call_id = _text_of(item.get("call_id"), f"{where}.call_id")
            name = _text_of(item.get("name"), f"{where}.name")
            arguments = _text_of(item.get("arguments"), f"{where}.arguments")
            if not call_id:
                raise _bad(f"{where}.call_id", "must not be empty")
            turn.items.append(
                {
                    "type": "function_call",
                    "id": item.get("id") if isinstance(item.get("id"), str) else new_id("fc_"),
                    "call_id": call_id,
                    "name": name,
                    "arguments": arguments,
                    "status": "completed",
                }
            )
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = msgs[-1] if msgs else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                msgs.append({"role": "assistant", "content": None, "tool_calls": [call]})
            calls.add(call_id)
        elif kind == "function_call_output":
            call_id = _text_of(item.get("call_id"), f"{where}.call_id")
            if call_id not in calls:
                raise _bad(
                    f"{where}.call_id",
                    f"No tool call found for function call output with call_id {call_id}.",
                )
            text = _tool_output(item.get("output"), f"{where}.output")
            turn.items.append(
                {
                    "type": "function_call_output",
                    "id": item.get("id") if isinstance(item.get("id"), str) else new_id("fco_"),
                    "call_id": call_id,
                    "output": item.get("output"),
                    "status": "completed",
                }
            )
            msgs.append({"role": "tool", "tool_call_id": call_id, "content": text})
        elif kind == "reasoning":
            turn.items.append(item)  # kept with the input; chat engines take no reasoning input
        else:
            converted = hosted(item, where) if hosted is not None and isinstance(kind, str) else None
            if converted is None:
                raise _bad(f"{where}.type", f"input items of type '{kind}' are not supported here")
            turn.items.append(item)
            msgs.extend(converted)
    return turn


# ---------------------------------------------------------------- tools


def chat_tools(
    tools: list[Any] | None, hosted_types: Iterable[str]
) -> tuple[list[dict[str, Any]], list[tuple[int, dict[str, Any]]]]:
    """(chat tools for the function tools, the hosted tools' specs with their index)."""
    hosted = set(hosted_types)
    functions: list[dict[str, Any]] = []
    others: list[tuple[int, dict[str, Any]]] = []
    names: set[str] = set()
    for i, spec in enumerate(tools or ()):
        where = f"tools.{i}"
        if not isinstance(spec, dict):
            raise _bad(where, "must be an object")
        kind = spec.get("type")
        if kind == "function":
            try:
                tool = FunctionTool.model_validate(spec)
            except ValidationError as exc:
                err = schemas._request_error(spec, exc)
                param = f"{where}.{err.param}" if err.param else where
                raise _bad(param, err.message.split(": ", 1)[-1]) from None
            if tool.name in names:
                raise _bad(f"{where}.name", f"the function name '{tool.name}' is given twice")
            names.add(tool.name)
            fn: dict[str, Any] = {"name": tool.name}
            if tool.description is not None:
                fn["description"] = tool.description
            fn["parameters"] = tool.parameters if tool.parameters is not None else {"type": "object"}
            if tool.strict is not None:
                fn["strict"] = tool.strict
            functions.append({"type": "function", "function": fn})
        elif isinstance(kind, str) and kind in hosted:
            others.append((i, spec))
        else:
            supported = ", ".join(["function", *sorted(hosted)])
            raise _bad(
                f"{where}.type",
                f"the tool type '{kind}' is not supported by this gateway (supported: {supported})",
                "unsupported_tool",
            )
    return functions, others


def chat_tool_choice(
    choice: str | dict[str, Any] | None, tools: list[dict[str, Any]]
) -> tuple[Any, list[dict[str, Any]]]:
    """(chat's tool_choice or None, the tools offered: all, or those ``allowed_tools`` lists)."""
    if choice is None:
        return None, tools
    names = {t["function"]["name"] for t in tools}
    if isinstance(choice, str):
        if choice == "required" and not tools:
            raise _bad("tool_choice", "'required' needs at least one tool")
        return (choice if tools else None), tools
    kind = choice.get("type")
    if kind == "function":
        name = choice.get("name")
        if not isinstance(name, str) or name not in names:
            raise _bad("tool_choice.name", f"no function tool named '{name}' is given in tools")
        return {"type": "function", "function": {"name": name}}, tools
    if kind == "allowed_tools":
        mode = choice.get("mode", "auto")
        listed = choice.get("tools")
        if mode not in ("auto", "required") or not isinstance(listed, list):
            raise _bad("tool_choice", "allowed_tools takes 'mode' (auto or required) and a list of 'tools'")
        allowed: set[str] = set()
        for j, t in enumerate(listed):
            if not isinstance(t, dict) or t.get("type") != "function" or t.get("name") not in names:
                raise _bad(f"tool_choice.tools.{j}", "must name a function tool given in tools")
            allowed.add(t["name"])
        return mode, [t for t in tools if t["function"]["name"] in allowed]
    raise _bad(
        "tool_choice.type",
        f"a tool choice of type '{kind}' is not supported by this gateway (auto, none, required, function, "
        "allowed_tools)",
        "unsupported",
    )


def response_format(text: TextParam | None) -> dict[str, Any] | None:
    fmt = text.format if text is not None else None
    if fmt is None or isinstance(fmt, FormatText):
        return None
    if isinstance(fmt, FormatJSONObject):
        return {"type": "json_object"}
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
    if fmt.description is not None:
        schema["description"] = fmt.description
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def chat_payload(
    req: CreateRequest,
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    tool_choice: Any,
    stream: bool,
) -> dict[str, Any]:
    """The chat completions request for one model call of a response."""
    payload: dict[str, Any] = {"model": model, "messages": messages}
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    if req.temperature is not None:
        payload["temperature"] = req.temperature
    if req.top_p is not None:
        payload["top_p"] = req.top_p
    if req.max_output_tokens is not None:
        payload["max_tokens"] = req.max_output_tokens
    if req.user is not None:
        payload["user"] = req.user
    if tools:
        payload["tools"] = tools
        if tool_choice is not None:
            payload["tool_choice"] = tool_choice
        if req.parallel_tool_calls is not None:
            payload["parallel_tool_calls"] = req.parallel_tool_calls
    fmt = response_format(req.text)
    if fmt is not None:
        payload["response_format"] = fmt
    return payload


# ---------------------------------------------------------------- output


def message_item(
    text: str,
    status: str = "completed",
    item_id: str | None = None,
    annotations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": annotations or [], "logprobs": []}
    return {
        "type": "message",
        "id": item_id or new_id("msg_"),
        "status": status,
        "role": "assistant",
        "content": [part],
    }


def function_call_item(
    call_id: str, name: str, arguments: str, status: str = "completed", item_id: str | None = None
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id or new_id("fc_"),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


@dataclass
class ToolCall:
    id: str  # the chat tool call's id: the item's call_id
    name: str
    arguments: str


@dataclass
class Round:
    """What one model call gave: its text, tool calls, why it stopped, its usage, or its error."""

    text: str | None = None
    calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # an error event in the stream (OpenAI's error object)
    ended: bool = False  # the engine's answer arrived whole (a stream: its end seen)

    def assistant(self) -> dict[str, Any]:
        """The answer as a chat message, for the history."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.calls:
            msg["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.calls
            ]
        elif self.text is None:
            msg["content"] = ""
        return msg

    @property
    def item_status(self) -> str:
        return "incomplete" if self.finish_reason in ("length", "content_filter") else "completed"


def answer_round(answer: Any) -> Round:
    """A whole chat answer (parsed JSON) as a round."""
    r = Round(ended=True)
    if not isinstance(answer, dict):
        r.error = {"code": "server_error", "message": "the engine's answer is not a JSON object"}
        return r
    r.usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else None
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    msg = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = msg.get("content")
    r.text = content if isinstance(content, str) else None
    reason = choice.get("finish_reason")
    r.finish_reason = reason if isinstance(reason, str) else None
    for tc in msg.get("tool_calls") or ():
        if not isinstance(tc, dict):
            continue
        fn = tc.get("function") if isinstance(tc.get("function"), dict) else {}
        args = fn.get("arguments")
        r.calls.append(
            ToolCall(
                tc["id"] if isinstance(tc.get("id"), str) and tc["id"] else new_id("call_"),
                fn.get("name") if isinstance(fn.get("name"), str) else "",
                args if isinstance(args, str) else "{}",
            )
        )
    return r


Annotate = Callable[[str], list[dict[str, Any]]]  # a message's text → its output_text annotations


def round_items(
    r: Round, hosted: Callable[[str], bool], annotate: Annotate | None = None
) -> list[dict[str, Any]]:
    """The output items of a whole round (hosted tool calls excepted: their items come from the tool);
    ``annotate`` gives a message's annotations (a hosted tool's citations)."""
    items: list[dict[str, Any]] = []
    if r.text or not r.calls:
        text = r.text or ""
        notes = annotate(text) if annotate is not None and text else None
        items.append(message_item(text, r.item_status, annotations=notes))
    items += [function_call_item(c.id, c.name, c.arguments) for c in r.calls if not hosted(c.name)]
    return items


class Draft:
    """A response being made: its output items, summed usage and status, as a Response object."""

    def __init__(
        self,
        req: CreateRequest,
        model: str,
        response_id: str | None = None,
        created_at: int | None = None,
    ) -> None:
        self.id = response_id or new_id("resp_")
        self.created_at = created_at or int(time.time())
        self.req = req
        self.model = model
        self.output: list[dict[str, Any]] = []
        self.input_tokens = self.output_tokens = self.cached_tokens = self.reasoning_tokens = 0
        self.counted = False
        self.status = "in_progress"
        self.incomplete: str | None = None
        self.error: dict[str, Any] | None = None
        self.completed_at: int | None = None

    def add_usage(self, usage: dict[str, Any] | None) -> None:
        if not isinstance(usage, dict):
            return

        def num(d: Any, key: str) -> int:
            v = d.get(key) if isinstance(d, dict) else None
            return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0

        self.counted = True
        self.input_tokens += num(usage, "prompt_tokens")
        self.output_tokens += num(usage, "completion_tokens")
        self.cached_tokens += num(usage.get("prompt_tokens_details"), "cached_tokens")
        self.reasoning_tokens += num(usage.get("completion_tokens_details"), "reasoning_tokens")

    def end(self, r: Round | None = None, status: str | None = None) -> None:
        """Settle the status from the last round (or as given: cancelled, failed)."""
        if status is not None:
            self.status = status
        elif r is not None and r.error is not None:
            if r.error.get("code") == "content_filter":
                self.status, self.incomplete = "incomplete", "content_filter"
            else:
                self.status = "failed"
                self.error = {
                    "code": r.error.get("code") or "server_error",
                    "message": str(r.error.get("message") or "the model call failed"),
                }
        elif r is not None and r.finish_reason == "length":
            self.status, self.incomplete = "incomplete", "max_output_tokens"
        elif r is not None and r.finish_reason == "content_filter":
            self.status, self.incomplete = "incomplete", "content_filter"
        else:
            self.status = "completed"
        if self.status == "completed":
            self.completed_at = int(time.time())

    def usage(self) -> dict[str, Any] | None:
        if not self.counted:
            return None
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        }

    def snapshot(self, output: bool = True) -> dict[str, Any]:
        """The Response object now (``output=False``: with no output yet, for the first events)."""
        req = self.req
        fmt = req.text.format.model_dump(by_alias=True) if req.text and req.text.format else {"type": "text"}
        text: dict[str, Any] = {"format": fmt}
        if req.text is not None and req.text.verbosity is not None:
            text["verbosity"] = req.text.verbosity
        reasoning = (
            req.reasoning.model_dump() if req.reasoning is not None else {"effort": None, "summary": None}
        )
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "background": False,
            "completed_at": self.completed_at,
            "error": self.error,
            "incomplete_details": {"reason": self.incomplete} if self.incomplete else None,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": req.max_tool_calls,
            "model": self.model,
            "output": list(self.output) if output else [],
            "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
            "previous_response_id": req.previous_response_id,
            "reasoning": reasoning,
            "service_tier": req.service_tier or "default",
            "store": req.store is not False,
            "temperature": req.temperature if req.temperature is not None else 1.0,
            "text": text,
            "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
            "tools": list(req.tools or []),
            "top_logprobs": req.top_logprobs if req.top_logprobs is not None else 0,
            "top_p": req.top_p if req.top_p is not None else 1.0,
            "truncation": req.truncation or "disabled",
            "usage": self.usage() if output else None,
            "user": req.user,
            "metadata": dict(req.metadata or {}),
        }
