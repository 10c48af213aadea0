"""Validation of OpenAI API request bodies against OpenAI's own schema, before they reach an engine.

The models only validate: after a body passes, the gateway forwards the original JSON dict, never a
re-serialization of these models. Known fields are checked strictly (no string-to-number or bool-to-int
coercion, enums, ranges, message roles); unknown fields are allowed everywhere, since engines such as vLLM
accept extensions (``top_k``, ``min_p``, ``priority``, ...). Every model is built once, at import time.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12


class RequestError(Exception):
    """A request body that does not match the OpenAI schema."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


_M = TypeVar("_M", bound=_Model)


# ---------------------------------------------------------------- shared field types
NonEmptyStr = Annotated[str, Field(min_length=1)]
Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
N = Annotated[int, Field(ge=1, le=128)]
PositiveInt = Annotated[int, Field(ge=1)]
LogitBias = dict[str, Annotated[float, Field(ge=-100, le=100)]]
Stop = str | Annotated[list[str], Field(max_length=4)]
FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
# ``"stream": null`` means "not streaming"; exposed as a plain bool.
StreamFlag = Annotated[bool, BeforeValidator(lambda v: False if v is None else v)]


@with_config(ConfigDict(strict=True, extra="allow"))
class StreamOptions(TypedDict):
    include_usage: NotRequired[bool]
    continuous_usage_stats: NotRequired[bool]  # vLLM extension


# ---------------------------------------------------------------- content parts
class TextPart(_Model):
    type: Literal["text"]
    text: str


class RefusalPart(_Model):
    type: Literal["refusal"]
    refusal: str


class ImageURL(_Model):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Model):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Model):
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(_Model):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileRef(_Model):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(_Model):
    type: Literal["file"]
    file: FileRef


UserPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]
TextContent = str | Annotated[list[TextPart], Field(min_length=1)]


# ---------------------------------------------------------------- messages
class FunctionCall(_Model):
    name: str
    arguments: str


class ToolCall(_Model):
    id: str
    type: Literal["function"]
    function: FunctionCall


class SystemMessage(_Model):
    role: Literal["system"]
    content: TextContent
    name: str | None = None


class DeveloperMessage(_Model):
    role: Literal["developer"]
    content: TextContent
    name: str | None = None


class UserMessage(_Model):
    role: Literal["user"]
    content: str | Annotated[list[UserPart], Field(min_length=1)]
    name: str | None = None


class AssistantMessage(_Model):
    role: Literal["assistant"]
    content: str | Annotated[list[AssistantPart], Field(min_length=1)] | None = None
    refusal: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None  # legacy


class ToolMessage(_Model):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: str


class FunctionMessage(_Model):  # legacy
    role: Literal["function"]
    name: str
    content: str | None


Message = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
    Field(discriminator="role"),
]


# ---------------------------------------------------------------- tools and response formats
class FunctionDef(_Model):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Model):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Model):
    name: str


class NamedToolChoice(_Model):
    type: Literal["function"]
    function: NamedFunction


class TextFormat(_Model):
    type: Literal["text"]


class JSONObjectFormat(_Model):
    type: Literal["json_object"]


class JSONSchema(_Model):
    name: FunctionName
    description: str | None = None
    # ``schema`` shadows a BaseModel attribute, hence the alias.
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class JSONSchemaFormat(_Model):
    type: Literal["json_schema"]
    json_schema: JSONSchema


ResponseFormat = Annotated[TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")]


# ---------------------------------------------------------------- requests
class ChatCompletionRequest(_Model):
    """POST /v1/chat/completions."""

    model: NonEmptyStr
    messages: Annotated[list[Message], Field(min_length=1)]
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: N | None = None
    stream: StreamFlag = False
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    user: str | None = None
    seed: int | None = None
    tools: Annotated[list[Tool], Field(min_length=1)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    service_tier: str | None = None
    metadata: dict[str, str] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    store: bool | None = None


TokenIds = Annotated[list[int], Field(min_length=1)]


class CompletionRequest(_Model):
    """POST /v1/completions (legacy)."""

    model: NonEmptyStr
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    )
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: N | None = None
    stream: StreamFlag = False
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None
    best_of: PositiveInt | None = None
    suffix: str | None = None
    user: str | None = None
    seed: int | None = None


class EmbeddingRequest(_Model):
    """POST /v1/embeddings."""

    model: NonEmptyStr
    input: (
        NonEmptyStr
        | Annotated[list[NonEmptyStr], Field(min_length=1, max_length=2048)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=2048)]
    )
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: PositiveInt | None = None
    user: str | None = None

    @property
    def stream(self) -> bool:
        return False


