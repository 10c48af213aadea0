"""The console in a real headless Chromium (Playwright driving the system's ``/usr/bin/chromium``)
against one live gateway with a scripted chat engine, started once for the module.

What a person does: sign in with the admin key (and with the keyboard alone), create a team and a
key on the pages (the key shown once, copied from the page), call the gateway with that key through
the OpenAI client and find the request in Usage and in Traces, revoke the key (the client is then
refused), chat in the Playground (the answer appears while it is still streaming), approve a tool
call; a member of another team sees none of the first team's data (not in any page, and crafted URLs
answer 403/404); a team or key named ``<script>window.__x=1</script>`` runs nothing; no page
triggers a Content-Security-Policy violation (and the policy does block an injected inline script).

With ``M2A_SCREENSHOTS=1`` every page is also saved to ``docs/screenshots/<page>.png`` (a laptop's
1280×800 viewport, whole page; the overview also at a phone's 390×844), as linked from the README.
Without Chromium (or Playwright) the module skips with the reason — except under CI (``CI`` set),
where it fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from m2a.agents.manifest import parse_manifest
from m2a.console.pages import PAGES, load_views
from m2a.store.tools import ToolStore
from tests.agents.helpers import manifest_data, report
from tests.console.conftest import MODEL, Console, console_gateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHROMIUM = os.environ.get("M2A_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
XSS = "<script>window.__x=1</script>"
IMG_XSS = '<img src="x" onerror="window.__x=1">'
TIMEOUT_MS = 20_000
# Recorded in every page before its own scripts run (an init script is injected by the browser's
# devtools protocol, so the page's CSP does not apply to it): CSP violations the page triggers.
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__csp.push(e.violatedDirective + " " + (e.blockedURI || "inline"));
});
"""


def need_browser() -> None:
    """Skip (fail under CI) without Playwright or the system Chromium."""
    why = None
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        why = "Playwright is not installed (pip install playwright; its browsers are not needed)"
    if why is None and not os.access(CHROMIUM, os.X_OK):
        why = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why + " (required under CI)", pytrace=False)
        pytest.skip(why)


def has_page(name: str) -> bool:
    load_views()
    return any(p.name == name for p in PAGES)


@dataclass
class Ui:
    """The gateway, the browser, and what the tests made along the way."""

    gw: Console
    browser: Any  # playwright Browser
    tools: ToolStore
    console_errors: list[str] = field(default_factory=list)
    made: dict[str, Any] = field(default_factory=dict)

    async def context(self, viewport: dict[str, int] = LAPTOP) -> Any:
        ctx = await self.browser.new_context(viewport=viewport, base_url=self.gw.url)
        ctx.set_default_timeout(TIMEOUT_MS)
        await ctx.add_init_script(WATCH_CSP)
        return ctx

    async def page(self, viewport: dict[str, int] = LAPTOP) -> Any:
        page = await (await self.context(viewport)).new_page()
        page.on("console", lambda m: self._console(m))
        page.on("pageerror", lambda e: self.console_errors.append(f"page error: {e}"))
        page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))  # data-confirm forms
        return page

    def _console(self, message: Any) -> None:
        text = message.text
        if text.startswith("Failed to load resource: the server responded with a status of"):
            return  # a page answered 4xx on purpose (a refused key, a crafted URL): tests check statuses
        if message.type == "error" or "Content Security Policy" in text or "Refused to" in text:
            self.console_errors.append(text)

    async def signin(self, key: str, viewport: dict[str, int] = LAPTOP) -> Any:
        page = await self.page(viewport)
        await page.goto("/console/signin")
        await page.fill("#key", key)
        await page.click("button[type=submit]")
        await page.wait_for_url(re.compile(r"/console/$"))
        return page

    async def visit(self, page: Any, path: str, shot: str | None = None, status: int = 200) -> Any:
        """Open ``path``: its status, no CSP violation and no script run from data; a screenshot."""
        resp = await page.goto(path)
        assert resp is not None and resp.status == status, (path, resp and resp.status)
        await page.wait_for_load_state("load")
        await self.clean(page)
        if shot:
            await screenshot(page, shot)
        return resp

    async def clean(self, page: Any) -> None:
        """Nothing ran from data (``window.__x``), no CSP violation, nothing in the browser's console."""
        assert await page.evaluate("typeof window.__x") == "undefined", page.url
        assert await page.evaluate("window.__csp") == [], (page.url, await page.evaluate("window.__csp"))
        assert self.console_errors == [], (page.url, self.console_errors)


