"""Trusted execution (issue 14): what the trusted path costs an agent's MCP tool call.

    .venv/bin/python bench/trusted_path.py [--rounds 3] [--calls 80] [--calls8 120]
        [--postgres-url postgresql://postgres@127.0.0.1:5432/test] [--no-postgres]
        [--keep DIR] [--src DIR]

``--keep DIR`` keeps the gateways' homes (logs, SQLite stores) there; ``--src DIR`` runs the gateways
from another source tree's ``src`` folder (a worktree of another commit, or a patched copy).

One ``tools/call`` of the demo ERP's ``lookup_order`` (examples/erp, its own process, read-only SQLite
behind it), made four ways in the same run:

- **(a) the tool itself**: straight to the ERP's MCP endpoint (the baseline);
- **(b) m2a, trust off**: an agent's call through the gateway's ``/mcp`` of an `m2a up` with
  ``trust.enabled: false`` (the manifest check, m2a's own MCP session with the server, the
  ``tool_calls`` row, the ledger row, the span);
- **(c) m2a, trusted (SQLite)**: the same through an `m2a up` with trusted execution in ``enforce``
  mode: a Cedar decision over the baseline policies and 20 operator ``forbid`` policies that do
  not match the call (10 global, 10 in the agent's team's scope, put through the admin API), a
  signed intent, the executor's admission (signature, expiry, audience, digest, a single-use insert
  into ``intent_uses``), a signed receipt and three audit records (decision, intent, receipt), on the
  default SQLite store;
- **(d) m2a, trusted (PostgreSQL)**: (c) with the store on PostgreSQL: a scratch database
  ``m2a_bench_<hex>`` created on the server of ``--postgres-url`` and dropped afterwards (no table is
  ever made in that URL's own database).

Each `m2a up` runs its defaults otherwise (default guardrail profile, sampled tracing, the usage
ledger) in front of ``bench/mock_engine.py`` (its model is never called here). The agent is
registered in each store before its gateway starts (version 1 in production, a client secret) and
takes a token at ``/oauth/token`` each round. The load generator is a plain JSON-RPC POST over a
keep-alive aiohttp connection (the stateless streamable-HTTP form, ``mcp-protocol-version:
2025-11-25`` as the MCP SDK's client sends it), so its own cost is small and the same for all
four; the order id varies per call (different arguments, different digests).

Rounds (``--rounds``) interleave the variants, in a rotated order each round, at concurrency 1
(``--calls`` calls) and then 8 (``--calls8``), each cell after an untimed warm-up, so machine noise
hits them alike. Per variant and concurrency: calls/s, p50/p95/p99 latency, errors, and the CPU
time per call of the gateway process, of the PostgreSQL backends serving (d)'s database, and of the
ERP process (psutil; less disturbed by the noise than latency). Then what the trusted variants
left in their stores: audit records per call (by kind), checkpoints, ``intent_uses`` rows (a used
jti is pruned 120 s after its intent expired, so the table holds about the last 2.5 minutes of
calls), and ``m2a audit verify`` run on each store once its gateway has stopped. Progress goes to
stderr, the tables (markdown) to stdout. Exits 1 if any call failed (or an audit log does not
verify).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import httpx
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from stack import KEY, Up, free_port  # noqa: E402

TD = "m2a.local"  # `m2a up`'s default trust domain
MODEL = "mock"
TEAM, AGENT = "sales", "order-bot"
ERP_TOKEN = "erp-bench-" + "e" * 16  # m2a's credential for the ERP (and the baseline's)
ORDERS = ("SO-1001", "SO-1002", "SO-1003", "SO-1004", "SO-1005")
PROTOCOL = "2025-11-25"  # what the MCP SDK's client negotiates and then sends
N_FORBID = 20
TIMEOUT_S = 30.0


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_avg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} cores)"


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (seconds) in ms; nan for none."""
    if not values:
        return float("nan")
    v = sorted(values)
    return 1000.0 * (statistics.median(v) if q == 0.5 else v[min(len(v) - 1, int(q * len(v)))])


def cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def pg_cpu(db: str | None) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving database ``db`` (on this machine), by pid."""
    out: dict[int, float] = {}
    if db is None:
        return out
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(f" {db} " in f"{part} " for part in p.info["cmdline"] or ()):
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
    return out


def pg_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the backends spent between two ``pg_cpu`` readings (new ones from zero)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


# -- the variants ------------------------------------------------------------------------------------


@dataclass
class Variant:
    key: str  # a, b, c, d
    label: str
    url: str  # the MCP endpoint
    tool: str  # the tool's name there
    pid: int | None = None  # the gateway process (None: the tool itself)
    home: Path | None = None
    db_url: str | None = None  # None: SQLite in home
    pg_db: str | None = None  # the PostgreSQL database's name (its backends' CPU is counted)
    root: str | None = None  # the gateway's base URL
    client: tuple[str, str] | None = None  # client id, secret
    token: str | None = None
    trusted: bool = False
    sent: int = 0  # every call, warm-ups included

    def headers(self) -> dict[str, str]:
        bearer = self.token if self.token is not None else ERP_TOKEN
        return {
            "authorization": f"Bearer {bearer}",
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            "mcp-protocol-version": PROTOCOL,
        }


@dataclass
class Sample:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    seconds: float = 0.0
    m2a_cpu: float = 0.0
    erp_cpu: float = 0.0
    db_cpu: float = 0.0  # PostgreSQL's backends

    def add(self, other: Sample) -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error
        self.seconds += other.seconds
        self.m2a_cpu += other.m2a_cpu
        self.erp_cpu += other.erp_cpu
        self.db_cpu += other.db_cpu

    @property
    def calls(self) -> int:
        return len(self.latencies) + self.errors


# -- setup -------------------------------------------------------------------------------------------


MANIFEST = {
    "card": {"name": "Order bot", "description": "Looks orders up.", "version": "1.0.0"},
    "models": [MODEL],
    "system_prompt": "You answer questions about orders.",
    "tools": [{"server": "erp", "tools": ["lookup_order"]}],
}


async def register_agent(db_url: str | None, home: Path) -> tuple[str, str]:
    """A team and its agent (version 1 promoted to production, a client secret) in a migrated store
    at ``db_url`` (None: SQLite in ``home``), before a gateway serves it: (client id, secret)."""
    from m2a.agents.credentials import AgentDirectory
    from m2a.agents.manifest import parse_manifest
    from m2a.agents.registry import RedteamReport, Registry
    from m2a.store.db import open_store
    from m2a.store.identity import IdentityStore

    db = await open_store(db_url, home)
    try:
        await IdentityStore(db).create_team(TEAM)
        await IdentityStore(db).grant(TEAM, MODEL)
        registry = Registry(db, TD)
        m = parse_manifest(MANIFEST)
        _, version = await registry.create(TEAM, AGENT, ["owner@example.org"], manifest=m)
        assert version is not None
        gate = RedteamReport.model_validate(
            {
                "run": 1, "model": MODEL, "profile": None, "passed": True, "probes": 10,
                "system_prompt_sha256": m.system_prompt_sha256(),
                "verdicts": [{"category": "prompt_injection", "verdict": "pass", "rate": 0.0,
                              "compared": 0.0, "limit": 0.25, "judged": 10}],
            }
        )  # fmt: skip
        await registry.promote(TEAM, AGENT, version.number, "tested", admin=True, redteam=gate)
        await registry.promote(TEAM, AGENT, version.number, "approved", admin=True)
        await registry.promote(TEAM, AGENT, version.number, "production", admin=True)
        directory = AgentDirectory(db, TD)
        ident = await directory.agent(TEAM, AGENT)
        assert ident is not None
        secret, _ = await directory.create_secret(ident)
        return ident.spiffe_id, secret
    finally:
        await db.dispose()


def forbid_policies() -> list[tuple[str, str]]:
    """``N_FORBID`` (scope, Cedar text) an operator might write, none matching the benchmark's call
    (``erp/lookup_order``, tier read, an ``order_id`` argument, no guardrail findings)."""
    call = 'forbid(principal, action == M2A::Action::"call", resource)'
    texts = [
        f'{call} when {{ resource.name == "drop_table_{i}" }};' for i in range(3)
    ] + [
        f"{call} when {{ context.args has amount && context.args.amount > {10000 + i} }};" for i in range(3)
    ] + [
        f'{call} when {{ resource.server == "payments-{i}" && resource.tier != "read" }};' for i in range(2)
    ] + [
        f'{call} when {{ context.guardrails.contains("pii_{i}") }};' for i in range(2)
    ] + [
        f'{call} when {{ context.on_behalf_of == "intruder-{i}@example.org" }};' for i in range(3)
    ] + [
        f'{call} when {{ resource.tier == "destructive" && principal.name == "bot-{i}" }};' for i in range(3)
    ] + [
        f'{call} when {{ context.args has order_id && context.args.order_id == "SO-9{i:03d}" }};'
        for i in range(4)
    ]  # fmt: skip
    assert len(texts) == N_FORBID
    return [("global" if i % 2 == 0 else f"team:{TEAM}", t) for i, t in enumerate(texts)]


def admin(root: str, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {KEY}"}
    return httpx.request(method, f"{root}/admin/v1{path}", headers=headers, timeout=TIMEOUT_S, **kw)


def configure(v: Variant, erp_url: str) -> None:
    """The ERP registered as ``erp`` (m2a's credential for it), the 20 forbid policies (trusted
    variants), checked by dry runs: the benchmark's call is allowed, a matching one is refused."""
    assert v.root is not None
    r = admin(
        v.root,
        "POST",
        "/tools",
        json={"name": "erp", "url": erp_url, "headers": {"Authorization": f"Bearer {ERP_TOKEN}"}},
    )
    if r.status_code != 201:
        raise SystemExit(f"[{v.label}] registering the ERP failed: {r.status_code} {r.text}")
    if not v.trusted:
        return
    for n, (scope, text) in enumerate(forbid_policies()):
        r = admin(v.root, "PUT", f"/policies/{scope}/bench-{n:02d}", json={"text": text})
        if r.status_code not in (200, 201):
            raise SystemExit(f"[{v.label}] policy {n} refused: {r.status_code} {r.text}")
    call = {"team": TEAM, "agent_name": AGENT, "server": "erp", "tier": "read", "agent_spiffe": v.client[0]}  # type: ignore[index]
    deadline = time.monotonic() + TIMEOUT_S
    while True:  # the engine re-reads the policies table at most once a second
        ok = admin(
            v.root,
            "POST",
            "/policies/check",
            json={"call": {**call, "tool": "lookup_order", "arguments": {"order_id": "SO-1001"}}},
        )
        bad = admin(
            v.root,
            "POST",
            "/policies/check",
            json={"call": {**call, "tool": "lookup_order", "arguments": {"order_id": "SO-9003"}}},
        )
        if ok.status_code != 200 or bad.status_code != 200:
            raise SystemExit(f"[{v.label}] policy dry run failed: {ok.text} {bad.text}")
        if ok.json()["allowed"] and not bad.json()["allowed"]:
            say(
                f"[{v.label}] {N_FORBID} forbid policies live (policy set {ok.json()['policy_version']}); "
                f"a matching call is refused by {', '.join(bad.json()['policy_ids'])}"
            )
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"[{v.label}] the policies did not take effect: {ok.text} {bad.text}")
        time.sleep(0.3)


