"""The ERP order desk: a small agent behind m2a, plain Python with the ``openai`` and ``mcp`` clients.

It answers questions about the demo ERP (``erp_server.py`` beside it) with its own identity:

1. **Its token.** It authenticates at m2a's token endpoint (``POST $M2A_URL/oauth/token``, OAuth 2.0
   client credentials, ``client_secret_basic``) with ``$M2A_CLIENT_ID`` (its SPIFFE id) and
   ``$M2A_CLIENT_SECRET`` (``m2a agents credentials create``), gets a short-lived JWT for its
   production version and fetches a new one before it expires (``TokenSource``: a minute ahead,
   or half the lifetime for short ones; and once more if the gateway answers 401). The token is
   the only credential it holds: it never sees the ERP's.
2. **The lookup (deterministic, through m2a's /mcp).** A 135M model's tool calling is weak, so the
   agent does not leave the lookup to the model: it reads the id in the question (``SO-1001`` an
   order, ``INV-5001`` an invoice, ``C001`` a customer), opens an MCP session with m2a's
   ``$M2A_URL/mcp`` (the tools its manifest allows, named ``erp__lookup_order`` …) and calls the
   matching tool. m2a checks the manifest, calls the ERP with m2a's own credential and an
   ``x-m2a-agent`` header naming the agent, records and traces the call.
3. **The answer (the Responses API).** The model of its manifest phrases the answer from the
   record, with the manifest's system prompt as ``instructions`` (the prompt the red team tested:
   both are read from ``agent.yaml`` beside this file). The agent prints the model's answer and,
   under it, the record's facts as the tool gave them, so the answer's data never depends on the
   model.

With ``--hosted-tools`` the agent leaves the lookup to the model instead: it sends the question with
the Responses API's ``mcp`` tool (``{"type": "mcp", "server_label": "erp", "require_approval":
"never"}``), so m2a lists the tools to the model and runs the calls it makes, server-side (the
output holds ``mcp_list_tools`` and ``mcp_call`` items). Where the model called no tool but the
question names an id, the agent falls back to the deterministic lookup above and says so. A
question without any id always goes this way (there is nothing to look up deterministically).

Every question is one trace: the agent sends one W3C ``traceparent`` on its /mcp session and its
Responses request, so the tool's ``execute_tool`` span and the model call's spans share a trace id
(printed; ``m2a traces show ID``).

Usage::

    export M2A_URL=http://127.0.0.1:8000 M2A_CLIENT_ID=spiffe://m2a.local/team/sales-ops/agent/erp-assistant
    export M2A_CLIENT_SECRET=...        # from `m2a agents credentials create erp-assistant`
    python examples/erp/agent.py "What is the status of order SO-1001?"
    python examples/erp/agent.py --hosted-tools --json "Is invoice INV-5002 paid?"

Exit codes: 0 answered, 1 refused or failed (the token endpoint, the gateway, the tool), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import sys
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx
import httpx2  # the HTTP client the mcp package's streamable-HTTP transport takes
import openai
import yaml
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

HERE = Path(__file__).resolve().parent
DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_S = 120.0  # a model call on a CPU can take a while
REFRESH_MARGIN_S = 60.0
MAX_OUTPUT_TOKENS = 120

# The ids the demo ERP uses, and the tool that answers for each (first match wins).
LOOKUPS: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"\bSO-\d{3,}\b", re.IGNORECASE), "lookup_order", "order_id"),
    (re.compile(r"\bINV-\d{3,}\b", re.IGNORECASE), "invoice_status", "invoice_id"),
    (re.compile(r"\bC\d{3}\b", re.IGNORECASE), "customer_orders", "customer_id"),
]


class AgentError(Exception):
    """A refusal or failure the agent reports and exits 1 on."""


# -- identity: the agent's own access token ----------------------------------------------------------


class TokenSource:
    """Access tokens from m2a's token endpoint by client credentials, fetched again before expiry.

    A token is used until ``margin_s`` seconds before it expires (at most half its lifetime ahead),
    then a new one is fetched; ``invalidate()`` (after a 401) makes the next call fetch one.
    ``clock`` is ``time.time``; tests pass their own."""

    def __init__(
        self,
        url: str,
        client_id: str,
        client_secret: str,
        *,
        margin_s: float = REFRESH_MARGIN_S,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 30.0,
    ) -> None:
        self.token_endpoint = url.rstrip("/") + "/oauth/token"
        self.client_id = client_id
        self.margin_s = margin_s
        self.clock = clock
        self.timeout_s = timeout_s
        raw = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()  # RFC 6749 §2.3.1
        self._basic = "Basic " + base64.b64encode(raw).decode()
        self._token: str | None = None
        self.expires_at = 0.0  # when the current token expires (by ``clock``)
        self.refresh_at = 0.0  # when the next call fetches a new one
        self._lock: asyncio.Lock | None = None
        self.fetched = 0  # how many tokens this source has fetched

    async def token(self) -> str:
        """A token that is not about to expire."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._token is None or self.clock() >= self.refresh_at:
                await self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self) -> None:
        self._token = None

    async def _fetch(self) -> None:
        form = {"grant_type": "client_credentials"}
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s, trust_env=False) as http:
                resp = await http.post(self.token_endpoint, data=form, headers={"authorization": self._basic})
        except httpx.HTTPError as exc:
            raise AgentError(
                f"no token endpoint answers at {self.token_endpoint} ({type(exc).__name__})"
            ) from exc
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code != 200 or not isinstance(body, dict) or "access_token" not in body:
            error = body.get("error", resp.status_code) if isinstance(body, dict) else resp.status_code
            why = body.get("error_description", "") if isinstance(body, dict) else ""
            raise AgentError(f"the token endpoint refused: {error}: {why}".rstrip(": "))
        lifetime = float(body.get("expires_in", 300))
        self._token = str(body["access_token"])
        self.expires_at = self.clock() + lifetime
        self.refresh_at = self.expires_at - min(self.margin_s, lifetime / 2)
        self.fetched += 1


