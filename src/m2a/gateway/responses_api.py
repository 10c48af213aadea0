"""OpenAI's Responses API (``/v1/responses``) on every chat engine, its state in m2a's store.

Routes: ``POST /v1/responses`` (create, streamed or not), ``GET /v1/responses/{id}``, ``DELETE
/v1/responses/{id}``, ``GET /v1/responses/{id}/input_items`` (OpenAI's list paging: ``after``,
``before``, ``limit`` 1-100, ``order`` default ``desc``) and ``POST /v1/responses/{id}/cancel``.

Decisions:

- **One request path.** Every model call a response makes is a chat completion run in process
  through the gateway's own pipeline (``Pipeline.handle`` for ``/v1/chat/completions``) with the
  caller's headers and the translated body (``responses_translate.py``): authentication, schema
  checks, grants, guardrails, quotas and priority, the ledger, routing and forwarding apply
  exactly as for chat, on vLLM, llama.cpp or a remote server alike. Their refusals (401, 404, 429
  with Retry-After, 400 ``content_filter`` …) reach the client in OpenAI's error shape, unchanged
  but for chat's field names (``max_tokens`` → ``max_output_tokens``, ``messages`` → ``input``).
  A streamed call's chat events are translated as they come (``responses_stream.py``): the inner
  streaming response runs as an ASGI app whose ``send`` translates, so its disconnect handling is
  chat's: a client that leaves aborts the engine request.
- **Scope.** A stored response belongs to its principal (``owner_of``): the same API key, or for
  an agent the same agent acting for the same subject. Anyone else (another key of the same team,
  another team) gets 404 as for an id that never existed, never 403; ``previous_response_id`` of
  someone else's response is 404 ``previous_response_not_found`` with ``param``.
- **State.** The response, its input items and the chat history to continue from are stored when
  it ends (``store`` defaults to true), before its last event is sent, so a client may chain at
  once. A continuation reads one row (``store/responses.py``). Responses expire after
  ``gateway.responses_retention_hours`` (30 days by default) and are pruned periodically. With an
  identity store the rows live in its database (SQLite or PostgreSQL); without one (a gateway
  with only the admin key) in a bounded in-memory store (1,000 responses, 64 MB), lost on restart.
- **Bounds.** The request body is limited like chat's (``gateway.max_body_bytes``, 413); the
  conversation a continuation sends to the engine is limited to the same size and to
  ``MAX_HISTORY_MESSAGES`` messages (400 ``conversation_too_long``); a response makes at most
  ``MAX_ROUNDS`` model calls (hosted tools) and keeps only its own output in memory.
- **Streams that end early.** A client that disconnects mid-stream leaves no response
  ``in_progress``: the engine request is aborted and the response is stored ``cancelled`` with
  what was generated (when ``store``). ``POST …/cancel`` cancels a stream in progress in this
  process the same way; a response that has ended cannot be cancelled (400), as in OpenAI's API
  for non-background responses. A stream in progress can be retrieved (``in_progress``) in the
  process serving it.
- **Hosted tools.** ``HOSTED_TOOLS`` maps a tool type (``mcp``, ``file_search``) to a factory
  that, given the request's tool spec, offers the model functions and runs their calls
  server-side: the model is called again with the results until it answers or calls a client
  function (``MAX_ROUNDS``, ``max_tool_calls``). Until a type is registered, a tool of that type is
  a 400 naming it; a function name offered twice (a client function and a hosted tool's, two hosted
  tools of one kind) is a 400 too. ``HOSTED_ITEMS`` turns a hosted tool's items sent back as input
  into chat messages. A toolset with ``annotate(text)`` gives each output message's text its
  ``output_text`` annotations (``file_search``'s ``file_citation``s), whole and streamed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from m2a.gateway import responses_trace
from m2a.gateway.body import parse_json, read_body
from m2a.gateway.errors import GatewayError
from m2a.gateway.extensions import Host
from m2a.gateway.quota import BYTES_PER_TOKEN, estimate_input
from m2a.gateway.responses_stream import EventWriter, RoundStream
from m2a.gateway.responses_translate import (
    CreateRequest,
    Draft,
    Round,
    Turn,
    answer_round,
    chat_payload,
    chat_tool_choice,
    chat_tools,
    known_calls,
    read_input,
    round_items,
    validate_request,
)
from m2a.principal import Principal
from m2a.store.responses import (
    MemoryResponses,
    Record,
    ResponseStore,
    SQLiteResponses,
    SQLResponses,
    now,
)

log = logging.getLogger("m2a.gateway.responses")

CHAT_ROUTE = "/v1/chat/completions"
MAX_HISTORY_MESSAGES = 2048  # messages a conversation may hold (instructions not counted)
MAX_ROUNDS = 8  # model calls per response (a hosted tool's result goes back to the model)
PRUNE_EVERY_S = 600.0
_SKIP_HEADERS = {b"content-length", b"content-type", b"transfer-encoding", b"content-encoding", b"expect"}


# ---------------------------------------------------------------- hosted tools (the seam)


@dataclass
class ToolContext:
    """What a hosted tool's factory gets besides its spec: who asks, and the request."""

    principal: Principal
    request: Request
    index: int  # the spec's place in ``tools``, for errors (``param=f"tools.{index}"``)
    # -- for tools whose calls span responses (an MCP call waiting for approval, mcp_tool.py) --
    previous_response_id: str | None = None  # the response this one continues
    input_items: list[dict[str, Any]] = field(default_factory=list)  # this request's input items
    response_id: str | None = None  # the id of the response being made
    # -- what the response is made with (file_search: guardrails, ``include``, earlier sources) --
    model: str | None = None  # the model that answers (its guardrail profile applies too)
    include: list[str] = field(default_factory=list)  # the request's ``include``
    history: list[dict[str, Any]] = field(default_factory=list)  # the chat so far, this input included