def issue_token(v: Variant) -> None:
    assert v.root is not None and v.client is not None
    cid, secret = (urllib.parse.quote_plus(x) for x in v.client)
    basic = base64.b64encode(f"{cid}:{secret}".encode()).decode()
    r = httpx.post(
        f"{v.root}/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"authorization": f"Basic {basic}"},
        timeout=TIMEOUT_S,
    )
    if r.status_code != 200:
        raise SystemExit(f"[{v.label}] no token: {r.status_code} {r.text}")
    v.token = r.json()["access_token"]


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=2)
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not start")


# -- postgres ----------------------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


async def pg_admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=15)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# -- measuring ---------------------------------------------------------------------------------------


async def one_call(http: aiohttp.ClientSession, v: Variant, i: int) -> str | None:
    """One ``tools/call``; None when it answered the order asked for, else what went wrong."""
    order = ORDERS[i % len(ORDERS)]
    body = {
        "jsonrpc": "2.0",
        "id": i,
        "method": "tools/call",
        "params": {"name": v.tool, "arguments": {"order_id": order}},
    }
    v.sent += 1
    try:
        async with http.post(v.url, json=body, headers=v.headers()) as resp:
            raw = await resp.read()
            if resp.status != 200:
                return f"HTTP {resp.status}: {raw[:200]!r}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        result = json.loads(raw)["result"]
        text = "".join(c.get("text", "") for c in result["content"])
    except (ValueError, KeyError, TypeError):
        return f"not a tool result: {raw[:200]!r}"
    if result.get("isError") or order not in text:
        return f"error result: {text[:200]}"
    return None


