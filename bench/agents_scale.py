"""Agents at scale (issue 13, "Scale"): 10,000 registered agents and 1,000 concurrent agent sessions
through a live `m2a up` in front of a mock engine that answers at once.

    .venv/bin/python bench/agents_scale.py [--agents 10000] [--sessions 1000] [--seconds 5]
        [--rounds 2] [--responses 10000] [--teams 10] [--reuse] [--profile DIR]
    .venv/bin/python bench/agents_scale.py --agents 200 --sessions 20 --seconds 1 --rounds 1 \
        --responses 100 --calls 2000                      # a quick check (about a minute)

Progress goes to stderr, the tables (markdown) to stdout. What it measures, in order:

1. **Registration** (setup, not a target), through the registry and the agent directory in this
   process (``Registry.create`` with version 1, promoted draft → tested (a passed red-team report)
   → approved (as an admin) → production; ``AgentDirectory.create_secret``), on the SQLite store
   `m2a up` then serves, before it starts. Agents are spread over ``--teams`` teams (each granted
   the mock model); the first ``--sessions`` also get an EC P-256 key for ``private_key_jwt`` and
   a team API key each (the baseline's keys).
2. **Token issuance** at ``POST /oauth/token`` (client credentials) over loopback HTTP:
   ``client_secret_basic`` and ``private_key_jwt`` (an ES256 client assertion signed by the load
   generator, a fresh ``jti`` each), each client picked at random, at concurrency 1 and 16,
   rounds alternating: tokens/s, p50/p99.
3. **Verification cost** in this process, on the same store: ``Access.principal`` (what the gateway
   asks for every request: header read, then the verifier or the key cache) for tokens issued in
   step 2 and for the team API keys: the first use (cold: for a token the ES256 signature, its
   claims and three store reads; for a key its hash and one read), then warm (cached) calls,
   each timed alone, p50 over all; ``AgentVerifier`` alone and ``Tokens.verify`` (signature and
   claims, nothing cached) beside them. Target: under 50 µs warm.
4. **Sessions**: ``--sessions`` agents get a token each (and keep their API key); requests go
   through the gateway at concurrency 1 (one client cycling through all sessions' credentials)
   and ``--sessions`` (one client per session), rounds alternating over six targets: chat with
   the session's API key, chat with its agent token, ``/v1/responses`` with its agent token (turn
   1: instructions + a question; once stored, the default, once with ``store: false``), and turn
   2 both ways: chat with the whole two-turn history, ``/v1/responses`` with
   ``previous_response_id`` of the session's own stored turn 1. Each target is warmed first
   (every session once: its token's cold verification is not timed). "Responses added p50" =
   p50(responses) − p50(chat), both with agent tokens (target < 2 ms), and the part of it that
   storing the response costs (store: true − false); "token vs key" = p50(chat, token) −
   p50(chat, key). The gateway's own CPU time per request (psutil) is less disturbed by the load
   generator sharing the cores than latency is. At concurrency ``--sessions`` the gateway is
   saturated: latency there is mostly queueing (about sessions / throughput).
5. **Memory per stored response**: ``--responses`` responses as two-turn conversations (turn 2
   continues turn 1 by ``previous_response_id``) at concurrency 16 with agent tokens. The SQLite
   store is checkpointed before and after; the table is the growth of the ``responses`` table
   with its indexes (SQLite's ``dbstat``), of the whole file in use (responses plus the usage
   ledger's rows of the same requests), the JSON the rows hold, and the gateway process's RSS.

The mock is `bench/mock_engine.py` run by this script (``_mock`` mode) with an answer of
``--answer-chars`` characters (default 600: a paragraph), so the stored conversation is a
realistic size. Tokens live 300 s; the session tokens are issued again (and warmed, untimed)
before a round that could outlive them. The gateway runs its defaults (default guardrail
profile, tracing with sampling, the usage ledger) for every target alike. `uptime`'s load is
printed beside the numbers: the machine may be shared.

Registering 10,000 agents through the registry takes minutes on 2 cores (about 36 ORM statements
and six commits per agent). The registered store, with the secrets and private keys only this
script knows, is saved under ``--cache`` after registration; ``--reuse`` starts a later run with
the same ``--agents``, ``--teams`` and ``--sessions`` from it (step 1 then reports the saved
registration's numbers and says so). ``--profile DIR`` adds an uncounted pass per token method
and per session target at concurrency 1 with py-spy on the gateway (``profiled``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jwt
import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from stack import KEY, Up, free_port  # noqa: E402

TD = "m2a.local"  # the default trust domain of `m2a up`
MODEL = "mock"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_TTL_S = 300
INSTRUCTIONS = (
    "You are the order-support agent of a mid-sized retailer. Answer questions about orders, "
    "deliveries and returns in two or three sentences, politely, and never invent an order number."
)
QUESTION_1 = (
    "Hello, I ordered a pair of hiking boots last Monday and the tracking page still says the parcel "
    "is being prepared. Can you tell me when it will ship and whether I can still change the size?"
)
QUESTION_2 = "Thanks. If the size cannot be changed, how do I return them once they arrive?"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_avg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} cores)"


def pct(values: list[float], q: float, scale: float = 1000.0) -> float:
    """The ``q`` quantile of ``values`` times ``scale`` (ms by default); nan for none."""
    if not values:
        return float("nan")
    values = sorted(values)
    return scale * (statistics.median(values) if q == 0.5 else values[int(q * (len(values) - 1))])


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / (1 << 20)


# -- the mock engine ---------------------------------------------------------------------------------


def serve_mock(port: int, answer_chars: int) -> None:
    """`bench/mock_engine.py` with an answer of ``answer_chars`` characters (run as ``_mock``)."""
    import mock_engine
    from aiohttp import web

    words = ("Your parcel leaves our warehouse within two working days and you will get an e-mail "
             "with the new tracking link as soon as it does. ")  # fmt: skip
    text = (words * (answer_chars // len(words) + 1))[:answer_chars]
    answer = json.loads(mock_engine.ANSWER)
    answer["choices"][0]["message"]["content"] = text
    answer["usage"] = {"prompt_tokens": 80, "completion_tokens": answer_chars // 4 + 1}
    answer["usage"]["total_tokens"] = 80 + answer["usage"]["completion_tokens"]
    mock_engine.ANSWER = json.dumps(answer).encode()  # read by its handler on every request
    web.run_app(mock_engine.make_app(16), host="127.0.0.1", port=port, print=None, access_log=None)


# -- step 1: registration ----------------------------------------------------------------------------


@dataclass
class Agent:
    index: int
    team: str
    name: str
    agent_id: int
    client_id: str
    secret: str
    private: ec.EllipticCurvePrivateKey | None = None
    kid: str | None = None


@dataclass
class Setup:
    agents: list[Agent]
    keys: list[str]  # team API keys, keys[i] of agents[i]'s team
    seconds: float
    per_step: dict[str, float]
    workers: int = 1
    registry_agents: int = 0  # the first ones, through the registry (``seconds``); the rest copied
    copy_seconds: float = 0.0


def team_name(i: int) -> str:
    return f"t{i:02d}"


MANIFEST = {
    "card": {"name": "Order support", "description": "Answers order questions.", "version": "1.0.0"},
    "models": [MODEL],
    "system_prompt": INSTRUCTIONS,
}


async def register(
    home: Path, n_agents: int, n_registry: int, n_teams: int, n_keyed: int, workers: int
) -> Setup:
    """Teams, API keys and agents (each version 1 in production, with a client secret) in the store:
    the first ``n_registry`` through the registry, the others copied from those rows (``clone``)."""
    from m2a.agents.credentials import AgentDirectory
    from m2a.agents.manifest import parse_manifest
    from m2a.agents.registry import RedteamReport, Registry
    from m2a.store.db import open_store
    from m2a.store.identity import IdentityStore

    db = await open_store(None, home)
    try:
        identity = IdentityStore(db)
        registry = Registry(db, TD)
        directory = AgentDirectory(db, TD)
        for t in range(n_teams):
            await identity.create_team(team_name(t))
            await identity.grant(team_name(t), MODEL)
        keys = [(await identity.create_key(team_name(i % n_teams), f"bench-{i}"))[0] for i in range(n_keyed)]
        agents: list[Agent | None] = [None] * n_agents
        spent = dict.fromkeys(("create", "promote", "secret", "key"), 0.0)
        m = parse_manifest(MANIFEST)
        gate = RedteamReport.model_validate(
            {
                "run": 1, "model": MODEL, "profile": None, "passed": True, "probes": 10,
                "system_prompt_sha256": m.system_prompt_sha256(),
                "verdicts": [{"category": "prompt_injection", "verdict": "pass", "rate": 0.0,
                              "compared": 0.0, "limit": 0.25, "judged": 10}],
            }
        )  # fmt: skip
        started = time.perf_counter()
        next_i = 0
        done = 0

        async def one(i: int) -> None:
            team, name = team_name(i % n_teams), f"agent-{i:05d}"
            t0 = time.perf_counter()
            info, version = await registry.create(team, name, ["owner@example.org"], manifest=m)
            assert version is not None
            t1 = time.perf_counter()
            await registry.promote(team, name, version.number, "tested", admin=True, redteam=gate)
            await registry.promote(team, name, version.number, "approved", admin=True)
            await registry.promote(team, name, version.number, "production", admin=True)
            t2 = time.perf_counter()
            ident = await directory.agent(team, name)
            assert ident is not None
            secret, _ = await directory.create_secret(ident)
            t3 = time.perf_counter()
            agent = Agent(i, team, name, info.id, ident.spiffe_id, secret)
            if i < n_keyed:
                agent.private = ec.generate_private_key(ec.SECP256R1())
                jwk = jwt.algorithms.ECAlgorithm.to_jwk(agent.private.public_key(), as_dict=True)
                agent.kid = (await directory.register_key(ident, jwk)).kid
            spent["create"] += t1 - t0
            spent["promote"] += t2 - t1
            spent["secret"] += t3 - t2
            spent["key"] += time.perf_counter() - t3
            agents[i] = agent

        async def worker() -> None:
            nonlocal next_i, done
            while next_i < n_registry:
                i, next_i = next_i, next_i + 1
                await one(i)
                done += 1
                if done % 250 == 0 or done == n_registry:
                    el = time.perf_counter() - started
                    say(f"[register] {done}/{n_registry} agents through the registry in {el:.0f}s"
                        f" ({done / el:.1f} agents/s)")  # fmt: skip

        await asyncio.gather(*(worker() for _ in range(workers)))
        seconds = time.perf_counter() - started
        t0 = time.perf_counter()
        if n_agents > n_registry:
            say(f"[register] copying {n_agents - n_registry} more agents from the registry's rows")
            templates = {t: agents[t] for t in range(n_teams)}
            await clone(db, templates, agents, n_registry, n_keyed)  # type: ignore[arg-type]
        copied = time.perf_counter() - t0
    finally:
        await db.dispose()
    return Setup([a for a in agents if a is not None], keys, seconds, spent, workers, n_registry, copied)


async def clone(
    db: Any, templates: dict[int, Agent], agents: list[Agent | None], first: int, n_keyed: int
) -> None:
    """Agents ``first``… as copies of their team's template agent (registered through the registry):
    the same rows in ``agents``, ``agent_versions``, ``agent_aliases`` and ``agent_events`` (ids,
    name and times new), a new client secret each (and a public key below ``n_keyed``), in one
    transaction. Step 2 issues tokens to random agents, so copies that were wrong would fail there."""
    from datetime import UTC, datetime

    from sqlalchemy import func, insert, select

    from m2a.agents.credentials import SECRET_PREFIX, check_public_jwk, hash_secret
    from m2a.agents.tokens import spiffe_id
    from m2a.store.schema import AgentAliasRow, AgentCredentialRow, AgentEventRow, AgentRow, AgentVersionRow

    A, V, L, E, C = (t.__table__ for t in (AgentRow, AgentVersionRow, AgentAliasRow, AgentEventRow,
                                           AgentCredentialRow))  # fmt: skip
    now = datetime.now(UTC)
    async with db.begin() as conn:

        async def rows(table: Any, agent_id: int) -> list[dict[str, Any]]:
            q = select(table).where(table.c.agent_id == agent_id)
            return [dict(r) for r in (await conn.execute(q)).mappings()]

        tpl = {}
        for t, agent in templates.items():
            row = dict((await conn.execute(select(A).where(A.c.id == agent.agent_id))).mappings().one())
            tpl[t] = (
                row,
                await rows(V, agent.agent_id),
                await rows(L, agent.agent_id),
                await rows(E, agent.agent_id),
            )
        ids = {}
        for name, table in (("a", A), ("v", V), ("e", E)):
            ids[name] = int((await conn.execute(select(func.max(table.c.id)))).scalar() or 0) + 1
        out: dict[str, list[dict[str, Any]]] = {"a": [], "v": [], "l": [], "e": [], "c": []}
        for i in range(first, len(agents)):
            a, vs, ls, es = tpl[i % len(templates)]
            team, name = team_name(i % len(templates)), f"agent-{i:05d}"
            aid = ids["a"]
            ids["a"] += 1
            out["a"].append({**a, "id": aid, "name": name, "created_at": now})
            vmap = {}
            for v in vs:
                vmap[v["id"]] = ids["v"]
                out["v"].append({**v, "id": ids["v"], "agent_id": aid, "created_at": now})
                ids["v"] += 1
            out["l"] += [
                {**x, "agent_id": aid, "version_id": vmap[x["version_id"]], "updated_at": now} for x in ls
            ]
            for e in es:
                vid = vmap.get(e["version_id"], e["version_id"])
                out["e"].append({**e, "id": ids["e"], "agent_id": aid, "version_id": vid, "at": now})
                ids["e"] += 1
            client_id = spiffe_id(TD, team, name)
            secret = SECRET_PREFIX + secrets.token_urlsafe(32)
            agent = Agent(i, team, name, aid, client_id, secret)
            cred = {"agent_id": aid, "client_id": client_id, "created_at": now, "revoked_at": None}
            out["c"].append(
                {**cred, "kind": "secret", "secret_hash": hash_secret(secret), "public_jwk": None}
            )
            if i < n_keyed:
                agent.private = ec.generate_private_key(ec.SECP256R1())
                jwk = check_public_jwk(
                    jwt.algorithms.ECAlgorithm.to_jwk(agent.private.public_key(), as_dict=True)
                )
                agent.kid = jwk["kid"]
                out["c"].append({**cred, "kind": "jwk", "secret_hash": None, "public_jwk": json.dumps(jwk)})
            agents[i] = agent
        for key, table in (("a", A), ("v", V), ("l", L), ("e", E), ("c", C)):
            if out[key]:
                await conn.execute(insert(table), out[key])


def cache_dir(args: argparse.Namespace) -> Path:
    name = f"agents{args.agents}-registry{args.registry_agents}-teams{args.teams}-keyed{args.sessions}"
    return args.cache / name


def save_setup(setup: Setup, home: Path, where: Path, note: str) -> None:
    """The registered store (an SQLite backup) and what only this script knows (secrets, private
    keys), for ``--reuse``."""
    where.mkdir(parents=True, exist_ok=True)
    src, dst = sqlite3.connect(home / "m2a.db"), sqlite3.connect(where / "m2a.db")
    with src, dst:
        src.backup(dst)
    src.close()
    dst.close()
    pem = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    data = {
        "note": note,
        "seconds": setup.seconds,
        "per_step": setup.per_step,
        "workers": setup.workers,
        "registry_agents": setup.registry_agents,
        "copy_seconds": setup.copy_seconds,
        "keys": setup.keys,
        "agents": [
            {
                **{
                    k: getattr(a, k)
                    for k in ("index", "team", "name", "agent_id", "client_id", "secret", "kid")
                },
                "pem": a.private.private_bytes(*pem).decode() if a.private else None,
            }
            for a in setup.agents
        ],
    }
    (where / "setup.json").write_text(json.dumps(data))


def load_setup(home: Path, where: Path) -> tuple[Setup, str]:
    data = json.loads((where / "setup.json").read_text())
    shutil.copyfile(where / "m2a.db", home / "m2a.db")
    agents = []
    for a in data["agents"]:
        pem = a.pop("pem")
        private = serialization.load_pem_private_key(pem.encode(), None) if pem else None
        assert private is None or isinstance(private, ec.EllipticCurvePrivateKey)
        agents.append(Agent(**a, private=private))
    setup = Setup(agents, data["keys"], data["seconds"], data["per_step"], data["workers"])
    setup.registry_agents, setup.copy_seconds = data["registry_agents"], data["copy_seconds"]
    return setup, data["note"]


# -- profiles (--profile) -----------------------------------------------------------------------------


RATE_HZ = 200
NATIVE = {  # leaf frames whose own time is native code beneath them
    "Runner.run (asyncio/runners.py)": "event loop (uvloop, C)",
    "_connection_worker_thread (aiosqlite/core.py)": "SQLite (C, in aiosqlite's thread)",
}


def profiled(out: Path | None, pid: int, name: str, seconds: float, work: Callable[[], Sample]) -> None:
    """With ``--profile DIR``: ``work()`` (an extra pass, not counted in any table) while py-spy
    samples the gateway's stacks that hold the GIL (Python's own work: SQLite's C code, the event
    loop's polling and other waits release it, so they are not in it) into DIR/<name>.txt (raw,
    collapsed stacks); a summary (own time by package, inclusive time of m2a's functions, each in
    µs per request) goes to DIR/<name>.summary.txt and stderr."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"{name}.txt"
    spy = Path(sys.executable).with_name("py-spy")
    cmd = [str(spy), "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--gil", "--format", "raw"]
    cmd += ["-o", str(raw)]
    proc = subprocess.Popen(
        [*cmd, "--duration", str(int(seconds) + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.3)  # attached
    done = len(work().latencies)
    proc.wait()
    if not raw.exists() or not done:
        say(f"[profile] py-spy wrote nothing for {name} (is ptrace allowed here?)")
        return
    by_package: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") and ":" in f else f for f in stack.split(";")]
        leaf = frames[-1]
        path = leaf.rpartition(" (")[2].rstrip(")")
        package = NATIVE.get(leaf) or (path.split("/")[0] if "/" in path else "python")
        by_package[package] = by_package.get(package, 0) + n
        for f in {f for f in frames if " (m2a/" in f}:
            inclusive[f] = inclusive.get(f, 0) + n

    def us(n: int) -> str:
        return f"{1e6 * n / RATE_HZ / done:7.0f} µs/req"

    lines = [
        f"{name}: {done} requests, {total} samples holding the GIL at {RATE_HZ} Hz = {us(total).strip()}"
    ]
    lines.append("  own time by package:")
    for f, n in sorted(by_package.items(), key=lambda x: -x[1])[:12]:
        lines.append(f"    {100 * n / total:5.1f}% {us(n)}  {f}")
    lines.append("  inclusive, m2a's functions:")
    for f, n in sorted(inclusive.items(), key=lambda x: -x[1])[:30]:
        lines.append(f"    {100 * n / total:5.1f}% {us(n)}  {f}")
    (out / f"{name}.summary.txt").write_text("\n".join(lines) + "\n")
    say("[profile] " + "\n".join(lines))


# -- step 2: token issuance --------------------------------------------------------------------------


def basic_header(client_id: str, secret: str) -> str:
    raw = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def client_assertion(agent: Agent, audience: str) -> str:
    now = int(time.time())
    claims = {
        "iss": agent.client_id, "sub": agent.client_id, "aud": audience, "iat": now, "exp": now + 60,
        "jti": secrets.token_urlsafe(12),
    }  # fmt: skip
    return jwt.encode(claims, agent.private, algorithm="ES256", headers={"kid": agent.kid})


@dataclass
class Sample:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    seconds: float = 0.0
    cpu: float = 0.0  # the gateway's CPU seconds meanwhile
    statuses: dict[int, int] = field(default_factory=dict)  # of the errors (0: no HTTP answer)

    def error(self, status: int, body: bytes) -> None:
        self.errors += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if not self.first_error:
            self.first_error = f"HTTP {status}: {body[:300].decode(errors='replace')}"

    def error_text(self) -> str:
        kinds = ", ".join(f"{n}× {s or 'no answer'}" for s, n in sorted(self.statuses.items()))
        return f"{self.errors} ({kinds})" if self.errors else "0"

    def add(self, other: Sample) -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        for k, n in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + n
        self.first_error = self.first_error or other.first_error
        self.seconds += other.seconds
        self.cpu += other.cpu

    def row(self, *cells: object) -> str:
        n = len(self.latencies)
        per = f"{1e6 * self.cpu / n:.0f}" if n and self.cpu else "-"
        rate = n / self.seconds if self.seconds else 0.0
        p50, p99 = pct(self.latencies, 0.5), pct(self.latencies, 0.99)
        cols = [*map(str, cells), f"{rate:.0f}", f"{p50:.2f}", f"{p99:.2f}", self.error_text(), per]
        return "| " + " | ".join(cols) + " |"


KEEP = 2000  # answers ``drive`` keeps at most (tokens for step 3)
Request = Callable[[aiohttp.ClientSession, int], Awaitable[tuple[int, bytes]]]


async def drive(
    request: Request,
    concurrency: int,
    seconds: float,
    pid: int | None = None,
    keep: list[bytes] | None = None,
) -> Sample:
    """``concurrency`` workers sending ``request(session, n)`` back to back for ``seconds`` (worker
    ``w`` sends n = w, w + concurrency, …); ``keep`` collects up to its capacity of 200 answers."""
    sample = Sample()
    deadline = time.perf_counter() + seconds

    async def worker(http: aiohttp.ClientSession, w: int) -> None:
        n = w
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                status, body = await request(http, n)
            except (TimeoutError, aiohttp.ClientError) as exc:
                status, body = 0, f"{type(exc).__name__}: {exc}".encode()
            latency = time.perf_counter() - t0
            n += concurrency
            if status != 200:
                sample.error(status, body)
                continue
            sample.latencies.append(latency)
            if keep is not None and len(keep) < KEEP:
                keep.append(body)

    before = cpu_seconds(pid) if pid else 0.0
    t0 = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(worker(http, w) for w in range(concurrency)))
    sample.seconds = time.perf_counter() - t0
    sample.cpu = cpu_seconds(pid) - before if pid else 0.0
    return sample


def token_request(root: str, agents: list[Agent], method: str, audience: str) -> Request:
    url = f"{root}/oauth/token"
    rng = random.Random(7)

    async def send(http: aiohttp.ClientSession, n: int) -> tuple[int, bytes]:
        agent = rng.choice(agents)
        form = {"grant_type": "client_credentials"}
        headers = {}
        if method == "client_secret_basic":
            headers["authorization"] = basic_header(agent.client_id, agent.secret)
        else:
            form["client_assertion_type"] = JWT_BEARER
            form["client_assertion"] = client_assertion(agent, audience)
        async with http.post(url, data=form, headers=headers) as resp:
            return resp.status, await resp.read()

    return send


def issuance(
    root: str, setup: Setup, audience: str, args: argparse.Namespace, pid: int
) -> tuple[list[str], list[str]]:
    """Step 2's table; tokens issued on the way (for step 3)."""
    methods = [
        ("client_secret_basic", setup.agents),
        ("private_key_jwt", [a for a in setup.agents if a.private]),
    ]
    results: dict[tuple[str, int], Sample] = {}
    got: list[bytes] = []
    for c in (1, 16):
        for r in range(args.rounds):
            for method, pool in methods:
                keep = got if method == "client_secret_basic" else None
                s = run(drive(token_request(root, pool, method, audience), c, args.seconds, pid, keep))
                results.setdefault((method, c), Sample()).add(s)
                say(f"[tokens] {method}, concurrency {c}, round {r + 1}/{args.rounds}:"
                    f" {len(s.latencies) / s.seconds:.0f} tokens/s, {s.error_text()} errors")  # fmt: skip
                if s.errors:
                    say(f"[tokens]   first error: {s.first_error}")
    for method, pool in methods:
        request = token_request(root, pool, method, audience)
        profiled(
            args.profile,
            pid,
            f"tokens-{method}",
            args.seconds,
            lambda request=request: run(drive(request, 1, args.seconds)),
        )
    rows = [
        "| client authentication | concurrency | tokens/s | p50 ms | p99 ms | errors"
        " | gateway CPU µs/token |",
        "|---|---|---|---|---|---|---|",
    ]
    rows += [s.row(method, c) for (method, c), s in results.items()]
    tokens = [json.loads(b)["access_token"] for b in got]
    return rows, tokens


# -- step 3: verification, in process ----------------------------------------------------------------


def http_request(token: str) -> Any:
    from starlette.requests import Request as StarletteRequest

    scope = {
        "type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
        "headers": [(b"authorization", f"Bearer {token}".encode()), (b"content-type", b"application/json")],
    }  # fmt: skip
    return StarletteRequest(scope)


async def verification(home: Path, issuer: str, tokens: list[str], keys: list[str], calls: int) -> list[str]:
    """Step 3's table: µs per ``Access.principal`` call, cold and warm, tokens against API keys."""
    from m2a.agents.credentials import AgentDirectory
    from m2a.agents.keys import SigningKeys
    from m2a.agents.tokens import Tokens
    from m2a.agents.verify import AgentVerifier
    from m2a.gateway.access import Access
    from m2a.store.db import database_url, make_engine
    from m2a.store.identity import IdentityStore

    db = make_engine(database_url(None, home))
    try:
        identity = IdentityStore(db)
        access = Access(KEY, identity)  # not started: no revision poll, nothing drops the caches
        toks = Tokens(SigningKeys(db, 24.0, TOKEN_TTL_S), issuer, "m2a", TOKEN_TTL_S)
        verifier = AgentVerifier(toks, AgentDirectory(db, TD), identity)
        access.tokens = verifier
        await toks.verify(tokens[0])  # reads the signing keys once: not part of any token's cost
        await identity.lookup(keys[0])  # opens the pool's connection
        tokens, keys = tokens[1:], keys[1:]

        async def timed(fn: Callable[[Any], Awaitable[Any]], args: list[Any]) -> list[float]:
            out = []
            for a in args:
                t0 = time.perf_counter_ns()
                await fn(a)
                out.append((time.perf_counter_ns() - t0) / 1000)
            return out

        rows = [
            "| what | credential | calls | p50 µs | p90 µs | p99 µs | mean µs |",
            "|---|---|---|---|---|---|---|",
        ]

        def row(what: str, cred: str, us: list[float]) -> None:
            q = " | ".join(f"{pct(us, x, 1):.1f}" for x in (0.5, 0.9, 0.99))
            rows.append(f"| {what} | {cred} | {len(us)} | {q} | {statistics.fmean(us):.1f} |")

        say(f"[verify] cold: {len(tokens)} tokens, {len(keys)} API keys")
        row("Tokens.verify (ES256 signature + claims; nothing cached)", "agent token",
            await timed(toks.verify, tokens))  # fmt: skip
        row("Access.principal, first use (cold)", "agent token",
            await timed(access.principal, [http_request(t) for t in tokens]))  # fmt: skip
        row("Access.principal, first use (cold)", "API key",
            await timed(access.principal, [http_request(k) for k in keys]))  # fmt: skip
        warm: dict[str, list[float]] = {"agent token": [], "API key": [], "verifier": []}
        block = 1000
        say(f"[verify] warm: {calls} calls each, alternating blocks of {block}")
        for start in range(0, calls, block):
            n = min(block, calls - start)
            reqs = [http_request(tokens[(start + i) % len(tokens)]) for i in range(n)]
            warm["agent token"] += await timed(access.principal, reqs)
            reqs = [http_request(keys[(start + i) % len(keys)]) for i in range(n)]
            warm["API key"] += await timed(access.principal, reqs)
            warm["verifier"] += await timed(verifier, [tokens[(start + i) % len(tokens)] for i in range(n)])
        row("Access.principal, cached (warm)", "agent token", warm["agent token"])
        row("Access.principal, cached (warm)", "API key", warm["API key"])
        row("AgentVerifier alone, cached (warm)", "agent token", warm["verifier"])
        return rows
    finally:
        await db.dispose()


# -- step 4: sessions ----------------------------------------------------------------------------------


@dataclass
class Session:
    agent: Agent
    key: str
    token: str = ""
    seed: str = ""  # its stored turn 1 (resp_…), continued by turn 2
    seed_answer: str = ""


async def issue_tokens(root: str, sessions: list[Session]) -> None:
    url = f"{root}/oauth/token"
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as http:

        async def one(s: Session) -> None:
            async with sem:
                headers = {"authorization": basic_header(s.agent.client_id, s.agent.secret)}
                async with http.post(url, data={"grant_type": "client_credentials"}, headers=headers) as r:
                    body = await r.read()
                    if r.status != 200:
                        raise SystemExit(f"token for {s.agent.client_id}: HTTP {r.status} {body[:300]!r}")
                    s.token = json.loads(body)["access_token"]

        await asyncio.gather(*(one(s) for s in sessions))


def chat_body(turn: int, s: Session) -> bytes:
    messages = [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION_1}]
    if turn == 2:
        messages += [{"role": "assistant", "content": s.seed_answer}, {"role": "user", "content": QUESTION_2}]
    return json.dumps({"model": MODEL, "messages": messages, "max_tokens": 256}).encode()


