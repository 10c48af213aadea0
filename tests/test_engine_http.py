"""The request path's engine client (gateway/engine_http.py) against real sockets on this machine.

Each test starts a small HTTP server that writes exactly the bytes the case needs: a keep-alive
answer, a chunked stream, an answer ended by closing, a stale keep-alive, an engine that dies or
stalls mid-answer, invalid HTTP.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from m2a.gateway.engine_http import (
    HIGH_WATER,
    AnswerTooLarge,
    BadAnswer,
    ConnectFailed,
    Disconnected,
    EngineClient,
    ReadTimeout,
)

Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]
Serve = Callable[[Handler], Awaitable["Server"]]


class Server:
    """A raw HTTP server: ``handler`` serves each connection; requests and connections counted."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []  # each request's head (request line and headers)
        self.lost = asyncio.Event()  # a client closed a connection
        self.url = ""

    async def head(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next request's head, its body read (by Content-Length); None at the end."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        self.requests.append(head)
        return head

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> Server:
        server = Server(handler)
        s = await asyncio.start_server(server._serve, "127.0.0.1", 0)
        servers.append(s)
        server.url = f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}/v1/chat/completions"
        return server

    yield start
    for s in servers:
        s.close()


@pytest.fixture
async def client() -> AsyncIterator[EngineClient]:
    c = EngineClient(connect_timeout_s=2, read_timeout_s=2)
    yield c
    await c.close()


HEADERS = {"content-type": "application/json", "x-request-id": "r-1"}