@dataclass
class HostedResult:
    """A hosted tool call that ran: the output item the client sees, the text the model gets."""

    item: dict[str, Any] | None
    output: str
    stop: bool = False  # the response ends after this round: the model is not called again (an approval)
    messages: list[dict[str, Any]] | None = None  # ``resume``'s: chat messages standing for the call


class HostedToolset(Protocol):
    """One hosted tool of a request (an MCP server …): functions for the model, run server-side."""

    functions: list[dict[str, Any]]  # chat tool definitions offered to the model

    def owns(self, name: str) -> bool: ...

    def items(self) -> list[dict[str, Any]]:
        """Output items that come first (an MCP server's tool list); may be none."""
        ...

    async def call(self, call_id: str, name: str, arguments: str) -> HostedResult: ...

    # Optional: ``async def resume(self) -> list[HostedResult]``, calls this request's input lets run
    # before the model's first round (an approved MCP call); each result's item comes first in the
    # output, its ``messages`` join the conversation.
    # Optional: ``def annotate(self, text: str) -> list[dict[str, Any]]``, the annotations of an output
    # message's text (``file_citation``s with their ``index`` in it), asked once the text is whole.


HostedTool = Callable[[dict[str, Any], ToolContext], Awaitable[HostedToolset]]
HostedItem = Callable[[dict[str, Any]], list[dict[str, Any]]]  # an item sent back → chat messages

HOSTED_TOOLS: dict[str, HostedTool] = {}
HOSTED_ITEMS: dict[str, HostedItem] = {}


def register_hosted_tool(kind: str, factory: HostedTool, items: dict[str, HostedItem] | None = None) -> None:
    """Serve tools of type ``kind`` server-side (the factory may raise GatewayError 400 for a bad
    spec); ``items``: how that tool's items sent back as input become chat messages."""
    HOSTED_TOOLS[kind] = factory
    HOSTED_ITEMS.update(items or {})


# ---------------------------------------------------------------- scope


def owner_of(p: Principal) -> str:
    """Who a stored response belongs to: one API key, or one agent acting for one subject."""
    team = p.team_id if p.team_id is not None else "-"
    if p.agent is not None:
        sub = hashlib.sha256(p.agent.subject.encode()).hexdigest()[:32] if p.agent.subject else "-"
        return f"t{team}/agent:{p.agent.agent_id}/sub:{sub}"
    return f"t{team}/key:{p.key_id}"


def not_found(response_id: str) -> GatewayError:
    return GatewayError(404, f"Response with id '{response_id}' not found.", code="response_not_found")


# Chat's names for what the client named otherwise, in errors the pipeline raises.
_PARAMS = {"max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens"}
_PREFIXES = (("messages", "input"), ("response_format", "text.format"), ("tools", "tools"))


