"""``ApiClient``: the gateway's own APIs in process, as one principal — JSON answers, the API's
errors as ``ApiError``, and streams relayed while the gateway is still writing them."""

from __future__ import annotations

import asyncio
import json

import pytest

from m2a.console.api import ApiClient, ApiError, make_http
from tests.console.conftest import MODEL, TIMEOUT, Console

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def client(console: Console, key: str) -> ApiClient:
    await console.browser().get("/console/signin")  # the console learns the gateway app on a request
    return console.app.state.extensions[-1].api(key)


async def test_calls_as_the_principal(console: Console) -> None:
    member_key = await console.team("research")
    admin = await client(console, console.admin_key)
    member = await client(console, member_key)
    assert (await admin.get("/admin/v1/whoami"))["role"] == "admin"
    assert (await member.get("/admin/v1/whoami"))["team"] == "research"
    made = await admin.post("/admin/v1/teams", json={"name": "ops"})
    assert made["name"] == "ops"
    assert await admin.delete("/admin/v1/teams/ops") is None  # 204

    with pytest.raises(ApiError) as refused:
        await member.post("/admin/v1/teams", json={"name": "mine"})
    assert refused.value.status == 403 and refused.value.code == "admin_only"
    with pytest.raises(ApiError) as unknown:
        await (await client(console, "m2a-nope")).get("/admin/v1/whoami")
    assert unknown.value.status == 401
    raw = await member.request("GET", "/v1/models")
    assert raw.status_code == 200 and [m["id"] for m in raw.json()["data"]] == [MODEL]
    assert member_key not in repr(member)


async def test_a_stream_is_relayed_as_it_comes(console: Console) -> None:
    key = await console.team("research")
    api = await client(console, key)
    console.engine.gate = asyncio.Event()  # the engine holds the stream after its first piece
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "stream": True}
    async with asyncio.timeout(TIMEOUT), api.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        lines = resp.aiter_lines()
        first = []
        while not any('"content": "Echo"' in line or '"Echo"' in line for line in first):
            first.append(await anext(lines))  # arrives while the engine still holds the rest
        assert not console.engine.gate.is_set()
        console.engine.gate.set()
        rest = [line async for line in lines]
    assert rest[-1] == "data: [DONE]" or "data: [DONE]" in rest
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in [*first, *rest]
        if line.startswith("data: {") and json.loads(line[6:]).get("choices")
    )
    assert text == "Echo: hello there"


async def test_leaving_a_stream_early_cancels_the_call(console: Console) -> None:
    key = await console.team("research")
    api = await client(console, key)
    console.engine.gate = asyncio.Event()  # never set: the engine would hold the stream forever
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "stream": True}
    async with asyncio.timeout(TIMEOUT):
        async with api.stream("POST", "/v1/chat/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if "Echo" in line:
                    break
        await console.engine.cancelled.wait()  # the gateway cancelled its engine call
    console.engine.gate.set()


async def test_a_shared_http_client_per_gateway(console: Console) -> None:
    http = make_http(console.app)
    try:
        resp = await ApiClient(http, console.admin_key).request("GET", "/healthz")
        assert resp.json() == {"status": "ok"}
    finally:
        await http.aclose()
