"""The HTTP client of the request path: pooled keep-alive connections to engines, httptools to parse.

Every request the gateway forwards is one POST to an engine. aiohttp's client spent about 110 µs
of CPU on each (its session, request and response objects, timers, trace hooks); this client does
what forwarding needs and no more, in about 25 (bench/README.md, "The garbage collector and the
engine client"):

* ``POST`` with a body of known length; answers delimited by Content-Length, chunked, or by the
  engine closing the connection;
* ``http`` and ``https`` (the system's certificate store), and credentials in the URL;
* a connect timeout, and a read timeout: the longest wait for the next byte of the answer;
* keep-alive connections per engine, reused last-in first-out, dropped when idle for
  ``keepalive_s`` or when the engine closes them. A reused connection that fails before a byte
  of the answer came (the engine closed it as the request went out) is retried once on a new one;
* a streamed answer is read as it comes, with back-pressure: reading from the engine pauses while
  more than ``HIGH_WATER`` bytes wait for the client;
* a whole answer is read without pausing, up to ``max_answer_bytes`` (it is held in memory): a
  larger one closes the connection and is ``AnswerTooLarge``;
* an answer abandoned before its end closes its connection, which makes the engine abort the
  request (vLLM does).

Errors are ``EngineHTTPError``\\ s. ``ConnectFailed``, ``ConnectTimeout`` and ``Disconnected`` raised
by ``post`` mean the engine sent nothing back: another replica may take the request.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httptools

HIGH_WATER = 1 << 20  # bytes of a streamed answer held for the client before reading pauses
DEFAULT_MAX_ANSWER = 128 << 20  # bytes of a whole answer held at most (gateway.max_answer_bytes)


class EngineHTTPError(Exception):
    """A call to an engine failed."""


class ConnectFailed(EngineHTTPError):
    """No connection: refused, unreachable, unknown host, or a failed TLS handshake."""


class ConnectTimeout(EngineHTTPError, TimeoutError):
    """No connection within the connect timeout."""


class Disconnected(EngineHTTPError):
    """The engine closed the connection before its answer was complete."""


class ReadTimeout(EngineHTTPError, TimeoutError):
    """No byte of the answer came within the read timeout."""


class BadAnswer(EngineHTTPError):
    """The engine's answer is not valid HTTP."""


class AnswerTooLarge(EngineHTTPError):
    """A whole answer, or one event of a stream, larger than the gateway holds."""


@dataclass(frozen=True)
class Target:
    """Where a URL's requests go, parsed once."""

    key: tuple[str, str, int]  # scheme, host, port: the connections it may share
    host: str
    port: int
    tls: bool
    head: bytes  # the request line and the headers every request to it has
    basic: bytes  # an authorization header from credentials in the URL (b"": none)


def _target(url: str) -> Target:
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    tls = u.scheme == "https"
    port = u.port or (443 if tls else 80)
    host = u.hostname
    shown = f"[{host}]" if ":" in host else host
    authority = shown if u.port is None else f"{shown}:{port}"
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    lines = [f"POST {path} HTTP/1.1", f"host: {authority}", "user-agent: m2a", "accept-encoding: identity"]
    basic = b""
    if u.username is not None:
        secret = f"{unquote(u.username)}:{unquote(u.password or '')}".encode()
        basic = b"authorization: Basic " + base64.b64encode(secret) + b"\r\n"
    head = "\r\n".join(lines).encode("latin-1") + b"\r\n"
    return Target((u.scheme, host, port), host, port, tls, head, basic)


def _header_lines(headers: dict[str, str]) -> bytes:
    out = []
    for name, value in headers.items():
        line = f"{name}: {value}"
        if "\r" in line or "\n" in line or "\0" in line:
            raise ValueError(f"header {name!r} holds a line break")
        out.append(line)
    return ("\r\n".join(out) + "\r\n").encode("latin-1") if out else b""


