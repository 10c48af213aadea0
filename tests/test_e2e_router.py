"""End to end: `m2a up` with two real vLLM-CPU replicas of SmolLM2, routed on their KV-cache events.

The gateway subscribes to both engines' events (Unix sockets in $M2A_HOME/run/kv), tokenizes each
prompt with the model's own tokenizer and chat template, and sends each conversation's follow-ups to
the replica whose cache holds its system prompt. Checked from the outside: `x-m2a-replica`, the
gateway's KV-event metrics, and the engines' own `vllm:prefix_cache_hits` counters.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import KEY, descendants, engine_ports, free_port, start_up, stop, wait_gone, wait_ready

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("m2a-router")
    log = home / "m2a-up.log"
    port = free_port()
    config = {
        "models": [{"name": MODEL, "replicas": 2, "max_model_len": 2048, "kv_cache_bytes": 128 << 20}],
        "supervisor": {"base_port": engine_ports()},
    }
    proc = start_up(config, home, log, port)
    children = []
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", log)
        children = descendants(proc.pid)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        leftovers = wait_gone(children + descendants(proc.pid))
        for p in leftovers:
            p.kill()
        assert not leftovers, "engine processes outlived m2a up"


def samples(root: str, name: str) -> dict[str, float]:
    """Series ``name`` from the gateway's /metrics, by replica."""
    text = httpx.get(f"{root}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                rid = s.labels.get("replica", "")
                out[rid] = out.get(rid, 0.0) + s.value
    return out


def test_conversations_stick_to_the_replica_holding_their_prefix(two_replicas: str) -> None:
    root = two_replicas
    salt = secrets.token_hex(4)
    systems = [
        f"{salt} Company {k}. You answer questions about our {topic} catalogue politely and briefly. " * 14
        for k, topic in enumerate(["garden", "kitchen", "bicycle", "office"])
    ]
    hits0 = samples(root, "vllm:prefix_cache_hits_total")
    events0 = samples(root, "m2a_kv_events_total")
    chosen: dict[int, list[str]] = {}
    with httpx.Client(base_url=f"{root}/v1", headers={"authorization": f"Bearer {KEY}"}, timeout=120) as c:
        for turn in range(4):
            for k, system in enumerate(systems):
                body = {
                    "model": MODEL,
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": f"Question {turn}: what do you sell?"},
                    ],
                    "max_tokens": 4,
                }
                r = c.post("/chat/completions", json=body)
                assert r.status_code == 200, r.text
                chosen.setdefault(k, []).append(r.headers["x-m2a-replica"])
    # each conversation's follow-ups went where its first request left the system prompt
    for k, replicas in chosen.items():
        assert len(set(replicas)) == 1, (k, replicas)
    events = samples(root, "m2a_kv_events_total")
    assert sum(events.values()) > sum(events0.values()), (events0, events)  # these requests sent events
    errors = samples(root, "m2a_kv_event_errors_total")
    assert sum(errors.values()) == 0, errors  # and every frame the engines sent decoded
    blocks = samples(root, "m2a_kv_index_blocks")
    for replica in {r[0] for r in chosen.values()}:
        assert blocks.get(replica, 0) > 0, blocks
    hits1 = samples(root, "vllm:prefix_cache_hits_total")
    gained = sum(hits1.values()) - sum(hits0.values())
    # 4 conversations × 3 follow-ups, each reusing at least the system prompt's full 128-token blocks
    assert gained >= 4 * 3 * 2 * 128, (hits0, hits1)