async def until(page: Any, expression: str, timeout_s: float = TIMEOUT_MS / 1000) -> None:
    """Wait until ``expression`` is true in the page. (Playwright's ``wait_for_function`` polls with
    ``eval`` inside the page, which the console's CSP forbids; ``evaluate`` goes through devtools.)"""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await page.evaluate(expression):
        if loop.time() > deadline:
            raise AssertionError(f"still false after {timeout_s} s: {expression}")
        await asyncio.sleep(0.02)


async def screenshot(page: Any, name: str) -> None:
    if os.environ.get("M2A_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


# ---------------------------------------------------------------------------------- the world
async def seed(gw: Console, tools: ToolStore) -> dict[str, Any]:
    """What makes the pages worth a look: two teams with agents, requests, a policy, approvals,
    a vector store, audit records. Everything through m2a's APIs but the pending approvals."""
    sales = await gw.team("sales", key_name="sales-dev")
    for i in range(3):
        assert (await gw.chat(sales, f"question {i}")).status_code == 200
    data = manifest_data(1, guardrails=None, system_prompt="You help customers with their orders.")
    made = await gw.api("POST", "/admin/v1/agents", json={
        "name": "order-bot", "team": "sales", "sponsors": ["ana@sales.example"], "manifest": data,
    })  # fmt: skip
    assert made.status_code == 201, made.text
    promote = {"to": "tested", "redteam": report(parse_manifest(data))}
    resp = await gw.api("POST", "/admin/v1/agents/sales/order-bot/versions/1/promote", json=promote)
    assert resp.status_code == 200, resp.text
    policy = ('@id("refunds-need-a-reason")\nforbid(principal, action == M2A::Action::"call", resource)\n'
              '  when { resource.name == "refund_order" && !(context has reason) };\n')  # fmt: skip
    resp = await gw.api("PUT", "/admin/v1/policies/team:sales/refunds", sales, json={"text": policy})
    assert resp.status_code == 201, resp.text
    store = await gw.api("POST", "/v1/vector_stores", sales, json={"name": "order FAQ " + XSS})
    assert store.status_code == 200, store.text
    principal = await gw.store.lookup(sales)
    team_id = getattr(principal, "team_id", None)
    agent = "spiffe://m2a.local/team/sales/agent/order-bot"
    approvals = []
    for tool, args in (("refund_order", {"order": "A-1001", "amount": 40}), ("cancel_order", {"order": XSS})):
        text = json.dumps(args)
        approvals.append((await tools.create_approval(
            id="mcpr_" + uuid.uuid4().hex, agent=agent, agent_id=1, version=1, team_id=team_id,
            server="erp", tool=tool, args_sha256=hashlib.sha256(text.encode()).hexdigest(),
            arguments=text, expires_at=datetime.now(UTC) + timedelta(hours=1), tier="write",
        )).id)  # fmt: skip
    return {"sales": sales, "approvals": approvals}


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def ui(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Ui]:
    need_browser()
    from playwright.async_api import async_playwright

    async with console_gateway(tmp_path_factory.mktemp("browser") / "home") as gw:
        tools = ToolStore(gw.store.engine)
        made = await seed(gw, tools)
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                world = Ui(gw, browser, tools)
                world.made.update(made)
                yield world
            finally:
                await browser.close()


@pytest.fixture(autouse=True)
def _fresh_console_errors(ui: Ui) -> None:
    ui.console_errors.clear()


# ---------------------------------------------------------------------------------- tests
async def test_the_browser_runs_here(ui: Ui) -> None:
    """A smoke test on a trivial page, and the CSP watcher catching a real violation."""
    page = await ui.page()
    await page.set_content("<h1 id='x'>hello</h1>")
    assert await page.inner_text("#x") == "hello"
    await page.goto("/console/signin")
    await page.evaluate("""() => { const s = document.createElement("script");
        s.textContent = "window.__y = 1"; document.body.appendChild(s); }""")  # inline: CSP refuses it
    await until(page, "window.__csp.length > 0")
    assert await page.evaluate("typeof window.__y") == "undefined"
    assert any("script-src" in v for v in await page.evaluate("window.__csp"))
    ui.console_errors.clear()  # the refusal was logged, as it should be


async def test_signing_in_with_the_keyboard_alone(ui: Ui) -> None:
    page = await ui.page()
    await ui.visit(page, "/console/signin", "signin")
    active = "document.activeElement.id || document.activeElement.textContent.trim()"
    assert await page.evaluate(active) == "key"  # the form's field has the focus on arrival
    back = []
    for _ in range(4):  # the tab order before it: the skip link first, then the brand
        await page.keyboard.press("Shift+Tab")
        back.append(await page.evaluate(active))
    assert back[:2] == ["m2a console", "Skip to content"], back
    for _ in range(4):
        if await page.evaluate(active) == "key":
            break
        await page.keyboard.press("Tab")
    assert await page.evaluate(active) == "key"
    assert await page.evaluate("document.querySelector('label[for=key]').textContent") == "API key or token"
    await page.keyboard.type("not-a-key")
    await page.keyboard.press("Enter")
    await page.wait_for_selector(".error[role=alert]")
    seen = []
    for _ in range(6):  # the form again, with the error: Tab to the field
        seen.append(await page.evaluate(active))
        if seen[-1] == "key":
            break
        await page.keyboard.press("Tab")
    assert await page.evaluate(active) == "key", seen
    await page.keyboard.press("Tab")
    assert await page.evaluate(active) == "Sign in"  # the button comes next
    await page.keyboard.press("Shift+Tab")
    await page.keyboard.type(ui.gw.admin_key)
    await page.keyboard.press("Enter")
    await page.wait_for_url(re.compile(r"/console/$"))
    assert "Overview" in await page.inner_text("h1")
    await ui.clean(page)


async def test_admin_creates_a_team_and_a_key_sees_its_request_and_revokes_it(ui: Ui) -> None:
    import openai

    page = await ui.signin(ui.gw.admin_key)
    await ui.visit(page, "/console/", "overview")
    assert MODEL in await page.inner_text("main")
    phone = await ui.signin(ui.gw.admin_key, PHONE)
    await ui.visit(phone, "/console/", "overview-phone")
    assert await phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")

    # a team, with alpha granted, through the pages
    await ui.visit(page, "/console/teams", "teams")
    await page.fill("#team-name", "atlas")
    await page.click("form[action='/console/teams/create'] button[type=submit]")
    await page.wait_for_load_state("load")
    await ui.clean(page)
    await ui.visit(page, "/console/teams/atlas")
    if await page.locator("#grant-model").count():
        await page.select_option("#grant-model", MODEL)
        await page.click("form[action='/console/teams/atlas/grant'] button[type=submit]")
        await page.wait_for_load_state("load")
    assert MODEL in await page.inner_text("main")

    # a key, shown once: copied from the page
    await page.fill("#k-name", "atlas-notebook")
    await page.click("form[action='/console/teams/atlas/keys/create'] button[type=submit]")
    await page.wait_for_selector("#new-key-value")
    key = (await page.inner_text("#new-key-value")).strip()
    assert key.startswith("sk-") or len(key) > 20
    await ui.clean(page)
    await screenshot(page, "team")
    await ui.visit(page, "/console/teams/atlas")
    assert key not in await page.content()  # never again
    ui.made["atlas_key"] = key

    # the OpenAI client with that key; the trace id is ours (traceparent), to find it in Traces
    trace_id = secrets.token_hex(16)
    client = openai.AsyncOpenAI(base_url=ui.gw.url + "/v1", api_key=key, max_retries=0)
    answer = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello from atlas"}],
        extra_headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
    )  # fmt: skip
    assert answer.choices[0].message.content == "Echo: hello from atlas"
    ui.made["atlas_trace"] = trace_id

    if has_page("usage"):
        for _ in range(50):  # the ledger writes its rows a moment later
            await ui.visit(page, "/console/usage?team=atlas")
            if "atlas-notebook" in await page.inner_text("main"):
                break
            await asyncio.sleep(0.2)
        assert "atlas-notebook" in await page.inner_text("main")
        await ui.visit(page, "/console/usage", "usage")
    else:
        pytest.skip("the Usage page is not there yet")
    if has_page("traces"):
        for _ in range(50):  # the span exporter stores the trace a moment later
            await ui.visit(page, "/console/traces?team=atlas")
            if trace_id[:12] in await page.inner_text("main"):
                break
            await asyncio.sleep(0.2)
        assert trace_id[:12] in await page.inner_text("main")
        await ui.visit(page, "/console/traces", "traces")
        await ui.visit(page, f"/console/traces/{trace_id}", "trace")
        assert MODEL in await page.inner_text("main")

    # revoke it on the team's page: the client is refused at once
    await ui.visit(page, "/console/teams/atlas")
    await page.click("button[aria-label='Revoke key atlas-notebook']")
    await page.wait_for_url(re.compile(r"notice=key-revoked"))
    await ui.clean(page)
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "again"}])
    await client.close()


