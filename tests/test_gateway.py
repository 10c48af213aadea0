"""The gateway's own behaviour, against a fake engine (tests/fake_engine.py), over real HTTP.

Each test serves ``create_app(pool, KEY, cfg)`` with a real uvicorn server on a free loopback port and
talks to it with httpx and with the official ``openai`` client. The fake engine records what reaches it,
so the tests can check what the gateway forwards, what it refuses to forward, and what it cancels.

Everything runs in one event loop: where a test needs the engine and the client to take turns it uses
``asyncio.Event`` s, never sleeps, and every wait has a generous timeout that fails the test instead of
hanging it. Nothing asserts on wall-clock durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from m2a.config import GatewayConfig
from m2a.gateway.app import create_app
from m2a.router.pool import Endpoint, Pool
from tests.fake_engine import OLD_VLLM_ERROR, FakeEngine, chat_answer, free_port
from tests.live_app import live
from tests.openai_shape import ERROR_KEYS, assert_openai_error

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "sk-gateway-test-" + "k" * 24
CHAT = "fake-chat"
EMBED = "acme/fake-embed"  # a slash in the name, as in Hugging Face ids
HELLO = [{"role": "user", "content": "Say hello."}]
TIMEOUT = 30.0  # per HTTP call; generous for a loaded two-core machine
T = TypeVar("T")


# ---------------------------------------------------------------------------- helpers
@dataclass
class Gateway:
    url: str  # root, without /v1
    pool: Pool

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@contextlib.asynccontextmanager
async def serve_gateway(pool: Pool, cfg: GatewayConfig | None = None, **kw: object) -> AsyncIterator[Gateway]:
    """The gateway app on a real uvicorn server, on a free loopback port."""
    async with live(create_app(pool, KEY, cfg, **kw), TIMEOUT) as url:  # type: ignore[arg-type]
        yield Gateway(url, pool)


def endpoint(
    engine_url: str,
    model: str = CHAT,
    id: str | None = None,
    task: str = "chat",
    healthy: bool = True,
    api_key: str | None = None,
) -> Endpoint:
    return Endpoint(
        id=id or f"{model}-0", model=model, base_url=engine_url, task=task, healthy=healthy, api_key=api_key
    )


def make_pool(*endpoints: Endpoint) -> Pool:
    pool = Pool()
    for ep in endpoints:
        pool.add(ep)
    return pool


def http_client(gw: Gateway, key: str | None = KEY) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=gw.url, headers=headers, timeout=TIMEOUT, trust_env=False)


def openai_client(gw: Gateway, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=TIMEOUT)


async def within(aw: Awaitable[T], what: str, timeout: float = TIMEOUT) -> T:
    """``aw``, or a test failure naming ``what`` if it takes longer than ``timeout`` seconds."""
    try:
        return await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds, failing the test after ``timeout`` seconds."""

    async def poll() -> None:
        while not await check():
            await asyncio.sleep(0.05)

    await within(poll(), what, timeout)


async def metric(client: httpx.AsyncClient, sample: str, **labels: str) -> float:
    """The value of one Prometheus sample from GET /metrics (0 when the series does not exist yet)."""
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    total = 0.0
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def sse_data(lines: list[str]) -> list[str]:
    """The payloads of the ``data:`` lines of an SSE stream."""
    return [line.removeprefix("data:").strip() for line in lines if line.startswith("data:")]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    fake = FakeEngine()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def gateway(engine: FakeEngine) -> AsyncIterator[Gateway]:
    """A chat model and an embedding model, both on the fake engine, both healthy."""
    pool = make_pool(endpoint(engine.url, CHAT), endpoint(engine.url, EMBED, task="embed"))
    async with serve_gateway(pool) as gw:
        try:
            yield gw
        finally:
            engine.release()  # so that no request the test left waiting holds up the shutdown


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(gateway) as c:
        yield c


