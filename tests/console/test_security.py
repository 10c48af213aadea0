"""The console's browser security: CSRF and same-origin checks on every form, the CSP and other
headers on every page, output escaped everywhere, no inline script or style, the bearer never in
any page, size limits."""

from __future__ import annotations

import re

import httpx
import pytest

from m2a.console.pages import PAGES
from m2a.console.security import CSP
from tests.console.conftest import Browser, Console

pytestmark = pytest.mark.asyncio(loop_scope="session")

XSS = "<script>alert(1)</script>"


async def team_names(console: Console) -> list[str]:
    return [t.name for t in await console.store.list_teams()]


CORE = ("m2a.console.views_core", "m2a.console.views_teams")


def every_get_page(team: str, core: bool = False) -> list[str]:
    """A URL of every GET page in the registry (``{team}`` filled; other path params skipped);
    ``core``: only those of the modules these tests are about."""
    urls = []
    for p in PAGES:
        if "GET" not in p.methods or (core and p.view.__module__ not in CORE):
            continue
        url = p.url.replace("{team}", team)
        if "{" not in url:
            urls.append(url)
    return urls


def assert_headers(resp: httpx.Response, page: bool = True) -> None:
    h = resp.headers
    assert h["content-security-policy"] == CSP, resp.url
    assert h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "no-referrer"
    assert h["x-frame-options"] == "DENY"
    if page:
        assert h["cache-control"] == "no-store", resp.url


def assert_no_inline_code(html: str) -> None:
    for tag in re.findall(r"<script\b[^>]*>", html, re.I):
        assert "src=" in tag, tag
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html, re.I)
    assert "<style" not in html.lower()
    assert not re.search(r"\sstyle\s*=", html, re.I)
    assert not re.search(r"\son[a-z]+\s*=", html, re.I)  # no inline event handlers
    assert "javascript:" not in html.lower()


async def test_headers_on_every_page(console: Console) -> None:
    await console.team("research")
    anon = console.browser()
    for path in ("/console", "/console/", "/console/signin", "/console/nowhere"):
        assert_headers(await anon.get(path))
    browser = console.browser()
    await browser.signin(console.admin_key)
    core = every_get_page("research", core=True)
    for path in [*every_get_page("research"), "/console/teams/nosuchteam", "/console/nowhere"]:
        resp = await browser.get(path)
        assert_headers(resp)  # every page, whoever wrote it: the extension adds them
        if path in core:
            assert resp.status_code == (303 if path.endswith("/signin") else 200), (path, resp.status_code)
            assert_no_inline_code(resp.text)
    assert (await browser.get("/console/teams/nosuchteam")).status_code == 404
    static = await browser.get("/console/static/console.css")
    assert static.status_code == 200
    assert_headers(static, page=False)
    missing = await browser.get("/console/nowhere")
    assert missing.status_code == 404 and "There is no such page" in missing.text


async def test_a_post_without_or_with_a_wrong_token_changes_nothing(console: Console) -> None:
    browser = console.browser()
    await browser.signin(console.admin_key)
    await browser.get("/console/teams")
    before = await team_names(console)

    for csrf in (False, "", "wrong-token", (browser.csrf or "")[:-1] + "x"):
        resp = await browser.post("/console/teams/create", {"name": "sneaky"}, csrf=csrf)
        assert resp.status_code == 403, csrf
        assert "refused" in resp.text
    assert await team_names(console) == before

    # Another session's token is not this session's.
    other = console.browser()
    await other.signin(console.admin_key)
    await other.get("/console/teams")
    assert other.csrf != browser.csrf
    resp = await browser.post("/console/teams/create", {"name": "sneaky"}, csrf=other.csrf or "")
    assert resp.status_code == 403
    assert await team_names(console) == before

    # The right token works.
    ok = await browser.post("/console/teams/create", {"name": "fine"})
    assert ok.status_code == 303
    assert "fine" in await team_names(console)


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"origin": "http://127.0.0.1:1"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
    ],
)
async def test_a_cross_site_post_is_refused_even_with_the_token(
    console: Console, headers: dict[str, str]
) -> None:
    browser = console.browser()
    await browser.signin(console.admin_key)
    await browser.get("/console/teams")
    resp = await browser.post("/console/teams/create", {"name": "sneaky"}, headers=headers)
    assert resp.status_code == 403
    assert "sneaky" not in await team_names(console)
    signout = await browser.post("/console/signout", headers=headers)  # sign-out too
    assert signout.status_code == 403
    assert (await browser.get("/console/")).status_code == 200