class BearerAuth(httpx2.Auth):
    """The agent's current token on every MCP request; after a 401, a fresh token and one retry."""

    requires_request_body = True  # a retry sends the body again

    def __init__(self, tokens: TokenSource) -> None:
        self.tokens = tokens

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        await request.aread()
        request.headers["authorization"] = f"Bearer {await self.tokens.token()}"
        response = yield request
        if response.status_code == 401:
            self.tokens.invalidate()
            request.headers["authorization"] = f"Bearer {await self.tokens.token()}"
            yield request


# -- the manifest it runs under ------------------------------------------------------------------------


@dataclass
class Manifest:
    """What the agent takes from its agent.yaml: its models, its system prompt, its tool server."""

    models: list[str]
    system_prompt: str
    server: str
    tools: list[str]

    @classmethod
    def load(cls, path: Path) -> Manifest:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        grants = data.get("tools") or []
        if not grants:
            raise AgentError(f"{path} grants no tools: the agent has nothing to look up with")
        return cls(list(data["models"]), str(data.get("system_prompt") or ""), grants[0]["server"],
                   list(grants[0]["tools"]))  # fmt: skip


# -- one question ----------------------------------------------------------------------------------------


def plan_lookup(question: str) -> tuple[str, dict[str, str]] | None:
    """The tool and arguments the question's id calls for, or None when it names no id."""
    for pattern, tool, arg in LOOKUPS:
        found = pattern.search(question)
        if found:
            return tool, {arg: found.group(0).upper()}
    return None


def _eur(value: Any) -> str:
    return f"EUR {float(value):.2f}" if isinstance(value, (int, float)) else f"EUR {value}"


def facts_of(tool: str, record: Any) -> str:
    """The record as one line of plain facts (what the answer rests on, whatever the model writes)."""
    if not isinstance(record, dict):
        return json.dumps(record)
    if "error" in record:
        return f"the ERP says: {record['error']}"
    if tool == "lookup_order" and "order_id" in record:
        invoice = f", invoice {record['invoice_id']}" if record.get("invoice_id") else ", not invoiced yet"
        return (
            f"order {record['order_id']}: {record['quantity']} x {record['item']}, "
            f"{_eur(record['total_eur'])}, {record['status']} (ordered {record['ordered_on']}), "
            f"customer {record['customer']} ({record['customer_id']}){invoice}"
        )
    if tool == "invoice_status" and "invoice_id" in record:
        return (
            f"invoice {record['invoice_id']} for order {record['order_id']}: {_eur(record['amount_eur'])}, "
            f"due {record['due_on']}, {record['status']}"
        )
    if tool == "customer_orders" and "customer" in record:
        c = record["customer"]
        orders = "; ".join(
            f"{o['order_id']} {o['item']} {_eur(o['total_eur'])} {o['status']}"
            for o in record.get("orders", [])
        )
        return f"customer {c['id']} {c['name']} ({c['city']}): {orders or 'no orders'}"
    return json.dumps(record, sort_keys=True)