def _renamed(exc: GatewayError) -> GatewayError:
    param = exc.param
    if param in _PARAMS:
        exc.message = exc.message.replace(param, _PARAMS[param])
        exc.param = _PARAMS[param]
    elif param is not None:
        for chat, ours in _PREFIXES:
            if param == chat or param.startswith(chat + "."):
                exc.param = ours
                break
    return exc


def stored_in(db: AsyncEngine | None) -> ResponseStore:
    """Where responses are kept: the store's database (its SQLite file through ``sqlite3`` itself,
    the fast path: ``store/responses.py``), else this process's memory."""
    if db is None:
        return MemoryResponses()
    if db.dialect.name == "sqlite" and db.url.database not in (None, "", ":memory:"):
        return SQLiteResponses(db.url.database)
    return SQLResponses(db)


def inner_request(outer: Request, body: bytes) -> Request:
    """A ``POST /v1/chat/completions`` request with the caller's headers and ``body``; after the
    body it hears what the caller's connection says (a disconnect)."""
    headers = [(k, v) for k, v in outer.scope["headers"] if k.lower() not in _SKIP_HEADERS]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = {
        **outer.scope,
        "method": "POST",
        "path": CHAT_ROUTE,
        "raw_path": CHAT_ROUTE.encode(),
        "query_string": b"",
        "headers": headers,
        "path_params": {},
    }
    sent = False

    async def receive() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await outer.receive()

    return Request(scope, receive)


# ---------------------------------------------------------------- one response being made


@dataclass
class Job:
    req: CreateRequest
    principal: Principal
    owner: str
    draft: Draft
    instructions: str | None
    convo: list[dict[str, Any]]  # the chat history so far: earlier turns, this input, this output
    turn: Turn
    tools: list[dict[str, Any]]
    tool_choice: Any
    toolsets: list[HostedToolset] = field(default_factory=list)
    preface: list[dict[str, Any]] = field(default_factory=list)  # the hosted tools' first items
    continued: bool = False  # it continues a stored response
    sent: dict[str, Any] = field(default_factory=dict)  # the last model call's chat request
    rounds: int = 0
    hosted_calls: int = 0
    cancelled: bool = False
    conversation: str = ""  # the first response of its chain (this one's id for a new chain)
    span: Any = None  # the request's span (responses_trace.py), when traced
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def owns(self, name: str) -> bool:
        return any(ts.owns(name) for ts in self.toolsets)

    def toolset(self, name: str) -> HostedToolset | None:
        return next((ts for ts in self.toolsets if ts.owns(name)), None)

    def annotations(self, text: str) -> list[dict[str, Any]]:
        """An output message's annotations: what the hosted tools give its text, by index."""
        notes: list[dict[str, Any]] = []
        for ts in self.toolsets:
            annotate = getattr(ts, "annotate", None)
            if annotate is not None:
                notes += annotate(text)
        return sorted(notes, key=lambda n: n.get("index", 0) if isinstance(n.get("index"), int) else 0)

    def payload(self, stream: bool) -> dict[str, Any]:
        messages = self.convo
        if self.instructions:
            messages = [{"role": "system", "content": self.instructions}, *messages]
        return chat_payload(self.req, self.draft.model, messages, self.tools, self.tool_choice, stream)


class Cancelled(Exception):
    """The response was cancelled (``POST …/cancel``) while streaming."""


