"""The agent registry's rules (``m2a.agents.registry``) on the real store: SQLite and PostgreSQL.

Agents and their names, content-addressed versions, the stage order, the red-team condition of
``tested``, approval by admins only, rollback along the history, revocation (and the identity
revision it bumps), and concurrent changes of one agent that must not leave a half state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from m2a.agents.registry import RedteamReport, Registry, RegistryError
from m2a.store.identity import IdentityStore
from m2a.store.schema import AgentAliasRow, AgentEventRow, AgentVersionRow
from tests import db_fixtures
from tests.agents.helpers import failed_report, manifest, report
from tests.db_fixtures import Database

pytestmark = pytest.mark.asyncio(loop_scope="session")
database = db_fixtures.database  # each test runs on SQLite and on PostgreSQL
ADMIN = {"admin": True}
SPONSORS = ["ana@example.org"]


async def setup(database: Database) -> tuple[Registry, IdentityStore]:
    engine = await database.open()
    identity = IdentityStore(engine)
    await identity.create_team("support")
    await identity.create_team("billing")
    return Registry(engine, "example.org"), identity


@contextlib.contextmanager
def refused(kind: str, code: str | None = None) -> Iterator[None]:
    """The block raises a RegistryError of this kind (and code)."""
    with pytest.raises(RegistryError) as info:
        yield
    assert info.value.kind == kind, info.value.message
    if code is not None:
        assert info.value.code == code, (info.value.code, info.value.message)


async def to_production(reg: Registry, name: str, number: int) -> None:
    v = await reg.version("support", name, number)
    await reg.promote("support", name, number, "tested", redteam=RedteamReport(**report(v.manifest)))
    await reg.promote("support", name, number, "approved", **ADMIN)
    await reg.promote("support", name, number, "production")


# -- agents -----------------------------------------------------------------------------------------
async def test_create_an_agent_with_its_first_version(database: Database) -> None:
    reg, _ = await setup(database)
    agent, v1 = await reg.create("support", "support-bot", ["Ana@Example.org"], by_key=5, manifest=manifest())
    assert agent.spiffe_id == "spiffe://example.org/team/support/agent/support-bot"
    assert agent.sponsors == ("ana@example.org",) and agent.created_by == 5 and agent.revoked_at is None
    assert agent.aliases == {"draft": 1} and agent.versions == 1 and agent.latest == 1
    assert v1 is not None and (v1.number, v1.stage, v1.aliases) == (1, "draft", ("draft",))
    assert v1.digest == manifest().digest()
    bare, none = await reg.create("billing", "support-bot", SPONSORS)  # the same name in another team
    assert none is None and bare.versions == 0 and bare.spiffe_id.endswith("/team/billing/agent/support-bot")
    assert [a.team for a in await reg.list()] == ["billing", "support"]
    assert [a.name for a in await reg.list("support")] == ["support-bot"]
    events = await reg.events("support", "support-bot")
    assert [(e.action, e.version) for e in events] == [("create", None), ("version", 1)]


async def test_agent_names_sponsors_and_teams_are_checked(database: Database) -> None:
    reg, identity = await setup(database)
    for bad in ("Support", "-bot", "a" * 64, "bot_1", "bot.1", "", "bot\n"):
        with refused("invalid", "invalid_name"):
            await reg.create("support", bad, SPONSORS)
    with refused("invalid", "invalid_sponsors"):
        await reg.create("support", "bot", [])
    with refused("invalid", "invalid_sponsors"):
        await reg.create("support", "bot", ["nobody"])
    with refused("not_found", "team_not_found"):
        await reg.create("nosuchteam", "bot", SPONSORS)
    await reg.create("support", "bot", SPONSORS)
    with refused("conflict"):
        await reg.create("support", "bot", SPONSORS)
    await identity.delete_team("billing")
    with refused("not_found", "team_not_found"):
        await reg.create("billing", "bot", SPONSORS)
    with refused("not_found", "agent_not_found"):
        await reg.get("support", "nobody")
    with refused("not_found", "agent_not_found"):
        await reg.get("support", "../bot")
    assert (await reg.set_sponsors("support", "bot", ["b@example.org"])).sponsors == ("b@example.org",)


async def test_the_same_manifest_twice_is_the_same_version(database: Database) -> None:
    reg, _ = await setup(database)
    await reg.create("support", "bot", SPONSORS, manifest=manifest(1))
    again, created = await reg.add_version("support", "bot", manifest(1))
    assert (again.number, created) == (1, False)
    v2, created = await reg.add_version("support", "bot", manifest(2))
    assert (v2.number, created, v2.stage) == (2, True, "draft")
    v3, created = await reg.add_version("support", "bot", manifest(3))
    assert v3.number == 3 and created
    assert (await reg.add_version("support", "bot", manifest(2)))[0].number == 2  # an older one, too
    assert [v.number for v in await reg.versions("support", "bot")] == [1, 2, 3]
    assert (await reg.get("support", "bot")).aliases == {"draft": 3}
    assert (await reg.resolve("support", "bot", "draft")).number == 3
    stored = (await reg.version("support", "bot", 2)).manifest
    assert stored == manifest(2) and stored.digest() == manifest(2).digest()
    with refused("not_found", "version_not_found"):
        await reg.version("support", "bot", 4)
    with refused("not_found", "version_not_found"):
        await reg.resolve("support", "bot", "production")


# -- stages -----------------------------------------------------------------------------------------
async def test_stages_go_one_step_at_a_time(database: Database) -> None:
    reg, identity = await setup(database)
    await reg.create("support", "bot", SPONSORS, manifest=manifest())
    rev = await identity.revision()
    for to in ("approved", "production"):
        with refused("conflict", "invalid_transition"):
            await reg.promote("support", "bot", 1, to, **ADMIN)
    with refused("conflict", "invalid_transition"):
        await reg.promote("support", "bot", 1, "draft")
    with refused("invalid", "invalid_stage"):
        await reg.promote("support", "bot", 1, "staging")
    assert (await reg.version("support", "bot", 1)).stage == "draft" and await identity.revision() == rev

    v = await reg.promote("support", "bot", 1, "tested", redteam=RedteamReport(**report(manifest())))
    assert (v.stage, v.aliases) == ("tested", ("draft", "tested")) and v.redteam is not None
    assert v.redteam["run"] == 7 and v.redteam["passed"] and "accepted_at" in v.redteam
    assert await identity.revision() == rev + 1  # every stage change bumps the identity revision
    with refused("conflict", "invalid_transition"):
        await reg.promote("support", "bot", 1, "tested", redteam=RedteamReport(**report(manifest())))
    with refused("conflict", "invalid_transition"):
        await reg.promote("support", "bot", 1, "production", **ADMIN)
    with refused("forbidden", "approval_needs_admin"):  # separation of duties
        await reg.promote("support", "bot", 1, "approved")
    assert (await reg.version("support", "bot", 1)).stage == "tested"
    await reg.promote("support", "bot", 1, "approved", **ADMIN)
    v = await reg.promote("support", "bot", 1, "production")
    assert v.stage == "production" and v.aliases == ("draft", "tested", "approved", "production")
    with refused("conflict", "invalid_transition"):
        await reg.promote("support", "bot", 1, "production")

    events = [(e.action, e.from_stage, e.to_stage) for e in await reg.events("support", "bot")]
    assert events[2:] == [
        ("promote", "draft", "tested"),
        ("promote", "tested", "approved"),
        ("promote", "approved", "production"),
    ]
    tested = (await reg.events("support", "bot"))[2]
    assert tested.detail["redteam"]["model"] == "alpha" and tested.detail["redteam"]["run"] == 7


async def test_tested_needs_a_passed_gate_for_this_manifest(database: Database) -> None:
    reg, _ = await setup(database)
    m = manifest()
    await reg.create("support", "bot", SPONSORS, manifest=m)

    async def attempt(data: dict | None) -> None:
        await reg.promote(
            "support", "bot", 1, "tested", redteam=None if data is None else RedteamReport(**data)
        )

    cases = [
        (None, "redteam_required"),
        (failed_report(m), "redteam_failed"),
        (report(m, passed=False), "redteam_failed"),
        ({**failed_report(m), "passed": True}, "redteam_failed"),  # passed, yet a category failed
        (report(m, verdicts=[report(m)["verdicts"][1]]), "redteam_failed"),  # nothing judged
        (report(m, model="beta"), "redteam_mismatch"),
        (report(m, profile="off"), "redteam_mismatch"),
        (report(m, profile=None), "redteam_mismatch"),
        (report(m, system_prompt_sha256="0" * 64), "redteam_mismatch"),
        (report(m, system_prompt_sha256=None), "redteam_mismatch"),
    ]
    lying = report(m)
    lying["verdicts"][0].update(rate=0.9, compared=0.9)  # says pass, over the limit
    cases.append((lying, "redteam_inconsistent"))
    for data, code in cases:
        with refused("invalid", code):
            await attempt(data)
    v = await reg.version("support", "bot", 1)
    assert v.stage == "draft" and v.redteam is None
    assert [e.action for e in await reg.events("support", "bot")] == ["create", "version"]

    # a manifest without system prompt or profile: the report must say none for both
    bare = manifest(2, system_prompt=None, guardrails=None, models=["beta", "alpha"])
    await reg.add_version("support", "bot", bare)
    with refused("invalid", "redteam_mismatch"):
        await reg.promote("support", "bot", 2, "tested", redteam=RedteamReport(**report(m, model="beta")))
    ok = await reg.promote(
        "support", "bot", 2, "tested", redteam=RedteamReport(**report(bare, model="alpha"))
    )
    assert ok.stage == "tested"  # any model of the manifest


async def test_deprecated_and_revoked_from_anywhere(database: Database) -> None:
    reg, identity = await setup(database)
    await reg.create("support", "bot", SPONSORS, manifest=manifest(1))
    await reg.add_version("support", "bot", manifest(2))
    await to_production(reg, "bot", 1)
    rev = await identity.revision()
    v = await reg.promote("support", "bot", 1, "deprecated")
    assert (v.stage, v.aliases) == ("deprecated", ())  # its aliases went with it
    assert (await reg.get("support", "bot")).aliases == {"draft": 2}
    assert await identity.revision() == rev + 1
    with refused("conflict", "invalid_transition"):
        await reg.promote("support", "bot", 1, "deprecated")
    with refused("conflict", "invalid_transition"):
        await reg.promote("support", "bot", 1, "production")

    v = await reg.promote("support", "bot", 2, "revoked")  # a draft, revoked
    assert v.stage == "revoked" and v.revoked_at is not None and v.aliases == ()
    assert await identity.revision() == rev + 2
    for to in ("tested", "deprecated"):
        with refused("conflict", "version_revoked"):
            await reg.promote("support", "bot", 2, to, redteam=RedteamReport(**report(manifest(2))))
    again = await reg.revoke_version("support", "bot", 2)  # revoking twice: the same, nothing new
    assert again.revoked_at == v.revoked_at and await identity.revision() == rev + 2
    assert (await reg.get("support", "bot")).aliases == {}
    # a revoked version's manifest is still known: adding it again gives the revoked version back
    back, created = await reg.add_version("support", "bot", manifest(2))
    assert (back.number, back.stage, created) == (2, "revoked", False)


async def test_rollback_walks_the_production_history(database: Database) -> None:
    reg, identity = await setup(database)
    await reg.create("support", "bot", SPONSORS, manifest=manifest(1))
    with refused("conflict", "nothing_to_roll_back"):
        await reg.rollback("support", "bot")
    for n in (1, 2, 3):
        if n > 1:
            await reg.add_version("support", "bot", manifest(n))
        await to_production(reg, "bot", n)
    assert (await reg.get("support", "bot")).aliases["production"] == 3
    rev = await identity.revision()
    v = await reg.rollback("support", "bot", by_key=9, reason="bad answers")
    assert v.number == 2 and "production" in v.aliases and await identity.revision() == rev + 1
    assert (await reg.rollback("support", "bot")).number == 1
    with refused("conflict", "nothing_to_roll_back"):
        await reg.rollback("support", "bot")
    assert (await reg.version("support", "bot", 3)).stage == "production"  # it got there; no alias now
    assert (await reg.version("support", "bot", 3)).aliases == ("draft", "tested", "approved")
    # roll forward again: v3 goes back to production, then a rollback returns to v1
    assert "production" in (await reg.promote("support", "bot", 3, "production")).aliases
    assert (await reg.rollback("support", "bot")).number == 1
    last = (await reg.events("support", "bot"))[-1]
    assert (last.action, last.version, last.to_stage, last.detail["from_version"]) == (
        "rollback",
        1,
        "production",
        3,
    )
    rolled = [e for e in await reg.events("support", "bot") if e.action == "rollback"][0]
    assert rolled.by_key == 9 and rolled.detail["reason"] == "bad answers"


async def test_rollback_is_refused_to_a_revoked_version_and_follows_revocations(database: Database) -> None:
    reg, _ = await setup(database)
    await reg.create("support", "bot", SPONSORS, manifest=manifest(1))
    for n in (2, 3):
        await reg.add_version("support", "bot", manifest(n))
    for n in (1, 2, 3):
        await to_production(reg, "bot", n)
    await reg.revoke_version("support", "bot", 2)
    with refused("conflict", "version_revoked"):  # v2 held production before v3: it is revoked
        await reg.rollback("support", "bot")
    assert (await reg.get("support", "bot")).aliases["production"] == 3
    # v3 revoked while in production: production is empty; a rollback goes to v2 … revoked, refused
    await reg.revoke_version("support", "bot", 3)
    assert "production" not in (await reg.get("support", "bot")).aliases
    with refused("conflict", "version_revoked"):
        await reg.rollback("support", "bot")

    # another agent: the production version deprecated, then rolled back to (reinstated)
    await reg.create("support", "two", SPONSORS, manifest=manifest(1))
    await reg.add_version("support", "two", manifest(2))
    await to_production(reg, "two", 1)
    await to_production(reg, "two", 2)
    await reg.promote("support", "two", 2, "deprecated")
    v = await reg.rollback("support", "two")  # production was empty: back to v1, which held it before
    assert v.number == 1 and "production" in v.aliases
    await reg.promote("support", "two", 1, "deprecated")
    with refused("conflict", "nothing_to_roll_back"):
        await reg.rollback("support", "two")


async def test_revoking_an_agent(database: Database) -> None:
    reg, identity = await setup(database)
    await reg.create("support", "bot", SPONSORS, manifest=manifest(1))
    await reg.add_version("support", "bot", manifest(2))
    await to_production(reg, "bot", 1)
    rev = await identity.revision()
    agent = await reg.revoke("support", "bot", reason="retired")
    assert agent.revoked_at is not None and agent.aliases == {}
    assert await identity.revision() == rev + 1
    assert {v.stage for v in await reg.versions("support", "bot")} == {"revoked"}
    assert all(v.revoked_at is not None for v in await reg.versions("support", "bot"))
    assert (
        await reg.revoke("support", "bot")
    ).revoked_at == agent.revoked_at and await identity.revision() == rev + 1
    with refused("conflict", "agent_revoked"):
        await reg.add_version("support", "bot", manifest(3))
    with refused("conflict", "agent_revoked"):
        await reg.promote("support", "bot", 2, "deprecated")
    with refused("conflict", "agent_revoked"):
        await reg.rollback("support", "bot")
    with refused("conflict"):  # its name, and so its SPIFFE id, is never reused
        await reg.create("support", "bot", SPONSORS)
    assert (await reg.events("support", "bot"))[-1].detail == {
        "dropped": ["approved", "draft", "production", "tested"],
        "reason": "retired",
    }


# -- concurrency ------------------------------------------------------------------------------------
async def test_a_concurrent_double_promote_moves_once(database: Database) -> None:
    reg, identity = await setup(database)
    await reg.create("support", "bot", SPONSORS, manifest=manifest(1))
    rev = await identity.revision()
    good = RedteamReport(**report(manifest(1)))
    results = await asyncio.gather(
        *(reg.promote("support", "bot", 1, "tested", redteam=good) for _ in range(4)), return_exceptions=True
    )
    ok = [r for r in results if not isinstance(r, BaseException)]
    errs = [r for r in results if isinstance(r, BaseException)]
    assert len(ok) == 1 and len(errs) == 3, results
    assert all(isinstance(e, RegistryError) and e.code == "invalid_transition" for e in errs), errs
    assert await identity.revision() == rev + 1
    events = [e for e in await reg.events("support", "bot") if e.action == "promote"]
    assert len(events) == 1

    # two versions racing to production: both get there, one after the other; one alias, the last
    await reg.promote("support", "bot", 1, "approved", **ADMIN)
    await reg.add_version("support", "bot", manifest(2))
    await reg.promote("support", "bot", 2, "tested", redteam=RedteamReport(**report(manifest(2))))
    await reg.promote("support", "bot", 2, "approved", **ADMIN)
    await asyncio.gather(*(reg.promote("support", "bot", n, "production") for n in (1, 2)))
    async with reg.engine.connect() as conn:
        aliases = (
            await conn.execute(
                select(AgentAliasRow.alias, AgentAliasRow.version_id).order_by(AgentAliasRow.alias)
            )
        ).all()
        moves = (
            await conn.execute(
                select(AgentEventRow.version_id, AgentEventRow.detail)
                .where(AgentEventRow.action == "promote", AgentEventRow.to_stage == "production")
                .order_by(AgentEventRow.id)
            )
        ).all()
    assert [a for a, _ in aliases].count("production") == 1
    holder = dict(aliases)["production"]
    assert len(moves) == 2 and moves[-1][0] == holder  # the alias is where the last event put it
    assert json.loads(moves[-1][1])["previous"] == moves[0][0]  # and that event saw the first move
    assert (await reg.rollback("support", "bot")).id == moves[0][0]


async def test_concurrent_new_versions_get_distinct_numbers(database: Database) -> None:
    reg, _ = await setup(database)
    await reg.create("support", "bot", SPONSORS)
    made = await asyncio.gather(*(reg.add_version("support", "bot", manifest(n % 4)) for n in range(8)))
    assert sorted({v.number for v, _ in made}) == [1, 2, 3, 4]
    assert sum(created for _, created in made) == 4
    async with reg.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(AgentVersionRow))).scalar_one()
    assert count == 4