def _record_of(result: Any) -> tuple[Any, bool]:
    """(the tool's result as data, whether it is an error) from an MCP CallToolResult."""
    text = "\n".join(getattr(c, "text", "") for c in result.content or [])
    if result.is_error:
        return {"error": text or "the tool failed"}, True
    if isinstance(result.structured_content, dict):
        return result.structured_content, False
    try:
        return json.loads(text), False
    except ValueError:
        return text, False


def _leaf(exc: BaseException) -> BaseException:
    """The first real cause inside exception groups (anyio wraps the transport's errors)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _why(exc: BaseException) -> str:
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Answer:
    question: str
    trace_id: str = field(default_factory=lambda: secrets.token_hex(16))  # one trace per question
    path: str = ""  # how the record was found: "mcp", "hosted", "hosted, then mcp", "hosted, no tool"
    tool: str | None = None  # the tool as m2a names it (erp__lookup_order)
    arguments: dict[str, Any] | None = None
    record: Any = None
    facts: str | None = None
    answer: str = ""
    response_id: str | None = None
    tools_listed: list[str] = field(default_factory=list)  # what m2a's /mcp offered this agent
    hosted_items: list[str] = field(default_factory=list)  # --hosted-tools: the response's item types
    hosted_tools: list[str] = field(default_factory=list)  # --hosted-tools: the tools m2a listed to the model
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Agent:
    """The order desk: its token source, its manifest, the gateway's /mcp and Responses API."""

    def __init__(self, url: str, tokens: TokenSource, manifest: Manifest, model: str | None = None,
                 max_output_tokens: int = MAX_OUTPUT_TOKENS) -> None:  # fmt: skip
        self.url = url.rstrip("/")
        self.tokens = tokens
        self.manifest = manifest
        self.model = model or manifest.models[0]
        self.max_output_tokens = max_output_tokens
        self.openai = openai.AsyncOpenAI(
            base_url=self.url + "/v1", api_key="-", timeout=TIMEOUT_S, max_retries=1
        )

    async def close(self) -> None:
        await self.openai.close()

    async def _responses(self, traceparent: str, **kw: Any) -> Any:
        """``responses.create`` with the current token (a 401: a fresh token, once more)."""
        for attempt in (1, 2):
            client = self.openai.with_options(api_key=await self.tokens.token())
            try:
                return await client.responses.create(
                    model=self.model,
                    instructions=self.manifest.system_prompt,
                    max_output_tokens=self.max_output_tokens,
                    temperature=0,
                    extra_headers={"traceparent": traceparent},
                    **kw,
                )
            except openai.AuthenticationError:
                if attempt == 2:
                    raise
                self.tokens.invalidate()
        raise AssertionError("unreachable")

    async def lookup(self, tool: str, arguments: dict[str, Any], traceparent: str, answer: Answer) -> None:
        """Call ``tool`` through m2a's /mcp, as this agent (its token, m2a's credentials upstream)."""
        name = f"{self.manifest.server}__{tool}"
        http = httpx2.AsyncClient(
            auth=BearerAuth(self.tokens), headers={"traceparent": traceparent},
            timeout=httpx2.Timeout(TIMEOUT_S), trust_env=False,
        )  # fmt: skip
        try:
            async with (
                http,
                streamable_http_client(self.url + "/mcp", http_client=http) as (read, write),
                ClientSession(read, write, read_timeout_seconds=TIMEOUT_S) as session,
            ):
                await session.initialize()
                answer.tools_listed = [t.name for t in (await session.list_tools()).tools]
                if name not in answer.tools_listed:
                    raise AgentError(f"m2a offers this agent no tool {name} (it offers: "
                                     f"{', '.join(answer.tools_listed) or 'none'})")  # fmt: skip
                result = await session.call_tool(name, arguments)
        except Exception as exc:  # the transport raises several kinds, inside exception groups
            leaf = _leaf(exc)
            if isinstance(leaf, AgentError):  # ours: no tool, or no token (after a 401)
                raise leaf from None
            raise AgentError(f"m2a's /mcp failed: {_why(leaf)}") from exc
        record, failed = _record_of(result)
        answer.tool, answer.arguments, answer.record = name, arguments, record
        answer.facts = facts_of(tool, record)
        if failed:
            raise AgentError(f"{name} failed: {record['error']}")

    async def phrase(self, question: str, traceparent: str, answer: Answer) -> None:
        """The model's answer from the record (the Responses API)."""
        prompt = f"ERP record ({answer.tool}):\n{json.dumps(answer.record)}\n\nQuestion: {question}"
        r = await self._responses(traceparent, input=prompt)
        answer.response_id, answer.answer = r.id, r.output_text.strip()

    async def hosted(self, question: str, traceparent: str, answer: Answer) -> None:
        """The question with the Responses API's ``mcp`` tool: the model looks up, m2a runs the call."""
        spec = {"type": "mcp", "server_label": self.manifest.server, "require_approval": "never"}
        r = await self._responses(traceparent, input=question, tools=[spec], max_tool_calls=2)
        answer.response_id, answer.answer = r.id, r.output_text.strip()
        answer.hosted_items = [item.type for item in r.output]
        for item in r.output:
            if item.type == "mcp_list_tools":
                answer.hosted_tools = [f"{item.server_label}__{t.name}" for t in item.tools]
            elif item.type == "mcp_call" and item.output is not None and not item.error:
                try:
                    record = json.loads(item.output)
                except ValueError:
                    record = item.output
                answer.tool = f"{item.server_label}__{item.name}"
                answer.arguments = json.loads(item.arguments or "{}")
                answer.record = record
                answer.facts = facts_of(item.name, record)

    async def ask(self, answer: Answer, hosted_tools: bool = False) -> None:
        """Answer ``answer.question``, filling ``answer`` in as it goes (what was done stays there when
        a step fails)."""
        question = answer.question
        traceparent = f"00-{answer.trace_id}-{secrets.token_hex(8)}-01"  # a new trace, sampled
        planned = plan_lookup(question)
        if hosted_tools or planned is None:
            answer.path = "hosted"
            await self.hosted(question, traceparent, answer)
            if answer.record is not None:
                return
            if planned is None:
                answer.path = "hosted, no tool"
                return
            answer.path = "hosted, then mcp"  # the model called no tool: look it up ourselves
        else:
            answer.path = "mcp"
        await self.lookup(*planned, traceparent, answer)
        await self.phrase(question, traceparent, answer)