async def test_playground_streams_the_answer(ui: Ui) -> None:
    page = await ui.signin(ui.made["sales"])
    await ui.visit(page, "/console/playground")
    gate = asyncio.Event()
    ui.gw.engine.gate = gate  # the engine holds its answer after the first piece
    try:
        await page.fill("#message", "tell me about streaming")
        await page.press("#message", "Enter")
        last = ".msg.assistant:last-child .text"
        await until(page, f"document.querySelector('{last}')?.textContent === 'Echo'")
        assert "tokens/s" not in await page.inner_text("[data-stats]")  # still streaming
        assert await page.get_attribute("[data-log]", "aria-busy") == "true"
        gate.set()
        await until(page, f"document.querySelector('{last}').textContent === 'Echo: tell me about streaming'")
        await until(page, "document.querySelector('[data-stats]').textContent.includes('tokens/s')")
    finally:
        ui.gw.engine.gate = None
        gate.set()
    stats = await page.inner_text("[data-stats]")
    assert "time to first token" in stats and "output tokens" in stats
    # the second turn carries the first
    await page.fill("#message", IMG_XSS)
    await page.press("#message", "Enter")
    await until(page, "document.querySelectorAll('.msg.assistant').length === 2")
    await until(page, "document.querySelectorAll('.msg.assistant')[1].textContent.includes('Echo: <img')")
    assert [m["role"] for m in ui.gw.engine.last["messages"]] == ["user", "assistant", "user"]
    assert await page.locator(".chat-log img").count() == 0  # text, never HTML
    await ui.clean(page)
    await screenshot(page, "playground")
    assert ui.made["sales"] not in await page.content()


