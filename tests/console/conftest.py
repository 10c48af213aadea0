"""What the console's tests share: a live gateway with the console (and agents) extensions on a
real loopback port, a SQLite store, an admin key, a scripted chat engine serving ``alpha``, a
ledger and a trace store; and ``Browser``, an httpx client that behaves like a browser on it
(cookies, same-origin ``Origin``, the page's CSRF token on every form it posts).

    async def test_x(console: Console) -> None:
        key = await console.team("research")            # a team with alpha granted, a member key
        browser = console.browser()
        await browser.signin(console.admin_key)          # or key
        page = await browser.get("/console/teams")       # 200, page.text is the HTML
        await browser.post("/console/teams/create", {"name": "ops"})   # the CSRF token added
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from m2a.agents.extension import agents_extension
from m2a.config import GatewayConfig, TrustConfig
from m2a.console.extension import console_extension
from m2a.gateway.app import create_app
from m2a.router.pool import Endpoint, Pool
from m2a.store.db import open_store
from m2a.store.identity import IdentityStore
from m2a.store.ledger import Ledger
from m2a.telemetry.exporter import StoreExporter
from m2a.telemetry.store import TraceStore
from tests.live_app import live
from tests.scripted_engine import ScriptedEngine

ADMIN = "sk-console-admin-" + "c" * 24
MODEL = "alpha"
TIMEOUT = 30.0
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str | None:
    """The CSRF token of the first form on a page."""
    found = _CSRF.search(html)
    return found.group(1) if found else None


@dataclass
class Browser:
    """A browser on the console: keeps cookies, sends a same-origin ``Origin``, remembers every
    HTML page it got (``seen``: to look for what must never be there) and the last CSRF token."""

    http: httpx.AsyncClient
    origin: str
    csrf: str | None = None
    seen: list[str] = field(default_factory=list)

    def _keep(self, resp: httpx.Response) -> httpx.Response:
        if "text/html" in resp.headers.get("content-type", ""):
            self.seen.append(resp.text)
            token = csrf_of(resp.text)
            if token:
                self.csrf = token
        return resp

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return self._keep(await self.http.get(path, **kw))

    async def post(
        self, path: str, data: dict[str, Any] | None = None, *, csrf: bool | str = True, **kw: Any
    ) -> httpx.Response:
        """Post a form; ``csrf``: True adds the last page's token, a string sends that, False none."""
        form = dict(data or {})
        if csrf is True:
            if self.csrf is None:
                await self.get("/console/")
            form["csrf"] = self.csrf
        elif isinstance(csrf, str):
            form["csrf"] = csrf
        headers = {"origin": self.origin, **kw.pop("headers", {})}
        return self._keep(await self.http.post(path, data=form, headers=headers, **kw))

    async def signin(self, key: str) -> httpx.Response:
        """Sign in with ``key`` (the sign-in form first, as a browser would); the answer (303 on success)."""
        await self.get("/console/signin")
        resp = await self.post("/console/signin", {"key": key})
        if resp.status_code == 303:
            self.csrf = None  # the sign-in form's token; the session's comes with its first page
        return resp

    @property
    def cookie(self) -> str | None:
        return self.http.cookies.get("m2a_console")


@dataclass
class Console:
    app: Any
    url: str
    store: IdentityStore
    engine: ScriptedEngine
    home: Path
    trace_store: TraceStore
    admin_key: str = ADMIN
    browsers: list[Browser] = field(default_factory=list)
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    def browser(self) -> Browser:
        http = httpx.AsyncClient(base_url=self.url, timeout=TIMEOUT, trust_env=False)
        self._stack.push_async_callback(http.aclose)
        b = Browser(http, self.url)
        self.browsers.append(b)
        return b

    async def api(self, method: str, path: str, key: str | None = ADMIN, **kw: Any) -> httpx.Response:
        """The gateway's HTTP API directly (as a script would), with ``key``."""
        headers = {"authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(base_url=self.url, timeout=TIMEOUT, trust_env=False) as http:
            return await http.request(method, path, headers=headers, **kw)

    async def team(self, name: str, models: tuple[str, ...] = (MODEL,), key_name: str | None = None) -> str:
        """A team with ``models`` granted and a member key of it (the key returned)."""
        await self.store.create_team(name)
        for m in models:
            await self.store.grant(name, m)
        return (await self.store.create_key(name, key_name or f"{name}-key"))[0]

    async def chat(self, key: str, text: str = "hello", model: str = MODEL) -> httpx.Response:
        """One chat request through the gateway with ``key`` (what shows up in usage and traces)."""
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        return await self.api("POST", "/v1/chat/completions", key, json=body)


@contextlib.asynccontextmanager
async def console_gateway(
    home: Path, endpoints: Sequence[Endpoint] = (), **app_kw: Any
) -> AsyncIterator[Console]:
    """The gateway with the console and agents extensions on a loopback port (see the docstring);
    ``endpoints``: more replicas in its pool (a simulator's, say); ``console``: console_extension's
    keyword arguments; the rest goes to ``create_app``."""
    db = await open_store(None, home)
    store = IdentityStore(db)
    engine = ScriptedEngine()
    await engine.start()
    pool = Pool()
    pool.add(Endpoint(f"{MODEL}-0", MODEL, engine.url, task="chat", engine="remote", healthy=True))
    for ep in endpoints:
        pool.add(ep)
    trace_store = TraceStore(home / "traces.db")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(StoreExporter(trace_store)))
    console_kw = app_kw.pop("console", {})
    app = create_app(
        pool,
        ADMIN,
        app_kw.pop("cfg", GatewayConfig()),
        identity=store,
        ledger=Ledger(db, home / "ledger", flush_s=0.05),
        usage_store=db,
        tracer=provider.get_tracer("m2a-console-test"),
        trace_store=trace_store,
        home=home,
        extensions=[
            agents_extension(None, TrustConfig(policy_dir=home / "policies")),
            console_extension(**console_kw),
        ],
        **app_kw,
    )
    try:
        async with live(app, TIMEOUT) as url:
            gw = Console(app, url, store, engine, home, trace_store)
            async with gw._stack:
                yield gw
    finally:
        await engine.stop()
        provider.shutdown()
        await db.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    async with console_gateway(tmp_path / "home") as gw:
        yield gw
