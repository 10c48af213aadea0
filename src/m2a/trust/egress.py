"""m2a's egress proxy: an asyncio HTTP proxy (``CONNECT host:port`` tunnels, and absolute-form
``GET http://…`` forwarding, one request per connection) that lets an agent, or a sandboxed command,
reach only the ``host:port`` destinations its allow-list names.

Who is asking: on the TCP listener the caller sends ``Proxy-Authorization`` (``Bearer <token>``, or
``Basic`` with the token as the password, as clients send from ``http://agent:<token>@host:port``)
and the ``authenticate`` callback maps the token to an :class:`EgressIdentity`; a Unix-socket
listener (``open_unix``) is bound to one identity, the sandboxed command's, and needs no credentials.

What it refuses (each with a short plain-text answer and nothing connected): no or bad credentials
(407), a destination off the allow-list (403), a *name* that resolves to a loopback, link-local
(cloud metadata) or unspecified address unless the allow-list names that address literally (403: so
an allowed name cannot be re-pointed at m2a itself or at the metadata service), too many connections
of one identity (429), malformed requests (400), oversized headers (431), headers that never finish
(408); a destination that cannot be reached answers 502, one that does not answer in time 504. The
proxy connects to the address it resolved and checked itself, never to a name again.

Every connection ends with one :class:`EgressEvent` given to ``on_connection`` (the audit line), a log
line (``m2a.trust.egress``) and, with a tracer, one CLIENT span ``egress CONNECT host:port`` whose
parent is the request's ``traceparent``. ``stop()`` closes every listener and connection.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import http
import inspect
import ipaddress
import logging
import os
import re
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from m2a.trust.allowlist import AllowList, Destination, IPAddress, destination, parse_hostport

log = logging.getLogger("m2a.trust.egress")

# Headers that concern one hop only: never forwarded (Transfer-Encoding is hop-by-hop too, but the
# body is passed on as it came, chunked or not, so its framing header must stay).
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "proxy-connection", "te"}
    | {"trailer", "upgrade"}
)
_FRAMING = frozenset({"content-length", "transfer-encoding", "host"})
_REQUEST_LINE = re.compile(rb"([A-Z]{1,20}) ([\x21-\x7e]{1,8192}) HTTP/1\.([01])")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_AUTHORITY = re.compile(r"([^/?#]*)(.*)", re.DOTALL)
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9]{2})")
_ZERO_NET = ipaddress.ip_network("0.0.0.0/8")
PROXY_AUTHENTICATE = (
    ("Proxy-Authenticate", 'Bearer realm="m2a-egress"'),
    ("Proxy-Authenticate", 'Basic realm="m2a-egress"'),
)
CHUNK = 65536
LINGER_S = 1.0
CLOSE_S = 30.0
LINGER_BYTES = 65536

Authenticate = Callable[[str], Awaitable["EgressIdentity | None"]]
OnConnection = Callable[["EgressEvent"], Awaitable[None] | None]


@dataclass(frozen=True)
class EgressIdentity:
    """Who a connection acts for: the agent's SPIFFE id, its team, its allow-list, and the tool (if
    the connection is one tool's, e.g. a sandboxed command's)."""

    subject: str
    team: str | None
    allow: AllowList
    tool: str | None = None


@dataclass
class EgressEvent:
    """One connection through the proxy, as the audit log records it.

    ``allowed``: the proxy's policy let it through (allow-list and address rules); ``status``: what the
    proxy answered (200 for a tunnel, the destination's status for a forwarded request, 0 when the
    client closed before a request); ``bytes_up``: client to destination, ``bytes_down``: back."""

    subject: str | None
    team: str | None
    tool: str | None
    method: str | None
    host: str | None
    port: int | None
    address: str | None
    allowed: bool
    reason: str
    status: int
    bytes_up: int
    bytes_down: int
    duration_ms: float
    started_at: datetime
    listener: str
    peer: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (``started_at`` in ISO 8601, UTC)."""
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        return data


class _Refusal(Exception):
    def __init__(
        self, status: int, body: str, reason: str | None = None, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(body)
        self.status = status
        self.body = body
        self.reason = reason or body
        self.headers = headers


class _Idle(Exception):
    pass


@dataclass
class _Request:
    method: str
    target: str
    headers: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]


@dataclass
class _Conn:
    listener: str
    peer: str | None
    identity: EgressIdentity | None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.monotonic)
    method: str | None = None
    dest: Destination | None = None
    address: str | None = None
    allowed: bool = False
    reason: str = "closed before a request"
    status: int = 0
    up: int = 0
    down: int = 0
    last: float = field(default_factory=time.monotonic)