async def test_the_agents_pages(ui: Ui) -> None:
    page = await ui.signin(ui.gw.admin_key)
    shots = [("/console/agents", "agents"), ("/console/agents/sales/order-bot", "agent"),
             ("/console/policies", "policies"), ("/console/guardrails", "guardrails"),
             ("/console/redteam", "redteam")]  # fmt: skip
    for path, shot in shots:
        await ui.visit(page, path, shot)
    assert "prompt_injection" in await page.inner_text("main")

    # approve one pending call on the page, as a member of the agent's team
    member = await ui.signin(ui.made["sales"])
    await ui.visit(member, "/console/tools", "tools")
    first = ui.made["approvals"][0]
    await member.fill(f"form[action='/console/approvals/{first}/approve'] input[name=reason]", "checked")
    await member.click(f"form[action='/console/approvals/{first}/approve'] button[type=submit]")
    await member.wait_for_url(re.compile(r"notice=approval-approved"))
    await ui.clean(member)
    decided = await ui.tools.get_approval(first)
    assert decided is not None and decided.status == "approved" and decided.reason == "checked"
    await ui.visit(member, "/console/audit", "audit")
    assert "approval_decided" in await member.inner_text("main")
    await ui.visit(member, "/console/vector-stores", "vector-stores")
    assert "order FAQ <script>" in await member.inner_text("main")  # shown as text
    if has_page("economics"):
        await ui.visit(page, "/console/economics", "economics")
    if has_page("keys"):
        await ui.visit(page, "/console/keys", "keys")