async def cell(v: Variant, concurrency: int, n: int, erp_pid: int) -> Sample:
    """``n`` calls at ``concurrency`` (after 2 untimed ones per connection)."""
    sample = Sample()
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(one_call(http, v, i) for i in range(2 * concurrency)))
        counter = itertools.count()
        db0, m2a0, erp0, t0 = pg_cpu(v.pg_db), cpu_s(v.pid), cpu_s(erp_pid), time.perf_counter()

        async def worker() -> None:
            while (i := next(counter)) < n:
                s = time.perf_counter()
                err = await one_call(http, v, i)
                if err is None:
                    sample.latencies.append(time.perf_counter() - s)
                else:
                    sample.errors += 1
                    sample.first_error = sample.first_error or err

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        sample.seconds = time.perf_counter() - t0
        sample.m2a_cpu = cpu_s(v.pid) - m2a0
        sample.erp_cpu = cpu_s(erp_pid) - erp0
        sample.db_cpu = pg_spent(db0, pg_cpu(v.pg_db))
    return sample


async def store_counts(v: Variant) -> dict[str, Any]:
    """Audit records by kind, checkpoints and ``intent_uses`` rows in ``v``'s store now."""
    from sqlalchemy import text

    from m2a.store.db import open_store

    assert v.home is not None
    db = await open_store(v.db_url, v.home)
    try:
        async with db.connect() as conn:
            kinds = dict(
                (await conn.execute(text("SELECT kind, COUNT(*) FROM audit_records GROUP BY kind"))).all()
            )
            checkpoints = await conn.scalar(text("SELECT COUNT(*) FROM audit_checkpoints"))
            uses = await conn.scalar(text("SELECT COUNT(*) FROM intent_uses"))
    finally:
        await db.dispose()
    return {
        "kinds": {k: int(c) for k, c in kinds.items()},
        "checkpoints": int(checkpoints or 0),
        "intent_uses": int(uses or 0),
    }


def audit_verify(v: Variant) -> tuple[bool, str]:
    """`m2a audit verify` on ``v``'s store (its gateway stopped): (ok, its last line)."""
    env = {**os.environ, "M2A_HOME": str(v.home), "M2A_ADMIN_KEY": KEY}
    if v.db_url:
        env["M2A_DATABASE_URL"] = v.db_url
    p = subprocess.run(
        [sys.executable, "-m", "m2a", "audit", "verify"], env=env, capture_output=True, text=True, timeout=300
    )
    lines = [x for x in (p.stdout + p.stderr).strip().splitlines() if x.strip()]
    return p.returncode == 0, "; ".join(lines[:2]) if p.returncode == 0 else " / ".join(lines[:5])


# -- the run -----------------------------------------------------------------------------------------


def ms(x: float) -> str:
    return f"{x:.2f}"