class ResponsesAPI:
    """The ``/v1/responses`` routes, with what they share: the pipeline, the store, live streams."""

    def __init__(self, host: Host, store: ResponseStore | None = None) -> None:
        self.cfg = host.cfg
        self.access = host.access
        self.pipeline = host.pipeline
        self.pool = host.pool
        self.tracer = host.tracer
        self.store: ResponseStore = store or stored_in(host.db)
        self.retention = timedelta(hours=self.cfg.responses_retention_hours)
        self.live: dict[str, Job] = {}  # streams in progress in this process
        self._pruner: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/responses", self.create, methods=["POST"]),
            Route("/v1/responses/{response_id}", self.retrieve, methods=["GET"]),
            Route("/v1/responses/{response_id}", self.delete, methods=["DELETE"]),
            Route("/v1/responses/{response_id}/input_items", self.input_items, methods=["GET"]),
            Route("/v1/responses/{response_id}/cancel", self.cancel, methods=["POST"]),
        ]

    async def start(self) -> None:
        self._pruner = asyncio.create_task(self._prune_forever())

    async def close(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=10)
        closing = getattr(self.store, "close", None)
        if closing is not None:
            await closing()

    async def _prune_forever(self) -> None:
        every = max(1.0, min(PRUNE_EVERY_S, self.retention.total_seconds() / 4))
        while True:
            try:
                gone = await self.store.prune()
                if gone:
                    log.info("pruned %d expired responses", gone)
            except Exception:  # the database may blip: the next round prunes
                log.warning("could not prune expired responses", exc_info=True)
            await asyncio.sleep(every)

    # -- create ----------------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        principal = await self.access.principal(request)
        body = await read_body(request, self.cfg.max_body_bytes)
        req = validate_request(parse_json(body))
        owner = owner_of(principal)
        history: list[dict[str, Any]] = []
        conversation: str | None = None
        model = req.model
        if req.previous_response_id is not None:
            prev = await self.store.get(req.previous_response_id, owner, "history")
            if prev is None or prev.history is None:
                raise GatewayError(
                    404,
                    f"Previous response with id '{req.previous_response_id}' not found.",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            history, model = prev.history, model or prev.model
            conversation = prev.conversation
        if model is None:
            raise GatewayError(
                400, "Missing required parameter: 'model'.", param="model", code="missing_required"
            )
        span = None
        if self.tracer is not None:  # one trace: this request, its model calls and tool calls
            span = responses_trace.start(self.tracer, request, principal, model, bool(req.stream))
            request = responses_trace.traced(request, span)
        try:
            job = await self._job(request, principal, req, owner, history, model)
            job.conversation, job.span = conversation or job.draft.id, span
            responses_trace.identify(span, job.draft.id, job.conversation)
            resp = await (self._streamed(request, job) if req.stream else self._whole(request, job))
        except GatewayError as exc:
            responses_trace.end(span, exc.status, error=exc.code or "error")
            raise
        except BaseException as exc:
            responses_trace.end(span, 500, error=type(exc).__name__)
            raise
        if not isinstance(resp, EventStream):  # a stream's span ends with the stream
            d = job.draft
            responses_trace.end(span, resp.status_code, d.status, (d.input_tokens, d.output_tokens))
        return resp

    async def _job(
        self,
        request: Request,
        principal: Principal,
        req: CreateRequest,
        owner: str,
        history: list[dict[str, Any]],
        model: str,
    ) -> Job:
        """What making the response needs: its input read, tools set up, hosted calls resumed."""
        assert req.input is not None
        turn = read_input(req.input, known_calls(history), self._takes_images(model), _hosted_input)
        functions, hosted_specs = chat_tools(req.tools, HOSTED_TOOLS)
        tool_choice, offered = chat_tool_choice(req.tool_choice, functions)
        convo = history + turn.messages
        if len(convo) > MAX_HISTORY_MESSAGES:
            raise self._too_long(req, f"more than {MAX_HISTORY_MESSAGES} messages")
        draft = Draft(req, model)

        def context(i: int) -> ToolContext:
            return ToolContext(
                principal, request, i, req.previous_response_id, turn.items, draft.id,
                model=model, include=list(req.include or ()), history=convo,
            )  # fmt: skip

        toolsets = [await HOSTED_TOOLS[spec["type"]](spec, context(i)) for i, spec in hosted_specs]
        names = {f["function"]["name"] for f in functions}
        for (i, _), ts in zip(hosted_specs, toolsets, strict=True):
            for f in ts.functions:
                name = f["function"]["name"]
                if name in names:
                    raise GatewayError(
                        400, f"tools.{i}: the function name '{name}' is offered twice in this request.",
                        param=f"tools.{i}", code="invalid_request",
                    )  # fmt: skip
                names.add(name)
        offered = offered + [f for ts in toolsets for f in ts.functions]
        job = Job(
            req, principal, owner, draft, req.instructions, convo, turn, offered,
            tool_choice if offered else None, toolsets, continued=bool(history),
        )  # fmt: skip
        for ts in toolsets:
            job.preface += ts.items()
        for ts in toolsets:  # calls this input lets run before the model (an approved MCP call)
            resume = getattr(ts, "resume", None)
            for result in await resume() if resume is not None else ():
                if result.item is not None:
                    job.preface.append(result.item)
                job.convo.extend(result.messages or [])
        return job

    def _takes_images(self, model: str) -> bool:
        """Whether a model may get images: m2a's llama.cpp runner loads no vision projector, so a
        model only it serves takes none; other engines decide themselves (vLLM answers 400)."""
        eps = self.pool.endpoints(model)
        return not eps or any(e.engine != "llamacpp" for e in eps)

    def _too_long(self, req: CreateRequest, why: str) -> GatewayError:
        param = "previous_response_id" if req.previous_response_id else "input"
        return GatewayError(
            400,
            f"The conversation is too long for this gateway ({why}); start a new one or send less.",
            param=param,
            code="conversation_too_long",
        )

    async def _chat(self, request: Request, job: Job, stream: bool) -> Response:
        """One model call through the gateway's request path."""
        job.sent = job.payload(stream)
        body = json.dumps(job.sent, separators=(",", ":"), ensure_ascii=False).encode()
        if len(body) > self.cfg.max_body_bytes:
            raise self._too_long(job.req, f"over {self.cfg.max_body_bytes} bytes")
        try:
            return await self.pipeline.handle(
                inner_request(request, body), CHAT_ROUTE, "/chat/completions", "chat"
            )
        except GatewayError as exc:
            raise _renamed(exc) from None

    async def _whole(self, request: Request, job: Job) -> Response:
        draft = job.draft
        draft.output += job.preface
        while True:
            resp = await self._chat(request, job, stream=False)
            if resp.status_code != 200:  # an engine's or a guardrail's error, or 499: as it came
                return _renamed_response(resp)
            try:
                answer = json.loads(bytes(resp.body))
            except (ValueError, RecursionError):
                answer = None
            r = answer_round(answer)
            draft.add_usage(r.usage or estimated(job.sent, r))
            draft.output += round_items(r, job.owns, job.annotations)
            job.convo.append(r.assistant())
            if r.error is not None or not await self._run_hosted(job, r, None):
                break
        draft.end(r)
        await self._save(job)
        return JSONResponse(draft.snapshot())

    async def _run_hosted(
        self, job: Job, r: Round, emit: Callable[[dict[str, Any]], Awaitable[None]] | None
    ) -> bool:
        """Run the round's hosted tool calls; whether the model is to be called again."""
        hosted = [c for c in r.calls if job.owns(c.name)]
        if not hosted or r.finish_reason in ("length", "content_filter") or job.rounds + 1 >= MAX_ROUNDS:
            return False
        stop = False  # a result that ends the response here (an approval request)
        for c in hosted:
            limit = job.req.max_tool_calls
            if limit is not None and job.hosted_calls >= limit:
                result = HostedResult(
                    None, "This tool call was not run: the response's max_tool_calls was reached."
                )
            else:
                job.hosted_calls += 1
                ts = job.toolset(c.name)
                assert ts is not None
                try:
                    result = await ts.call(c.id, c.name, c.arguments)
                except GatewayError:
                    raise
                except Exception as exc:  # a tool's own failure is the model's to read, not a 500
                    log.warning("hosted tool %s failed", c.name, exc_info=True)
                    result = HostedResult(None, f"The tool failed: {type(exc).__name__}.")
            if result.item is not None:
                if emit is not None:
                    await emit(result.item)
                else:
                    job.draft.output.append(result.item)
            job.convo.append({"role": "tool", "tool_call_id": c.id, "content": result.output})
            stop = stop or result.stop
        job.rounds += 1
        # A client's function call goes back to the client first.
        return not stop and len(hosted) == len(r.calls)

    async def _save(self, job: Job) -> None:
        """Store the response (when asked to), before the client hears it has ended."""
        if job.req.store is False:
            return
        draft, p = job.draft, job.principal
        created = now()
        rec = Record(
            id=draft.id,
            owner=job.owner,
            team_id=p.team_id,
            key_id=p.key_id if p.agent is None else None,
            agent=p.agent.spiffe_id if p.agent is not None else None,
            model=draft.model,
            status=draft.status,
            previous_id=job.req.previous_response_id,
            conversation_id=job.conversation or None,
            created_at=created,
            expires_at=created + self.retention,
            body=draft.snapshot(),
            input_items=job.turn.items,
            history=job.convo,
        )
        write = asyncio.ensure_future(self.store.put(rec))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        try:
            await asyncio.shield(write)  # a client leaving must not undo the write half way
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("could not store response %s", draft.id)
            raise GatewayError(
                503, "The response could not be stored; try again.", code="store_unavailable"
            ) from exc

    # -- streams ---------------------------------------------------------------------------------

    async def _streamed(self, request: Request, job: Job) -> Response:
        first = await self._chat(request, job, stream=True)
        if not isinstance(first, StreamingResponse):  # refused, or an engine's error: as it came
            return _renamed_response(first)
        self.live[job.draft.id] = job
        return EventStream(self, request, job, first)

    # -- the other routes ------------------------------------------------------------------------

    async def _owned(self, request: Request) -> tuple[str, str]:
        principal = await self.access.principal(request)
        return request.path_params["response_id"], owner_of(principal)

    async def retrieve(self, request: Request) -> Response:
        rid, owner = await self._owned(request)
        job = self.live.get(rid)
        if job is not None and job.owner == owner:
            return JSONResponse(job.draft.snapshot())
        found = await self.store.get(rid, owner, "body")
        if found is None or found.body is None:
            raise not_found(rid)
        return JSONResponse(found.body)

    async def delete(self, request: Request) -> Response:
        rid, owner = await self._owned(request)
        if not await self.store.delete(rid, owner):
            raise not_found(rid)
        return JSONResponse({"id": rid, "object": "response", "deleted": True})

    async def input_items(self, request: Request) -> Response:
        rid, owner = await self._owned(request)
        q = request.query_params
        limit_s = q.get("limit", "20")
        if not limit_s.isdigit() or not 1 <= int(limit_s) <= 100:
            raise GatewayError(
                400, "limit: must be an integer from 1 to 100.", param="limit", code="invalid_request"
            )
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise GatewayError(400, "order: must be 'asc' or 'desc'.", param="order", code="invalid_request")
        job = self.live.get(rid)
        items: list[dict[str, Any]] | None
        if job is not None and job.owner == owner:
            items = job.turn.items
        else:
            found = await self.store.get(rid, owner, "input_items")
            items = found.input_items if found is not None else None
        if items is None:
            raise not_found(rid)
        ordered = items if order == "asc" else items[::-1]
        ids = [i.get("id") for i in ordered]
        start, end = 0, len(ordered)
        for param in ("after", "before"):
            value = q.get(param)
            if value is None:
                continue
            if value not in ids:
                raise GatewayError(
                    400, f"{param}: no input item with id '{value}' in this response.", param=param,
                    code="invalid_request",
                )  # fmt: skip
            at = ids.index(value)
            start, end = (max(start, at + 1), end) if param == "after" else (start, min(end, at))
        window = ordered[start:end]
        limit = int(limit_s)
        if q.get("before") is not None and q.get("after") is None:
            page, more = window[-limit:], len(window) > limit  # the items just before the cursor
        else:
            page, more = window[:limit], len(window) > limit
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0].get("id") if page else None,
                "last_id": page[-1].get("id") if page else None,
                "has_more": more,
            }
        )

    async def cancel(self, request: Request) -> Response:
        rid, owner = await self._owned(request)
        job = self.live.get(rid)
        if job is not None and job.owner == owner:
            job.cancelled = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.done.wait(), 10)
            return JSONResponse(job.draft.snapshot())
        if await self.store.get(rid, owner) is None:
            raise not_found(rid)
        raise GatewayError(
            400,
            "Only a response still streaming can be cancelled; this one has ended.",
            code="response_not_cancellable",
        )