async def test_script_names_run_nothing(ui: Ui) -> None:
    page = await ui.signin(ui.gw.admin_key)
    await ui.visit(page, "/console/teams")
    await page.fill("#team-name", XSS)
    await page.evaluate("""() => { const i = document.querySelector("#team-name");
        i.removeAttribute("pattern"); i.removeAttribute("maxlength"); }""")  # a crafted post
    await page.click("form[action='/console/teams/create'] button[type=submit]")
    await page.wait_for_load_state("load")
    assert await page.locator(".error[role=alert]").count() >= 1  # the API refuses such a name
    await ui.clean(page)
    if has_page("keys"):  # a key may be named so: the name is shown, as text, on every page
        await ui.visit(page, "/console/keys")
        await page.fill("#k-name", XSS)
        await page.select_option("#k-team", "sales")
        await page.click("form[action='/console/keys/create'] button[type=submit]")
        await page.wait_for_selector("#new-key-value")
        await ui.clean(page)
        assert XSS in await page.inner_text("main")
        for path in ("/console/keys", "/console/teams/sales", "/console/usage"):
            if path != "/console/usage" or has_page("usage"):
                await ui.visit(page, path)


async def test_a_member_of_another_team_sees_nothing_of_it(ui: Ui) -> None:
    other = await ui.gw.team("borealis", key_name="borealis-dev")
    assert (await ui.gw.chat(other, "borealis here")).status_code == 200
    page = await ui.signin(other)
    nav = await page.locator("nav a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert "/console/guardrails" not in nav and "/console/keys" not in nav
    for href in nav:
        await ui.visit(page, href)
        text = await page.content()
        for secret in ("atlas", "sales", "order-bot", "A-1001"):
            assert secret not in text, (href, secret)
    crafted = ["/console/teams/atlas", "/console/teams/sales", "/console/agents/sales/order-bot",
               "/console/guardrails", f"/console/traces/{ui.made.get('atlas_trace', '0' * 32)}"]  # fmt: skip
    for path in crafted:  # the answer may repeat the URL's own words, nothing more
        resp = await page.goto(path)
        assert resp is not None and resp.status in (403, 404), (path, resp and resp.status)
        text = await page.content()
        for secret in ("ana@sales.example", "You help customers", "spiffe://", "hello from atlas"):
            assert secret not in text, (path, secret)
    for path in ("/console/usage?team=sales", "/console/audit?kind=approval_decided", "/console/tools"):
        if path.startswith("/console/usage") and not has_page("usage"):
            continue
        await page.goto(path)
        assert "sales" not in await page.content() and "order-bot" not in await page.content()
