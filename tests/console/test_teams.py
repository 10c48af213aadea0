"""Teams and keys in the console: an admin creates a team, grants a model, sets a quota (and sees
what is used of it), changes priorities, creates a key (shown once, on no later page) and revokes
it; a team member sees their own team only and cannot act on any team, even with crafted posts."""

from __future__ import annotations

import re
from typing import Any

import pytest

from m2a.console.views_teams import bar
from tests.console.conftest import MODEL, Browser, Console

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def admin_browser(console: Console) -> Browser:
    browser = console.browser()
    assert (await browser.signin(console.admin_key)).status_code == 303
    return browser


async def snapshot(console: Console) -> dict[str, Any]:
    """Everything a team action could change (to show a refused one changed nothing)."""
    teams = [(t.name, t.priority, t.priority_order, t.models) for t in await console.store.list_teams()]
    keys = [(k.id, k.name, k.revoked_at) for k in await console.store.list_keys()]
    quotas = (await console.api("GET", "/admin/v1/quotas")).json()
    return {"teams": teams, "keys": keys, "quotas": quotas}


def visible_pages(html: str) -> list[str]:
    return re.findall(r'<li><a href="(/console/[^"]*)"', html)


async def test_the_whole_team_lifecycle(console: Console) -> None:
    browser = await admin_browser(console)
    page = await browser.get("/console/teams")
    assert page.status_code == 200 and "Create a team" in page.text

    # Create a team, batch priority.
    made = await browser.post("/console/teams/create", {"name": "research", "priority": "batch"})
    assert (
        made.status_code == 303 and made.headers["location"] == "/console/teams/research?notice=team-created"
    )
    team = await browser.get(made.headers["location"])
    assert "The team was created." in team.text and "No model granted yet" in team.text
    assert (await console.store.get_team("research")).priority == "batch"
    assert 'href="/console/teams/research"' in (await browser.get("/console/teams")).text

    # Grant the served model.
    assert f"<option>{MODEL}</option>" in team.text
    granted = await browser.post("/console/teams/research/grant", {"model": MODEL})
    assert granted.status_code == 303
    assert (await console.store.get_team("research")).models == (MODEL,)
    # A model this gateway does not serve: the API's 404, shown on the team's page.
    missing = await browser.post("/console/teams/research/grant", {"model": "nope"})
    assert missing.status_code == 404 and "serves no model named" in missing.text

    # Priority.
    changed = await browser.post(
        "/console/teams/research/update", {"priority": "critical", "priority_order": "5"}
    )
    assert changed.status_code == 303
    info = await console.store.get_team("research")
    assert (info.priority, info.priority_order) == ("critical", 5)
    bad = await browser.post("/console/teams/research/update", {"priority_order": "soon"})
    assert bad.status_code == 400 and "whole number" in bad.text

    # A quota of tokens per day, then a key.
    await browser.get("/console/teams/research")
    quota = await browser.post(
        "/console/teams/research/quota", {"metric": "tokens", "window": "day", "limit": "100000"}
    )
    assert quota.status_code == 303
    conc = await browser.post(
        "/console/teams/research/quota", {"metric": "concurrency", "window": "day", "limit": "4"}
    )
    assert conc.status_code == 303  # concurrency takes no window: the console sends '-'
    limits = {
        (q["metric"], q["window"]): q["limit"] for q in (await console.api("GET", "/admin/v1/quotas")).json()
    }
    assert limits == {("tokens", "day"): 100000, ("concurrency", "-"): 4}

    created = await browser.post(
        "/console/teams/research/keys/create", {"name": "ci", "priority": "standard", "expires_in_days": "30"}
    )
    assert created.status_code == 201
    key = re.search(r'<code id="new-key-value">([^<]+)</code>', created.text)
    assert key is not None
    key_text = key.group(1)
    assert key_text.startswith("m2a-") and "shown this once" in created.text
    assert 'data-copy="new-key-value"' in created.text

    # The key works, and its tokens show in the quota's bar.
    answer = await console.chat(key_text)
    assert answer.status_code == 200, answer.text
    await console.app.state.quotas.drain()
    team = await browser.get("/console/teams/research")
    used = (await console.api("GET", "/admin/v1/quotas/usage", params={"team": "research"})).json()
    tokens = next(q for q in used if q["metric"] == "tokens")
    assert tokens["used"] > 0 and tokens["resets_at"]
    assert f"{tokens['used']:,}" in team.text and 'class="bar ' in team.text and 'role="img"' in team.text

    # The key is never on a page again: not the team's, not the list of keys, no other page.
    for path in ("/console/", "/console/teams", "/console/teams/research", "/console/keys"):
        assert key_text not in (await browser.get(path)).text
    for html in browser.seen:
        if html is not created.text:
            assert key_text not in html
    assert key_text[:12] in (await browser.get("/console/keys")).text  # its prefix is

    # Revoke it: it stops working at once.
    key_id = next(k.id for k in await console.store.list_keys("research") if k.name == "ci")
    revoked = await browser.post("/console/keys/revoke", {"key_id": str(key_id), "back": "research"})
    assert revoked.status_code == 303 and revoked.headers["location"].startswith("/console/teams/research")
    assert (await console.chat(key_text)).status_code == 401
    page = await browser.get(revoked.headers["location"])
    assert "The key was revoked" in page.text and "revoked " in page.text

    # Clear a quota, delete the team.
    cleared = await browser.post("/console/teams/research/quota/clear", {"metric": "concurrency"})
    assert cleared.status_code == 303
    assert [q["metric"] for q in (await console.api("GET", "/admin/v1/quotas")).json()] == ["tokens"]
    gone = await browser.post("/console/teams/research/delete")
    assert gone.status_code == 303
    assert [t.name for t in await console.store.list_teams()] == []
    assert (await browser.get("/console/teams/research")).status_code == 404