# ---------------------------------------------------------------- errors
_TAG_KEYS = ("role", "type")  # the discriminators used above


def _step(cur: object, elem: int | str) -> bool:
    """Whether ``elem`` indexes into ``cur`` (a key of a dict, an index of a list)."""
    if isinstance(cur, dict):
        return elem in cur
    return isinstance(cur, list) and isinstance(elem, int) and 0 <= elem < len(cur)


def _clean_path(body: object, loc: tuple[int | str, ...], missing: bool) -> list[int | str]:
    """Map pydantic's ``loc`` onto the request body, dropping union tags and union-member labels.

    Walks the body alongside ``loc``: an element is kept only if it indexes into the body, or names
    the missing field of a "missing" error. A discriminator value that is also a key of the same dict
    (``{"type": "text", "text": ...}``, ``{"type": "function", "function": ...}``) is taken for a
    key only if the next element leads into that key's value.
    """
    path: list[int | str] = []
    cur: Any = body
    last = len(loc) - 1
    for i, elem in enumerate(loc):
        if _step(cur, elem):
            if i < last and isinstance(cur, dict) and any(cur.get(k) == elem for k in _TAG_KEYS):
                nxt, val = loc[i + 1], cur[elem]
                leads_in = _step(val, nxt) or (i + 1 == last and missing and isinstance(val, dict))
                if nxt == elem or not leads_in:
                    continue  # a union tag
            path.append(elem)
            cur = cur[elem]
        elif i == last and missing and isinstance(cur, dict):
            path.append(elem)
    return path


def _describe(body: object, err: Any) -> tuple[list[int | str], str, bool]:
    """(path, message, whether the error is a plain type mismatch) for one pydantic error."""
    kind = err["type"]
    path = _clean_path(body, err["loc"], kind == "missing")
    msg = err["msg"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx") or {}
        path.append(str(ctx.get("discriminator", "type")).strip("'"))
        if kind == "union_tag_not_found":
            msg = "Field required"
        else:
            head, _, tail = str(ctx.get("expected_tags", "")).rpartition(", ")
            msg = f"Input should be {head} or {tail}" if head else f"Input should be {tail}"
    mismatch = kind.endswith("_type") or (kind == "literal_error" and not isinstance(err["input"], str))
    return path, msg, mismatch


def _request_error(body: object, exc: ValidationError) -> RequestError:
    described = [_describe(body, e) for e in exc.errors(include_url=False)]
    first = described[0][0]
    # Several errors under the first one's path are the alternatives of a union: report a constraint
    # error before a plain type mismatch, then the one that got deepest into the value, then the first.
    path, msg, _ = max(
        (d for d in described if d[0][: len(first)] == first), key=lambda d: (not d[2], len(d[0]))
    )
    param = ".".join(str(p) for p in path) or None
    return RequestError(f"{param}: {msg}" if param else msg, param)


def _validate(model: type[_M], body: object) -> _M:
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object", None)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _request_error(body, exc) from None


def validate_chat(body: object) -> ChatCompletionRequest:
    """Validate a POST /v1/chat/completions body; raise RequestError if it breaks OpenAI's schema."""
    req = _validate(ChatCompletionRequest, body)
    for i, m in enumerate(req.messages):
        if isinstance(m, AssistantMessage) and m.content is None and not m.tool_calls and not m.function_call:
            raise RequestError(
                f"messages.{i}.content: Field required unless tool_calls is given", f"messages.{i}.content"
            )
    if req.tool_choice is not None and req.tool_choice != "none" and not req.tools:
        raise RequestError("tool_choice: only allowed when tools are specified", "tool_choice")
    if req.top_logprobs is not None and not req.logprobs:
        raise RequestError("top_logprobs: requires logprobs to be true", "top_logprobs")
    return req


def validate_completion(body: object) -> CompletionRequest:
    """Validate a POST /v1/completions body; raise RequestError if it breaks OpenAI's schema."""
    return _validate(CompletionRequest, body)


def validate_embedding(body: object) -> EmbeddingRequest:
    """Validate a POST /v1/embeddings body; raise RequestError if it breaks OpenAI's schema."""
    return _validate(EmbeddingRequest, body)
