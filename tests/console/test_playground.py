"""The Playground (``views_playground.py``) on a live gateway with a scripted chat engine: the models
a principal may use, the answer streamed as JSON lines through the console (as the session's
principal: its grants apply, its usage is recorded under its key, its bearer never reaches the
browser), the same form without JavaScript, multi-turn conversations, refusals, and the CSRF check."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from m2a.console.views_playground import BadConversation, conversation, rate
from tests.console.conftest import MODEL, Browser, Console, console_gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

STREAM = {"accept": "application/x-ndjson"}


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Console]:
    async with console_gateway(tmp_path_factory.mktemp("playground") / "home") as console:
        yield console


async def signed_in(gw: Console, key: str) -> Browser:
    browser = gw.browser()
    assert (await browser.signin(key)).status_code == 303
    assert (await browser.get("/console/playground")).status_code == 200  # its CSRF token
    return browser


def events(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.headers["content-type"].startswith("application/x-ndjson"), resp.text
    return [json.loads(line) for line in resp.text.splitlines() if line.strip()]


async def test_conversation_is_checked() -> None:
    assert conversation("", "", "hi") == [{"role": "user", "content": "hi"}]
    history = json.dumps([{"role": "system", "content": "old"}, {"role": "user", "content": "a"},
                          {"role": "assistant", "content": "b"}])  # fmt: skip
    assert conversation(history, "Be brief.", "c") == [
        {"role": "system", "content": "Be brief."},  # the form's system prompt replaces the history's
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    refused = [
        ("{", "x"), ('{"role": "user"}', "x"), ('[{"role": "tool", "content": "x"}]', "x"),
        ('[{"role": "user", "content": 3}]', "x"), ("[]", ""), ("[]", "x" * 200_001),
    ]  # fmt: skip
    for raw, message in refused:
        with pytest.raises(BadConversation):
            conversation(raw, "", message)
    assert rate(10, 2.0) == 5.0 and rate(0, 1.0) is None and rate(5, 0.0) is None and rate(None, 1.0) is None


async def test_the_page_lists_the_models_the_principal_may_use(gw: Console) -> None:
    admin = await signed_in(gw, gw.admin_key)
    page = await admin.get("/console/playground")
    assert f'<option value="{MODEL}" selected>' in page.text
    assert 'src="/console/static/playground.js"' in page.text and "<script>" not in page.text
    await gw.store.create_team("nomodels")
    bare = await signed_in(gw, (await gw.store.create_key("nomodels", "k"))[0])
    page = await bare.get("/console/playground")
    assert "No chat model is granted to you" in page.text and "<option" not in page.text


async def test_an_answer_streams_through_the_console(gw: Console) -> None:
    key = await gw.team("stream-team")
    browser = await signed_in(gw, key)
    before = len(gw.engine.requests)
    resp = await browser.post(
        "/console/playground/send",
        {
            "model": MODEL,
            "message": "hello there",
            "messages": "[]",
            "system": "Be kind.",
            "max_tokens": "64",
        },
        headers=STREAM,
    )
    assert resp.status_code == 200
    got = events(resp)
    deltas = [e["text"] for e in got if e["type"] == "delta"]
    assert len(deltas) > 1 and "".join(deltas) == "Echo: hello there"  # pieces, as the engine sent them
    done = got[-1]
    assert done["type"] == "done" and done["finish_reason"] == "stop" and done["model"] == MODEL
    assert done["ttft_ms"] is not None and done["ttft_ms"] >= 0 and done["tokens_per_s"] > 0
    assert done["usage"]["completion_tokens"] > 0
    sent = gw.engine.requests[before]
    assert sent["stream"] is True and sent["max_tokens"] == 64
    assert sent["messages"] == [{"role": "system", "content": "Be kind."},
                                {"role": "user", "content": "hello there"}]  # fmt: skip
    assert key not in resp.text and resp.headers["cache-control"] == "no-store"

    # the request was the team key's own: it is in the team's usage (the ledger writes it shortly)
    for _ in range(100):
        usage = await gw.api("GET", "/admin/v1/usage", key, params={"by": "key"})
        assert usage.status_code == 200, usage.text
        if sum(r["requests"] for r in usage.json()) == 1:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the playground's request is not in the team's usage: {usage.json()}")


async def test_a_conversation_goes_on(gw: Console) -> None:
    browser = await signed_in(gw, await gw.team("turns"))
    history = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "Echo: first"}]
    resp = await browser.post(
        "/console/playground/send",
        {"model": MODEL, "message": "second", "messages": json.dumps(history)},
        headers=STREAM,
    )
    assert "".join(e["text"] for e in events(resp) if e["type"] == "delta") == "Echo: second"
    assert gw.engine.last["messages"] == [*history, {"role": "user", "content": "second"}]


async def test_without_javascript_the_answer_comes_whole(gw: Console) -> None:
    browser = await signed_in(gw, await gw.team("nojs"))
    resp = await browser.post("/console/playground/send", {"model": MODEL, "message": "<b>plain</b>"})
    assert resp.status_code == 200 and "text/html" in resp.headers["content-type"]
    assert "Echo: &lt;b&gt;plain&lt;/b&gt;" in resp.text and "<b>plain</b>" not in resp.text
    assert "tokens/s" in resp.text and "output tokens" in resp.text
    assert gw.engine.last["stream"] is False
    # the conversation so far rides in the form, escaped, for the next turn
    assert "&#34;role&#34;: &#34;assistant&#34;" in resp.text or "&quot;role&quot;" in resp.text


async def test_refusals_come_back_as_the_api_said(gw: Console) -> None:
    key = await gw.team("limited", models=())  # no model granted
    browser = await signed_in(gw, key)
    before = len(gw.engine.requests)
    resp = await browser.post("/console/playground/send", {"model": MODEL, "message": "hi"}, headers=STREAM)
    assert resp.status_code in (403, 404)
    body = resp.json()
    assert body["type"] == "error" and body["status"] == resp.status_code and body["message"]
    whole = await browser.post("/console/playground/send", {"model": MODEL, "message": "hi"})
    assert whole.status_code in (403, 404) and 'role="alert"' in whole.text
    bad = await browser.post(
        "/console/playground/send", {"model": MODEL, "message": "", "messages": "[]"}, headers=STREAM
    )
    assert bad.status_code == 400 and bad.json()["message"] == "Type a message first."
    assert len(gw.engine.requests) == before  # nothing reached the engine


async def test_the_send_endpoint_needs_the_csrf_token_and_a_session(gw: Console) -> None:
    browser = await signed_in(gw, await gw.team("csrf-team"))
    before = len(gw.engine.requests)
    forged = await browser.post(
        "/console/playground/send", {"model": MODEL, "message": "hi"}, csrf="forged-token", headers=STREAM
    )
    assert forged.status_code == 403
    cross = await browser.post(
        "/console/playground/send", {"model": MODEL, "message": "hi"},
        headers={**STREAM, "origin": "https://evil.example", "sec-fetch-site": "cross-site"},
    )  # fmt: skip
    assert cross.status_code == 403
    anonymous = gw.browser()
    resp = await anonymous.post("/console/playground/send", {"model": MODEL, "message": "hi"}, csrf="x")
    assert resp.status_code == 303 and "/console/signin" in resp.headers["location"]
    assert len(gw.engine.requests) == before