async def test_admin_keys_page(console: Console) -> None:
    await console.team("ops")
    browser = await admin_browser(console)
    page = await browser.get("/console/keys")
    assert page.status_code == 200 and "ops-key" in page.text
    made = await browser.post("/console/keys/create", {"name": "deputy"})  # no team: an admin key
    assert made.status_code == 201
    key_text = re.search(r'<code id="new-key-value">([^<]+)</code>', made.text).group(1)  # type: ignore[union-attr]
    who = await console.api("GET", "/admin/v1/whoami", key_text)
    assert who.json()["role"] == "admin"
    member = await browser.post("/console/keys/create", {"name": "bot", "team": "ops", "priority": "batch"})
    assert member.status_code == 201
    bad = await browser.post("/console/keys/create", {"name": "x", "expires_in_days": "-3"})
    assert bad.status_code == 400 and "expires_in_days" in bad.text
    later = await browser.get("/console/keys")
    assert key_text not in later.text and "deputy" in later.text and "bot" in later.text

    # The revoked key's console session ends with it.
    deputy = console.browser()
    assert (await deputy.signin(key_text)).status_code == 303
    deputy_id = next(k.id for k in await console.store.list_keys() if k.name == "deputy")
    assert (await browser.post("/console/keys/revoke", {"key_id": str(deputy_id)})).status_code == 303
    assert (await deputy.get("/console/")).status_code == 303


async def test_a_member_sees_their_own_team_only(console: Console) -> None:
    mine = await console.team("research", key_name="alice")
    await console.team("secret-team", models=(), key_name="bob")
    await console.api(
        "PUT",
        "/admin/v1/teams/research/quotas",
        json={"limits": [{"metric": "requests", "window": "hour", "limit": 50}]},
    )
    await console.api(
        "PUT",
        "/admin/v1/teams/secret-team/quotas",
        json={"limits": [{"metric": "requests", "window": "hour", "limit": 7}]},
    )
    assert (await console.chat(mine)).status_code == 200
    await console.app.state.quotas.drain()

    member = console.browser()
    await member.signin(mine)
    page = await member.get("/console/teams")
    assert page.status_code == 200
    assert "Your team: research" in page.text and MODEL in page.text
    assert "requests" in page.text and ">1<" in page.text and ">50<" in page.text  # used 1 of 50
    assert "Create a team" not in page.text
    assert "secret-team" not in page.text and "bob" not in page.text
    nav = visible_pages(page.text)
    assert "/console/teams" in nav and "/console/keys" not in nav

    for path in ("/console/teams/secret-team", "/console/teams/research", "/console/keys"):
        resp = await member.get(path)
        assert resp.status_code == 403, path
        assert "bob" not in resp.text and "Limit" not in resp.text
    overview = await member.get("/console/")
    assert overview.status_code == 200 and "secret-team" not in overview.text
    assert "Devices" not in overview.text  # the machine is the admins' to see


