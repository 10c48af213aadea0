"""End to end: guardrails on real engines behind `m2a up`, with the official `openai` client.

A profile made through the admin API and attached to a team refuses what the real model answers
(SmolLM2 names Paris as the capital of France): a whole answer becomes 400 ``content_filter``, a
stream from vLLM ends with ``finish_reason: "content_filter"`` and an error event before the word
reaches the client, and the ledger records both as ``blocked``. The default profile, on for every
caller without one, masks a credential in a prompt before the engine sees it.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import Stack

pytestmark = pytest.mark.e2e

FRANCE = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]
NO_PARIS = {
    "description": "answers may not name Paris (a word the real model surely says)",
    "rules": [
        {"detector": "denylist", "params": {"terms": ["paris"]}, "where": ["output"], "action": "block"}
    ],
    "stream_hold_chars": 24,
}
MODELS = ("smollm2-llamacpp", "smollm2-135m-instruct")


@pytest.fixture(scope="module")
def guarded(stack: Stack) -> OpenAI:
    """A team whose key passes the no-paris profile."""
    admin = httpx.Client(base_url=stack.root, headers={"authorization": f"Bearer {stack.key}"}, timeout=30)
    assert admin.put("/admin/v1/guardrails/profiles/no-paris", json=NO_PARIS).status_code in (200, 201)
    assert admin.post("/admin/v1/teams", json={"name": "guarded"}).status_code == 201
    for model in MODELS:
        assert admin.put(f"/admin/v1/teams/guarded/grants/{model}").status_code == 200
    r = admin.put("/admin/v1/guardrails/attachments", json={"profile": "no-paris", "team": "guarded"})
    assert r.status_code == 200, r.text
    key = admin.post("/admin/v1/keys", json={"team": "guarded", "name": "e2e"}).json()["key"]
    return OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=120)


def test_a_blocked_whole_answer_is_a_400_content_filter(guarded: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        guarded.chat.completions.create(
            model="smollm2-llamacpp", messages=FRANCE, max_tokens=24, temperature=0
        )
    err = info.value.body
    assert isinstance(err, dict) and err["code"] == "content_filter"
    assert err["guardrail"]["profile"] == "no-paris" and err["guardrail"]["direction"] == "output"
    assert "paris" not in info.value.message.lower().replace("no-paris", "")


def test_a_blocked_stream_from_vllm_ends_with_content_filter(guarded: OpenAI) -> None:
    text, reasons = "", []
    with pytest.raises(openai.APIError) as info:  # the error event: the client raises after the last chunk
        stream = guarded.chat.completions.create(
            model="smollm2-135m-instruct", messages=FRANCE, max_tokens=24, temperature=0, stream=True
        )
        for chunk in stream:
            for c in chunk.choices:
                text += c.delta.content or ""
                if c.finish_reason:
                    reasons.append(c.finish_reason)
    assert "paris" not in text.lower()
    assert reasons == ["content_filter"]
    assert "content_filter" in str(info.value.body) or "blocked" in info.value.message


def test_blocked_requests_are_in_the_ledger(stack: Stack, guarded: OpenAI) -> None:
    admin = httpx.Client(base_url=stack.root, headers={"authorization": f"Bearer {stack.key}"}, timeout=30)
    deadline = time.monotonic() + 20  # the ledger writes its records in the background
    while time.monotonic() < deadline:
        rows = admin.get("/admin/v1/usage", params={"by": "status", "team": "guarded"}).json()
        blocked = [r for r in rows if r["group"] == "blocked"]
        if sum(r["requests"] for r in blocked) >= 2:
            assert all(r["output_tokens"] > 0 for r in blocked)  # the engine's work is still billed
            return
        time.sleep(0.5)
    pytest.fail(f"no blocked records in the ledger: {rows}")


def test_the_default_profile_masks_a_credential_before_the_engine(stack: Stack) -> None:
    """The echo server (a remote engine) records what it received, and answers with it."""
    client = OpenAI(base_url=stack.base_url, api_key=stack.key, max_retries=0, timeout=60)
    key = "AKIAIOSFODNN7EXAMPLF"
    r = client.chat.completions.create(
        model="echo-remote", messages=[{"role": "user", "content": f"store {key} for me"}], max_tokens=5
    )
    sent = stack.echo.requests[-1]["body"]["messages"][0]["content"]
    assert key not in sent and sent.startswith("store [") and sent.endswith("] for me")
    assert key not in (r.choices[0].message.content or "")
