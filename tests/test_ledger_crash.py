"""No request that reached the engine goes unrecorded, even when the gateway is SIGKILLed mid-load.

Real processes and real HTTP: a slow OpenAI-compatible backend (in this process, separate from the
gateway), `m2a up` serving it as a remote model, and a client load of 40 concurrent requests
(streamed with and without ``include_usage``, and not streamed). Some finish, the rest are in
flight when the gateway process alone is SIGKILLed. `m2a up` then restarts on the same state
directory and recovers the dead process's ledger journal. The usage table must then hold exactly
one row per request the backend received: ``ok`` with the backend's token counts for every answer
the client got whole, ``interrupted`` for every one the kill cut off. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select

from m2a.store.schema import Usage
from tests.db_fixtures import Database, database  # noqa: F401
from tests.slow_backend import SlowBackend, ask
from tests.up_proc import ADMIN_KEY, UpProc, make_team_key

pytestmark = pytest.mark.e2e

MODEL = "slow"
TEAM = "crash"
FAST, SLOW = 16, 24  # requests that finish before the kill, and requests it cuts off
MODES = ("stream+usage", "stream", "json")  # the client asks for the usage chunk, does not, no stream


@dataclass
class Call:
    """One client request and what the client saw of it."""

    n: int
    mode: str
    fast: bool
    request_id: str | None = None  # from the x-request-id header, once the headers arrived
    chunks: int = 0  # content chunks received (streams)
    usage: dict | None = None  # the usage the client got, if any
    saw_usage_chunk: bool = False
    complete: bool = False  # [DONE] or the whole JSON answer arrived
    error: str | None = None


async def _run(client: httpx.AsyncClient, call: Call) -> None:
    content = ask(8, 0.01) if call.fast else ask(600, 0.05)  # 80 ms, or 30 s: far past the kill
    body: dict = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    if call.mode != "json":
        body["stream"] = True
    if call.mode == "stream+usage":
        body["stream_options"] = {"include_usage": True}
    try:
        if call.mode == "json":
            r = await client.post("/v1/chat/completions", json=body)
            call.request_id = r.headers.get("x-request-id")
            assert r.status_code == 200, r.text
            call.usage = r.json()["usage"]
            call.complete = True
            return
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            call.request_id = r.headers.get("x-request-id")
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    call.complete = True
                    continue
                chunk = json.loads(data)
                if chunk.get("usage"):
                    call.usage, call.saw_usage_chunk = chunk["usage"], True
                if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    call.chunks += 1
    except httpx.HTTPError as exc:  # the gateway died under this request
        call.error = f"{type(exc).__name__}: {exc}"


async def _until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def _rows(db: Database) -> list:  # rows of the usage table, by column name
    engine = db.engines[0] if db.engines else await db.open()
    async with engine.connect() as conn:
        return list((await conn.execute(select(Usage.__table__))).all())


async def test_sigkilled_gateway_loses_no_request_that_reached_the_engine(database: Database) -> None:  # noqa: F811
    backend = SlowBackend().start()
    env = {"M2A_DATABASE_URL": database.url} if database.url else {}
    up = UpProc(database.home, [{"name": MODEL, "engine": "remote", "url": backend.url}], env)
    tasks: list[asyncio.Task[None]] = []
    try:
        up.start()
        await asyncio.to_thread(up.wait_ready)
        key = await asyncio.to_thread(make_team_key, up.root, TEAM, MODEL)

        calls = [Call(n, MODES[n % 3], fast=n < FAST) for n in range(FAST + SLOW)]
        order = calls[:]
        random.Random(7).shuffle(order)  # fast and slow, streamed and not, all at once
        async with httpx.AsyncClient(
            base_url=up.root,
            headers={"authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(60, connect=5),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=0),
        ) as client:
            tasks = [asyncio.create_task(_run(client, c)) for c in order]
            fast = [t for c, t in zip(order, tasks, strict=True) if c.fast]
            slow_streams = [c for c in calls if not c.fast and c.mode != "json"]
            # The kill comes once every fast request is done and every slow one is at the engine,
            # the streamed ones mid-answer (so each was seen, and is known by its request id).
            await _until(
                lambda: (
                    all(t.done() for t in fast)
                    and backend.count() == len(calls)
                    and all(c.chunks > 0 for c in slow_streams)
                ),
                20,
                "the fast requests to finish and the slow ones to be in flight",
            )
            up.kill()
            await asyncio.wait_for(asyncio.gather(*tasks), 15)

        done = [c for c in calls if c.complete]
        cut = [c for c in calls if not c.complete]
        wrong = [(c.n, c.error) for c in calls if c.fast != c.complete]
        assert {c.n for c in done} == set(range(FAST)), wrong
        assert all(c.error for c in cut), [c.n for c in cut if not c.error]
        # The gateway asks the engine for stream usage either way, and hands it on only when asked.
        assert all(c.saw_usage_chunk == (c.mode == "stream+usage") for c in done)

        seen = {s.request_id: s for s in backend.requests()}
        assert len(seen) == len(calls) and not backend.duplicates  # each reached the engine once
        assert {s.request_id for s in seen.values() if s.finished} == {c.request_id for c in done}

        # Before the restart the database can only hold finished requests: the cut-off ones are
        # in the dead process's journal alone.
        before = await _rows(database)
        assert all(r.status == "ok" for r in before)
        assert {r.request_id for r in before} <= {c.request_id for c in done}

        up.start()  # same M2A_HOME (journal), same database
        await asyncio.to_thread(up.wait_ready)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10  # recovery runs before the gateway listens; allow a moment anyway
        while len(rows := await _rows(database)) < len(seen) and loop.time() < deadline:
            await asyncio.sleep(0.2)

        ids = [r.request_id for r in rows]
        assert len(ids) == len(set(ids)), "duplicate usage rows"
        assert set(ids) == set(seen), {
            "missing": sorted(set(seen) - set(ids)),
            "unknown": sorted(set(ids) - set(seen)),
        }
        by_id = {r.request_id: r for r in rows}
        for c in done:
            row, s = by_id[c.request_id], seen[c.request_id]
            assert (row.status, row.http_status) == ("ok", 200), (c, row)
            assert (row.input_tokens, row.output_tokens) == (s.prompt_tokens, s.completion_tokens), (c, row)
            if c.mode != "stream":  # the client asked for usage: the backend's numbers, unchanged
                assert c.usage == {
                    "prompt_tokens": s.prompt_tokens,
                    "completion_tokens": s.completion_tokens,
                    "total_tokens": s.prompt_tokens + s.completion_tokens,
                }, c
            assert row.finished_at is not None and row.stream == (c.mode != "json")
        interrupted = set(seen) - {c.request_id for c in done}
        assert {c.request_id for c in cut if c.request_id} <= interrupted  # streams: ids known
        for rid in interrupted:
            row = by_id[rid]
            assert row.status == "interrupted" and row.finished_at is None and row.http_status is None, row
        assert all((r.team, r.model, r.route) == (TEAM, MODEL, "/v1/chat/completions") for r in rows)

        # The dead process's journal is gone once stored; the live process keeps one of its own.
        assert len(list((database.home / "ledger").glob("journal-*.jsonl"))) == 1

        # The admin API reads the same ledger.
        async with httpx.AsyncClient(
            base_url=up.root, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
        ) as admin:
            r = await admin.get("/admin/v1/usage", params={"by": "status", "team": TEAM})
            assert r.status_code == 200, r.text
            by_status = {u["group"]: u["requests"] for u in r.json()}
            assert by_status == {"ok": FAST, "interrupted": SLOW}, by_status
    finally:
        for t in tasks:
            t.cancel()
        up.close()
        backend.stop()