def answer(body: bytes, extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    return head + extra + b"\r\n" + body


async def keep_alive(reader: Reader, writer: Writer, server: Server) -> None:
    while await server.head(reader) is not None:
        writer.write(answer(b'{"ok":true}'))
        await writer.drain()


async def test_answers_are_read_whole_and_connections_reused(serve: Serve, client: EngineClient) -> None:
    server = await serve(keep_alive)
    for _ in range(3):
        resp = await client.post(server.url, b'{"model":"m"}', HEADERS)
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.read() == b'{"ok":true}' and resp.at_eof()
        resp.release()
    assert server.connections == 1  # one keep-alive connection carried all three
    head = server.requests[0].decode()
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert "x-request-id: r-1\r\n" in head and "content-length: 13\r\n" in head
    assert f"host: {server.url.split('/')[2]}\r\n" in head
    assert "accept-encoding: identity" in head  # an engine must not compress what is relayed as is


async def test_concurrent_calls_each_get_their_own_connection(serve: Serve, client: EngineClient) -> None:
    server = await serve(keep_alive)

    async def one() -> bytes:
        resp = await client.post(server.url, b"{}", HEADERS)
        data = await resp.read()
        resp.release()
        return data

    assert await asyncio.gather(*(one() for _ in range(8))) == [b'{"ok":true}'] * 8
    assert 1 <= server.connections <= 8 and len(server.requests) == 8


async def test_a_chunked_stream_arrives_piece_by_piece(serve: Serve, client: EngineClient) -> None:
    go_on = asyncio.Event()

    async def stream(reader: Reader, writer: Writer, server: Server) -> None:
        await server.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n")
        writer.write(b"8\r\ndata: 1\n\r\n")
        await writer.drain()
        await go_on.wait()  # the second piece only after the client got the first
        writer.write(b"8\r\ndata: 2\n\r\n0\r\n\r\n")
        await writer.drain()
        await server.head(reader)

    server = await serve(stream)
    resp = await client.post(server.url, b"{}", HEADERS)
    assert resp.content_type == "text/event-stream"
    pieces = resp.iter_any()
    assert await anext(pieces) == b"data: 1\n"
    assert not resp.at_eof()
    go_on.set()
    assert [p async for p in pieces] == [b"data: 2\n"]
    assert resp.at_eof()
    resp.release()


async def test_an_answer_without_a_length_ends_when_the_engine_closes(
    serve: Serve, client: EngineClient
) -> None:
    async def until_close(reader: Reader, writer: Writer, server: Server) -> None:
        await server.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()

    server = await serve(until_close)
    resp = await client.post(server.url, b"{}", HEADERS)
    assert await resp.read() == b"all of it" and resp.at_eof()
    assert resp.content_type == "application/octet-stream"
    resp.release()
    resp = await client.post(server.url, b"{}", HEADERS)  # that connection is not reused
    assert await resp.read() == b"all of it"
    assert server.connections == 2


async def test_a_stale_keep_alive_is_retried_once_on_a_new_connection(
    serve: Serve, client: EngineClient
) -> None:
    async def closes_after_one(reader: Reader, writer: Writer, server: Server) -> None:
        await server.head(reader)
        writer.write(answer(b"first"))
        await writer.drain()
        await server.head(reader)  # the second request on this connection: closed unanswered

    server = await serve(closes_after_one)
    resp = await client.post(server.url, b"{}", HEADERS)
    assert await resp.read() == b"first"
    resp.release()
    resp = await client.post(server.url, b"{}", HEADERS)
    assert await resp.read() == b"first"
    assert server.connections == 2 and len(server.requests) == 3


async def test_a_new_connection_closed_unanswered_is_an_error_not_a_retry(
    serve: Serve, client: EngineClient
) -> None:
    async def hangs_up(reader: Reader, writer: Writer, server: Server) -> None:
        await server.head(reader)

    server = await serve(hangs_up)
    with pytest.raises(Disconnected):
        await client.post(server.url, b"{}", HEADERS)
    assert server.connections == 1  # a fresh connection is not tried twice: another replica may be


async def test_an_engine_that_dies_mid_answer_is_disconnected(serve: Serve, client: EngineClient) -> None:
    async def dies(reader: Reader, writer: Writer, server: Server) -> None:
        await server.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()

    server = await serve(dies)
    resp = await client.post(server.url, b"{}", HEADERS)
    with pytest.raises(Disconnected):
        await resp.read()
    resp = await client.post(server.url, b"{}", HEADERS)
    with pytest.raises(Disconnected):
        async for _ in resp.iter_any():
            pass
    assert not resp.at_eof()


async def test_an_engine_that_stalls_times_out(serve: Serve) -> None:
    async def stalls(reader: Reader, writer: Writer, server: Server) -> None:
        await server.head(reader)
        if len(server.requests) == 2:  # the second call gets its head, then nothing
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
            await writer.drain()
        await asyncio.sleep(5)

    server = await serve(stalls)
    c = EngineClient(connect_timeout_s=2, read_timeout_s=0.2)
    try:
        with pytest.raises(ReadTimeout):  # no head
            await c.post(server.url, b"{}", HEADERS)
        resp = await c.post(server.url, b"{}", HEADERS)
        with pytest.raises(ReadTimeout):  # no body
            await resp.read()
        assert isinstance(ReadTimeout("x"), TimeoutError)
    finally:
        await c.close()


async def test_a_refused_connection_fails_to_connect(client: EngineClient) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectFailed):
        await client.post(f"http://127.0.0.1:{port}/v1/x", b"{}", HEADERS)


async def test_closing_an_unfinished_answer_closes_its_connection(serve: Serve, client: EngineClient) -> None:
    gone = asyncio.Event()

    async def long_stream(reader: Reader, writer: Writer, server: Server) -> None:
        await server.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()
        if await reader.read() == b"":  # the engine sees the client close (vLLM aborts the request)
            gone.set()

    server = await serve(long_stream)
    resp = await client.post(server.url, b"{}", HEADERS)
    assert await anext(resp.iter_any()) == b"a"
    resp.release()  # not read to its end: closed, not pooled
    await asyncio.wait_for(gone.wait(), 2)
    assert not client._idle.get(client.target(server.url).key)