def estimated(payload: dict[str, Any], r: Round, chunks: int | None = None) -> dict[str, Any]:
    """A model call's usage where its engine reported none (llama.cpp streams): the gateway's own
    estimate, as the ledger bills it (the prompt from its text; a stream's content events, else
    the answer's text)."""
    if chunks is None:
        text = (r.text or "") + "".join(c.name + c.arguments for c in r.calls)
        chunks = math.ceil(len(text.encode()) / BYTES_PER_TOKEN)
    return {"prompt_tokens": estimate_input(payload), "completion_tokens": chunks}


def _hosted_input(item: dict[str, Any], where: str) -> list[dict[str, Any]] | None:
    convert = HOSTED_ITEMS.get(item.get("type"))  # type: ignore[arg-type]
    return convert(item) if convert is not None else None


async def _refuse(message: Any) -> None:
    raise Cancelled


def _renamed_response(resp: Response) -> Response:
    """An error answer of the chat path with chat's field names put as the client named them."""
    if resp.status_code < 400 or isinstance(resp, StreamingResponse):
        return resp
    try:
        payload = json.loads(bytes(resp.body))
        err = payload["error"]
        exc = GatewayError(
            resp.status_code, str(err.get("message")), param=err.get("param"), code=err.get("code")
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return resp
    renamed = _renamed(exc)
    if renamed.param == err.get("param"):
        return resp
    err["param"], err["message"] = renamed.param, renamed.message
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in ("content-length", "content-type")}
    return JSONResponse(payload, status_code=resp.status_code, headers=headers)


