"""The egress proxy over real sockets: allow-lists (exact, wildcard, IP, port), CONNECT tunnels (httpx
over TLS, raw byte pipes with half-close), forwarded http:// requests, proxy credentials, the
per-socket identity of a sandbox, the private-address rule for names, bounds (garbage, oversized
headers, slowloris, per-identity concurrency, connect timeout), audit events, spans, and stop()."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import os
import random
import socket
import ssl
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from m2a.trust.allowlist import AllowList, check_entry
from m2a.trust.egress import EgressEvent, EgressIdentity, EgressProxy

AGENT = "spiffe://m2a.local/team/ops/agent/mailer"
OTHER = "spiffe://m2a.local/team/ops/agent/other"
TOKEN = "agent-token-1"
OTHER_TOKEN = "agent-token-2"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


# ---- the allow-list itself


def test_check_entry_normalises_and_refuses() -> None:
    assert check_entry("API.Example.com:443") == "api.example.com:443"
    assert check_entry("[0:0:0:0:0:0:0:1]:8443") == "[::1]:8443"
    assert check_entry("*.example.com:443") == "*.example.com:443"
    for bad in ("example.com", "https://example.com:443", "example.com:0", "example.com:65536", "::1:443"):
        with pytest.raises(ValueError):
            check_entry(bad)
    with pytest.raises(ValueError):
        check_entry("a.*.example.com:443")
    with pytest.raises(ValueError):
        check_entry("300.1.1.1:80")


def test_allowlist_matching_rules() -> None:
    allow = AllowList(["api.example.com:443", "*.svc.example.com:8443", "10.0.0.5:5432", "[2001:db8::1]:443"])
    assert allow.allows("api.example.com", 443)
    assert allow.allows("API.EXAMPLE.COM.", 443)  # case and a trailing dot do not matter
    assert not allow.allows("api.example.com", 444)  # ports are exact
    assert not allow.allows("x.api.example.com", 443)  # an exact name is not a wildcard
    assert allow.allows("a.svc.example.com", 8443)
    assert allow.allows("a.b.svc.example.com", 8443)
    assert not allow.allows("svc.example.com", 8443)  # *.x does not match x
    assert not allow.allows("evilsvc.example.com", 8443)
    assert not allow.allows("a.svc.example.com", 443)
    assert allow.allows("10.0.0.5", 5432)
    assert not allow.allows("10.0.0.6", 5432)
    assert allow.allows("[2001:db8:0::1]", 443)
    assert allow.allows("2001:db8::1", 443)
    assert not allow.allows("api.example.com", 0)
    assert not allow.allows("bad_name", 443)
    assert allow.ports == {443, 8443, 5432}
    assert len(allow) == 4


def test_names_never_match_ip_entries_and_empty_allows_nothing() -> None:
    assert not AllowList(["127.0.0.1:80"]).allows("localhost", 80)
    assert not AllowList(["localhost:80"]).allows("127.0.0.1", 80)
    assert not AllowList([]).allows("example.com", 443)
    assert not AllowList([])


# ---- real destinations


@dataclass
class Seen:
    requests: list[dict[str, Any]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    seen: Seen

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.requests.append(  # type: ignore[attr-defined]
            {"method": self.command, "path": self.path, "headers": dict(self.headers.items()), "body": body}
        )
        out = f"hello {self.command} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Web:
    port: int
    seen: Seen
    cafile: Path | None = None


def _serve_http(tls: ssl.SSLContext | None) -> tuple[ThreadingHTTPServer, Seen]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.seen = Seen()  # type: ignore[attr-defined]
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.seen  # type: ignore[attr-defined]


@pytest.fixture
def web() -> Iterator[Web]:
    server, seen = _serve_http(None)
    yield Web(server.server_address[1], seen)
    server.shutdown()
    server.server_close()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "m2a egress test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = tmp / "cert.pem", tmp / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return certfile, keyfile


@pytest.fixture
def tls_web(tmp_path: Path) -> Iterator[Web]:
    certfile, keyfile = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    server, seen = _serve_http(ctx)
    yield Web(server.server_address[1], seen, certfile)
    server.shutdown()
    server.server_close()


@dataclass
class Echo:
    """A raw TCP destination: greets, echoes upper-cased, says bye after the client half-closes."""

    server: asyncio.Server
    port: int
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)


@asynccontextmanager
async def echo_server() -> AsyncIterator[Echo]:
    echo: Echo

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        echo.connections += 1
        writer.write(b"HELLO\n")
        while data := await reader.read(4096):
            echo.received += data
            writer.write(data.upper())
            await writer.drain()
        writer.write(b"BYE\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    echo = Echo(server, server.sockets[0].getsockname()[1])
    try:
        yield echo
    finally:
        server.close()
        await server.wait_closed()


# ---- the proxy under test


@dataclass
class Rig:
    proxy: EgressProxy
    events: list[EgressEvent]
    exporter: InMemorySpanExporter

    @property
    def port(self) -> int:
        assert self.proxy.port is not None
        return self.proxy.port

    def url(self, token: str = TOKEN) -> str:
        return f"http://agent:{token}@127.0.0.1:{self.port}"


@asynccontextmanager
async def rig(allow: list[str], other: list[str] | None = None, **options: Any) -> AsyncIterator[Rig]:
    identities = {
        TOKEN: EgressIdentity(AGENT, "ops", AllowList(allow)),
        OTHER_TOKEN: EgressIdentity(OTHER, "ops", AllowList(other or []), tool="fetch"),
    }

    async def authenticate(token: str) -> EgressIdentity | None:
        return identities.get(token)

    events: list[EgressEvent] = []
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    proxy = EgressProxy(
        authenticate, on_connection=events.append, tracer=provider.get_tracer("test"), **options
    )
    await proxy.start()
    try:
        yield Rig(proxy, events, exporter)
    finally:
        await proxy.stop()
        provider.shutdown()


async def open_proxy(r: Rig) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", r.port)


async def ask(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: str | bytes
) -> tuple[int, dict[str, list[str]], bytes]:
    """Send a request head; the proxy's status, headers and (for a refusal) its body."""
    writer.write(head.encode() if isinstance(head, str) else head)
    await writer.drain()
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers.setdefault(k.strip().lower(), []).append(v.strip())
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"][0]))
    return status, headers, body


