"""Console sessions: signing in (an admin key, a team key, an agent token, a bad key), the cookie's
flags, what the store keeps (a hash of the id, the bearer encrypted), expiry, a revoked key ending
the session, signing out."""

from __future__ import annotations

import asyncio
import hashlib
import types
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update

from m2a.console.sessions import PURPOSE, SessionStore
from m2a.gateway.access import Access
from m2a.store.schema import ConsoleSessionRow
from tests.console.conftest import TIMEOUT, Browser, Console

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def rows(console: Console) -> list[ConsoleSessionRow]:
    async with console.store.engine.connect() as conn:
        return list((await conn.execute(select(ConsoleSessionRow))).all())  # type: ignore[arg-type]


def set_cookie_header(resp: httpx.Response) -> str:
    return next(
        v for k, v in resp.headers.multi_items() if k == "set-cookie" and v.startswith("m2a_console=")
    )


async def until_signed_out(browser: Browser) -> httpx.Response:
    """The overview until it sends the browser to sign in (bounded: a revoked key ends it within ~1 s)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            resp = await browser.get("/console/")
            if resp.status_code == 303:
                return resp
            await asyncio.sleep(0.1)


async def test_signin_with_the_admin_key(console: Console) -> None:
    browser = console.browser()
    assert (await browser.get("/console")).headers["location"] == "/console/"
    first = await browser.get("/console/")
    assert first.status_code == 303 and first.headers["location"].startswith("/console/signin")

    resp = await browser.signin(console.admin_key)
    assert resp.status_code == 303 and resp.headers["location"] == "/console/"
    assert browser.cookie
    page = await browser.get("/console/")
    assert page.status_code == 200
    assert "the admin key" in page.text and "Sign out" in page.text
    assert 'href="/console/teams"' in page.text  # the nav

    [row] = await rows(console)
    assert row.admin and row.team_id is None and row.key_id is None
    assert row.id_hash == hashlib.sha256(browser.cookie.encode()).hexdigest()
    for value in (row.bearer_enc, row.subject, row.csrf, row.id_hash):
        assert console.admin_key not in value and browser.cookie not in value


async def test_signin_with_a_team_key(console: Console) -> None:
    key = await console.team("research")
    browser = console.browser()
    assert (await browser.signin(key)).status_code == 303
    page = await browser.get("/console/")
    assert page.status_code == 200
    assert f"key {key[:12]}…" in page.text and "team research" in page.text
    [row] = await rows(console)
    assert not row.admin and row.team_id is not None and row.key_id is not None
    assert key not in page.text


@pytest.mark.parametrize("bad", ["m2a-not-a-key", "", "eyJhbGciOiJFUzI1NiJ9.e30.c2ln", "x" * 9000])
async def test_a_bad_key_gets_401_and_no_session(console: Console, bad: str) -> None:
    browser = console.browser()
    resp = await browser.signin(bad)
    assert resp.status_code == 401
    assert "not valid" in resp.text
    assert browser.cookie is None and "m2a_console=" not in resp.headers.get("set-cookie", "")
    assert await rows(console) == []
    assert (await browser.get("/console/")).status_code == 303


async def test_a_revoked_key_cannot_sign_in(console: Console) -> None:
    key = await console.team("ops")
    key_id = (await console.store.list_keys("ops"))[0].id
    await console.store.revoke_key(key_id)
    console.app.state.access.invalidate()
    assert (await console.browser().signin(key)).status_code == 401


async def test_signin_with_an_agent_token(console: Console) -> None:
    from tests.agents.mcp_fixtures import make_agent

    async with httpx.AsyncClient(base_url=console.url, timeout=TIMEOUT, trust_env=False) as http:
        agent = await make_agent(types.SimpleNamespace(http=http), console.store, "bots", "helper", [])  # type: ignore[arg-type]
    browser = console.browser()
    assert (await browser.signin(agent.token)).status_code == 303
    page = await browser.get("/console/")
    assert page.status_code == 200
    assert "agent helper" in page.text and agent.spiffe_id in page.text
    assert agent.token not in page.text
    teams = await browser.get("/console/teams")  # the agent's team, as a member sees it
    assert teams.status_code == 200 and "bots" in teams.text
    [row] = await rows(console)
    assert row.key_id is None and not row.admin


async def test_cookie_flags(console: Console) -> None:
    browser = console.browser()
    resp = await browser.signin(console.admin_key)
    cookie = set_cookie_header(resp).lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    assert "secure" not in cookie  # plain http here: a Secure cookie would never come back

    # Behind a TLS proxy (uvicorn trusts X-Forwarded-Proto from loopback): Secure.
    # (httpx keeps Secure cookies off plain http, so the test hands the sign-in cookie back itself.)
    tls = console.browser()
    form = await tls.get("/console/signin", headers={"x-forwarded-proto": "https"})
    signin_cookie = next(v for k, v in form.headers.multi_items() if k == "set-cookie")
    assert "; secure" in signin_cookie.lower() and "samesite=strict" in signin_cookie.lower()
    tls.http.cookies.clear()
    resp = await tls.post(
        "/console/signin",
        {"key": console.admin_key},
        headers={
            "x-forwarded-proto": "https",
            "origin": console.url.replace("http:", "https:"),
            "cookie": signin_cookie.split(";")[0],
        },
    )
    assert resp.status_code == 303
    assert "; secure" in set_cookie_header(resp).lower()


async def test_an_expired_session_is_gone(console: Console) -> None:
    browser = console.browser()
    await browser.signin(console.admin_key)
    assert (await browser.get("/console/")).status_code == 200
    async with console.store.engine.begin() as conn:
        past = datetime.now(UTC) - timedelta(seconds=1)
        await conn.execute(update(ConsoleSessionRow).values(expires_at=past))
    resp = await browser.get("/console/teams")
    assert resp.status_code == 303
    assert resp.headers["location"].startswith("/console/signin?notice=session-ended")
    assert "next=%2Fconsole%2Fteams" in resp.headers["location"]
    signin = await browser.get(resp.headers["location"])
    assert "Your session ended" in signin.text


async def test_idle_window_slides_and_sessions_expire(console: Console) -> None:
    """The store's own rules: a session lives ``idle_s`` past its last use; then it is None."""
    secret = Access(console.admin_key).derived_key(PURPOSE)
    sessions = SessionStore(console.store.engine, secret, idle_s=3600)
    principal = await console.app.state.access._lookup(console.admin_key)
    sid, made = await sessions.create(console.admin_key, principal)
    loaded = await sessions.load(sid)
    assert loaded is not None and loaded.bearer == console.admin_key and loaded.csrf == made.csrf
    assert console.admin_key not in repr(loaded)
    async with console.store.engine.begin() as conn:  # last used two minutes ago: the window slides
        old = datetime.now(UTC) - timedelta(minutes=2)
        await conn.execute(
            update(ConsoleSessionRow).values(last_seen_at=old, expires_at=old + timedelta(hours=1))
        )
    slid = await sessions.load(sid)
    assert slid is not None and slid.expires_at > datetime.now(UTC) + timedelta(minutes=59)
    assert await sessions.load("not-a-session") is None
    assert await sessions.load(None) is None

    short = SessionStore(console.store.engine, secret, idle_s=0.0)
    sid2, _ = await short.create(console.admin_key, principal)
    assert await short.load(sid2) is None  # expired at once


