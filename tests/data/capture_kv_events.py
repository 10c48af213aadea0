"""Record a real vLLM engine's KV-cache events, for tests/test_kv_events_vllm.py.

Run against a vLLM started with ``--kv-events-config`` (``m2a up`` with ``replicas: 2`` does that) and
a small KV cache, so that later prompts evict earlier ones::

    .venv/bin/python tests/data/capture_kv_events.py --url http://127.0.0.1:21000 \
        --kv tcp://127.0.0.1:21001 --model smollm2-135m-instruct --out tests/data/vllm_kv_events.json

Sends a few chat requests sharing long prefixes, asks the engine's own ``/tokenize`` for each prompt's
token ids (chat template applied), and writes every ZMQ frame received, base64, with a checkpoint per
prompt: how many frames had arrived once it was answered.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import time

import httpx
import zmq

SYSTEM = "You are the support assistant of a company that sells garden tools. " * 12


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="the engine's root URL")
    ap.add_argument("--kv", required=True, help="its KV-event publisher")
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(a.kv)
    http = httpx.Client(timeout=120)
    frames: list[list] = []

    def drain(wait_ms: int = 1500) -> None:
        while sub.poll(wait_ms):
            topic, seq, payload = sub.recv_multipart()
            frames.append(
                [
                    base64.b64encode(topic).decode(),
                    int.from_bytes(seq, "big"),
                    base64.b64encode(payload).decode(),
                ]
            )
            wait_ms = 300

    def ask(messages: list[dict]) -> None:
        body = {"model": a.model, "messages": messages, "max_tokens": 8, "temperature": 0}
        http.post(f"{a.url}/v1/chat/completions", json=body).raise_for_status()

    print("waiting for the first event (a SUB socket misses what was sent before it joined)")
    for _ in range(30):
        ask([{"role": "user", "content": "warm up " * 150}])
        if sub.poll(1000):
            break
    time.sleep(1)
    drain()
    frames.clear()
    salt = secrets.token_hex(4)  # blocks no earlier run has cached
    prompts = []
    questions = ["How do I sharpen shears?", "Which rake for leaves?", "Do you ship abroad?"]
    others = [f"{salt} topic {i}: " + "soil compost mulch seeds " * 90 for i in range(12)]
    conversations = [
        [{"role": "system", "content": f"{salt} {SYSTEM}"}, {"role": "user", "content": q}] for q in questions
    ]
    conversations += [[{"role": "user", "content": o}] for o in others]  # fill the cache: evictions
    for messages in conversations:
        tokens = http.post(
            f"{a.url}/tokenize", json={"model": a.model, "messages": messages, "add_generation_prompt": True}
        ).json()["tokens"]
        ask(messages)
        drain()
        prompts.append({"messages": messages, "tokens": tokens, "frames_seen": len(frames)})
        print(f"prompt of {len(tokens)} tokens: {len(frames)} frames so far")
    version = http.get(f"{a.url}/version").json().get("version")
    with open(a.out, "w") as f:
        json.dump({"vllm_version": version, "frames": frames, "prompts": prompts}, f)
        f.write("\n")
    print(f"wrote {a.out}: {len(frames)} frames, vLLM {version}")


if __name__ == "__main__":
    main()