def responses_body(turn: int, s: Session) -> bytes:
    """Turn 1 or 2 of the session's conversation; turn 0 is turn 1 with ``store: false``."""
    if turn in (0, 1):
        body = {"model": MODEL, "instructions": INSTRUCTIONS, "input": QUESTION_1, "max_output_tokens": 256}
        if turn == 0:
            body["store"] = False
    else:
        body = {"model": MODEL, "previous_response_id": s.seed, "input": QUESTION_2, "max_output_tokens": 256}
    return json.dumps(body).encode()


CHAT_KEY, CHAT, RESP, RESP_NOSTORE = (
    "chat · API key",
    "chat · agent token",
    "responses · agent token",
    ("responses, store: false · agent token"),
)
CHAT_2, RESP_2 = "chat, 2-turn history · agent token", "responses, previous_response_id · agent token"
TARGETS: list[tuple[str, str, str, int]] = [  # label, route, credential, turn (0: turn 1 unstored)
    (CHAT_KEY, "chat", "key", 1),
    (CHAT, "chat", "token", 1),
    (RESP, "responses", "token", 1),
    (RESP_NOSTORE, "responses", "token", 0),
    (CHAT_2, "chat", "token", 2),
    (RESP_2, "responses", "token", 2),
]


def session_request(base: str, sessions: list[Session], target: tuple[str, str, str, int]) -> Request:
    _, route, cred, turn = target
    url = f"{base}/chat/completions" if route == "chat" else f"{base}/responses"
    make = chat_body if route == "chat" else responses_body
    bodies = [make(turn, s) for s in sessions]  # made before the clock runs
    headers = [
        {"authorization": f"Bearer {s.key if cred == 'key' else s.token}", "content-type": "application/json"}
        for s in sessions
    ]

    async def send(http: aiohttp.ClientSession, n: int) -> tuple[int, bytes]:
        i = n % len(sessions)
        async with http.post(url, data=bodies[i], headers=headers[i]) as resp:
            return resp.status, await resp.read()

    return send