async def test_the_bearer_is_sealed_to_the_admin_key_and_the_row(console: Console) -> None:
    browser = console.browser()
    await browser.signin(console.admin_key)
    other = console.browser()
    key = await console.team("sales")
    await other.signin(key)
    admin_row, member_row = sorted(await rows(console), key=lambda r: not r.admin)

    # Another gateway with another admin key reads no session from the same database.
    stranger = SessionStore(console.store.engine, Access("some-other-admin-key").derived_key(PURPOSE))
    assert await stranger.load(browser.cookie) is None

    # The admin's ciphertext moved onto the member's row does not decrypt there (the row is its AAD).
    async with console.store.engine.begin() as conn:
        await conn.execute(
            update(ConsoleSessionRow)
            .where(ConsoleSessionRow.id_hash == member_row.id_hash)
            .values(bearer_enc=admin_row.bearer_enc)
        )
    resp = await other.get("/console/")
    assert resp.status_code == 303  # no session: certainly not the admin's
    assert (await browser.get("/console/")).status_code == 200


async def test_a_revoked_key_ends_its_session(console: Console) -> None:
    key = await console.team("design")
    key_id = (await console.store.list_keys("design"))[0].id
    browser = console.browser()
    await browser.signin(key)
    assert (await browser.get("/console/")).status_code == 200

    revoked = await console.api("DELETE", f"/admin/v1/keys/{key_id}")  # a script, not the console
    assert revoked.status_code == 200
    resp = await until_signed_out(browser)
    assert "session-ended" in resp.headers["location"]
    assert "m2a_console=" in resp.headers.get("set-cookie", "")  # cleared
    assert await rows(console) == []


async def test_signout(console: Console) -> None:
    browser = console.browser()
    await browser.signin(console.admin_key)
    await browser.get("/console/")
    cookie = browser.cookie
    resp = await browser.post("/console/signout")
    assert resp.status_code == 303 and resp.headers["location"] == "/console/signin?notice=signed-out"
    assert await rows(console) == []
    assert browser.cookie is None
    page = await browser.get(resp.headers["location"])
    assert "You are signed out." in page.text

    # The old cookie is worth nothing now.
    replay = console.browser()
    replay.http.cookies.set("m2a_console", cookie or "", path="/console")
    assert (await replay.get("/console/")).status_code == 303


async def test_signin_goes_on_to_the_page_asked_for_but_never_off_site(console: Console) -> None:
    browser = console.browser()
    asked = await browser.get("/console/teams")
    assert asked.headers["location"] == "/console/signin?next=%2Fconsole%2Fteams"
    form = await browser.get(asked.headers["location"])
    assert 'name="next" value="/console/teams"' in form.text
    resp = await browser.post("/console/signin", {"key": console.admin_key, "next": "/console/teams"})
    assert resp.headers["location"] == "/console/teams"
    for evil in ("https://evil.example/", "//evil.example/console/", "/console/../admin/v1/keys", "/\\evil"):
        b = console.browser()
        await b.get("/console/signin")
        resp = await b.post("/console/signin", {"key": console.admin_key, "next": evil})
        assert resp.headers["location"] == "/console/", evil