async def test_same_origin_fetch_metadata_is_accepted(console: Console) -> None:
    browser = console.browser()
    await browser.signin(console.admin_key)
    await browser.get("/console/teams")
    resp = await browser.post(
        "/console/teams/create", {"name": "viafetch"}, headers={"sec-fetch-site": "same-origin"}
    )
    assert resp.status_code == 303
    # What Chromium sends for a form on a no-referrer page: Origin null, but fetch metadata same-origin.
    nulled = {"sec-fetch-site": "same-origin", "origin": "null"}
    resp = await browser.post("/console/teams/create", {"name": "nullorigin"}, headers=nulled)
    assert resp.status_code == 303
    assert {"viafetch", "nullorigin"} <= set(await team_names(console))


async def test_the_signin_form_has_its_own_csrf_token(console: Console) -> None:
    browser = console.browser()
    form = await browser.get("/console/signin")
    token = browser.csrf
    assert token and f'value="{token}"' in form.text
    cases = [
        (False, {}),  # no token
        ("forged", {}),  # not the cookie's
        (True, {"origin": "https://evil.example"}),  # another site (login CSRF)
    ]
    for csrf, headers in cases:
        resp = await browser.post("/console/signin", {"key": console.admin_key}, csrf=csrf, headers=headers)
        assert resp.status_code == 403, (csrf, headers)
        assert browser.cookie is None
    fresh = console.browser()  # a token without its cookie
    resp = await fresh.post("/console/signin", {"key": console.admin_key}, csrf=token)
    assert resp.status_code == 403
    assert (await browser.post("/console/signin", {"key": console.admin_key})).status_code == 303


async def test_script_in_names_is_rendered_escaped(console: Console) -> None:
    await console.team("research")
    browser = console.browser()
    await browser.signin(console.admin_key)

    # A team may not be named so (the API says why); the error page shows the name harmlessly.
    resp = await browser.post("/console/teams/create", {"name": XSS})
    assert resp.status_code == 400
    # A key may be named so: every page that lists it shows it as text.
    await browser.get("/console/teams/research")
    made = await browser.post("/console/teams/research/keys/create", {"name": XSS})
    assert made.status_code == 201
    await browser.post("/console/keys/create", {"name": XSS})
    for path in ("/console/teams/research", "/console/keys"):
        page = await browser.get(path)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    for html in browser.seen:
        assert XSS not in html
        assert_no_inline_code(html)

    # A model name with markup in a grant attempt (forced to the API through a crafted form).
    crafted = await browser.post("/console/teams/research/grant", {"model": '"><img src=x onerror=alert(1)>'})
    assert crafted.status_code == 404
    assert "<img" not in crafted.text and "&lt;img" in crafted.text


async def test_the_bearer_is_in_no_page(console: Console) -> None:
    member_key = await console.team("research")
    await console.chat(member_key)
    admin = console.browser()
    member = console.browser()
    await admin.signin(console.admin_key)
    await member.signin(member_key)
    for b, secret in ((admin, console.admin_key), (member, member_key)):
        for path in every_get_page("research"):
            await b.get(path)  # other helpers' pages too: what they render must not hold it either
        await b.get("/console/nowhere")
        assert len(b.seen) > 3
        for html in b.seen:
            assert secret not in html
            assert (b.cookie or "-") not in html  # nor the session id


async def test_forms_too_large_or_not_forms_are_refused(console: Console) -> None:
    browser = console.browser()
    await browser.signin(console.admin_key)
    await browser.get("/console/teams")
    big = await browser.post("/console/teams/create", {"name": "x" * (2 << 20)})
    assert big.status_code == 413
    as_json = await browser.http.post(
        "/console/teams/create",
        json={"name": "viajson", "csrf": browser.csrf},
        headers={"origin": browser.origin},
    )
    assert as_json.status_code == 415
    assert "viajson" not in await team_names(console)


async def test_posting_without_a_session_goes_to_signin(console: Console) -> None:
    anon: Browser = console.browser()
    resp = await anon.post("/console/teams/create", {"name": "anon"}, csrf="whatever")
    assert resp.status_code == 303 and resp.headers["location"].startswith("/console/signin")
    assert "anon" not in await team_names(console)