def tables(variants: list[Variant], results: dict[tuple[str, int], Sample], concs: tuple[int, ...]) -> None:
    print("\n### Latency and throughput of one `tools/call` (lookup_order)\n")
    print(
        "| variant | concurrency | calls | calls/s | p50 ms | p95 ms | p99 ms | errors "
        "| m2a CPU ms/call | PostgreSQL CPU ms/call | ERP CPU ms/call |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in concs:
        for v in variants:
            s = results[(v.key, c)]
            per = max(1, s.calls)
            m2a = "–" if v.pid is None else ms(1000 * s.m2a_cpu / per)
            db = "–" if v.pg_db is None else ms(1000 * s.db_cpu / per)
            print(
                f"| ({v.key}) {v.label} | {c} | {s.calls} | {s.calls / s.seconds:.0f}"
                f" | {ms(pct(s.latencies, 0.5))} | {ms(pct(s.latencies, 0.95))}"
                f" | {ms(pct(s.latencies, 0.99))} | {s.errors} | {m2a} | {db}"
                f" | {ms(1000 * s.erp_cpu / per)} |"
            )
    by = {v.key: v for v in variants}
    pairs = [
        ("b", "a", "m2a's gateway (trust off) over the tool itself"),
        ("c", "b", "trusted execution, SQLite"),
        ("d", "b", "trusted execution, PostgreSQL"),
        ("d", "c", "PostgreSQL over SQLite (trusted)"),
    ]
    print("\n### What each layer adds\n")
    print("| concurrency | difference | p50 ms | p99 ms | calls/s | m2a + PostgreSQL CPU ms/call |")
    print("|---|---|---|---|---|---|")
    for c in concs:
        for hi, lo, what in pairs:
            if hi not in by or lo not in by:
                continue
            s, b = results[(hi, c)], results[(lo, c)]
            base_cpu = 0.0 if by[lo].pid is None else (b.m2a_cpu + b.db_cpu) / max(1, b.calls)  # (a): none
            cpu = f"{1000 * ((s.m2a_cpu + s.db_cpu) / max(1, s.calls) - base_cpu):+.2f}"
            rate = f"{s.calls / s.seconds:.0f} vs {b.calls / b.seconds:.0f}"
            print(
                f"| {c} | ({hi}) − ({lo}): {what} | {pct(s.latencies, 0.5) - pct(b.latencies, 0.5):+.2f}"
                f" | {pct(s.latencies, 0.99) - pct(b.latencies, 0.99):+.2f} | {rate} | {cpu} |"
            )


async def measure(
    args: argparse.Namespace, variants: list[Variant], erp_pid: int
) -> dict[tuple[str, int], Sample]:
    concs = (1, 8)
    results = {(v.key, c): Sample() for v in variants for c in concs}
    say("[trusted-path] warm-up (untimed): 30 calls per variant")
    for v in variants:
        s = await cell(v, 1, 30, erp_pid)
        if s.errors:
            raise SystemExit(f"[{v.label}] warm-up failed: {s.first_error}")
    for r in range(args.rounds):
        for v in variants:
            if v.client is not None:
                issue_token(v)  # tokens live 5 minutes: a fresh one each round
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for c in concs:
            n = args.calls if c == 1 else args.calls8
            for v in order:
                s = await cell(v, c, n, erp_pid)
                results[(v.key, c)].add(s)
                tail = f"; first error: {s.first_error}" if s.errors else ""
                say(
                    f"[round {r + 1}/{args.rounds}] c={c} ({v.key}) {v.label}: {s.calls} calls, "
                    f"{s.calls / s.seconds:.0f}/s, p50 {pct(s.latencies, 0.5):.2f} ms, "
                    f"p99 {pct(s.latencies, 0.99):.2f} ms, {s.errors} errors, {s.seconds:.1f} s{tail}"
                )
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="Rounds over all variants (default 3).")
    ap.add_argument("--calls", type=int, default=80, help="Calls per variant and round at concurrency 1.")
    ap.add_argument("--calls8", type=int, default=120, help="Calls per variant and round at concurrency 8.")
    ap.add_argument(
        "--postgres-url",
        default=os.environ.get("M2A_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="A PostgreSQL server's database to create the scratch database from.",
    )
    ap.add_argument("--no-postgres", action="store_true", help="Leave variant (d) out.")
    ap.add_argument("--keep", type=Path, default=None, help="Keep the homes (logs, SQLite stores) here.")
    ap.add_argument(
        "--src", type=Path, default=None, help="Run the gateways from this source tree's src folder."
    )
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="m2a-bench-trust-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    say(f"[trusted-path] load average {load_avg()} at the start; work folder {work}")
    pg_name = f"m2a_bench_{secrets.token_hex(6)}"
    pg_made = False
    procs: list[subprocess.Popen[bytes]] = []
    ups: list[Up] = []
    failed = False
    try:
        erp_port, mock_port = free_port(), free_port()
        erp = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "examples" / "erp" / "erp_server.py"),
                "--port",
                str(erp_port),
                "--db",
                str(work / "erp.db"),
                "--token",
                ERP_TOKEN,
            ]
        )
        procs.append(erp)
        procs.append(subprocess.Popen([sys.executable, str(HERE / "mock_engine.py"), str(mock_port)]))
        erp_url = f"http://127.0.0.1:{erp_port}/mcp"
        wait_http(erp_url, erp, "the ERP server")
        wait_http(f"http://127.0.0.1:{mock_port}/v1/models", procs[1], "the mock engine")

        variants = [Variant("a", "the tool itself (ERP direct)", erp_url, "lookup_order")]
        specs = [("b", "m2a, trust off", False, False), ("c", "m2a, trusted, SQLite", True, False)]
        if not args.no_postgres:
            specs.append(("d", "m2a, trusted, PostgreSQL", True, True))
        models = [{"name": MODEL, "engine": "remote", "url": f"http://127.0.0.1:{mock_port}/v1"}]
        for key, label, trusted, pg in specs:
            home = work / f"home-{key}"
            db_url = None
            if pg:
                asyncio.run(pg_admin(args.postgres_url, f'CREATE DATABASE "{pg_name}"'))
                pg_made = True
                db_url = with_database(args.postgres_url, pg_name)
                say(f"[trusted-path] scratch database {pg_name} on {args.postgres_url.rpartition('/')[0]}")
            client = asyncio.run(register_agent(db_url, home))
            extra = {"trust": {"enabled": trusted, "mode": "enforce"}}
            env = {"M2A_DATABASE_URL": db_url} if db_url else {}
            with contextlib.redirect_stdout(sys.stderr):
                up = Up(
                    models, home, label=f"({key}) {label}", extra=extra, env=env, src=args.src
                ).__enter__()
            ups.append(up)
            v = Variant(
                key,
                label,
                f"{up.root}/mcp",
                "erp__lookup_order",
                up.pid,
                home,
                db_url,
                pg_name if pg else None,
                up.root,
                client,
                trusted=trusted,
            )
            issue_token(v)
            configure(v, erp_url)
            variants.append(v)

        say(f"[trusted-path] load average {load_avg()} before measuring")
        started = time.monotonic()
        results = asyncio.run(measure(args, variants, erp.pid))
        say(f"[trusted-path] measured in {time.monotonic() - started:.0f} s; load average {load_avg()}")
        during = {v.key: asyncio.run(store_counts(v)) for v in variants if v.home is not None}

        for up in reversed(ups):  # stop the gateways (each writes its last checkpoint), then verify
            with contextlib.redirect_stdout(sys.stderr):
                up.__exit__(None, None, None)
        ups.clear()
        after = {v.key: asyncio.run(store_counts(v)) for v in variants if v.home is not None}
        verified = {v.key: audit_verify(v) for v in variants if v.trusted}

        print(
            f"\nLoad average {load_avg()} at the end; {args.rounds} rounds, {args.calls} calls at "
            f"concurrency 1 and {args.calls8} at 8 per variant and round."
        )
        tables(variants, results, (1, 8))
        print("\n### What the calls left in the store\n")
        print(
            "| variant | calls made (warm-ups too) | audit records | per call | by kind | checkpoints "
            "| intent_uses rows (running) | audit verify |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for v in variants:
            if v.home is None:
                continue
            a, d = after[v.key], during[v.key]
            total = sum(a["kinds"].values())
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(a["kinds"].items())) or "none"
            ok, line = verified.get(v.key, (True, "–"))
            failed |= not ok
            print(
                f"| ({v.key}) {v.label} | {v.sent} | {total} | {total / max(1, v.sent):.2f} | {kinds} "
                f"| {a['checkpoints']} | {d['intent_uses']} | {line} |"
            )
        errors = sum(s.errors for s in results.values())
        if errors:
            failed = True
            say(f"[trusted-path] {errors} calls FAILED")
    finally:
        for up in reversed(ups):
            with contextlib.suppress(Exception), contextlib.redirect_stdout(sys.stderr):
                up.__exit__(None, None, None)
        for p in procs:
            if p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
        if pg_made:
            asyncio.run(pg_admin(args.postgres_url, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
            say(f"[trusted-path] dropped {pg_name}")
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