async def seed_turns(base: str, sessions: list[Session]) -> None:
    """Each session's turn 1, stored: what its turn 2 continues."""
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(s: Session) -> None:
            async with sem:
                headers = {"authorization": f"Bearer {s.token}", "content-type": "application/json"}
                for attempt in range(5):  # a 503 (the store busy) says "try again"
                    body1 = responses_body(1, s)
                    async with http.post(f"{base}/responses", data=body1, headers=headers) as r:
                        body = await r.read()
                    if r.status == 200:
                        break
                    await asyncio.sleep(0.5 * (attempt + 1))
                else:
                    raise SystemExit(f"turn 1 of {s.agent.client_id}: HTTP {r.status} {body[:300]!r}")
                out = json.loads(body)
                s.seed = out["id"]
                s.seed_answer = out["output"][-1]["content"][0]["text"]

        await asyncio.gather(*(one(s) for s in sessions))


def sessions_bench(
    root: str, base: str, sessions: list[Session], args: argparse.Namespace, pid: int
) -> list[str]:
    """Step 4's tables."""
    say(f"[sessions] issuing {len(sessions)} agent tokens")
    issued_at = time.time()
    run(issue_tokens(root, sessions))
    run(seed_turns(base, sessions))

    def warm() -> None:
        for target in TARGETS:  # every session once per target: cold verifications stay out of the rounds
            s = run(drive_once(session_request(base, sessions, target), len(sessions)))
            if s.errors:
                say(f"[sessions] warm-up of {target[0]}: {s.error_text()} errors; first: {s.first_error}")

    warm()
    results: dict[tuple[int, str], Sample] = {}
    concurrencies = [1, len(sessions)] if len(sessions) > 1 else [1]
    per_round = args.seconds * len(TARGETS) + 30
    for c in concurrencies:
        for r in range(args.rounds):
            if time.time() - issued_at + per_round > TOKEN_TTL_S - 20:
                say("[sessions] tokens would expire during the next round: issuing new ones (untimed)")
                issued_at = time.time()
                run(issue_tokens(root, sessions))
                warm()
            for target in TARGETS:
                s = run(drive(session_request(base, sessions, target), c, args.seconds, pid))
                results.setdefault((c, target[0]), Sample()).add(s)
                say(f"[sessions] concurrency {c}, round {r + 1}/{args.rounds}: {target[0]}:"
                    f" {len(s.latencies) / s.seconds:.0f} req/s, p50 {pct(s.latencies, 0.5):.2f} ms,"
                    f" {s.error_text()} errors")  # fmt: skip
                if s.errors:
                    say(f"[sessions]   first error: {s.first_error}")
        if c == 1:
            for target in TARGETS:
                request = session_request(base, sessions, target)
                name = "sessions-" + "".join(ch if ch.isalnum() else "-" for ch in target[0])
                profiled(
                    args.profile,
                    pid,
                    name,
                    args.seconds,
                    lambda request=request: run(drive(request, 1, args.seconds)),
                )
    rows = ["| concurrency | target | req/s | p50 ms | p99 ms | errors | gateway CPU µs/req |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    rows += [s.row(c, label) for (c, label), s in results.items()]
    rows += ["", "| concurrency | difference | p50 ms | gateway CPU µs/req |", "|---|---|---|---|"]
    for c in concurrencies:

        def diff(a: str, b: str, c: int = c) -> tuple[float, float]:
            x, y = results[(c, a)], results[(c, b)]
            cpu = 1e6 * (x.cpu / max(1, len(x.latencies)) - y.cpu / max(1, len(y.latencies)))
            return pct(x.latencies, 0.5) - pct(y.latencies, 0.5), cpu

        for what, a, b in (
            ("agent token vs API key (chat)", CHAT, CHAT_KEY),
            ("Responses added, turn 1 (target < 2 ms)", RESP, CHAT),
            ("… of which storing it (store: true − false)", RESP, RESP_NOSTORE),
            ("Responses added, turn 2 (target < 2 ms)", RESP_2, CHAT_2),
        ):
            d, cpu = diff(a, b)
            rows.append(f"| {c} | {what} | {d:+.2f} | {cpu:+.0f} |")
    return rows


async def drive_once(request: Request, n: int) -> Sample:
    """``request(session, i)`` once for every i < n, 64 at a time."""
    sample = Sample()
    sem = asyncio.Semaphore(64)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(i: int) -> None:
            async with sem:
                status, body = await request(http, i)
                if status != 200:
                    sample.error(status, body)

        await asyncio.gather(*(one(i) for i in range(n)))
    return sample


# -- step 5: memory per stored response -------------------------------------------------------------


RESPONSE_TABLES = ("responses", "sqlite_autoindex_responses_1")


def db_usage(path: Path) -> tuple[int, int, int, int]:
    """(bytes in use in the whole file, bytes of the responses table and its indexes, rows, their
    JSON bytes), after a WAL checkpoint."""
    con = sqlite3.connect(path, timeout=30)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = con.execute("PRAGMA page_size").fetchone()[0]
        pages = (
            con.execute("PRAGMA page_count").fetchone()[0]
            - con.execute("PRAGMA freelist_count").fetchone()[0]
        )
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_schema WHERE tbl_name = 'responses'")}
        marks = ",".join("?" * len(names))
        table = con.execute(
            f"SELECT sum(pgsize) FROM dbstat WHERE name IN ({marks})", sorted(names)
        ).fetchone()[0]
        rows, json_bytes = con.execute(
            "SELECT count(*), coalesce(sum(length(body) + length(input_items) + length(history)), 0)"
            " FROM responses"
        ).fetchone()
    finally:
        con.close()
    return pages * page, int(table or 0), rows, json_bytes


async def conversations(base: str, sessions: list[Session], n: int, concurrency: int) -> tuple[Sample, float]:
    """``n`` two-turn conversations (two stored responses each); their errors, and seconds."""
    errors = Sample()
    next_i = 0
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def worker() -> None:
            nonlocal next_i
            while next_i < n:
                i, next_i = next_i, next_i + 1
                s = sessions[i % len(sessions)]
                headers = {"authorization": f"Bearer {s.token}", "content-type": "application/json"}
                async with http.post(f"{base}/responses", data=responses_body(1, s), headers=headers) as r:
                    body = await r.read()
                if r.status != 200:
                    errors.error(r.status, body)
                    continue
                first = json.loads(body)["id"]
                turn2 = {
                    "model": MODEL,
                    "previous_response_id": first,
                    "input": QUESTION_2,
                    "max_output_tokens": 256,
                }
                async with http.post(f"{base}/responses", json=turn2, headers=headers) as r:
                    body = await r.read()
                if r.status != 200:
                    errors.error(r.status, body)
                if (i + 1) % 1000 == 0:
                    say(f"[memory] {i + 1}/{n} conversations")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors, time.perf_counter() - t0


def memory_bench(
    root: str, base: str, home: Path, sessions: list[Session], n_responses: int, pid: int
) -> list[str]:
    n_conv = max(1, n_responses // 2)
    say("[memory] fresh tokens for the conversations")
    run(issue_tokens(root, sessions))
    db = home / "m2a.db"
    used0, table0, rows0, json0 = db_usage(db)
    rss0 = rss_mib(pid)
    say(f"[memory] {n_conv} two-turn conversations ({2 * n_conv} responses) at concurrency 16")
    errors, secs = run(conversations(base, sessions, n_conv, 16))
    if errors.errors:
        say(f"[memory] {errors.error_text()} requests failed; the first: {errors.first_error}")
    used1, table1, rows1, json1 = db_usage(db)
    rss1 = rss_mib(pid)
    n = rows1 - rows0
    per = 10_000 / max(1, n)
    rows = [
        f"{n} responses stored ({n_conv} two-turn conversations) in {secs:.1f} s"
        f" ({2 * n_conv / secs:.0f} responses/s), errors: {errors.error_text()};"
        " the mock's answers as in step 4.",
        "",
        "| measure | before | after | growth | per response | per 10k responses |",
        "|---|---|---|---|---|---|",
    ]

    def line(what: str, a: float, b: float, unit: str, scale: float) -> None:
        g = b - a
        rows.append(f"| {what} | {a / scale:.1f} {unit} | {b / scale:.1f} {unit} | {g / scale:.1f} {unit}"
                    f" | {g / max(1, n):.0f} B | {g * per / (1 << 20):.1f} MiB |")  # fmt: skip

    line("responses table + indexes (dbstat)", table0, table1, "MiB", 1 << 20)
    line("SQLite file in use (+ ledger rows etc.)", used0, used1, "MiB", 1 << 20)
    line("JSON held (body + input_items + history)", json0, json1, "MiB", 1 << 20)
    line("gateway RSS", rss0 * (1 << 20), rss1 * (1 << 20), "MiB", 1 << 20)
    return rows


# -- the run -----------------------------------------------------------------------------------------


def run(coro: Awaitable[Any]) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_mock":
        serve_mock(int(sys.argv[2]), int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=10_000, help="agents to register")
    ap.add_argument(
        "--registry-agents",
        type=int,
        default=1000,
        metavar="N",
        help="how many of them go through the registry (timed); the others are copies of their rows",
    )
    ap.add_argument("--teams", type=int, default=10, help="teams the agents are spread over")
    ap.add_argument("--sessions", type=int, default=1000, help="concurrent agent sessions")
    ap.add_argument("--seconds", type=float, default=5.0, help="per round and target")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per case")
    ap.add_argument("--responses", type=int, default=10_000, help="responses stored in step 5")
    ap.add_argument("--calls", type=int, default=50_000, help="warm verification calls per credential")
    ap.add_argument("--answer-chars", type=int, default=600, help="the mock's answer")
    ap.add_argument("--register-workers", type=int, default=2, help="concurrent registrations")
    ap.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also profile the gateway with py-spy in an extra, uncounted pass at concurrency 1 of each"
        " token method and session target (raw stacks and summaries into DIR)",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="start from the registered store an earlier run with the same --agents, --registry-agents,"
        " --teams and --sessions saved under --cache (registration is then not measured again)",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path("/tmp/m2a-bench-agents-cache"),
        help="where registered stores are kept",
    )
    ap.add_argument(
        "--home", type=Path, default=Path("/tmp/m2a-bench-agents"), help="M2A_HOME (emptied first)"
    )
    args = ap.parse_args()
    if not 1 <= args.sessions <= args.agents:
        raise SystemExit("--sessions must be between 1 and --agents")
    if args.teams < 1:
        raise SystemExit("--teams must be at least 1")
    args.registry_agents = min(args.registry_agents, args.agents)
    if args.registry_agents < args.teams:
        raise SystemExit("--registry-agents must be at least --teams (one registered agent per team)")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    started = time.monotonic()
    commit = subprocess.run(
        ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    loads = [f"start: {load_avg()}"]
    say(f"[agents-scale] {loads[0]}")
    shutil.rmtree(args.home, ignore_errors=True)
    args.home.mkdir(parents=True)

    cached = cache_dir(args)
    if args.reuse and (cached / "setup.json").exists():
        setup, note = load_setup(args.home, cached)
        say(f"[register] reusing the store registered {note} ({cached})")
        registered = f"reused from {cached}, registered {note}"
    else:
        if args.reuse:
            say(f"[register] nothing saved in {cached} yet: registering")
        say(f"[register] {args.agents} agents ({args.registry_agents} through the registry) in {args.teams}"
            f" teams, {args.sessions} of them with a key pair")  # fmt: skip
        setup = run(
            register(
                args.home, args.agents, args.registry_agents, args.teams, args.sessions, args.register_workers
            )
        )
        registered = f"registered in this run ({load_avg()} after it)"
        save_setup(setup, args.home, cached, f"{time.strftime('%Y-%m-%d %H:%M')} at {commit.stdout.strip()}")
    n_reg = setup.registry_agents or len(setup.agents)
    out: list[str] = []
    out += [
        f"## Agents at scale — {time.strftime('%Y-%m-%d %H:%M')}, commit {commit.stdout.strip()}",
        "",
        f"`{' '.join(['.venv/bin/python', 'bench/agents_scale.py', *sys.argv[1:]])}`",
        "",
        "### 1. Registration (registry and agent directory in process, SQLite; setup)",
        "",
        f"{n_reg} agents through the registry ({args.teams} teams), each: create with version 1, promote"
        f" to tested, approved, production, one client secret (the first {args.sessions} of all agents"
        f" also a public key): **{setup.seconds:.1f} s, {n_reg / setup.seconds:.1f} agents/s**"
        f" ({setup.workers} concurrent; {registered}); at that rate {len(setup.agents)} agents would take"
        f" {len(setup.agents) * setup.seconds / n_reg:.0f} s. Time per agent: "
        + ", ".join(f"{k} {1000 * v / n_reg:.1f} ms" for k, v in setup.per_step.items())
        + " (summed over the concurrent workers)."
        + (
            f" The other {len(setup.agents) - n_reg} agents: copies of their team's first agent's rows"
            f" (version, aliases, events; a new secret each) in {setup.copy_seconds:.1f} s."
            if len(setup.agents) > n_reg
            else ""
        ),
    ]
    print("\n".join(out), flush=True)

    port = free_port()
    mock = subprocess.Popen([sys.executable, __file__, "_mock", str(port), str(args.answer_chars)])
    try:
        models = [{"name": MODEL, "engine": "remote", "url": f"http://127.0.0.1:{port}/v1"}]
        with contextlib.ExitStack() as stack:
            with contextlib.redirect_stdout(sys.stderr):
                up = stack.enter_context(Up(models, args.home, label="m2a up"))
            meta = httpx.get(f"{up.root}/.well-known/oauth-authorization-server").json()
            issuer, audience = meta["issuer"], meta["token_endpoint"]
            say(f"[agents-scale] gateway pid {up.pid}, issuer {issuer}")

            rows, tokens = issuance(up.root, setup, audience, args, up.pid)
            print("\n### 2. Token issuance (`POST /oauth/token`, loopback HTTP)\n", flush=True)
            print("\n".join(rows), flush=True)

            tokens = list(dict.fromkeys(tokens))[:2000]
            if len(tokens) < 10:
                raise SystemExit("too few tokens issued in step 2 to measure verification")
            rows = run(verification(args.home, issuer, tokens, setup.keys, args.calls))
            print("\n### 3. Verification per request (in process, same store)\n", flush=True)
            print("\n".join(rows), flush=True)

            sessions = [Session(a, setup.keys[a.index]) for a in setup.agents[: args.sessions]]
            loads.append(f"before sessions: {load_avg()}")
            rss_start = rss_mib(up.pid)
            rows = sessions_bench(up.root, up.base_url, sessions, args, up.pid)
            print(f"\n### 4. {len(sessions)} agent sessions through the gateway (mock engine)\n", flush=True)
            print("\n".join(rows), flush=True)
            say(f"[sessions] gateway RSS {rss_start:.0f} → {rss_mib(up.pid):.0f} MiB")

            rows = memory_bench(up.root, up.base_url, args.home, sessions, args.responses, up.pid)
            print("\n### 5. Memory per stored response\n", flush=True)
            print("\n".join(rows), flush=True)
    finally:
        mock.terminate()
        mock.wait()
    loads.append(f"end: {load_avg()}")
    print(f"\nRun time {time.monotonic() - started:.0f} s; `uptime`: " + "; ".join(loads) + ".", flush=True)


if __name__ == "__main__":
    main()