@dataclass
class _Listener:
    kind: str
    identity: EgressIdentity | None
    server: asyncio.Server | None = None
    path: Path | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    closed: bool = False


def _special(ip: IPAddress) -> bool:
    """Loopback, link-local (169.254/16, fe80::/10) or unspecified, also as an IPv4-mapped address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address) and ip in _ZERO_NET:
        return True
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _parse_head(raw: bytes) -> _Request:
    lines = raw[:-4].split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise _Refusal(400, "malformed request line")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or _TOKEN.fullmatch(name) is None or _BAD_VALUE.search(value):
            raise _Refusal(400, "malformed header line")
        headers.append((name.decode("ascii"), value.strip(b" \t").decode("latin-1")))
    return _Request(match.group(1).decode("ascii"), match.group(2).decode("ascii"), headers)


def _target(req: _Request) -> tuple[Destination, str | None]:
    """The destination and, for a forwarded request, the origin-form path to send."""
    if req.method == "CONNECT":
        parts = parse_hostport(req.target)
        dest = destination(*parts) if parts else None
        if dest is None:
            raise _Refusal(400, "CONNECT needs host:port (e.g. CONNECT api.example.com:443)")
        return dest, None
    scheme, sep, rest = req.target.partition("://")
    if not sep or scheme.lower() != "http":
        if scheme.lower() == "https":
            raise _Refusal(400, "for https:// use CONNECT host:443 (a tunnel)")
        raise _Refusal(400, "a proxy request names an absolute http:// URL (or CONNECT host:port)")
    netloc, tail = _AUTHORITY.match(rest).groups()  # type: ignore[union-attr]
    if "@" in netloc:
        raise _Refusal(400, "the URL's authority is host[:port], without credentials")
    bare = netloc.endswith("]") or (":" not in netloc and not netloc.startswith("["))
    parts = (netloc, 80) if bare else parse_hostport(netloc)
    dest = destination(*parts) if parts else None
    if dest is None:
        raise _Refusal(400, "the URL's host is not a valid name or address, or its port is not a number")
    tail = tail.split("#", 1)[0]
    return dest, tail if tail.startswith("/") else "/" + tail


def _token(value: str) -> str | None:
    scheme, _, credentials = value.strip().partition(" ")
    credentials = credentials.strip()
    if not credentials:
        return None
    if scheme.lower() == "bearer":
        return credentials
    if scheme.lower() == "basic":
        try:
            text = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, password = text.partition(":")
        return password or user or None
    return None


def _response(status: int, body: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    text = (body.rstrip("\n") + "\n").encode("utf-8", "replace")
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    lines = [f"HTTP/1.1 {status} {phrase}", "Content-Type: text/plain; charset=utf-8"]
    lines += [f"Content-Length: {len(text)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + text


class EgressProxy:
    """The egress proxy. ``start()`` a TCP listener (callers authenticate), ``open_unix()`` a
    listener bound to one identity, ``stop()`` everything."""

    def __init__(
        self,
        authenticate: Authenticate | None = None,
        *,
        on_connection: OnConnection | None = None,
        tracer: Tracer | None = None,
        allow_private_names: bool = False,
        max_header_bytes: int = 8192,
        header_timeout_s: float = 10.0,
        connect_timeout_s: float = 10.0,
        idle_timeout_s: float = 300.0,
        max_per_identity: int = 32,
        max_connections: int = 1024,
    ) -> None:
        self._authenticate = authenticate
        self._on_connection = on_connection
        self._tracer = tracer
        self.allow_private_names = allow_private_names
        self.max_header_bytes = max_header_bytes
        self.header_timeout_s = header_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_per_identity = max_per_identity
        self.max_connections = max_connections
        self._tcp: _Listener | None = None
        self._unix: dict[Path, _Listener] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._active: dict[str, int] = {}
        self._closed = False
        self.host: str | None = None
        self.port: int | None = None

    # ---- listeners

    @property
    def url(self) -> str:
        """``http://host:port`` of the TCP listener (after ``start()``)."""
        if self.port is None:
            raise RuntimeError("the egress proxy has no TCP listener: call start() first")
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on TCP ``host:port`` (0: any free port); returns the bound address."""
        if self._tcp is not None:
            raise RuntimeError("the egress proxy's TCP listener is already started")
        self._closed = False
        listener = _Listener("tcp", None)
        listener.server = await asyncio.start_server(
            lambda r, w: self._serve(r, w, listener), host, port, limit=self.max_header_bytes
        )
        self._tcp = listener
        bound = listener.server.sockets[0].getsockname()
        self.host, self.port = bound[0], bound[1]
        log.info("egress proxy listening on %s", self.url)
        return bound[0], bound[1]

    async def open_unix(self, path: Path, identity: EgressIdentity) -> None:
        """A Unix-socket listener at ``path`` (mode 0600) whose connections all act as ``identity``.

        A stale socket at ``path`` is replaced; any other file there is an error."""
        path = Path(path)
        if path in self._unix:
            raise ValueError(f"{path} is already an egress socket")
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise FileExistsError(f"{path} exists and is not a socket")
            path.unlink()
        self._closed = False
        listener = _Listener("unix", identity, path=path)
        listener.server = await asyncio.start_unix_server(
            lambda r, w: self._serve(r, w, listener), path=str(path), limit=self.max_header_bytes
        )
        os.chmod(path, 0o600)
        self._unix[path] = listener
        log.info("egress socket %s open for %s", path, identity.subject)

    async def close_unix(self, path: Path) -> None:
        """Close the Unix-socket listener at ``path`` and its connections; no-op when there is none."""
        listener = self._unix.pop(Path(path), None)
        if listener is not None:
            await self._close_listener(listener)

    async def stop(self) -> None:
        """Close every listener and every connection (their tasks end before this returns)."""
        self._closed = True
        listeners = list(self._unix.values()) + ([self._tcp] if self._tcp else [])
        self._unix.clear()
        self._tcp = None
        self.host = self.port = None
        for listener in listeners:
            listener.closed = True
            if listener.server is not None:
                listener.server.close()
        await self._cancel(self._tasks)
        for listener in listeners:
            await self._close_listener(listener)

    async def _close_listener(self, listener: _Listener) -> None:
        listener.closed = True
        if listener.server is not None:
            listener.server.close()
        await self._cancel(listener.tasks)
        if listener.server is not None:
            await listener.server.wait_closed()
        if listener.path is not None:
            with contextlib.suppress(FileNotFoundError):
                listener.path.unlink()

    @staticmethod
    async def _cancel(tasks: set[asyncio.Task[Any]]) -> None:
        while tasks:
            pending = list(tasks)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            tasks.difference_update(pending)
            await asyncio.sleep(0)

    # ---- one connection

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, lst: _Listener
    ) -> None:
        task = asyncio.current_task()
        if self._closed or lst.closed or task is None:
            writer.transport.abort()
            return
        self._tasks.add(task)
        lst.tasks.add(task)
        peer = writer.get_extra_info("peername")
        conn = _Conn(lst.kind, f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None, lst.identity)
        span: trace.Span | None = None
        upstream: asyncio.StreamWriter | None = None
        cancelled = False
        try:
            try:
                if len(self._tasks) > self.max_connections:
                    raise _Refusal(503, "the egress proxy is at its connection limit; try again")
                raw = await self._read_head(reader)
                if raw is None:
                    return
                req = _parse_head(raw)
                conn.method = req.method
                conn.dest, path = _target(req)
                span = self._start_span(req, conn.dest)
                identity = lst.identity or await self._identify(req)
                conn.identity = identity
                if not identity.allow.allows_destination(conn.dest):
                    raise _Refusal(
                        403,
                        f"egress to {conn.dest} is not allowed for {identity.subject}",
                        "not on the allow-list",
                    )
                with self._slot(identity.subject):
                    ureader, upstream, conn.address = await self._connect(conn.dest, identity)
                    conn.allowed = True
                    if path is None:
                        conn.status, conn.reason = 200, "tunnel"
                        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    else:
                        conn.reason = "forwarded"
                        upstream.write(self._forward_head(req, conn.dest, path, span))
                    await self._pipe(reader, writer, ureader, upstream, conn)
            except _Refusal as refusal:
                conn.status, conn.reason = refusal.status, refusal.reason
                await self._refuse(reader, writer, refusal)
        except asyncio.CancelledError:
            cancelled = True
            conn.reason = "closed: the proxy stopped" if conn.status else "the proxy stopped"
            raise
        except _Idle:
            conn.reason = f"closed after {self.idle_timeout_s:g} s idle"
        except (ConnectionError, OSError) as exc:
            conn.reason = f"{conn.reason}; connection lost ({type(exc).__name__})"
        except Exception:
            log.exception("egress proxy: unexpected error")
            conn.reason = "internal error"
        finally:
            for w in (upstream, writer):
                if w is not None:
                    await self._close(w, graceful=not cancelled)
            self._tasks.discard(task)
            lst.tasks.discard(task)
            await self._finish(conn, span)

    async def _close(self, w: asyncio.StreamWriter, graceful: bool) -> None:
        """Close after what is buffered is sent (bounded), or at once (abort) when the proxy stops."""
        if not graceful:
            w.transport.abort()
            return
        w.close()
        try:
            async with asyncio.timeout(min(self.idle_timeout_s, CLOSE_S)):
                await w.wait_closed()
        except asyncio.CancelledError:
            w.transport.abort()
            raise
        except Exception:
            w.transport.abort()

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            async with asyncio.timeout(self.header_timeout_s):
                return await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            raise _Refusal(408, "the request's header did not come in time") from None
        except asyncio.LimitOverrunError:
            raise _Refusal(431, f"the request's header is over {self.max_header_bytes} bytes") from None
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            raise _Refusal(400, "the connection closed inside the request's header") from None

    async def _identify(self, req: _Request) -> EgressIdentity:
        values = req.values("proxy-authorization")
        if not values:
            raise _Refusal(
                407,
                "proxy authentication required: send Proxy-Authorization: Bearer <agent token>",
                "no credentials",
                PROXY_AUTHENTICATE,
            )
        token = _token(values[0]) if len(values) == 1 else None
        if token is None or self._authenticate is None:
            raise _Refusal(407, "bad proxy credentials", "bad credentials", PROXY_AUTHENTICATE)
        try:
            identity = await self._authenticate(token)
        except Exception:
            log.exception("egress proxy: the authenticate callback failed")
            raise _Refusal(503, "cannot check credentials now; try again", "authentication failed") from None
        if identity is None:
            raise _Refusal(407, "bad proxy credentials", "bad credentials", PROXY_AUTHENTICATE)
        return identity

    @contextlib.contextmanager
    def _slot(self, key: str) -> Iterator[None]:
        count = self._active.get(key, 0)
        if count >= self.max_per_identity:
            raise _Refusal(
                429,
                f"too many egress connections at once for {key} (at most {self.max_per_identity})",
                "too many connections",
                (("Retry-After", "1"),),
            )
        self._active[key] = count + 1
        try:
            yield
        finally:
            left = self._active.get(key, 1) - 1
            if left > 0:
                self._active[key] = left
            else:
                self._active.pop(key, None)

    async def _connect(
        self, dest: Destination, identity: EgressIdentity
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                addresses = [dest.ip] if dest.ip is not None else await self._resolve(dest, identity)
                error: OSError | None = None
                for ip in addresses:
                    try:
                        r, w = await asyncio.open_connection(str(ip), dest.port)
                    except OSError as exc:
                        error = exc
                        continue
                    return r, w, str(ip)
        except TimeoutError:
            raise _Refusal(504, f"connecting to {dest} timed out", "connect timeout") from None
        why = f" ({error.strerror or type(error).__name__})" if error is not None else ""
        raise _Refusal(502, f"cannot connect to {dest}{why}", "connect failed")

    async def _resolve(self, dest: Destination, identity: EgressIdentity) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(dest.name, dest.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise _Refusal(502, f"cannot resolve {dest.host}", "resolution failed") from None
        found: list[IPAddress] = []
        for info in infos:
            ip = _parse_ip(str(info[4][0]))
            if ip is not None and ip not in found:
                found.append(ip)
        usable = [
            ip
            for ip in found
            if self.allow_private_names or not _special(ip) or identity.allow.names_ip(ip, dest.port)
        ]
        if not found:
            raise _Refusal(502, f"cannot resolve {dest.host}", "resolution failed")
        if not usable:
            raise _Refusal(
                403,
                f"egress to {dest} is not allowed: {dest.host} resolves to {found[0]} "
                "(loopback, link-local or unspecified)",
                "name resolves to a loopback, link-local or unspecified address",
            )
        return usable

    def _forward_head(self, req: _Request, dest: Destination, path: str, span: trace.Span | None) -> bytes:
        named = {
            token.strip().lower()
            for v in req.values("connection") + req.values("proxy-connection")
            for token in v.split(",")
        }
        drop = HOP_BY_HOP | (named - _FRAMING) | {"host"}
        host = dest.host if dest.port == 80 else str(dest)
        lines = [f"{req.method} {path} HTTP/1.1", f"Host: {host}"]
        carrier: dict[str, str] = {}
        if span is not None and span.get_span_context().is_valid:
            TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
            drop = drop | set(carrier)
        lines += [f"{k}: {v}" for k, v in req.headers if k.lower() not in drop]
        lines += [f"{k}: {v}" for k, v in carrier.items()]
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _pipe(
        self,
        creader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        ureader: asyncio.StreamReader,
        uwriter: asyncio.StreamWriter,
        conn: _Conn,
    ) -> None:
        up = asyncio.ensure_future(self._copy(creader, uwriter, conn, up=True))
        down = asyncio.ensure_future(self._copy(ureader, cwriter, conn, up=False))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in (up, down):
                t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
        for t in (up, down):
            exc = None if t.cancelled() else t.exception()
            if exc is not None:
                raise exc

    async def _copy(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, conn: _Conn, *, up: bool
    ) -> None:
        first = not up and conn.method != "CONNECT"
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    data = await src.read(CHUNK)
                    if data:
                        conn.last = time.monotonic()
                        if up:
                            conn.up += len(data)
                        else:
                            conn.down += len(data)
                        if first:
                            first = False
                            match = _STATUS_LINE.match(data)
                            conn.status = int(match.group(1)) if match else 502
                        dst.write(data)
                        await dst.drain()
            except TimeoutError:
                if time.monotonic() - conn.last < self.idle_timeout_s:
                    continue
                raise _Idle() from None
            if not data:
                if dst.can_write_eof() and not dst.is_closing():
                    with contextlib.suppress(OSError):
                        dst.write_eof()
                return

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, r: _Refusal) -> None:
        """Answer, then read a little of what the client still sends so it gets the answer, not a reset."""
        if writer.is_closing():
            return
        writer.write(_response(r.status, r.body, r.headers))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(LINGER_S):
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                got = 0
                while got < LINGER_BYTES:
                    data = await reader.read(CHUNK)
                    if not data:
                        break
                    got += len(data)

    # ---- what each connection leaves behind

    def _start_span(self, req: _Request, dest: Destination) -> trace.Span | None:
        if self._tracer is None:
            return None
        parents = req.values("traceparent")
        ctx = None
        if len(parents) == 1:
            carrier = {"traceparent": parents[0]}
            states = req.values("tracestate")
            if states:
                carrier["tracestate"] = ",".join(states)
            ctx = TraceContextTextMapPropagator().extract(carrier)
        return self._tracer.start_span(
            f"egress {req.method} {dest}",
            context=ctx,
            kind=SpanKind.CLIENT,
            attributes={"server.address": dest.host.strip("[]"), "server.port": dest.port},
        )

    async def _finish(self, conn: _Conn, span: trace.Span | None) -> None:
        identity = conn.identity
        event = EgressEvent(
            subject=identity.subject if identity else None,
            team=identity.team if identity else None,
            tool=identity.tool if identity else None,
            method=conn.method,
            host=conn.dest.host if conn.dest else None,
            port=conn.dest.port if conn.dest else None,
            address=conn.address,
            allowed=conn.allowed,
            reason=conn.reason,
            status=conn.status,
            bytes_up=conn.up,
            bytes_down=conn.down,
            duration_ms=round((time.monotonic() - conn.started) * 1000, 3),
            started_at=conn.started_at,
            listener=conn.listener,
            peer=conn.peer,
        )
        if span is not None:
            self._end_span(span, event)
        where = f"{event.host}:{event.port}" if event.host else "-"
        log.log(
            logging.INFO if event.allowed else logging.WARNING,
            "egress %s %s %s by %s (tool %s): %s, status %s, %d B up, %d B down, %.1f ms",
            event.method or "-",
            where,
            "allowed" if event.allowed else "refused",
            event.subject or "-",
            event.tool or "-",
            event.reason,
            event.status,
            event.bytes_up,
            event.bytes_down,
            event.duration_ms,
        )
        if self._on_connection is not None:
            try:
                result = self._on_connection(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("egress proxy: the on_connection callback failed")

    @staticmethod
    def _end_span(span: trace.Span, event: EgressEvent) -> None:
        span.set_attribute("m2a.egress.allowed", event.allowed)
        span.set_attribute("m2a.egress.bytes_sent", event.bytes_up)
        span.set_attribute("m2a.egress.bytes_received", event.bytes_down)
        span.set_attribute("m2a.egress.reason", event.reason)
        span.set_attribute("m2a.egress.listener", event.listener)
        if event.status:
            span.set_attribute("http.response.status_code", event.status)
        if event.address:
            span.set_attribute("network.peer.address", event.address)
        if event.subject:
            span.set_attribute("gen_ai.agent.id", event.subject)
        if event.team:
            span.set_attribute("m2a.team", event.team)
        if event.tool:
            span.set_attribute("m2a.egress.tool", event.tool)
        if not event.allowed or event.status >= 400:
            span.set_status(Status(StatusCode.ERROR, event.reason))
        span.end()