class EventStream(Response):
    """A streamed response: the first model call's chat stream (already answered), translated; then
    any further calls hosted tools need; stored before its last event."""

    def __init__(self, api: ResponsesAPI, request: Request, job: Job, first: StreamingResponse) -> None:
        # Not Response.__init__: it would set content-length 0 for the empty body.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self.api, self.request, self.job, self.first = api, request, job, first
        self._first_ran = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        api, job, draft = self.api, self.job, self.job.draft
        emit = EventWriter()
        state = {"gone": False}

        async def out(data: bytes) -> None:
            if data and not state["gone"]:
                try:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                except OSError:
                    state["gone"] = True

        ended = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await out(emit.started(draft))
            for item in job.preface:
                await out(emit.item(draft, item))
            inner: Response | None = self.first
            r = Round()
            while inner is not None:
                rs = RoundStream(draft, emit, job.owns, job.annotations)
                left = await self._relay(inner, rs, scope, receive, out)
                await out(rs.close())
                r = rs.result
                if left or state["gone"] or job.cancelled or (not r.ended and r.error is None):
                    break
                draft.add_usage(r.usage or estimated(job.sent, r, rs.chunks))
                job.convo.append(r.assistant())
                inner = None
                if r.error is None and await api._run_hosted(
                    job, r, lambda item: out(emit.item(draft, item))
                ):
                    inner = await self._next(job, r)
            else:
                draft.end(r)
                try:
                    await api._save(job)
                except GatewayError as exc:  # logged; the client hears it failed
                    draft.status, draft.completed_at = "failed", None
                    draft.error = {"code": "server_error", "message": exc.message}
                ended = True
                await out(emit.finished(draft))
        finally:
            if not self._first_ran:  # never relayed: run it only to release its engine request
                with contextlib.suppress(Cancelled):
                    await self.first(scope, receive, _refuse)
            if not ended:  # the client left, or cancelled: what was generated, not in progress forever
                draft.end(status="cancelled")
                with contextlib.suppress(GatewayError):  # logged; nobody is listening
                    await api._save(job)
                await out(emit.finished(draft))
            api.live.pop(draft.id, None)
            job.done.set()
            responses_trace.end(job.span, 200, draft.status, (draft.input_tokens, draft.output_tokens))
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _next(self, job: Job, r: Round) -> Response | None:
        """The next model call of a hosted-tool loop; None (the round failed) if it was refused."""
        try:
            resp = await self.api._chat(self.request, job, stream=True)
        except GatewayError as exc:
            r.error = {"code": exc.code or "server_error", "message": exc.message}
            return None
        if isinstance(resp, StreamingResponse):
            return resp
        try:
            err = json.loads(bytes(resp.body))["error"]
            r.error = {"code": err.get("code") or "server_error", "message": str(err.get("message"))}
        except (ValueError, KeyError, TypeError, AttributeError):
            r.error = {"code": "server_error", "message": f"the model call answered {resp.status_code}"}
        return None

    async def _relay(
        self,
        inner: Response,
        rs: RoundStream,
        scope: Scope,
        receive: Receive,
        out: Callable[[bytes], Awaitable[None]],
    ) -> bool:
        """Run one chat stream (an ASGI response) with a ``send`` that translates; whether the
        client left meanwhile."""
        job = self.job
        left = False
        if inner is self.first:
            self._first_ran = True

        async def hear() -> Any:
            nonlocal left
            message = await receive()
            if message["type"] == "http.disconnect":
                left = True
            return message

        async def translate(message: Any) -> None:
            if message["type"] == "http.response.body":
                await out(rs.feed(message.get("body", b"")))
            if job.cancelled:
                raise Cancelled

        with contextlib.suppress(Cancelled, ClientDisconnect, OSError):
            await inner(scope, hear, translate)
        return left