class EngineResponse:
    """An engine's answer: status and headers when ``post`` returns, the body as it comes."""

    def __init__(self, conn: _Conn, read_timeout_s: float, max_bytes: int = DEFAULT_MAX_ANSWER) -> None:
        self._conn = conn
        self._read_timeout_s = read_timeout_s
        self._max_bytes = max_bytes
        self._whole = False  # read() is collecting the whole body: no back-pressure, a bound
        self.status = 0
        self.headers: dict[str, str] = {}  # lower-case names
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._head = False
        self._complete = False
        self._keep_alive = False
        self._got_bytes = False
        self._error: EngineHTTPError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._done = False  # released or closed

    @property
    def content_type(self) -> str:
        """The media type without parameters (``application/octet-stream`` when none is given)."""
        value = self.headers.get("content-type", "")
        return value.split(";", 1)[0].strip().lower() or "application/octet-stream"

    # -- fed by the connection ------------------------------------------------------------------

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _on_head(self, status: int, keep_alive: bool) -> None:
        self.status = status
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self._raw_headers}
        self._keep_alive = keep_alive
        self._head = True
        self._wake()

    def _on_body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._whole:
            self._bound()
        elif self._buffered > HIGH_WATER and not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def _bound(self) -> None:
        """A whole answer past ``max_bytes``: the rest is not read (the connection is closed)."""
        if self._buffered > self._max_bytes and self._error is None:
            self._error = AnswerTooLarge(f"the engine's answer is larger than {self._max_bytes} bytes")
            self._chunks, self._buffered = [], 0
            self._conn.close()

    def _on_complete(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: EngineHTTPError) -> None:
        if not self._complete and self._error is None:
            self._error = error
        self._wake()

    def _on_lost(self, exc: BaseException | None) -> None:
        if self._complete or self._error is not None or self._done:
            self._wake()
            return
        # An answer without a length ends when the engine closes the connection.
        until_close = "content-length" not in self.headers and "chunked" not in self.headers.get(
            "transfer-encoding", ""
        )
        if self._head and until_close and exc is None and self.status >= 200:
            self._keep_alive = False
            self._on_complete()
            return
        why = f": {exc}" if exc else ""
        self._fail(Disconnected(f"the engine closed the connection before its answer was complete{why}"))

    # -- read by the forwarder ------------------------------------------------------------------

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = loop.call_later(self._read_timeout_s, self._timed_out)
        try:
            await self._waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _timed_out(self) -> None:
        self._fail(ReadTimeout(f"no answer from the engine for {self._read_timeout_s:g} s"))
        self._conn.close()

    async def _until_head(self) -> None:
        while not self._head:
            if self._error is not None:
                raise self._error
            await self._wait()

    def _take(self) -> bytes:
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        if self._paused and self._conn.transport is not None:
            self._paused = False
            self._conn.transport.resume_reading()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def read(self) -> bytes:
        """The whole body (what is left of it), at most ``max_bytes`` (else ``AnswerTooLarge``)."""
        self._whole = True
        self._bound()
        if self._paused and self._conn.transport is not None:  # paused before read() was called
            self._paused = False
            self._conn.transport.resume_reading()
        while True:
            if self._error is not None:
                raise self._error
            if self._complete:
                return self._take()
            await self._wait()

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it comes: whatever has arrived since the last piece."""
        while True:
            if self._chunks:
                yield self._take()
            elif self._complete:
                return
            elif self._error is not None:
                raise self._error
            else:
                await self._wait()

    def at_eof(self) -> bool:
        """The whole answer arrived and was read."""
        return self._complete and not self._chunks

    def release(self) -> None:
        """Done with it: a connection whose answer was read to its end is kept for the next call,
        any other is closed (an engine aborts a request whose connection closes)."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        if self.at_eof() and self._keep_alive and not conn.closed and not self._paused:
            conn.idle()
        else:
            conn.close()

    def close(self) -> None:
        """Done with it, whatever was read: its connection is closed."""
        if not self._done:
            self._done = True
            self._conn.close()


class _Conn(asyncio.Protocol):
    """One connection to an engine, carrying one request at a time."""

    def __init__(self, client: EngineClient, key: tuple[str, str, int]) -> None:
        self.client = client
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.resp: EngineResponse | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None or resp._complete:  # bytes nobody asked for: the connection is not reusable
            self.close()
            return
        resp._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            resp._fail(BadAnswer("the engine answered with a protocol upgrade"))
            self.close()
        except httptools.HttpParserError as exc:
            resp._fail(BadAnswer(f"the engine's answer is not valid HTTP: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client._forget(self)
        if self.resp is not None:
            self.resp._on_lost(exc)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.resp is not None
        self.resp._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.resp is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            self.resp._raw_headers.clear()
            return
        self.resp._on_head(status, self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        assert self.resp is not None
        self.resp._on_body(body)

    def on_message_complete(self) -> None:
        assert self.resp is not None
        if self.resp._head:
            self.resp._on_complete()

    def idle(self) -> None:
        self.resp = None
        self.client._idle_conn(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


class EngineClient:
    """Engine calls over pooled keep-alive connections (the module docstring says what it does)."""

    def __init__(
        self,
        connect_timeout_s: float,
        read_timeout_s: float,
        keepalive_s: float = 15.0,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_answer_bytes = max_answer_bytes
        self.keepalive_s = keepalive_s
        self._targets: dict[str, Target] = {}
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._open: set[_Conn] = set()
        self._ssl: ssl.SSLContext | None = None

    def target(self, url: str) -> Target:
        """``url``, parsed once (a replica's base URL and an engine path)."""
        t = self._targets.get(url)
        if t is None:
            if len(self._targets) > 4096:  # replicas come and go: bounded
                self._targets.clear()
            t = self._targets[url] = _target(url)
        return t

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> EngineResponse:
        """Send ``body`` to ``url``; the answer once its status and headers came."""
        t = self.target(url)
        head = t.head + _header_lines(headers)
        if t.basic and "authorization" not in headers:  # a key of the replica's wins over the URL's
            head += t.basic
        request = b"".join((head, b"content-length: ", str(len(body)).encode(), b"\r\n\r\n", body))
        for attempt in range(2):
            conn = self._take(t.key)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(t)
            resp = conn.resp = EngineResponse(conn, self.read_timeout_s, self.max_answer_bytes)
            assert conn.transport is not None
            conn.transport.write(request)
            try:
                await resp._until_head()
                return resp
            except Disconnected:
                resp.close()
                if reused and attempt == 0 and not resp._got_bytes:
                    continue  # a stale keep-alive: the engine closed it as the request went out
                raise
            except BaseException:  # cancelled (the client left), timed out, or a bad answer
                resp.close()
                raise
        raise AssertionError("unreachable")

    def _take(self, key: tuple[str, str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.close()
        return None

    def _idle_conn(self, conn: _Conn) -> None:
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(conn.key, []).append(conn)

    def _forget(self, conn: _Conn) -> None:
        self._open.discard(conn)

    async def _connect(self, t: Target) -> _Conn:
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if t.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, t.key),
                    t.host,
                    t.port,
                    ssl=tls,
                    server_hostname=t.host if tls else None,
                )
        except TimeoutError as exc:
            wait = f"{self.connect_timeout_s:g} s"
            raise ConnectTimeout(f"no connection to {t.host}:{t.port} in {wait}") from exc
        except OSError as exc:  # refused, unreachable, unknown host, TLS
            raise ConnectFailed(f"cannot connect to {t.host}:{t.port}: {exc}") from exc
        self._open.add(conn)
        return conn

    async def close(self) -> None:
        """Close every connection, idle or not."""
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports close
