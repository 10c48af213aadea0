"""The MCP servers agents reach through m2a: registered centrally, called only by m2a.

A server is registered by an admin (``m2a tools add NAME URL``, or ``POST /admin/v1/tools``) with:

- ``name``: ``^[a-z0-9][a-z0-9_-]{0,62}$`` without ``__`` (the MCP endpoint names a tool
  ``<server>__<tool>``: the double underscore separates the two), the name manifests use;
- ``url``: its streamable-HTTP endpoint, ``http`` or ``https``, without user info (credentials go
  in headers) or a fragment;
- ``headers``: what m2a sends to that server on every call, typically m2a's own credentials for
  it (``Authorization: Bearer …``). They are stored as given and never shown back in full
  (``masked``). Names m2a sets itself (``x-m2a-*``, ``traceparent``, the MCP and HTTP framing
  headers) are refused;
- ``timeout_s``: the bound on one call (connect, initialize, the call itself), default 30 s.

``ToolRegistry`` validates and stores servers (``store/tools.py``), lists a server's tools through
MCP ``tools/list`` (bounded by its timeout, cached for ``list_ttl_s``; a failure is remembered for
``FAILURE_TTL_S`` so a dead server is not asked again on every listing) and calls a tool. Each call
opens its own MCP session (stateless: an ``initialize`` and the ``tools/call``) with a fresh
HTTP client holding only the server's registered headers, ``x-m2a-agent: <SPIFFE id>`` (on whose
behalf) and the trace's ``traceparent``: nothing of the agent's own request, its token above all,
ever reaches the server. A server that hangs, answers garbage, refuses the protocol or sends a
result over ``MAX_RESULT_BYTES`` ends the call with ``ToolFailure`` (``timeout`` or ``error``);
nothing it does can raise anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from m2a.store.tools import ServerRecord, ToolStore, ToolStoreError
from m2a.trust.policy_schema import TIERS

log = logging.getLogger("m2a.agents.tools")

SERVER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SEPARATOR = "__"  # between server and tool in the MCP endpoint's tool names
ACTIONS_SERVER = "actions"  # m2a's own actions (trust/executors.py): no registered server takes the name
AGENT_HEADER = "x-m2a-agent"
DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_S = 600.0
MAX_URL = 2048
MAX_HEADERS = 32
MAX_HEADER_VALUE = 8192
MAX_RESULT_BYTES = 1 << 20  # a tool result larger than this is an error, not passed on
FAILURE_TTL_S = 5.0
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")
_RESERVED = {
    "host", "content-length", "content-type", "transfer-encoding", "connection", "upgrade", "te",
    "trailer", "keep-alive", "proxy-connection", "accept", "accept-encoding", "last-event-id",
    "mcp-session-id", "mcp-protocol-version", "traceparent", "tracestate",
}  # fmt: skip


class ToolError(Exception):
    """A refused registration or lookup; ``kind`` is invalid, not_found or conflict."""

    def __init__(self, kind: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param


class ToolFailure(Exception):
    """A call (or listing) that did not give a result: ``status`` is ``timeout`` or ``error``."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class UpstreamTool:
    """One tool as its server lists it."""

    name: str
    description: str | None
    input_schema: dict[str, Any]
    annotations: dict[str, Any] | None = None

    def as_mcp(self, name: str | None = None) -> types.Tool:
        return types.Tool(
            name=name or self.name,
            description=self.description,
            input_schema=self.input_schema,
            annotations=types.ToolAnnotations.model_validate(self.annotations) if self.annotations else None,
        )


CLIENT_MARGIN_S = 5.0  # the HTTP client's timeouts sit past the call's bound, which decides


def _no_answer(server: ServerRecord) -> ToolFailure:
    message = f"the MCP server '{server.name}' did not answer within {server.timeout_s:g}s"
    return ToolFailure("timeout", message)