async def test_a_client_that_is_not_reading_pauses_the_engine(serve: Serve, client: EngineClient) -> None:
    size = 4 * HIGH_WATER

    async def big(reader: Reader, writer: Writer, server: Server) -> None:
        await server.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"x" * 65536)
            await writer.drain()
        await server.head(reader)

    server = await serve(big)
    resp = await client.post(server.url, b"{}", HEADERS)
    await asyncio.sleep(0.3)  # nothing read meanwhile
    assert resp._paused and resp._buffered < size  # reading stopped past the high-water mark
    got = 0
    async for piece in resp.iter_any():
        got += len(piece)
    assert got == size and resp.at_eof()
    resp.release()


def sized(size: int) -> Handler:
    """An engine that answers ``size`` bytes of body with a Content-Length, as fast as it can."""

    async def handler(reader: Reader, writer: Writer, server: Server) -> None:
        await server.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        try:
            for _ in range(size // 65536):
                writer.write(b"x" * 65536)
                await writer.drain()
        except ConnectionError:  # the client closed it: an answer too large
            server.lost.set()
            return
        if await server.head(reader) is None:
            server.lost.set()

    return handler


async def test_a_whole_answer_past_the_high_water_mark_is_read_whole(
    serve: Serve, client: EngineClient
) -> None:
    size = 4 * HIGH_WATER
    server = await serve(sized(size))
    resp = await client.post(server.url, b"{}", HEADERS)
    await asyncio.sleep(0.3)  # not read yet: reading paused at the mark, as for a stream
    assert resp._paused
    assert len(await resp.read()) == size  # read() resumes it, and does not pause again
    resp.release()
    assert client._idle.get(client.target(server.url).key)  # read to its end: kept for the next call


async def test_a_whole_answer_past_its_bound_is_too_large_and_its_connection_closed(serve: Serve) -> None:
    c = EngineClient(connect_timeout_s=2, read_timeout_s=2, max_answer_bytes=2 * HIGH_WATER)
    try:
        server = await serve(sized(8 * HIGH_WATER))
        resp = await c.post(server.url, b"{}", HEADERS)
        with pytest.raises(AnswerTooLarge, match="larger than 2097152 bytes"):
            await resp.read()
        assert resp._buffered == 0  # what came is not kept
        resp.release()
        await asyncio.wait_for(server.lost.wait(), 5)  # the engine sees the connection close
        assert not c._idle.get(c.target(server.url).key)
        ok = await c.post((await serve(keep_alive)).url, b"{}", HEADERS)  # the client still works
        assert await ok.read() == b'{"ok":true}'
        ok.release()
    finally:
        await c.close()


async def test_credentials_in_the_url_unless_the_replica_has_a_key(
    serve: Serve, client: EngineClient
) -> None:
    server = await serve(keep_alive)
    url = server.url.replace("http://", "http://user:p%40ss@")
    resp = await client.post(url, b"{}", HEADERS)
    await resp.read()
    resp.release()
    assert f"authorization: Basic {base64.b64encode(b'user:p@ss').decode()}" in server.requests[-1].decode()
    resp = await client.post(url, b"{}", {**HEADERS, "authorization": "Bearer k"})
    await resp.read()
    resp.release()
    head = server.requests[-1].decode()
    assert "authorization: Bearer k" in head and "Basic" not in head


async def test_a_header_with_a_line_break_is_refused(serve: Serve, client: EngineClient) -> None:
    server = await serve(keep_alive)
    with pytest.raises(ValueError):
        await client.post(server.url, b"{}", {"x-a": "1\r\nx-injected: 2"})
    assert server.requests == []


async def test_invalid_http_is_a_bad_answer(serve: Serve, client: EngineClient) -> None:
    async def garbage(reader: Reader, writer: Writer, server: Server) -> None:
        await server.head(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    server = await serve(garbage)
    with pytest.raises(BadAnswer):
        await client.post(server.url, b"{}", HEADERS)


def test_only_http_urls() -> None:
    with pytest.raises(ValueError):
        EngineClient(1, 1).target("ftp://example.com/v1")
