"""The engine simulator, through real HTTP with the official `openai` client: OpenAI routes, usage and
cached tokens, vLLM metric names, the paged KV cache's reuse and LRU eviction, KV events decoded with
vLLM's own classes over ZMQ, the latency model's queue, faults, and fitting the latency model.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import httpx
import openai
import pytest
import pytest_asyncio
import zmq
import zmq.asyncio
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from m2a.protocol.tokens import SimpleTokenizer, block_hashes
from m2a.sim import SimParams, Simulator, fit
from m2a.sim.kvcache import PagedKVCache

FAST = SimParams(time_scale=0.05)
SYSTEM = "You are a careful assistant who answers in one short sentence. " * 6


def client(url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30)


def chat(question: str, system: str = SYSTEM) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


@pytest_asyncio.fixture(loop_scope="function")
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(n=2, params=FAST, seed=1) as s:
        yield s


async def scrape(url: str) -> dict[str, list]:
    async with aiohttp.ClientSession() as h, h.get(url) as r:
        text = await r.text()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(families: dict[str, list], sample: str) -> float:
    return next(s.value for samples in families.values() for s in samples if s.name == sample)


# -- OpenAI API ---------------------------------------------------------------------------------------


async def test_chat_usage_counts_the_router_tokens(sim: Simulator) -> None:
    c = client(sim.urls[0])
    r = await c.chat.completions.create(model="sim-model", messages=chat("What is a KV cache?"), max_tokens=7)
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.role == "assistant"
    assert len(r.choices[0].message.content.split()) == 7
    assert r.usage.completion_tokens == 7
    assert r.usage.prompt_tokens == len(SimpleTokenizer().chat(chat("What is a KV cache?")))
    assert r.usage.total_tokens == r.usage.prompt_tokens + 7
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    r2 = await c.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "hi"}])
    assert r2.choices[0].finish_reason == "stop"  # no max_tokens: the default length
    assert r2.usage.completion_tokens == FAST.default_max_tokens


async def test_stream_matches_non_stream_and_reports_usage(sim: Simulator) -> None:
    c = client(sim.urls[1])
    msgs = chat("Tell me about Paris.")
    full = await c.chat.completions.create(model="sim-model", messages=msgs, max_tokens=12)
    stream = await c.chat.completions.create(
        model="sim-model", messages=msgs, max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    text, finish, usage, roles = "", None, None, []
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            text += ch.delta.content or ""
            roles.append(ch.delta.role)
            finish = ch.finish_reason or finish
    assert text == full.choices[0].message.content  # same prompt, same answer
    assert roles[0] == "assistant" and finish == "length"
    assert usage is not None and usage.completion_tokens == 12
    assert usage.prompt_tokens == full.usage.prompt_tokens
    # without include_usage: no usage chunk
    stream = await c.chat.completions.create(model="sim-model", messages=msgs, max_tokens=3, stream=True)
    assert all([chunk.usage is None async for chunk in stream])


async def test_completions_and_raw_sse(sim: Simulator) -> None:
    c = client(sim.urls[0])
    r = await c.completions.create(model="sim-model", prompt="The quick brown fox", max_tokens=5)
    assert r.object == "text_completion" and len(r.choices[0].text.split()) == 5
    assert r.usage.prompt_tokens == 4
    body = {"model": "sim-model", "prompt": "The quick brown fox", "max_tokens": 5, "stream": True}
    async with aiohttp.ClientSession() as h, h.post(sim.urls[0] + "/completions", json=body) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in (await resp.text()).split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-1])


async def test_models_health_and_errors(sim: Simulator) -> None:
    c = client(sim.urls[0])
    assert [m.id for m in (await c.models.list()).data] == ["sim-model"]
    async with aiohttp.ClientSession() as h, h.get(sim.urls[0].removesuffix("/v1") + "/health") as r:
        assert r.status == 200
    with pytest.raises(openai.NotFoundError) as err:
        await c.chat.completions.create(model="nope", messages=chat("x"))
    assert err.value.body["type"] == "NotFoundError"
    with pytest.raises(openai.BadRequestError):
        await c.chat.completions.create(model="sim-model", messages=chat("x"), max_tokens=10**6)
    with pytest.raises(openai.BadRequestError):
        await c.chat.completions.create(model="sim-model", messages=chat("x"), max_tokens=0)
    r = await c.chat.completions.create(
        model="sim-model", messages=chat("x"), max_tokens=2, extra_body={"priority": 3}
    )
    assert r.usage.completion_tokens == 2


# -- prefix cache ---------------------------------------------------------------------------------------


async def test_cached_tokens_grow_on_a_repeated_prefix(sim: Simulator) -> None:
    c = client(sim.urls[0])
    bs = FAST.block_size
    first = await c.chat.completions.create(
        model="sim-model", messages=chat("First question?"), max_tokens=20
    )
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    second = await c.chat.completions.create(model="sim-model", messages=chat("Second one?"), max_tokens=4)
    shared = len(SimpleTokenizer().chat([{"role": "system", "content": SYSTEM}])) - 1  # up to <|user|>
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached == shared // bs * bs and cached > 0
    # a follow-up quoting the answer reuses the answer's blocks too
    follow = chat("First question?") + [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And then?"},
    ]
    third = await c.chat.completions.create(model="sim-model", messages=follow, max_tokens=4)
    assert third.usage.prompt_tokens_details.cached_tokens > first.usage.prompt_tokens
    # the other replica has its own cache
    other = await client(sim.urls[1]).chat.completions.create(
        model="sim-model", messages=chat("Second one?"), max_tokens=4
    )
    assert other.usage.prompt_tokens_details.cached_tokens == 0
    stats = sim.replicas[0].cache.stats
    assert stats.hits == cached + third.usage.prompt_tokens_details.cached_tokens
    fams = await scrape(sim.metrics_urls[0])
    assert value(fams, "vllm:prefix_cache_hits_total") == stats.hits
    assert value(fams, "vllm:prefix_cache_queries_total") == stats.queries


def test_paged_cache_lru_eviction() -> None:
    cache = PagedKVCache(block_size=4, capacity=6)
    a, b, c = ([base + i for i in range(9)] for base in (100, 200, 300))  # 2 full blocks + 1 token each
    for prompt in (a, b):
        cache.release(cache.allocate(prompt))
    assert len(cache.cached) == 4 and cache.usage == 0.0
    cache.release(cache.allocate(a))  # touch a: b is now the least recently used
    assert cache.stats.hits == 8
    cache.release(cache.allocate(c))  # 3 blocks: an unhashed one, a never-used one, then b's last block
    assert cache.cached_prefix(a + [1]) == 8
    assert cache.cached_prefix(b + [1]) == 4  # b's first block is still there (freed last-block-first)
    assert cache.stats.evicted == 1
    held = cache.allocate(a)  # a running request's blocks are never evicted
    assert held is not None and cache.used_blocks == 3
    assert cache.allocate([7] * 24) is None  # 6 blocks needed, 3 free
    cache.release(held)
    assert cache.allocate([7] * 24) is not None


async def test_lru_eviction_over_http() -> None:
    params = FAST.with_(block_size=4, capacity_blocks=12)
    async with Simulator(n=1, params=params) as s:
        c = client(s.urls[0])

        async def cached(system: str) -> int:
            r = await c.chat.completions.create(model="sim-model", messages=chat("q", system), max_tokens=1)
            return r.usage.prompt_tokens_details.cached_tokens

        long_a, long_b = "alpha " * 40, "beta " * 40  # 46 prompt tokens: 12 blocks each
        assert await cached(long_a) == 0
        assert await cached(long_a) > 0
        assert await cached(long_b) == 0  # b's blocks push a's out of a 12-block cache
        assert await cached(long_a) == 0
        assert s.replicas[0].cache.stats.evicted > 0


# -- metrics and the queue ---------------------------------------------------------------------------------


async def test_metrics_show_running_and_waiting_under_load() -> None:
    params = SimParams(
        max_num_seqs=2, decode_s_per_token=0.05, time_scale=1.0, block_size=8, capacity_blocks=64
    )
    async with Simulator(n=1, params=params) as s:
        c = client(s.urls[0])
        tasks = [
            asyncio.create_task(
                c.chat.completions.create(model="sim-model", messages=chat(f"q{i}"), max_tokens=60)
            )
            for i in range(5)
        ]
        seen = None
        for _ in range(200):
            fams = await scrape(s.metrics_urls[0])
            seen = (value(fams, "vllm:num_requests_running"), value(fams, "vllm:num_requests_waiting"))
            if seen == (2.0, 3.0):
                break
            await asyncio.sleep(0.02)
        assert seen == (2.0, 3.0)
        assert 0 < value(fams, "vllm:kv_cache_usage_perc") <= 1
        info = next(x for x in fams["vllm:cache_config_info"])
        assert info.labels["block_size"] == "8" and info.labels["num_gpu_blocks"] == "64" and info.value == 1
        running = next(x for x in fams["vllm:num_requests_running"])
        assert running.labels == {"model_name": "sim-model", "engine": "0"}
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(200):  # clients that hung up free their slots and places in the queue
            fams = await scrape(s.metrics_urls[0])
            if (value(fams, "vllm:num_requests_running"), value(fams, "vllm:num_requests_waiting")) == (0, 0):
                break
            await asyncio.sleep(0.02)
        assert value(fams, "vllm:num_requests_running") == 0 and value(fams, "vllm:num_requests_waiting") == 0
        assert s.replicas[0].cache.usage == 0.0


async def test_ttft_histogram_and_priority_order() -> None:
    params = SimParams(max_num_seqs=1, scheduling_policy="priority", decode_s_per_token=0.01, time_scale=1.0)
    async with Simulator(n=1, params=params) as s:
        c = client(s.urls[0])
        done: list[str] = []

        async def ask(name: str, priority: int, tokens: int) -> None:
            await c.chat.completions.create(
                model="sim-model", messages=chat(name), max_tokens=tokens, extra_body={"priority": priority}
            )
            done.append(name)

        blocker = asyncio.create_task(ask("blocker", 0, 40))
        while s.replicas[0].engine.running == 0:
            await asyncio.sleep(0.01)
        low = asyncio.create_task(ask("low", 10, 2))
        while s.replicas[0].engine.waiting < 1:
            await asyncio.sleep(0.01)
        high = asyncio.create_task(ask("high", 0, 2))
        await asyncio.gather(blocker, low, high)
        assert done == ["blocker", "high", "low"]
        fams = await scrape(s.metrics_urls[0])
        assert value(fams, "vllm:time_to_first_token_seconds_count") == 3
        assert value(fams, "vllm:generation_tokens_total") == 44


# -- KV events -----------------------------------------------------------------------------------------


async def test_kv_events_decode_with_vllms_own_classes() -> None:
    kv_events = pytest.importorskip("vllm.distributed.kv_events")
    import msgspec

    decoder = msgspec.msgpack.Decoder(type=kv_events.KVEventBatch)
    params = FAST.with_(block_size=4, capacity_blocks=16)
    async with Simulator(n=1, params=params, kv_events=True) as s:
        ctx = zmq.asyncio.Context()
        sub = ctx.socket(zmq.SUB)
        sub.connect(s.kv_endpoints[0])
        sub.setsockopt(zmq.SUBSCRIBE, s.kv_topics[0].encode())
        c = client(s.urls[0])
        msgs = chat("A question about events.", "Short system text.")
        batches: list = []
        try:
            for _ in range(100):  # a SUB socket misses what is sent before it has joined: resend until heard
                await c.chat.completions.create(model="sim-model", messages=msgs, max_tokens=1)
                if await sub.poll(250):
                    break
            assert await sub.poll(5000)  # generous: a loaded machine (CI's 2 cores) delivers late
            while await sub.poll(200):
                topic, seq, payload = await sub.recv_multipart()
                assert topic == s.kv_topics[0].encode() and len(seq) == 8
                batches.append((int.from_bytes(seq, "big"), decoder.decode(payload)))
            stored = [e for _, b in batches for e in b.events if isinstance(e, kv_events.BlockStored)]
            tokens = SimpleTokenizer().chat(msgs)
            want = block_hashes(tokens, 4)
            assert stored and stored[0].block_hashes == want[: len(stored[0].block_hashes)]
            assert stored[0].parent_block_hash is None and stored[0].block_size == 4
            assert stored[0].token_ids == tokens[: 4 * len(stored[0].block_hashes)]
            assert stored[0].medium == "GPU" and stored[0].lora_id is None
            seqs = [n for n, _ in batches]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            # fill the 16-block cache with other prompts: evictions come as BlockRemoved
            for i in range(6):
                await c.chat.completions.create(
                    model="sim-model", messages=chat("x " * 20, f"other {i}"), max_tokens=1
                )
            removed = []
            while await sub.poll(300):
                _, _, payload = await sub.recv_multipart()
                batch = decoder.decode(payload)
                assert batch.data_parallel_rank == 0 and batch.ts > 0
                removed += [e for e in batch.events if isinstance(e, kv_events.BlockRemoved)]
            assert removed and all(e.block_hashes for e in removed)
            # a restart clears everything
            s.kill(0)
            await s.revive(0)
            assert await sub.poll(2000)
            events = decoder.decode((await sub.recv_multipart())[2]).events
            assert isinstance(events[0], kv_events.AllBlocksCleared)
        finally:
            sub.close(linger=0)
            ctx.term()


# -- faults ------------------------------------------------------------------------------------------


async def test_slow_fault_orders_latency() -> None:
    params = SimParams(base_ttft_s=0.05, decode_s_per_token=0.005, time_scale=1.0)
    async with Simulator(n=2, params=params) as s:
        s.set_fault(1, slow=8.0)
        for url in s.urls:
            stream = await client(url).chat.completions.create(
                model="sim-model", messages=chat("hello"), max_tokens=4, stream=True
            )
            async for _ in stream:
                pass
        runs = [value(await scrape(u), "vllm:time_to_first_token_seconds_sum") for u in s.metrics_urls]
        assert runs[1] > 3 * runs[0]  # generous: the slow one is eight times slower in the model


async def test_error_fault_answers_500_in_openai_shape(sim: Simulator) -> None:
    root = sim.urls[0].removesuffix("/v1")
    async with aiohttp.ClientSession() as h:
        async with h.post(root + "/sim/faults", json={"error_rate": 1.0}) as r:
            assert r.status == 200 and (await r.json())["error_rate"] == 1.0
        async with h.post(root + "/sim/faults", json={"error_rate": 3}) as r:
            assert r.status == 400 and "error" in await r.json()
        async with h.post(root + "/sim/faults", json={"bogus": 1}) as r:
            assert r.status == 400
        body = {"model": "sim-model", "messages": chat("x"), "max_tokens": 2}
        async with h.post(sim.urls[0] + "/chat/completions", json=body) as r:
            assert r.status == 500
            err = (await r.json())["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["code"] == 500
    with pytest.raises(openai.InternalServerError):
        await client(sim.urls[0]).chat.completions.create(model="sim-model", messages=chat("x"), max_tokens=2)
    ok = await client(sim.urls[1]).chat.completions.create(
        model="sim-model", messages=chat("x"), max_tokens=2
    )
    assert ok.usage.completion_tokens == 2


async def test_dying_replica_cuts_the_stream_and_stops_answering() -> None:
    params = SimParams(decode_s_per_token=0.02, time_scale=1.0)
    async with Simulator(n=2, params=params) as s:
        root = s.urls[0].removesuffix("/v1")
        async with aiohttp.ClientSession() as h, h.post(root + "/sim/faults", json={"die_after": 2}) as r:
            assert (await r.json())["die_after"] == 2
        c = client(s.urls[0])
        ok = await c.chat.completions.create(model="sim-model", messages=chat("first"), max_tokens=3)
        assert ok.usage.completion_tokens == 3  # the first request is served whole
        got: list[str] = []
        with pytest.raises((httpx.HTTPError, openai.APIError)):
            stream = await c.chat.completions.create(
                model="sim-model", messages=chat("second"), max_tokens=50, stream=True
            )
            async for chunk in stream:
                got += [ch.delta.content or "" for ch in chunk.choices]
        assert got and len("".join(got).split()) < 50  # some tokens, then the cut
        with pytest.raises(openai.APIConnectionError):
            await c.chat.completions.create(model="sim-model", messages=chat("third"), max_tokens=1)
        assert not s.replicas[0].alive and s.replicas[0].engine.running == 0
        # the other replica is unaffected; the dead one comes back on its port with an empty cache
        assert (await client(s.urls[1]).models.list()).data
        await s.revive(0)
        again = await c.chat.completions.create(model="sim-model", messages=chat("first"), max_tokens=1)
        assert again.usage.prompt_tokens_details.cached_tokens == 0
        s.set_fault(0, die_after=0)  # from the library: at once
        with pytest.raises(openai.APIConnectionError):
            await c.models.list()


# -- fitting -------------------------------------------------------------------------------------------


def test_fit_recovers_known_parameters() -> None:
    rng = random.Random(7)
    true = dict(
        base_ttft_s=0.03, prefill_s_per_token=0.0004, decode_s_per_token=0.025, decode_slowdown_per_seq=0.05
    )
    rows = []
    for _ in range(300):
        prompt = rng.randint(20, 3000)
        cached = rng.randint(0, prompt // 16) * 16 if rng.random() < 0.5 else 0
        out = rng.randint(2, 300)
        running = rng.randint(1, 16)
        ttft = true["base_ttft_s"] + true["prefill_s_per_token"] * (prompt - cached)
        decode = (
            true["decode_s_per_token"] * (out - 1) * (1 + true["decode_slowdown_per_seq"] * (running - 1))
        )
        noise = 1 + rng.gauss(0, 0.01)
        rows.append((prompt, cached, out, ttft * noise, (ttft + decode) * noise, running))
    p = fit(rows, SimParams(max_num_seqs=8))
    for name, want in true.items():
        assert getattr(p, name) == pytest.approx(want, rel=0.1), name
    assert p.max_num_seqs == 8  # untouched fields come from the base
    # five-tuples (measured alone) fit prefill, base and decode
    alone = [(r[0], r[1], r[2], r[3], r[3] + true["decode_s_per_token"] * (r[2] - 1)) for r in rows]
    q = fit(alone)
    assert q.decode_s_per_token == pytest.approx(true["decode_s_per_token"], rel=1e-6)
    assert q.prefill_s_per_token == pytest.approx(true["prefill_s_per_token"], rel=0.1)
    with pytest.raises(ValueError):
        fit(rows[:1])


# -- the command ---------------------------------------------------------------------------------------


def test_sim_command_serves_until_sigterm(tmp_path) -> None:
    cmd = [sys.executable, "-m", "m2a.cli.sim_cmd", "--replicas", "2", "--port", "0", "--kv-events"]
    proc = subprocess.Popen([*cmd, "--kv-events-port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        urls = [line.split()[2] for line in lines[:2]]
        assert all(u.startswith("http://127.0.0.1:") and u.endswith("/v1") for u in urls)
        assert "kv-events tcp://127.0.0.1:" in lines[0] and "Ctrl-C" in lines[2]
        assert httpx.get(urls[1] + "/models", timeout=10).json()["data"][0]["id"] == "sim-model"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    csv = tmp_path / "m.csv"
    csv.write_text(
        "prompt,cached,out,ttft,e2e\n100,0,11,0.03,0.23\n1100,0,21,0.23,0.63\n600,500,31,0.04,0.64\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "m2a.cli.sim_cmd", "--fit", str(csv)], capture_output=True, text=True
    )
    assert out.returncode == 0
    fitted = json.loads(out.stdout)
    assert fitted["decode_s_per_token"] == pytest.approx(0.02) and fitted["prefill_s_per_token"] > 0