async def test_a_member_cannot_act_on_any_team_with_crafted_posts(console: Console) -> None:
    mine = await console.team("research", key_name="alice")
    await console.team("other", key_name="bob")
    other_key_id = next(k.id for k in await console.store.list_keys("other"))
    member = console.browser()
    await member.signin(mine)
    await member.get("/console/teams")  # the member's own CSRF token: the posts are well-formed
    before = await snapshot(console)
    posts = [
        ("/console/teams/create", {"name": "mine-now"}),
        ("/console/teams/other/grant", {"model": MODEL}),
        ("/console/teams/other/ungrant", {"model": MODEL}),
        ("/console/teams/other/update", {"priority": "critical"}),
        ("/console/teams/other/quota", {"metric": "requests", "window": "hour", "limit": "0"}),
        ("/console/teams/other/quota/clear", {}),
        ("/console/teams/other/delete", {}),
        ("/console/teams/other/keys/create", {"name": "backdoor"}),
        ("/console/teams/research/keys/create", {"name": "more"}),  # not even their own team's
        ("/console/keys/create", {"name": "root"}),
        ("/console/keys/revoke", {"key_id": str(other_key_id)}),
    ]
    for path, data in posts:
        resp = await member.post(path, data)
        assert resp.status_code == 403, (path, resp.status_code)
        assert "m2a-" not in resp.text
    assert await snapshot(console) == before
    # And the API the console would call refuses the key too (the console adds no power of its own).
    assert (await console.api("POST", "/admin/v1/teams", mine, json={"name": "x"})).status_code == 403
    assert (
        await console.api("GET", "/admin/v1/quotas/usage", mine, params={"team": "other"})
    ).status_code == 403


async def test_quota_usage_api(console: Console) -> None:
    key = await console.team("research")
    limits = [
        {"metric": "requests", "window": "minute", "limit": 10},
        {"metric": "tokens", "window": "month", "limit": 10_000},
        {"metric": "concurrency", "window": "-", "limit": 2},
    ]
    assert (
        await console.api("PUT", "/admin/v1/teams/research/quotas", json={"limits": limits})
    ).status_code == 200
    key_id = (await console.store.list_keys("research"))[0].id
    one = {"limits": [{"metric": "requests", "window": "day", "limit": 3}], "key_id": key_id}
    assert (await console.api("PUT", "/admin/v1/teams/research/quotas", json=one)).status_code == 200
    for _ in range(2):
        assert (await console.chat(key)).status_code == 200
    await console.app.state.quotas.drain()

    rows = (await console.api("GET", "/admin/v1/quotas/usage", params={"team": "research"})).json()
    got = {
        (r["key_id"], r["metric"], r["window"]): (r["used"], r["limit"], r["resets_at"] is None) for r in rows
    }
    tokens_used = got[(None, "tokens", "month")][0]
    assert got == {
        (None, "requests", "minute"): (2, 10, False),
        (None, "tokens", "month"): (tokens_used, 10_000, False),
        (None, "concurrency", "-"): (0, 2, True),  # none in flight now
        (key_id, "requests", "day"): (2, 3, False),
    }
    assert tokens_used > 0
    mine = (await console.api("GET", "/admin/v1/quotas/usage", key)).json()  # a member: their team
    assert {(r["key_id"], r["metric"]) for r in mine} == {(k[0], k[1]) for k in got}
    assert (
        await console.api("GET", "/admin/v1/quotas/usage", key, params={"team": "research"})
    ).status_code == 200
    await console.team("other")
    assert (
        await console.api("GET", "/admin/v1/quotas/usage", key, params={"team": "other"})
    ).status_code == 403
    assert (await console.api("GET", "/admin/v1/quotas/usage", None)).status_code == 401


async def test_bar() -> None:
    assert bar(None, 10) == {"share": None, "step": 0, "state": ""}
    assert bar(0, 10)["step"] == 0
    assert bar(5, 10) == {"share": 0.5, "step": 50, "state": ""}
    assert bar(9, 10)["state"] == "warn"
    assert bar(12, 10) == {"share": 1.0, "step": 100, "state": "full"}
    assert bar(0, 0)["state"] == "full"  # a zero limit refuses everything