# -- the command ---------------------------------------------------------------------------------------


def _print(answer: Answer) -> None:
    if answer.error is None:
        print(answer.answer or "(the model gave no text)")
    if answer.facts:
        print(f"-- from the ERP ({answer.tool}, via {answer.path}): {answer.facts}")
    print(f"-- trace {answer.trace_id}", file=sys.stderr)


async def run(args: argparse.Namespace) -> int:
    missing = [v for v in ("M2A_CLIENT_ID", "M2A_CLIENT_SECRET") if not os.environ.get(v)]
    if missing:
        print(f"error: set {' and '.join(missing)} (`m2a agents credentials create NAME`)", file=sys.stderr)
        return 2
    url = os.environ.get("M2A_URL", DEFAULT_URL)
    try:
        manifest = Manifest.load(args.manifest)
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError, AgentError) as exc:
        print(f"error: cannot read the manifest {args.manifest}: {exc}", file=sys.stderr)
        return 2
    if args.model and args.model not in manifest.models:
        print(f"error: {args.model!r} is not one of the manifest's models", file=sys.stderr)
        return 2
    tokens = TokenSource(url, os.environ["M2A_CLIENT_ID"], os.environ["M2A_CLIENT_SECRET"])
    agent = Agent(url, tokens, manifest, args.model, args.max_output_tokens)
    answers: list[Answer] = []
    code = 0
    try:
        for question in args.question:
            answer = Answer(question)
            answers.append(answer)
            try:
                await agent.ask(answer, args.hosted_tools)
            except AgentError as exc:
                answer.error = str(exc)
            except openai.APIStatusError as exc:
                answer.error = f"the gateway refused the model call: {exc.status_code} {exc.message}"
            except openai.APIConnectionError as exc:
                answer.error = f"no gateway answers at {url} ({type(exc).__name__})"
            if not args.json:
                _print(answer)
            if answer.error is not None:
                print(f"error: {answer.error}", file=sys.stderr)
                code = 1
                break
    finally:
        await agent.close()
    if args.json:
        out = {"agent": tokens.client_id, "model": agent.model, "tokens_fetched": tokens.fetched,
               "answers": [a.as_json() for a in answers]}  # fmt: skip
        print(json.dumps(out, indent=2))
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description="The ERP order desk agent, behind m2a.")
    parser.add_argument("question", nargs="+", help="A question (several are answered in turn).")
    parser.add_argument("--hosted-tools", action="store_true",
                        help="Let the model call the ERP through the Responses API's mcp tool.")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="Print the answers as JSON.")
    parser.add_argument("--manifest", type=Path, default=HERE / "agent.yaml", help="The agent's agent.yaml.")
    parser.add_argument(
        "--model", default=None, help="Another of the manifest's models (default: its first)."
    )
    parser.add_argument("--max-output-tokens", type=int, default=MAX_OUTPUT_TOKENS)
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