def _timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` is, or a group holding only, the HTTP client's timeout."""
    if isinstance(exc, BaseExceptionGroup):
        return bool(exc.exceptions) and all(_timed_out(e) for e in exc.exceptions)
    return isinstance(exc, httpx2.TimeoutException)


@functools.cache
def _tls() -> ssl.SSLContext:
    """One SSL context (the system's CA bundle) for every upstream MCP client: building one per
    call cost about 24 ms of CPU, most of a tool call's gateway cost (bench/trusted_path.py)."""
    return httpx2.create_ssl_context()


# -- validation ----------------------------------------------------------------------------------


def check_name(name: str) -> str:
    if not isinstance(name, str) or not SERVER_NAME.fullmatch(name) or SEPARATOR in name:
        raise ToolError(
            "invalid",
            f"a server's name is 1-63 of a-z, 0-9, '_' and '-', starting with a letter or digit, "
            f"without '{SEPARATOR}' (got {name!r})",
            param="name",
        )
    if name == ACTIONS_SERVER:
        raise ToolError(
            "invalid", f"'{ACTIONS_SERVER}' is m2a's own server (the actions of trust.actions)", param="name"
        )
    return name


def check_url(url: str) -> str:
    if not isinstance(url, str) or not url or len(url) > MAX_URL or any(c in url for c in "\x00\r\n\t "):
        raise ToolError("invalid", f"the URL is an http(s) URL of at most {MAX_URL} characters", param="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ToolError("invalid", f"the URL {url!r} cannot be read: {exc}", param="url") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolError(
            "invalid", f"the URL {url!r} is not an http:// or https:// URL with a host", param="url"
        )
    if parts.username is not None or parts.password is not None:
        raise ToolError(
            "invalid", "put credentials in a header (--header Authorization=...), not in the URL", param="url"
        )
    if parts.fragment:
        raise ToolError("invalid", "the URL has a fragment (#...): an MCP endpoint has none", param="url")
    del port
    return url


def check_headers(headers: dict[str, str] | None) -> dict[str, str]:
    headers = headers or {}
    if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
        raise ToolError(
            "invalid", f"at most {MAX_HEADERS} headers, as a mapping of name to value", param="headers"
        )
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ToolError("invalid", f"{name!r} is not an HTTP header name", param="headers")
        low = name.lower()
        if low in _RESERVED or low.startswith("x-m2a-"):
            raise ToolError("invalid", f"m2a sets the header {name!r} itself", param="headers")
        if low in (n.lower() for n in out):
            raise ToolError("invalid", f"the header {name!r} is given twice", param="headers")
        if (
            not isinstance(value, str)
            or len(value) > MAX_HEADER_VALUE
            or any(c in value for c in "\r\n\x00")
            or not value.isprintable()
        ):
            raise ToolError(
                "invalid", f"the value of {name!r} is one printable line (at most {MAX_HEADER_VALUE})",
                param="headers",
            )  # fmt: skip
        out[name] = value
    return out


def check_tiers(tiers: dict[str, str] | None) -> dict[str, str]:
    """Tool name → risk tier, as an admin sets them (they outrank the server's own annotations)."""
    tiers = tiers or {}
    if not isinstance(tiers, dict) or len(tiers) > 1000:
        raise ToolError("invalid", "tiers: at most 1000 entries of tool name to tier", param="tiers")
    for tool, tier in tiers.items():
        if not isinstance(tool, str) or not 0 < len(tool) <= 256 or "\x00" in tool:
            raise ToolError("invalid", f"tiers: {tool!r} is not a tool name", param="tiers")
        if tier not in TIERS:
            raise ToolError(
                "invalid", f"tiers: the tier of {tool!r} is one of {', '.join(TIERS)}", param="tiers"
            )
    return dict(tiers)


def tier_of(server: ServerRecord, tool: UpstreamTool | None, name: str) -> str:
    """A tool's risk tier: the admin's (``tiers``), else the server's annotations (``readOnlyHint``
    true: read; ``destructiveHint`` true: destructive), else write. The annotations are the server's
    own say (MCP calls them hints): set ``tiers`` for any tool whose tier matters."""
    if name in server.tiers:
        return server.tiers[name]
    hints = (tool.annotations or {}) if tool is not None else {}
    if hints.get("destructiveHint") is True and hints.get("readOnlyHint") is not True:
        return "destructive"
    if hints.get("readOnlyHint") is True:
        return "read"
    return "write"


def check_timeout(timeout_s: float | None) -> float:
    if timeout_s is None:
        return DEFAULT_TIMEOUT_S
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, (int, float))
        or not 0 < timeout_s <= MAX_TIMEOUT_S
    ):
        raise ToolError(
            "invalid", f"the timeout is more than 0 and at most {MAX_TIMEOUT_S:g} seconds", param="timeout_s"
        )
    return float(timeout_s)


def masked(headers: dict[str, str]) -> dict[str, str]:
    """Headers as they may be shown: the names, never the values."""
    return dict.fromkeys(headers, "***")


# -- the registry and the client -----------------------------------------------------------------


def _short(exc: BaseException) -> str:
    """What went wrong, in one short line (an exception group's first leaf)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


class ToolRegistry:
    """Registered MCP servers: validate, store, list their tools (cached), call them."""

    def __init__(self, store: ToolStore, list_ttl_s: float = 30.0) -> None:
        self.store = store
        self.list_ttl_s = list_ttl_s
        # server name -> (what it was fetched for, monotonic time, tools or the failure)
        self._lists: dict[str, tuple[tuple[str, float], float, list[UpstreamTool] | ToolFailure]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # -- registration --------------------------------------------------------------------------

    async def add(
        self,
        name: str,
        url: str,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
        description: str | None = None,
        tiers: dict[str, str] | None = None,
    ) -> ServerRecord:
        if description is not None and (len(description) > 2000 or "\x00" in description):
            raise ToolError("invalid", "the description is at most 2000 characters", param="description")
        try:
            return await self.store.add_server(
                check_name(name),
                check_url(url),
                check_headers(headers),
                check_timeout(timeout_s),
                description,
                check_tiers(tiers),
            )
        except ToolStoreError as exc:
            raise ToolError(exc.kind, exc.message, param="name") from exc

    async def get(self, name: str) -> ServerRecord:
        found = await self.store.get_server(name) if isinstance(name, str) and len(name) <= 64 else None
        if found is None:
            raise ToolError("not_found", f"no MCP server named '{name}' is registered", param="name")
        return found

    async def find(self, name: str) -> ServerRecord | None:
        return await self.store.get_server(name) if isinstance(name, str) and len(name) <= 64 else None

    async def list(self) -> list[ServerRecord]:
        return await self.store.list_servers()

    async def remove(self, name: str) -> None:
        if not await self.store.remove_server(name):
            raise ToolError("not_found", f"no MCP server named '{name}' is registered", param="name")
        self._lists.pop(name, None)

    # -- talking to a server -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _session(self, server: ServerRecord, extra: dict[str, str]) -> AsyncIterator[ClientSession]:
        headers = {"user-agent": "m2a-mcp-gateway", **server.headers, **extra}
        timeout = httpx2.Timeout(server.timeout_s + CLIENT_MARGIN_S)  # the call's own bound (_bounded) rules
        async with (
            httpx2.AsyncClient(headers=headers, timeout=timeout, trust_env=False, verify=_tls()) as http,
            streamable_http_client(server.url, http_client=http) as (read, write),
            ClientSession(read, write, read_timeout_seconds=server.timeout_s) as session,
        ):
            await session.initialize()
            yield session

    async def _bounded(self, server: ServerRecord, work: Any) -> Any:
        """Run ``work`` (a coroutine) within the server's timeout; every failure as ``ToolFailure``."""
        try:
            async with asyncio.timeout(server.timeout_s):
                return await work
        except TimeoutError as exc:
            raise _no_answer(server) from exc
        except ToolFailure:
            raise
        except MCPError as exc:
            raise ToolFailure("error", f"the MCP server '{server.name}' refused: {exc}"[:400]) from exc
        except Exception as exc:  # a dead, rude or garbage-speaking server: never past this point
            if _timed_out(exc):  # the HTTP client's own timeout, maybe inside the SDK's task group
                raise _no_answer(server) from exc
            log.info("MCP server %s failed: %s", server.name, _short(exc))
            raise ToolFailure("error", f"the MCP server '{server.name}' failed: {_short(exc)}") from exc

    async def _fetch_tools(self, server: ServerRecord) -> list[UpstreamTool]:
        async def work() -> list[UpstreamTool]:
            tools: list[UpstreamTool] = []
            async with self._session(server, {}) as session:
                cursor: str | None = None
                for _ in range(50):  # a server that pages forever is cut off
                    params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
                    page = await session.list_tools(params=params)
                    for t in page.tools:
                        annotations = (
                            t.annotations.model_dump(mode="json", by_alias=True, exclude_none=True)
                            if t.annotations
                            else None
                        )
                        tools.append(UpstreamTool(t.name, t.description, t.input_schema, annotations))
                    cursor = page.next_cursor
                    if not cursor:
                        break
            return tools

        return await self._bounded(server, work())

    async def tools(self, server: ServerRecord, *, fresh: bool = False) -> list[UpstreamTool]:
        """The server's tools (``tools/list``), cached; ``ToolFailure`` when it cannot say."""
        key = (server.url, server.updated_at.timestamp())
        lock = self._locks.setdefault(server.name, asyncio.Lock())
        async with lock:  # one listing per server at a time: the others wait and take its answer
            hit = self._lists.get(server.name)
            if hit is not None and hit[0] == key and not fresh:
                ttl = FAILURE_TTL_S if isinstance(hit[2], ToolFailure) else self.list_ttl_s
                if time.monotonic() - hit[1] < ttl:
                    if isinstance(hit[2], ToolFailure):
                        raise hit[2]
                    return hit[2]
            try:
                found: list[UpstreamTool] | ToolFailure = await self._fetch_tools(server)
            except ToolFailure as exc:
                found = exc
            self._lists[server.name] = (key, time.monotonic(), found)
        if isinstance(found, ToolFailure):
            raise found
        return found

    async def call(
        self,
        server: ServerRecord,
        tool: str,
        arguments: dict[str, Any] | None,
        *,
        agent: str,
        traceparent: dict[str, str] | None = None,
    ) -> types.CallToolResult:
        """Call ``tool`` on ``server`` for ``agent`` (its SPIFFE id); ``ToolFailure`` when no result."""
        extra = {AGENT_HEADER: agent, **(traceparent or {})}

        async def work() -> types.CallToolResult:
            async with self._session(server, extra) as session:
                result = await session.call_tool(tool, arguments or {})
            if not isinstance(result, types.CallToolResult):
                raise ToolFailure(
                    "error", f"the MCP server '{server.name}' answered something not a tool result"
                )
            size = len(result.model_dump_json(by_alias=True, exclude_none=True))
            if size > MAX_RESULT_BYTES:
                raise ToolFailure(
                    "error",
                    f"the MCP server '{server.name}' answered {size} bytes (at most {MAX_RESULT_BYTES})",
                )
            return result

        return await self._bounded(server, work())