def connect_head(target: str, token: str | None = TOKEN, extra: str = "") -> str:
    auth = f"Proxy-Authorization: Bearer {token}\r\n" if token else ""
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}{extra}\r\n"


async def refused(r: Rig, head: str | bytes) -> tuple[int, dict[str, list[str]], bytes]:
    reader, writer = await open_proxy(r)
    try:
        answer = await ask(reader, writer, head)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the proxy closed the connection
        return answer
    finally:
        writer.close()


async def settle(r: Rig, n: int) -> None:
    """Wait until the proxy has recorded ``n`` connections (each is recorded when it ends)."""
    for _ in range(500):
        if len(r.events) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(r.events)} egress events, expected {n}")


async def tunnel_works(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    assert await asyncio.wait_for(reader.readexactly(6), 10) == b"HELLO\n"
    writer.write(b"ping")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"PING"


# ---- tunnels and forwarding


async def test_connect_tunnel_carries_tls_end_to_end(tls_web: Web) -> None:
    async with rig([f"127.0.0.1:{tls_web.port}"]) as r:
        verify = ssl.create_default_context(cafile=str(tls_web.cafile))
        async with httpx.AsyncClient(proxy=r.url(), verify=verify, trust_env=False) as client:
            answer = await client.get(f"https://127.0.0.1:{tls_web.port}/secret?x=1")
        assert answer.status_code == 200
        assert answer.text == "hello GET /secret?x=1"
        # TLS ran through the tunnel: the proxy's credentials never reached the destination
        assert "proxy-authorization" not in {k.lower() for k in tls_web.seen.requests[0]["headers"]}
        await settle(r, 1)
        event = r.events[0]
        assert (event.method, event.host, event.port, event.status) == (
            "CONNECT",
            "127.0.0.1",
            tls_web.port,
            200,
        )
        assert event.allowed and event.subject == AGENT and event.team == "ops"
        assert event.address == "127.0.0.1" and event.listener == "tcp"
        assert event.bytes_up > 100 and event.bytes_down > 100  # a TLS handshake each way


async def test_forwarded_get_strips_hop_by_hop_headers(web: Web) -> None:
    async with rig([f"127.0.0.1:{web.port}"]) as r:
        async with httpx.AsyncClient(proxy=r.url(), trust_env=False) as client:
            answer = await client.get(
                f"http://127.0.0.1:{web.port}/path/x?q=1",
                headers={"X-Keep": "yes", "Keep-Alive": "timeout=5", "traceparent": TRACEPARENT},
            )
            posted = await client.post(f"http://127.0.0.1:{web.port}/post", content=b"body bytes")
        assert answer.status_code == 200 and answer.text == "hello GET /path/x?q=1"
        assert posted.text == "hello POST /post"
        first, second = web.seen.requests
        headers = {k.lower(): v for k, v in first["headers"].items()}
        assert first["path"] == "/path/x?q=1"
        assert headers["host"] == f"127.0.0.1:{web.port}"
        assert headers["x-keep"] == "yes"
        assert headers["connection"] == "close"
        assert "proxy-authorization" not in headers and "keep-alive" not in headers
        # the destination's traceparent is the proxy's span, a child of the caller's trace
        assert headers["traceparent"].split("-")[1] == TRACE_ID
        assert headers["traceparent"] != TRACEPARENT
        assert second["body"] == b"body bytes"
        await settle(r, 2)
        assert [(e.method, e.status, e.allowed) for e in r.events] == [
            ("GET", 200, True),
            ("POST", 200, True),
        ]
        spans = sorted(r.exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
        assert spans[0].name == f"egress GET 127.0.0.1:{web.port}"
        assert format(spans[0].context.span_id, "016x") == headers["traceparent"].split("-")[2]


async def test_raw_tunnel_pipes_both_ways_with_half_close() -> None:
    async with echo_server() as echo, rig([f"127.0.0.1:{echo.port}"]) as r:
        reader, writer = await open_proxy(r)
        status, _, _ = await ask(reader, writer, connect_head(f"127.0.0.1:{echo.port}"))
        assert status == 200
        await tunnel_works(reader, writer)
        writer.write(b"x" * 100_000)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(100_000), 10) == b"X" * 100_000
        writer.write_eof()  # half-close: the destination sees EOF and may still answer
        assert await asyncio.wait_for(reader.read(), 10) == b"BYE\n"
        writer.close()
        await settle(r, 1)
        event = r.events[0]
        assert event.bytes_up == 4 + 100_000
        assert event.bytes_down == 6 + 4 + 100_000 + 4
        assert bytes(echo.received) == b"ping" + b"x" * 100_000


# ---- refusals


async def test_refused_destination_gets_403_and_nothing_is_connected() -> None:
    async with echo_server() as echo, rig([f"127.0.0.1:{echo.port + 1}", "api.example.com:443"]) as r:
        status, _, body = await refused(r, connect_head(f"127.0.0.1:{echo.port}"))
        assert status == 403
        assert f"127.0.0.1:{echo.port}".encode() in body
        status, _, body = await refused(r, connect_head("api.example.com:444"))  # port mismatch
        assert status == 403 and b"api.example.com:444" in body
        status, _, _ = await refused(
            r, f"GET http://127.0.0.1:{echo.port}/ HTTP/1.1\r\nProxy-Authorization: Bearer {TOKEN}\r\n\r\n"
        )
        assert status == 403
        assert echo.connections == 0
        await settle(r, 3)
        assert all(not e.allowed and e.status == 403 for e in r.events)
        assert r.events[0].reason == "not on the allow-list" and r.events[0].address is None


async def test_wildcard_entries_reach_resolution_only_for_subdomains() -> None:
    # *.example.test allows a.example.test (the proxy tries to resolve it: 502, the name does not
    # exist; 504 where the resolver is slow to say so) and refuses example.test before any lookup
    async with rig(["*.example.test:443"], connect_timeout_s=2) as r:
        assert (await refused(r, connect_head("a.example.test:443")))[0] in (502, 504)
        assert (await refused(r, connect_head("a.b.example.test:443")))[0] in (502, 504)
        assert (await refused(r, connect_head("example.test:443")))[0] == 403
        assert (await refused(r, connect_head("a.example.test:80")))[0] == 403


async def test_proxy_credentials() -> None:
    async with echo_server() as echo, rig([f"127.0.0.1:{echo.port}"]) as r:
        target = f"127.0.0.1:{echo.port}"
        status, headers, _ = await refused(r, connect_head(target, token=None))
        assert status == 407
        assert any(v.startswith("Bearer") for v in headers["proxy-authenticate"])
        assert any(v.startswith("Basic") for v in headers["proxy-authenticate"])
        assert (await refused(r, connect_head(target, token="not-a-token")))[0] == 407
        bad_basic = "Proxy-Authorization: Basic !!!\r\n"
        assert (await refused(r, connect_head(target, token=None, extra=bad_basic)))[0] == 407
        wrong = base64.b64encode(b"agent:nope").decode()
        assert (await refused(r, connect_head(target, None, f"Proxy-Authorization: Basic {wrong}\r\n")))[
            0
        ] == 407
        assert echo.connections == 0
        good = base64.b64encode(f"agent:{TOKEN}".encode()).decode()
        reader, writer = await open_proxy(r)
        head = connect_head(target, None, f"Proxy-Authorization: Basic {good}\r\n")
        assert (await ask(reader, writer, head))[0] == 200
        await tunnel_works(reader, writer)
        writer.close()
        await settle(r, 5)
        assert [e.reason for e in r.events[:4]] == ["no credentials"] + ["bad credentials"] * 3
        assert all(e.subject is None for e in r.events[:4])


async def test_an_identity_sees_only_its_own_allow_list() -> None:
    async with (
        echo_server() as mine,
        echo_server() as theirs,
        rig([f"127.0.0.1:{mine.port}"], other=[f"127.0.0.1:{theirs.port}"]) as r,
    ):
        status, _, _ = await refused(r, connect_head(f"127.0.0.1:{theirs.port}", token=TOKEN))
        assert status == 403
        reader, writer = await open_proxy(r)
        assert (await ask(reader, writer, connect_head(f"127.0.0.1:{theirs.port}", OTHER_TOKEN)))[0] == 200
        await tunnel_works(reader, writer)
        writer.close()
        await settle(r, 2)
        assert (r.events[1].subject, r.events[1].tool) == (OTHER, "fetch")


async def test_unix_socket_is_bound_to_one_identity(tmp_path: Path) -> None:
    sock = tmp_path / "egress.sock"
    async with (
        echo_server() as mine,
        echo_server() as theirs,
        rig([], other=[f"127.0.0.1:{theirs.port}"]) as r,
    ):
        sandbox = EgressIdentity(
            "spiffe://m2a.local/team/ops/agent/runner",
            "ops",
            AllowList([f"127.0.0.1:{mine.port}"]),
            tool="shell",
        )
        await r.proxy.open_unix(sock, sandbox)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        reader, writer = await asyncio.open_unix_connection(str(sock))
        assert (await ask(reader, writer, connect_head(f"127.0.0.1:{mine.port}", token=None)))[0] == 200
        await tunnel_works(reader, writer)
        writer.close()
        # another identity's credentials change nothing on this socket
        reader, writer = await asyncio.open_unix_connection(str(sock))
        status, _, _ = await ask(reader, writer, connect_head(f"127.0.0.1:{theirs.port}", OTHER_TOKEN))
        assert status == 403
        writer.close()
        assert theirs.connections == 0
        await settle(r, 2)
        assert [(e.listener, e.subject, e.tool) for e in r.events] == [("unix", sandbox.subject, "shell")] * 2
        await r.proxy.close_unix(sock)
        assert not sock.exists()
        with pytest.raises(OSError):
            await asyncio.open_unix_connection(str(sock))


async def test_a_name_resolving_to_loopback_is_refused_unless_allowed() -> None:
    async with echo_server() as echo:
        name_only = [f"localhost:{echo.port}"]
        async with rig(name_only) as r:
            status, _, body = await refused(r, connect_head(f"localhost:{echo.port}"))
            assert status == 403 and b"resolves to 127.0.0.1" in body
            await settle(r, 1)
            assert r.events[0].reason.startswith("name resolves to a loopback")
        assert echo.connections == 0
        # the allow-list names the address literally: the name may resolve to it
        async with rig([*name_only, f"127.0.0.1:{echo.port}"]) as r:
            reader, writer = await open_proxy(r)
            assert (await ask(reader, writer, connect_head(f"localhost:{echo.port}")))[0] == 200
            await tunnel_works(reader, writer)
            writer.close()
        async with rig(name_only, allow_private_names=True) as r:
            reader, writer = await open_proxy(r)
            assert (await ask(reader, writer, connect_head(f"localhost:{echo.port}")))[0] == 200
            await tunnel_works(reader, writer)
            writer.close()
            await settle(r, 1)
            assert r.events[0].address == "127.0.0.1" and r.events[0].host == "localhost"


async def test_garbage_oversized_and_slow_requests_are_closed_and_serving_goes_on() -> None:
    async with echo_server() as echo, rig([f"127.0.0.1:{echo.port}"], header_timeout_s=0.5) as r:
        cases: list[tuple[bytes, int]] = [
            (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # origin-form: not a proxy request
            (b"CONNECT nohostport HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT 127.0.0.1:99999 HTTP/1.1\r\n\r\n", 400),
            (b"GET https://127.0.0.1/ HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\n folded: header\r\n\r\n", 400),
            (b"CONNECT a:1 HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
            (b"CONNECT a:1 HTTP/1.1\r\n", 408),  # slowloris: the header never ends
        ]
        for head, expected in cases:
            assert (await refused(r, head))[0] == expected, head[:40]
        rng = random.Random(14)
        for _ in range(30):
            reader, writer = await open_proxy(r)
            writer.write(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) + b"\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), 10)
            assert raw.startswith(b"HTTP/1.1 4"), raw[:40]
            writer.close()
        reader, writer = await open_proxy(r)  # a client that leaves mid-header
        writer.write(b"CONNECT 127.0")
        writer.close()
        reader, writer = await open_proxy(r)
        assert (await ask(reader, writer, connect_head(f"127.0.0.1:{echo.port}")))[0] == 200
        await tunnel_works(reader, writer)
        writer.close()
        await settle(r, len(cases) + 32)
        assert echo.connections == 1


async def test_concurrent_connections_per_identity_are_bounded() -> None:
    async with (
        echo_server() as echo,
        rig([f"127.0.0.1:{echo.port}"], [f"127.0.0.1:{echo.port}"], max_per_identity=1) as r,
    ):
        target = f"127.0.0.1:{echo.port}"
        reader, writer = await open_proxy(r)
        assert (await ask(reader, writer, connect_head(target)))[0] == 200
        await tunnel_works(reader, writer)
        status, headers, _ = await refused(r, connect_head(target))
        assert status == 429 and headers["retry-after"] == ["1"]
        other_reader, other_writer = await open_proxy(r)  # another identity has its own count
        assert (await ask(other_reader, other_writer, connect_head(target, OTHER_TOKEN)))[0] == 200
        other_writer.close()
        writer.close()
        await settle(r, 3)
        reader, writer = await open_proxy(r)
        assert (await ask(reader, writer, connect_head(target)))[0] == 200
        writer.close()


async def test_unreachable_and_silent_destinations() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    # a listener whose accept queue is full: a new connection's SYN is dropped, connect never ends
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    full_port = full.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with suppress(BlockingIOError):
            s.connect(("127.0.0.1", full_port))
        fillers.append(s)
    try:
        async with rig([f"127.0.0.1:{closed_port}", f"127.0.0.1:{full_port}"], connect_timeout_s=0.5) as r:
            assert (await refused(r, connect_head(f"127.0.0.1:{closed_port}")))[0] == 502
            assert (await refused(r, connect_head(f"127.0.0.1:{full_port}")))[0] == 504
            await settle(r, 2)
            assert [e.reason for e in r.events] == ["connect failed", "connect timeout"]
    finally:
        for s in [full, *fillers]:
            s.close()


# ---- audit events and spans


async def test_span_per_connection_with_parent_and_attributes() -> None:
    async with echo_server() as echo, rig([f"127.0.0.1:{echo.port}"]) as r:
        reader, writer = await open_proxy(r)
        head = connect_head(f"127.0.0.1:{echo.port}", extra=f"traceparent: {TRACEPARENT}\r\n")
        assert (await ask(reader, writer, head))[0] == 200
        await tunnel_works(reader, writer)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b"BYE\n"
        writer.close()
        await settle(r, 1)
        await refused(r, connect_head("api.example.com:443"))
        await settle(r, 2)
        spans = sorted(r.exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
        assert [s.name for s in spans] == [
            f"egress CONNECT 127.0.0.1:{echo.port}",
            "egress CONNECT api.example.com:443",
        ]
        ok, no = spans
        assert ok.kind == SpanKind.CLIENT and no.kind == SpanKind.CLIENT
        assert format(ok.context.trace_id, "032x") == TRACE_ID
        assert ok.parent is not None and format(ok.parent.span_id, "016x") == "00f067aa0ba902b7"
        assert no.parent is None
        a = dict(ok.attributes or {})
        assert a["server.address"] == "127.0.0.1" and a["server.port"] == echo.port
        assert a["network.peer.address"] == "127.0.0.1"
        assert a["m2a.egress.allowed"] is True and a["gen_ai.agent.id"] == AGENT
        assert a["m2a.egress.bytes_sent"] == 4 and a["m2a.egress.bytes_received"] == 14
        assert ok.status.status_code != StatusCode.ERROR
        b = dict(no.attributes or {})
        assert b["m2a.egress.allowed"] is False and b["server.address"] == "api.example.com"
        assert no.status.status_code == StatusCode.ERROR
        assert r.events[1].as_dict()["started_at"].endswith("+00:00")


async def test_an_async_audit_callback_and_a_failing_one() -> None:
    seen: list[EgressEvent] = []

    async def record(event: EgressEvent) -> None:
        await asyncio.sleep(0)
        seen.append(event)

    def broken(event: EgressEvent) -> None:
        raise RuntimeError("audit down")

    for callback in (record, broken):
        proxy = EgressProxy(None, on_connection=callback)
        await proxy.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert (await ask(reader, writer, connect_head("a.example:443")))[0] == 407
        writer.close()
        await proxy.stop()
    assert len(seen) == 1 and seen[0].status == 407


# ---- stop()


def _sockets_on(port: int) -> list[Any]:
    return [c for c in psutil.Process().net_connections("inet") if c.laddr and c.laddr.port == port]


async def test_stop_closes_listeners_connections_and_tasks(tmp_path: Path) -> None:
    before = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    async with echo_server() as echo:
        proxy = EgressProxy(None, allow_private_names=False)
        port = (await proxy.start())[1]
        sock = tmp_path / "s.sock"
        await proxy.open_unix(
            sock, EgressIdentity("spiffe://x/a", None, AllowList([f"127.0.0.1:{echo.port}"]))
        )
        reader, writer = await asyncio.open_unix_connection(str(sock))
        assert (await ask(reader, writer, connect_head(f"127.0.0.1:{echo.port}", None)))[0] == 200
        await tunnel_works(reader, writer)
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)  # never sends
        await asyncio.sleep(0.05)
        await proxy.stop()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the tunnel was closed
        assert await asyncio.wait_for(idle_reader.read(), 10) == b""
        writer.close()
        idle_writer.close()
        await asyncio.sleep(0)
        assert not sock.exists()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        assert not [c for c in _sockets_on(port) if c.status in ("LISTEN", "ESTABLISHED")]
        left = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} - before
        assert not [t for t in left if not t.done()], left
        await proxy.stop()  # twice is harmless


async def test_open_unix_refuses_a_path_that_is_not_a_socket(tmp_path: Path) -> None:
    proxy = EgressProxy()
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(FileExistsError):
        await proxy.open_unix(path, EgressIdentity("spiffe://x/a", None, AllowList()))
    assert path.read_text() == "x"
    await proxy.stop()
    assert os.path.exists(path)


async def test_idle_tunnels_are_closed_and_the_connection_cap_holds() -> None:
    async with (
        echo_server() as echo,
        rig([f"127.0.0.1:{echo.port}"], idle_timeout_s=0.3, max_connections=1) as r,
    ):
        reader, writer = await open_proxy(r)
        assert (await ask(reader, writer, connect_head(f"127.0.0.1:{echo.port}")))[0] == 200
        assert await asyncio.wait_for(reader.readexactly(6), 10) == b"HELLO\n"
        status, _, _ = await refused(r, connect_head(f"127.0.0.1:{echo.port}"))  # a second connection
        assert status == 503
        assert await asyncio.wait_for(reader.read(), 10) == b""  # nothing moved for 0.3 s: closed
        writer.close()
        await settle(r, 2)
        assert r.events[1].reason == "closed after 0.3 s idle" and r.events[1].allowed
