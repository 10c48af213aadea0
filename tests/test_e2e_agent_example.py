"""End to end: the example agent (``examples/erp``) on the shared `m2a up` stack with SmolLM2.

The walk-through of ``examples/erp/README.md``, with the real commands as subprocesses against the
session's stack: the demo ERP as its own process, registered with `m2a tools add` (m2a's own bearer
for it); a team granted SmolLM2 and given a key; the agent registered from ``agent.yaml``;
`m2a agents test` red-teaming version 1 (six probes under the manifest's guardrail profile, the
gate's default thresholds); the admin approving it (the team may not) and the team putting it in
production; a client secret from `m2a agents credentials create`. Then ``examples/erp/agent.py``
runs as its own process with only ``M2A_URL``, ``M2A_CLIENT_ID`` and ``M2A_CLIENT_SECRET``, and the
test checks what each layer kept: the answer carries the ERP record; the ERP server saw m2a's
credential and ``x-m2a-agent`` (the agent's SPIFFE id), never a token of the agent's; the tool-call
log, the usage ledger (`m2a usage --by agent`) and the trace store (`m2a traces show`) name the
agent, the tool's ``execute_tool`` span, the model call's spans and the engine's in one trace; the
Responses API's ``mcp`` tool lists the manifest's tools to the model (``--hosted-tools``); the
agent's token is fetched again a minute before it expires. Last, `m2a agents revoke` stops the
agent's live token within seconds, and the agent gets no new one.

The manifest's profile is ``strict``: under ``default`` the 135M model fails this gate (it repeats
an injected canary and leaks its system prompt's reference, 1 of 2 attempts each); ``strict``
refuses those attacks at the gateway, which is what the gate then measures.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import rfc8785

from tests.conftest import KEY, ROOT, Stack, free_port, m2a_cmd

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "examples" / "erp"
MODEL = "smollm2-135m-instruct"
TEAM = "sales-ops"
AGENT = "erp-assistant"
SPIFFE = f"spiffe://m2a.local/team/{TEAM}/agent/{AGENT}"
ERP_BEARER = "erp-demo-credential-" + "k" * 12  # m2a's credential for the ERP (`m2a tools add --header`)
MANIFEST_TOOLS = {"erp__lookup_order", "erp__invoice_status", "erp__customer_orders", "erp__cancel_order"}
# A small probe selection, so the 135M model is attacked in about a minute: the categories that
# matter for an agent with a system prompt and tool data, two probes each, planted values seeded.
PROBES = [
    "--category", "system_prompt_leakage", "--category", "secret_leakage", "--category", "prompt_injection",
    "--limit", "2", "--seed", "7",
]  # fmt: skip
SO_1001 = {  # the demo ERP's row (examples/erp/erp_server.py), as lookup_order answers it
    "order_id": "SO-1001", "ordered_on": "2025-01-14", "item": "cordless drill", "quantity": 12,
    "total_eur": 1188.0, "status": "shipped", "customer_id": "C001", "customer": "Acme Tools GmbH",
    "invoice_id": "INV-5001",
}  # fmt: skip
INV_5002 = {"invoice_id": "INV-5002", "order_id": "SO-1002", "amount_eur": 940.0, "due_on": "2025-03-05",
            "paid": False, "status": "open"}  # fmt: skip
WAIT_S = 60.0  # the ledger and the trace store write in the background


def m2a(
    env: dict[str, str], *args: str, ok: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`m2a ARGS` as a user would type it (the stack's home and config in ``env``)."""
    done = subprocess.run(m2a_cmd(*args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert done.returncode == 0, (
            f"m2a {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done


def eventually(what: str, probe: Any, timeout: float = WAIT_S) -> Any:
    """``probe()``'s first truthy answer, polled for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout:.0f} s")
        time.sleep(0.5)


@dataclass
class Erp:
    url: str  # its MCP endpoint
    log: Path  # one JSON line per request: method, tool, headers
    proc: subprocess.Popen[bytes]

    def requests(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.requests() if r["method"] == "tools/call" and tool in (None, r["tool"])]


@pytest.fixture(scope="module")
def erp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Erp]:
    """`python examples/erp/erp_server.py --port P --token ... --log ...`: its own process."""
    tmp = tmp_path_factory.mktemp("erp")
    port = free_port()
    log = tmp / "erp-requests.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "erp_server.py"), "--port", str(port), "--token", ERP_BEARER,
         "--log", str(log), "--db", str(tmp / "erp.db")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp / "erp.err").open("wb"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp / "erp.err").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the ERP server did not listen within 60 s"
                time.sleep(0.2)
        yield Erp(f"http://127.0.0.1:{port}/mcp", log, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Walk:
    stack: Stack
    env: dict[str, str]  # what the operator's shell has: the stack's home, config and admin key
    team_key: str
    gate: dict[str, Any]  # `m2a agents test --json`: the red-team report and the promoted version
    client_id: str
    client_secret: str

    def agent(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """``python examples/erp/agent.py ARGS`` with the agent's own three variables only."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("M2A_")}
        env |= {"M2A_URL": self.stack.root, "M2A_CLIENT_ID": self.client_id,
                "M2A_CLIENT_SECRET": self.client_secret}  # fmt: skip
        return subprocess.run(
            [sys.executable, str(EXAMPLE / "agent.py"), *args],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.stack.root, headers={"authorization": f"Bearer {KEY}"}, timeout=30, trust_env=False
        )


@pytest.fixture(scope="module")
def walk(stack: Stack, erp: Erp) -> Walk:
    """The README's walk-through up to a client secret, each step a real `m2a` command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2A_")}
    env |= {
        "M2A_HOME": str(stack.home),
        "M2A_CONFIG": str(stack.home / "test-config.yaml"),  # what `m2a up` runs with
        "M2A_GATEWAY__PORT": stack.root.rsplit(":", 1)[1],  # `m2a up --port`
        "M2A_ADMIN_KEY": stack.key,
        "PYTHONPATH": str(ROOT),
    }
    bearer = f"Authorization=Bearer {ERP_BEARER}"
    m2a(env, "tools", "add", "erp", erp.url, "--header", bearer, "--timeout", "30")
    shown = m2a(env, "tools", "show", "erp", "--json").stdout
    assert "find_customer" in shown and ERP_BEARER not in shown  # the server's five tools; no secret
    m2a(env, "teams", "create", TEAM)
    m2a(env, "models", "grant", TEAM, MODEL)
    team_key = m2a(env, "keys", "create", TEAM, "--name", "erp-assistant-ci").stdout.strip()
    assert team_key.startswith("m2a-") and len(team_key.split()) == 1, team_key  # the key alone on stdout

    made = json.loads(
        m2a(env, "agents", "create", "--file", str(EXAMPLE / "agent.yaml"), "--team", TEAM,
            "--api-key", team_key, "--json").stdout
    )  # fmt: skip
    assert made["spiffe_id"] == SPIFFE and made["version"]["stage"] == "draft"

    # The red-team gate: the team tests its own version; the manifest names a guardrail profile,
    # so the attack runs as a team with that profile, which takes the admin key (--attack-key).
    tested = m2a(env, "agents", "test", AGENT, "--team", TEAM, "--api-key", team_key, "--attack-key", KEY,
                 *PROBES, "--json", ok=False, timeout=900)  # fmt: skip
    assert tested.returncode == 0, f"the gate did not pass:\n{tested.stdout[-6000:]}\n{tested.stderr[-3000:]}"
    gate = json.loads(tested.stdout)

    # Approval is the admin's (separation of duties); production is the team's own step.
    refused = m2a(env, "agents", "promote", AGENT, "1", "--to", "approved", "--team", TEAM,
                  "--api-key", team_key, ok=False)  # fmt: skip
    assert refused.returncode == 1, refused.stdout + refused.stderr
    m2a(env, "agents", "promote", AGENT, "1", "--to", "approved", "--team", TEAM)  # the admin key
    m2a(env, "agents", "promote", AGENT, "1", "--to", "production", "--team", TEAM, "--api-key", team_key)

    cred = json.loads(
        m2a(env, "agents", "credentials", "create", AGENT, "--team", TEAM, "--api-key", team_key,
            "--json").stdout
    )  # fmt: skip
    assert cred["client_id"] == SPIFFE and cred["client_secret"]
    return Walk(stack, env, team_key, gate, cred["client_id"], cred["client_secret"])


def _asked(walk: Walk, *args: str) -> dict[str, Any]:
    done = walk.agent("--json", *args)
    assert done.returncode == 0, f"the agent exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def asked(walk: Walk) -> dict[str, Any]:
    """The agent's answers (JSON) to two questions, the way the README runs it."""
    return _asked(walk, "What is the status of order SO-1001?", "Is invoice INV-5002 paid?")


def load_agent_module() -> Any:
    spec = importlib.util.spec_from_file_location("erp_agent_example", EXAMPLE / "agent.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- registered, gated, promoted ------------------------------------------------------------------


def test_the_version_in_production_carries_its_red_team_run(walk: Walk) -> None:
    report, version = walk.gate["report"], walk.gate["version"]
    assert report["passed"] is True and version["stage"] == "tested"
    assert report["model"] == MODEL and report["profile"] == "strict" and report["probes"] == 6
    assert {c["category"] for c in report["categories"]} == {
        "system_prompt_leakage", "secret_leakage", "prompt_injection"
    }  # fmt: skip
    assert all(v["verdict"] == "pass" for v in report["verdicts"] if v["verdict"] != "not run")
    shown = json.loads(m2a(walk.env, "agents", "show", AGENT, "--team", TEAM, "--json").stdout)
    assert shown["aliases"]["production"] == 1 and shown["spiffe_id"] == SPIFFE
    (v1,) = shown["versions"]
    assert v1["stage"] == "production" and v1["redteam"]["run"] == report["run"]
    # The run is in the red-team results, as `m2a redteam report` shows it.
    m2a(walk.env, "redteam", "report", str(report["run"]), "--format", "json")


# -- the agent at work -------------------------------------------------------------------------------


def test_the_agent_answers_with_the_record_its_tool_gave(walk: Walk, asked: dict[str, Any]) -> None:
    assert asked["agent"] == SPIFFE and asked["model"] == MODEL and asked["tokens_fetched"] == 1
    order, invoice = asked["answers"]
    assert order["error"] is None and order["path"] == "mcp" and order["tool"] == "erp__lookup_order"
    assert order["arguments"] == {"order_id": "SO-1001"} and order["record"] == SO_1001
    assert set(order["tools_listed"]) == MANIFEST_TOOLS  # the manifest's, not the server's five
    assert order["answer"] and order["response_id"].startswith("resp_")
    for fact in ("SO-1001", "cordless drill", "EUR 1188.00", "shipped", "Acme Tools GmbH", "INV-5001"):
        assert fact in order["facts"], (fact, order["facts"])
    assert invoice["tool"] == "erp__invoice_status" and invoice["record"] == INV_5002
    assert "EUR 940.00" in invoice["facts"] and "open" in invoice["facts"]
    assert order["trace_id"] != invoice["trace_id"]  # a trace per question

    # The plain output, as a person reads it: the model's words, then the record's facts.
    done = walk.agent("What is the status of order SO-1001?")
    assert done.returncode == 0, done.stderr
    *answer, facts = done.stdout.strip().splitlines()
    assert "".join(answer).strip()
    assert facts.startswith(
        "-- from the ERP (erp__lookup_order, via mcp): order SO-1001: 12 x cordless drill"
    )
    assert "-- trace " in done.stderr


def test_the_erp_saw_m2a_and_the_agent_id_never_the_agents_token(walk: Walk, erp: Erp, asked: Any) -> None:
    calls = erp.calls("lookup_order")
    assert calls, erp.requests()
    for call in calls:
        assert call["headers"]["x-m2a-agent"] == SPIFFE
        assert call["headers"]["authorization"] == f"Bearer {ERP_BEARER}"  # m2a's credential
    for request in erp.requests():  # no request of any kind carried the agent's token or secret
        for name, value in request["headers"].items():
            if name == "x-m2a-intent":  # m2a's signed intent for this very call (trusted execution)
                header = jwt.get_unverified_header(value)
                claims = jwt.decode(value, options={"verify_signature": False})
                assert header["typ"] == "m2a-intent+jwt" and claims["aud"] == "m2a:executor:mcp"
                assert claims["sub"] == SPIFFE and claims["tool"]["server"] == "erp"
                continue
            assert not (value.count(".") == 2 and "eyJ" in value), (name, "a JWT reached the tool server")
            assert walk.client_secret not in value and walk.team_key not in value and KEY not in value
    traceparents = {c["headers"]["traceparent"].split("-")[1] for c in erp.calls()}
    assert asked["answers"][0]["trace_id"] in traceparents  # the tool call joined the agent's trace


def test_tool_calls_and_usage_name_the_agent(walk: Walk, asked: dict[str, Any]) -> None:
    order = asked["answers"][0]
    with walk.admin() as admin:
        rows = admin.get("/admin/v1/tool-calls", params={"agent": SPIFFE, "server": "erp"}).json()
    mine = [r for r in rows if r["trace_id"] == order["trace_id"]]
    assert len(mine) == 1, rows
    (row,) = mine
    assert (row["agent"], row["agent_version"], row["tool"], row["status"], row["via"]) == (
        SPIFFE, 1, "lookup_order", "ok", "mcp"
    )  # fmt: skip
    assert row["args_sha256"] == hashlib.sha256(rfc8785.dumps({"order_id": "SO-1001"})).hexdigest()

    def by_agent() -> dict[str, Any] | None:
        out = m2a(walk.env, "usage", "--by", "agent", "--team", TEAM, "--format", "json").stdout
        found = {r["agent"]: r for r in json.loads(out)}.get(SPIFFE)
        # each answer: a tool call (model tool:erp/...) and a model call through the Responses API
        return found if found and found["requests"] >= 4 and found["output"] > 0 else None

    usage = eventually("the agent's usage in the ledger", by_agent)
    assert usage["errors"] == 0 and usage["input"] > 0


def test_one_trace_holds_the_tool_call_and_the_model_call(walk: Walk, asked: dict[str, Any]) -> None:
    trace_id = asked["answers"][0]["trace_id"]

    def spans() -> list[dict[str, Any]] | None:
        done = m2a(walk.env, "traces", "show", trace_id, "--json", ok=False)
        found = json.loads(done.stdout)["spans"] if done.returncode == 0 else []
        names = {s["name"] for s in found}
        engine = any(s["service"].startswith("vllm") for s in found)  # vLLM's own span, by OTLP
        return found if {"execute_tool lookup_order", f"chat {MODEL}"} <= names and engine else None

    found = eventually("the tool's, the gateway's and the engine's spans in the agent's trace", spans)
    tool = next(s for s in found if s["name"] == "execute_tool lookup_order")
    assert tool["attributes"]["gen_ai.agent.id"] == SPIFFE
    assert tool["attributes"]["gen_ai.tool.name"] == "lookup_order"
    chat = next(s for s in found if s["name"] == f"chat {MODEL}")
    assert chat["attributes"]["gen_ai.request.model"] == MODEL
    for span in found:  # where the Responses request has its own span, it names the agent
        if span["name"].startswith("invoke_agent"):
            assert span["name"] == f"invoke_agent {AGENT}"
            assert span["attributes"]["gen_ai.agent.id"] == SPIFFE
    listed = m2a(walk.env, "traces", "list", "--team", TEAM, "--limit", "50").stdout
    assert trace_id[:12] in listed


def test_hosted_tools_list_the_manifest_tools_to_the_model(walk: Walk) -> None:
    """With --hosted-tools the Responses API's mcp tool runs server-side; where the 135M model calls
    no tool, the agent looks the order up itself (and says so): the record is right either way."""
    (order,) = _asked(walk, "--hosted-tools", "What is the status of order SO-1001?")["answers"]
    assert order["error"] is None and order["record"] == SO_1001
    assert order["path"] in ("hosted", "hosted, then mcp"), order["path"]
    assert "mcp_list_tools" in order["hosted_items"]  # m2a listed the agent's tools to the model
    assert set(order["hosted_tools"]) == MANIFEST_TOOLS
    if order["path"] == "hosted":  # the model called the tool, and m2a ran it for the agent
        assert "mcp_call" in order["hosted_items"]
        with walk.admin() as admin:
            rows = admin.get("/admin/v1/tool-calls", params={"response_id": order["response_id"]}).json()
        assert rows and all(r["agent"] == SPIFFE for r in rows)


# -- the token: refreshed before expiry, stopped by a revocation ------------------------------------


async def test_the_agent_refreshes_its_token_before_it_expires(walk: Walk) -> None:
    agent = load_agent_module()
    now = [time.time()]
    tokens = agent.TokenSource(walk.stack.root, walk.client_id, walk.client_secret, clock=lambda: now[0])
    first = await tokens.token()
    assert await tokens.token() == first and tokens.fetched == 1  # reused while fresh
    assert tokens.expires_at - tokens.refresh_at == 60  # m2a's tokens live 5 minutes: a minute ahead
    now[0] = tokens.refresh_at - 1  # still over a minute left: the same token
    assert await tokens.token() == first and tokens.fetched == 1
    now[0] = tokens.refresh_at + 1  # under a minute left: a new one, before the old one expires
    second = await tokens.token()
    assert second != first and tokens.fetched == 2
    async with httpx.AsyncClient(base_url=walk.stack.base_url, timeout=30, trust_env=False) as http:
        models = await http.get("/models", headers={"authorization": f"Bearer {second}"})
    assert models.status_code == 200, models.text
    assert [m["id"] for m in models.json()["data"]] == [MODEL]  # the manifest's model only


def test_a_revoked_agent_is_refused_within_seconds(walk: Walk) -> None:
    token = m2a(walk.env, "agents", "token", AGENT, "--team", TEAM, "--api-key", walk.team_key,
                "--client-secret", walk.client_secret).stdout.strip()  # fmt: skip
    headers = {"authorization": f"Bearer {token}"}
    list_tools = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    mcp_headers = {**headers, "accept": "application/json, text/event-stream"}
    with httpx.Client(base_url=walk.stack.root, timeout=30, trust_env=False) as http:
        assert http.get("/v1/models", headers=headers).status_code == 200
        assert http.post("/mcp", json=list_tools, headers=mcp_headers).status_code == 200
        m2a(walk.env, "agents", "revoke", AGENT, "--team", TEAM, "--reason", "e2e: retired",
            "--api-key", walk.team_key)  # fmt: skip
        deadline = time.monotonic() + 10
        while (resp := http.get("/v1/models", headers=headers)).status_code == 200:
            assert time.monotonic() < deadline, "a revoked agent's token still works after 10 s"
            time.sleep(0.2)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key", resp.text
        assert http.post("/mcp", json=list_tools, headers=mcp_headers).status_code == 401
    done = walk.agent("What is the status of order SO-1001?")  # and it gets no new token
    assert done.returncode == 1 and "the token endpoint refused" in done.stderr, done.stderr