@pytest.fixture
async def oai(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client(gateway) as c:
        yield c


# ---------------------------------------------------------------------------- 1. authentication
async def test_missing_or_wrong_key_is_401_in_openai_shape(gateway: Gateway, engine: FakeEngine) -> None:
    body = {"model": CHAT, "messages": HELLO}
    async with http_client(gateway, key=None) as anonymous:
        err = assert_openai_error(
            await anonymous.post("/v1/chat/completions", json=body), 401, "missing_api_key"
        )
        assert err["type"] == "authentication_error"
        assert_openai_error(await anonymous.get("/v1/models"), 401, "missing_api_key")
    async with http_client(gateway, key="sk-wrong") as wrong:
        assert_openai_error(await wrong.post("/v1/chat/completions", json=body), 401, "invalid_api_key")
    async with openai_client(gateway, key="sk-wrong") as oai_wrong:
        with pytest.raises(openai.AuthenticationError) as exc_info:
            await oai_wrong.chat.completions.create(model=CHAT, messages=HELLO)  # type: ignore[arg-type]
        assert exc_info.value.status_code == 401
    assert engine.requests == []


# ---------------------------------------------------------------------------- 2. models
async def test_models_are_listed_and_retrievable(client: httpx.AsyncClient, oai: openai.AsyncOpenAI) -> None:
    listed = (await client.get("/v1/models")).json()
    assert listed["object"] == "list"
    assert {m["id"] for m in listed["data"]} == {CHAT, EMBED}
    assert all(m["object"] == "model" for m in listed["data"])

    card = await client.get(f"/v1/models/{EMBED}")
    assert card.status_code == 200
    assert card.json()["id"] == EMBED

    assert {m.id async for m in oai.models.list()} == {CHAT, EMBED}
    assert (await oai.models.retrieve(CHAT)).id == CHAT

    err = assert_openai_error(await client.get("/v1/models/no-such-model"), 404, "model_not_found")
    assert err["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("no-such-model")


# ---------------------------------------------------------------------------- 3. unknown model
async def test_unknown_model_is_404_listing_served_models(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    resp = await client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": HELLO})
    err = assert_openai_error(resp, 404, "model_not_found")
    assert err["param"] == "model"
    assert "gpt-9" in err["message"]
    assert CHAT in err["message"] and EMBED in err["message"]
    assert engine.requests == []


# ---------------------------------------------------------------------------- 4. validation
async def test_invalid_bodies_are_400_and_never_reach_the_engine(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    url = "/v1/chat/completions"
    headers = {"content-type": "application/json"}

    err = assert_openai_error(await client.post(url, content=b'{"model": ', headers=headers), 400)
    assert err["code"] == "invalid_json"

    assert_openai_error(await client.post(url, content=b"", headers=headers), 400)

    err = assert_openai_error(await client.post(url, json={"model": CHAT}), 400)
    assert err["param"] == "messages"

    resp = await client.post(url, json={"model": CHAT, "messages": HELLO, "temperature": 5})
    err = assert_openai_error(resp, 400)
    assert err["param"] == "temperature"

    assert engine.requests == []


# ---------------------------------------------------------------------------- 5. body size
async def test_body_over_max_body_bytes_is_413(engine: FakeEngine) -> None:
    pool = make_pool(endpoint(engine.url))
    big = json.dumps({"model": CHAT, "messages": [{"role": "user", "content": "x" * 4000}]}).encode()
    small = json.dumps({"model": CHAT, "messages": HELLO}).encode()

    async def chunked(data: bytes) -> AsyncIterator[bytes]:  # no content-length: the gateway must count
        for i in range(0, len(data), 500):
            yield data[i : i + 500]

    async with serve_gateway(pool, GatewayConfig(max_body_bytes=2048)) as gw, http_client(gw) as client:
        headers = {"content-type": "application/json"}
        resp = await client.post("/v1/chat/completions", content=big, headers=headers)
        assert_openai_error(resp, 413, "body_too_large")
        resp = await client.post("/v1/chat/completions", content=chunked(big), headers=headers)
        assert_openai_error(resp, 413, "body_too_large")
        assert engine.requests == []

        resp = await client.post("/v1/chat/completions", content=small, headers=headers)
        assert resp.status_code == 200, resp.text


# ---------------------------------------------------------------------------- 6. task routing
async def test_model_on_the_wrong_endpoint_is_400_wrong_endpoint(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    resp = await client.post("/v1/embeddings", json={"model": CHAT, "input": "hello"})
    err = assert_openai_error(resp, 400, "wrong_endpoint")
    assert err["param"] == "model"

    resp = await client.post("/v1/chat/completions", json={"model": EMBED, "messages": HELLO})
    err = assert_openai_error(resp, 400, "wrong_endpoint")
    assert err["param"] == "model"
    assert engine.requests == []


async def test_embeddings_are_forwarded(oai: openai.AsyncOpenAI, engine: FakeEngine) -> None:
    result = await oai.embeddings.create(model=EMBED, input="hello", encoding_format="float")
    assert result.data[0].embedding == [0.25, -0.5, 1.0]
    assert engine.paths() == ["/v1/embeddings"]
    assert engine.requests[0].json["model"] == EMBED


async def test_engine_connections_are_reused(oai: openai.AsyncOpenAI, engine: FakeEngine) -> None:
    for _ in range(3):
        await oai.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hi"}])
        stream = await oai.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for _ in stream:
            pass
    assert len(engine.requests) == 6
    assert len({r.peer for r in engine.requests}) == 1  # one pooled connection, not one per request


# ---------------------------------------------------------------------------- 7. pass-through
async def test_non_streamed_chat_is_passed_through_unchanged(engine: FakeEngine) -> None:
    pool = make_pool(
        endpoint(engine.url, CHAT),
        endpoint(engine.url, "keyed-chat", api_key="up-secret"),
    )
    # Odd spacing, key order and an engine extension (top_k) that OpenAI's schema does not know.
    sent = b'{"messages":[{"role":"user","content":"Say hello."}],  "top_k": 5, "model":"fake-chat"}'
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with serve_gateway(pool) as gw, http_client(gw) as client:
        resp = await client.post(
            "/v1/chat/completions",
            content=sent,
            headers={"content-type": "application/json", "traceparent": traceparent},
        )
        assert resp.status_code == 200, resp.text
        assert resp.content == chat_answer(CHAT)  # the engine's own bytes
        assert resp.json() == json.loads(chat_answer(CHAT))

        [got] = engine.requests
        assert got.path == "/v1/chat/completions"
        assert got.body == sent
        assert got.json["top_k"] == 5
        assert got.headers["traceparent"] == traceparent
        assert got.headers["x-request-id"] == resp.headers["x-request-id"]  # one id, both ways
        assert "authorization" not in got.headers  # the client's key stays at the gateway
        assert KEY not in json.dumps(got.headers)

        resp = await client.post("/v1/chat/completions", json={"model": "keyed-chat", "messages": HELLO})
        assert resp.status_code == 200, resp.text
        assert engine.requests[1].headers["authorization"] == "Bearer up-secret"


async def test_vllm_engines_get_the_callers_priority_and_clients_cannot_raise_it(engine: FakeEngine) -> None:
    vllm = endpoint(engine.url, CHAT)
    vllm.engine, vllm.takes_priority = "vllm", True  # as m2a starts vLLM: with priority scheduling
    pool = make_pool(vllm, endpoint(engine.url, "other-chat"))
    async with serve_gateway(pool) as gw, http_client(gw) as client:
        body = {"model": CHAT, "messages": HELLO, "priority": -1000}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        assert engine.requests[0].json["priority"] == 0  # the admin key's order (critical), not the client's
        assert engine.requests[0].json["messages"] == HELLO
        sent = b'{"model": "other-chat", "messages": [{"role": "user", "content": "Say hello."}]}'
        resp = await client.post(
            "/v1/chat/completions", content=sent, headers={"content-type": "application/json"}
        )
        assert resp.status_code == 200
        assert engine.requests[1].body == sent  # engines other than vLLM get the client's bytes

        # An engine that takes no priority (a remote one) never gets the client's own either.
        body = {"model": "other-chat", "messages": HELLO, "priority": -1000000, "top_k": 3}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        assert "priority" not in engine.requests[2].json and engine.requests[2].json["top_k"] == 3
        body["priority"] = "not a number"  # nor an engine's own 400 for a field only m2a sets
        body["request_id"] = "chatcmpl-someone-elses"
        body["kv_transfer_params"] = {"remote_host": "10.0.0.9", "remote_port": 5600}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        assert not {"priority", "request_id", "kv_transfer_params"} & set(engine.requests[3].json)


# ---------------------------------------------------------------------------- 8. streaming
async def test_streamed_chat_yields_every_chunk_in_order(oai: openai.AsyncOpenAI, engine: FakeEngine) -> None:
    stream = await oai.chat.completions.create(model=CHAT, messages=HELLO, stream=True)  # type: ignore[arg-type]
    pieces: list[str] = []
    finish: list[str | None] = []
    async for chunk in stream:
        pieces.append(chunk.choices[0].delta.content or "")
        finish.append(chunk.choices[0].finish_reason)
    assert [p for p in pieces if p] == list(engine.chunks)
    assert finish[-1] == "stop"
    assert engine.chunks_sent == len(engine.chunks)


async def test_stream_reaches_the_client_unbuffered(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    # The engine sends chunk 1 and then waits for the client to have it: a gateway that buffered the
    # stream would deadlock here, which `within` turns into a failure.
    engine.gate = asyncio.Event()
    body = {"model": CHAT, "messages": HELLO, "stream": True}

    async def read_stream() -> list[str]:
        lines: list[str] = []
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            async for line in resp.aiter_lines():
                lines.append(line)
                if line.startswith("data:") and not engine.gate.is_set():
                    assert engine.chunks_sent == 1  # the engine is still holding chunk 2 back
                    assert json.loads(line[5:])["choices"][0]["delta"]["content"] == engine.chunks[0]
                    engine.gate.set()
        return lines

    lines = await within(read_stream(), "the first chunk to reach the client before the rest was sent")
    data = sse_data(lines)
    assert data[-1] == "[DONE]"
    contents = [json.loads(d)["choices"][0]["delta"].get("content") for d in data[:-1]]
    assert [c for c in contents if c] == list(engine.chunks)


# ---------------------------------------------------------------------------- 9-10. disconnects
async def test_client_disconnect_mid_stream_cancels_the_engine_request(
    client: httpx.AsyncClient, gateway: Gateway, engine: FakeEngine
) -> None:
    engine.gate = asyncio.Event()  # never set: the engine stalls after its first chunk
    body = {"model": CHAT, "messages": HELLO, "stream": True}

    async def read_first_chunk_and_leave() -> None:
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    return  # leaving the block closes the connection mid-stream

    await within(read_first_chunk_and_leave(), "the first streamed chunk")
    await within(engine.cancelled.wait(), "the engine to see its request cancelled", timeout=10)

    async def settled() -> bool:
        inflight = await metric(client, "m2a_inflight_requests", model=CHAT)
        disconnects = await metric(client, "m2a_client_disconnects_total", model=CHAT)
        return inflight == 0 and disconnects == 1

    await eventually(settled, "m2a_inflight_requests to return to 0 and one client disconnect counted")
    assert all(ep.inflight == 0 for ep in gateway.pool.all())


async def test_client_disconnect_while_waiting_for_a_whole_answer_cancels_the_engine_request(
    client: httpx.AsyncClient, gateway: Gateway, engine: FakeEngine
) -> None:
    engine.gate = asyncio.Event()  # never set: the engine never answers
    request = asyncio.create_task(
        client.post("/v1/chat/completions", json={"model": CHAT, "messages": HELLO})
    )
    await within(engine.started.wait(), "the request to reach the engine")
    request.cancel()  # the client gives up: httpx closes its connection
    with contextlib.suppress(asyncio.CancelledError):
        await request
    await within(engine.cancelled.wait(), "the engine to see its request cancelled", timeout=10)

    async def settled() -> bool:
        inflight = await metric(client, "m2a_inflight_requests", model=CHAT)
        disconnects = await metric(client, "m2a_client_disconnects_total", model=CHAT)
        return inflight == 0 and disconnects == 1

    await eventually(settled, "m2a_inflight_requests to return to 0 and one client disconnect counted")
    assert all(ep.inflight == 0 for ep in gateway.pool.all())


# ---------------------------------------------------------------------------- 11-12. replicas
async def test_no_healthy_replica_is_a_prompt_503_with_retry_after(engine: FakeEngine) -> None:
    pool = make_pool(endpoint(engine.url, healthy=False))
    async with serve_gateway(pool) as gw, http_client(gw) as client:
        resp = await client.post("/v1/chat/completions", json={"model": CHAT, "messages": HELLO})
        assert_openai_error(resp, 503, "no_healthy_replica")
        assert resp.headers["retry-after"].isdigit()
    assert engine.requests == []


async def test_a_dead_replica_fails_over_to_a_live_one(engine: FakeEngine) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}/v1"  # healthy in the pool, but nothing listens there
    pool = make_pool(endpoint(dead_url, id="dead"), endpoint(engine.url, id="live"))
    async with serve_gateway(pool) as gw, http_client(gw) as client:
        # Ties are broken at random: send (distinct prompts) until the dead replica was tried.
        sent, failed = 0, 0.0
        while failed < 1 and sent < 32:
            msgs = [{"role": "user", "content": f"hello {sent}"}]
            resp = await client.post("/v1/chat/completions", json={"model": CHAT, "messages": msgs})
            sent += 1
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-m2a-replica"] == "live"
            failed = await metric(client, "m2a_upstream_errors_total", model=CHAT, replica="dead")
        assert len(engine.requests) == sent
        # The dead replica was tried (and failed) at least once, so failover really happened.
        assert failed >= 1
        assert all(ep.inflight == 0 for ep in pool.all())


async def test_all_replicas_dead_is_503(engine: FakeEngine) -> None:
    pool = make_pool(
        endpoint(f"http://127.0.0.1:{free_port()}/v1", id="dead-1"),
        endpoint(f"http://127.0.0.1:{free_port()}/v1", id="dead-2"),
    )
    async with serve_gateway(pool) as gw, http_client(gw) as client:
        resp = await client.post("/v1/chat/completions", json={"model": CHAT, "messages": HELLO})
        assert_openai_error(resp, 503, "no_healthy_replica")
        assert "retry-after" in resp.headers
        assert all(ep.inflight == 0 for ep in pool.all())


async def test_a_503_names_no_engine_address(engine: FakeEngine) -> None:
    port = free_port()
    pool = make_pool(endpoint(f"http://127.0.0.1:{port}/v1", id="dead-1"))
    async with serve_gateway(pool) as gw, http_client(gw) as client:
        resp = await client.post("/v1/chat/completions", json={"model": CHAT, "messages": HELLO})
        err = assert_openai_error(resp, 503, "no_healthy_replica")
        assert str(port) not in resp.text and "127.0.0.1" not in resp.text and "Connector" not in resp.text
        assert CHAT in err["message"]
        # It refused connections: out of the pool at once, not at its next health check.
        assert pool.endpoints(CHAT)[0].healthy is False
        assert (await client.get("/readyz")).json()["models"] == {CHAT: False}


class Resetter:
    """A replica that dies under each request: it reads it, then resets the connection (RST)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.hits = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import socket
        import struct

        await reader.readuntil(b"\r\n\r\n")
        self.hits += 1
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def __aenter__(self) -> Resetter:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


async def test_a_replica_that_resets_the_connection_fails_over(engine: FakeEngine) -> None:
    """An engine that died under the request (connection reset, aiohttp's ClientOSError) sent
    nothing back: the request goes to a healthy replica instead of failing with 502."""
    async with Resetter() as dying:
        pool = make_pool(endpoint(dying.url, id="dying"), endpoint(engine.url, id="live"))
        async with serve_gateway(pool) as gw, http_client(gw) as client:
            # Ties between the two replicas are broken at random, so a few requests may all land on
            # "live" first: send (distinct prompts, no prefix affinity) until "dying" was tried.
            sent = 0
            while dying.hits == 0 and sent < 32:
                msgs = [{"role": "user", "content": f"hello {sent}"}]
                resp = await client.post("/v1/chat/completions", json={"model": CHAT, "messages": msgs})
                sent += 1
                assert resp.status_code == 200, resp.text
                assert resp.headers["x-m2a-replica"] == "live"
            assert dying.hits >= 1  # it was tried, so failover really happened
            assert len(engine.requests) == sent
            assert all(ep.inflight == 0 for ep in pool.all())


# ---------------------------------------------------------------------------- 13. engine errors
async def test_engine_error_in_old_vllm_shape_becomes_openai_shape(
    client: httpx.AsyncClient, oai: openai.AsyncOpenAI, engine: FakeEngine
) -> None:
    engine.mode = "error"
    for stream in (False, True):
        resp = await client.post(
            "/v1/chat/completions", json={"model": CHAT, "messages": HELLO, "stream": stream}
        )
        err = assert_openai_error(resp, 400)
        assert err["message"] == OLD_VLLM_ERROR["message"]

    with pytest.raises(openai.BadRequestError) as exc_info:
        await oai.chat.completions.create(model=CHAT, messages=HELLO)  # type: ignore[arg-type]
    assert OLD_VLLM_ERROR["message"] in str(exc_info.value)
    assert len(engine.requests) == 3


# ---------------------------------------------------------------------------- bad bodies
def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
async def test_a_deeply_nested_body_is_a_400_not_a_500(
    client: httpx.AsyncClient, engine: FakeEngine, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = len(engine.requests)
    for body in (
        nested(10_000),  # past the parser's recursion: once a 500 and two tracebacks
        f'{{"model": "{CHAT}", "messages": {nested(100)}}}',  # parses, but deeper than any request
        f'{{"model": "{EMBED}", "input": "x", "user": {{"a": {nested(70)}}}}}',
    ):
        resp = await client.post(path, content=body, headers={"content-type": "application/json"})
        err = assert_openai_error(resp, 400, "invalid_json")
        assert "nested" in err["message"]
    assert len(engine.requests) == before
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


async def test_moderately_nested_json_still_passes(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    schema: dict = {"type": "string"}
    for _ in range(20):  # a tool schema 40 levels deep is legal (if unusual)
        schema = {"type": "object", "properties": {"x": schema}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    resp = await client.post("/v1/chat/completions", json={"model": CHAT, "messages": HELLO, "tools": tools})
    assert resp.status_code == 200, resp.text


# ---------------------------------------------------------------------------- 14. probes and metrics
async def test_health_readiness_and_metrics(engine: FakeEngine) -> None:
    pool = make_pool(endpoint(engine.url, CHAT), endpoint(engine.url, EMBED, task="embed", healthy=False))
    async with serve_gateway(pool) as gw, http_client(gw, key=None) as anonymous, http_client(gw) as client:
        resp = await anonymous.get("/healthz")
        assert resp.status_code == 200

        resp = await anonymous.get("/readyz")
        assert resp.status_code == 503
        assert resp.json()["models"] == {CHAT: True, EMBED: False}

        pool.set_healthy(f"{EMBED}-0", True)
        resp = await anonymous.get("/readyz")
        assert resp.status_code == 200
        assert resp.json()["ready"] is True

        resp = await client.post("/v1/chat/completions", json={"model": CHAT, "messages": HELLO})
        assert resp.status_code == 200
        resp = await anonymous.get("/metrics")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        assert "m2a_requests_total" in resp.text
        labels = {"route": "/v1/chat/completions", "model": CHAT, "status": "200"}
        assert await metric(anonymous, "m2a_requests_total", **labels) == 1


# ---------------------------------------------------------------------------- 15. routing errors
async def test_unknown_path_and_wrong_method_are_openai_errors(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/no-such-thing"), 404, "unknown_url")
    assert_openai_error(await client.post("/v2/chat/completions", json={}), 404)
    assert_openai_error(await client.get("/v1/chat/completions"), 405)


async def test_readiness_detail_is_for_admin_keys_only(engine: FakeEngine) -> None:
    """A probe learns ready / not ready per model; engine URLs, pids and logs need the admin key."""
    detail = [{"replica": "r", "url": "http://10.0.0.5:18100/v1", "pid": 4242, "log": "/var/log/r.log"}]
    pool = make_pool(endpoint(engine.url, CHAT))
    async with (
        serve_gateway(pool, replica_status=lambda: detail) as gw,
        http_client(gw, key=None) as anonymous,
        http_client(gw) as admin,
    ):
        for headers in ({}, {"authorization": "Bearer not-a-key"}):
            resp = await anonymous.get("/readyz", headers=headers)
            assert resp.status_code == 200 and resp.json() == {"ready": True, "models": {CHAT: True}}
            assert "10.0.0.5" not in resp.text and "4242" not in resp.text
        assert (await admin.get("/readyz")).json()["replicas"] == detail


async def test_metrics_may_need_the_admin_key(engine: FakeEngine) -> None:
    pool = make_pool(endpoint(engine.url, CHAT))
    cfg = GatewayConfig(metrics_need_key=True)
    async with (
        serve_gateway(pool, cfg) as gw,
        http_client(gw, key=None) as anonymous,
        http_client(gw) as admin,
    ):
        assert_openai_error(await anonymous.get("/metrics"), 401)
        assert_openai_error(await anonymous.get("/metrics", headers={"authorization": "Bearer x"}), 401)
        resp = await admin.get("/metrics")
        assert resp.status_code == 200 and "m2a_replica_healthy" in resp.text
        assert (await anonymous.get("/readyz")).status_code == 200  # probes stay open


# ---------------------------------------------------------------------------- 15b. big answers
async def test_a_whole_answer_over_a_mib_arrives_and_one_over_the_bound_is_a_502(engine: FakeEngine) -> None:
    """A whole answer is not paused by the streams' back-pressure mark (1 MiB: it waited for the
    read timeout and became a 502) and is bounded by ``max_answer_bytes``; a stream's event too."""
    pool = make_pool(endpoint(engine.url))
    ask = {"model": CHAT, "messages": HELLO}
    async with serve_gateway(pool, GatewayConfig(max_answer_bytes=4 << 20)) as gw, http_client(gw) as client:
        engine.answer = "x" * (3 << 20)  # 3 MiB of content: over the mark, under the bound
        resp = await within(client.post("/v1/chat/completions", json=ask), "3 MiB")
        assert resp.status_code == 200, resp.text[:300]
        assert resp.json()["choices"][0]["message"]["content"] == engine.answer

        engine.answer = "x" * (5 << 20)
        resp = await within(client.post("/v1/chat/completions", json=ask), "5 MiB")
        err = assert_openai_error(resp, 502)
        assert "larger than 4194304 bytes" in err["message"]

        engine.answer = "Paris."  # the gateway still answers (a fresh engine connection)
        resp = await within(client.post("/v1/chat/completions", json=ask), "next")
        assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "Paris."

        engine.chunks = ["y" * (9 << 20)]  # one streamed event over MAX_EVENT_BYTES (8 MiB)
        body = {"model": CHAT, "messages": HELLO, "stream": True}

        async def read_all() -> list[str]:
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                return [line async for line in r.aiter_lines()]

        data = sse_data(await within(read_all(), "the stream with a 9 MiB event to end"))
        last = json.loads(data[-1])
        assert set(last) == {"error"} and "larger than" in last["error"]["message"]
        assert "[DONE]" not in data and not any("y" * 100 in d for d in data)


# ---------------------------------------------------------------------------- 16. engine dies mid-stream
async def test_engine_dying_mid_stream_ends_the_stream_with_an_error_event(
    client: httpx.AsyncClient, oai: openai.AsyncOpenAI, gateway: Gateway, engine: FakeEngine
) -> None:
    engine.mode = "die_mid_stream"
    engine.gate = asyncio.Event()  # the engine dies once the client has its first chunk
    body = {"model": CHAT, "messages": HELLO, "stream": True}

    async def read_all() -> list[str]:
        lines: list[str] = []
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                lines.append(line)
                if line.startswith("data:"):
                    engine.gate.set()
        return lines

    data = sse_data(await within(read_all(), "the stream to end after the engine died"))
    assert json.loads(data[0])["choices"][0]["delta"]["content"] == engine.chunks[0]
    last = json.loads(data[-1])
    assert set(last) == {"error"} and set(last["error"]) == ERROR_KEYS
    assert "[DONE]" not in data

    engine.gate = None  # now it dies right after its first chunk, which the gateway may not relay

    async def consume() -> None:
        stream = await oai.chat.completions.create(model=CHAT, messages=HELLO, stream=True)  # type: ignore[arg-type]
        async for _ in stream:
            pass

    with pytest.raises(openai.APIError):
        await within(consume(), "the openai client's stream to end")

    async def settled() -> bool:
        labels = {"route": "/v1/chat/completions", "model": CHAT}
        return (
            await metric(client, "m2a_upstream_errors_total", model=CHAT) == 2
            and await metric(client, "m2a_inflight_requests", model=CHAT) == 0
            and await metric(client, "m2a_requests_total", **labels, status="502") == 2
        )

    await eventually(settled, "both streams counted as engine failures (502)")
    # The engine left, not the client: no disconnect, no 499.
    assert await metric(client, "m2a_client_disconnects_total", model=CHAT) == 0
    assert await metric(client, "m2a_requests_total", status="499") == 0
    assert all(ep.inflight == 0 for ep in gateway.pool.all())
