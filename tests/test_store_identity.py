"""The identity store (teams, grants, API keys, revision counter) on SQLite and on PostgreSQL.

Every test runs twice through the parametrized ``store``/``database`` fixtures of tests/db_fixtures.py:
once on SQLite in a temporary home, once on a throwaway PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import MetaData, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.store.db import database_url
from m2a.store.identity import IdentityError, IdentityStore, Principal
from m2a.store.schema import ApiKey
from tests import db_fixtures
from tests.db_fixtures import Database

pytestmark = pytest.mark.asyncio(loop_scope="session")

database = db_fixtures.database  # each test runs on SQLite and on PostgreSQL
store = db_fixtures.store

TABLES = {"teams", "api_keys", "grants", "identity_revision", "alembic_version"}


async def refused(call: Awaitable[object], kind: str) -> IdentityError:
    with pytest.raises(IdentityError) as info:
        await call
    assert info.value.kind == kind, info.value.message
    return info.value


async def dump(engine: AsyncEngine) -> dict[str, list[tuple]]:
    """Every row of every table, in a stable order."""

    def read(conn) -> dict[str, list[tuple]]:  # type: ignore[no-untyped-def]
        meta = MetaData()
        meta.reflect(conn)
        return {
            name: sorted((tuple(map(repr, row)) for row in conn.execute(table.select())), key=repr)
            for name, table in meta.tables.items()
        }

    async with engine.connect() as conn:
        return await conn.run_sync(read)


def head() -> str:
    """The newest migration's revision id, as Alembic's scripts say."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from m2a.store.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


# -- migrations --------------------------------------------------------------------------------------


async def test_schema_has_the_identity_tables(database: Database) -> None:
    engine = await database.open()
    assert await table_names(engine) >= TABLES
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one() == head()
        assert (await conn.execute(text("SELECT id, value FROM identity_revision"))).all() == [(1, 0)]


async def test_migrating_twice_is_idempotent_and_keeps_data(database: Database) -> None:
    first = IdentityStore(await database.open())
    await first.create_team("payments", "critical")
    await first.grant("payments", "llama")
    key, _ = await first.create_key("payments", "ci")
    before = await dump(first.engine)

    second = IdentityStore(await database.open())  # a second start on the same database
    assert await dump(second.engine) == before
    assert await table_names(second.engine) == await table_names(first.engine)
    assert (await second.get_team("payments")).models == ("llama",)
    principal = await second.principal(key)
    assert principal is not None and principal.team == "payments"
    assert await second.revision() == await first.revision() == 3


async def test_database_url_mapping(database: Database) -> None:
    home = Path("/srv/m2a")
    assert database_url("postgresql://u@h:5432/db", home) == "postgresql+asyncpg://u@h:5432/db"
    assert database_url("postgres://u@h/db", home) == "postgresql+asyncpg://u@h/db"
    assert database_url("postgresql+asyncpg://u@h/db", home) == "postgresql+asyncpg://u@h/db"
    assert database_url("sqlite:///x.db", home) == "sqlite+aiosqlite:///x.db"
    assert database_url(None, database.home) == f"sqlite+aiosqlite:///{database.home / 'm2a.db'}"
    assert database.home.is_dir()  # made on demand

    engine = await database.open()  # the engine really uses the mapped URL
    expected = database_url(database.url, database.home)
    assert engine.url.render_as_string(hide_password=False) == expected
    if database.backend == "sqlite":
        assert engine.dialect.name == "sqlite" and engine.dialect.driver == "aiosqlite"
    else:
        assert database.url is not None and database.url.startswith("postgresql://")
        assert engine.dialect.name == "postgresql" and engine.dialect.driver == "asyncpg"


async def test_connection_settings(database: Database) -> None:
    engine = await database.open()
    async with engine.connect() as conn:
        if database.backend == "sqlite":
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one().lower() == "wal"
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one() > 0
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1
            assert (database.home / "m2a.db").is_file()
        else:
            name = (await conn.execute(text("SELECT current_database()"))).scalar_one()
            assert name.startswith("m2a_test_") and name != "test"


# -- teams -------------------------------------------------------------------------------------------


async def test_create_teams_with_priorities_and_orders(store: IdentityStore) -> None:
    critical = await store.create_team("payments", "critical")
    standard = await store.create_team("research")  # standard by default
    batch = await store.create_team("nightly", "batch")
    custom = await store.create_team("support", "standard", order=42)
    assert (critical.priority, critical.priority_order) == ("critical", 0)
    assert (standard.priority, standard.priority_order) == ("standard", 100)
    assert (batch.priority, batch.priority_order) == ("batch", 200)
    assert (custom.priority, custom.priority_order) == ("standard", 42)
    assert critical.models == () and critical.created_at.tzinfo is not None

    teams = await store.list_teams()
    assert [t.name for t in teams] == ["nightly", "payments", "research", "support"]
    got = await store.get_team("support")
    assert (got.name, got.priority, got.priority_order, got.models) == ("support", "standard", 42, ())
    assert got.created_at.tzinfo is not None
    assert abs(got.created_at - custom.created_at) < timedelta(seconds=1)


async def test_team_name_rules(store: IdentityStore) -> None:
    await store.create_team("payments")
    await refused(store.create_team("payments"), "conflict")
    await refused(store.create_team("payments", "batch"), "conflict")
    for bad in ("", "UPPER", "has space", "a" * 65, "-lead", "_lead", "dot.ted", "new\nline"):
        await refused(store.create_team(bad), "invalid")
    for good in ("a", "a" * 64, "team-1_b", "0lead"):
        assert (await store.create_team(good)).name == good
    await refused(store.create_team("ok", "urgent"), "invalid")
    await refused(store.create_team("ok", "Critical"), "invalid")
    assert {t.name for t in await store.list_teams()} == {"payments", "a", "a" * 64, "team-1_b", "0lead"}


async def test_update_team(store: IdentityStore) -> None:
    await store.create_team("research")
    updated = await store.update_team("research", priority="batch")
    assert (updated.priority, updated.priority_order) == ("batch", 200)
    updated = await store.update_team("research", order=7)
    assert (updated.priority, updated.priority_order) == ("batch", 7)
    updated = await store.update_team("research", priority="critical", order=3)
    assert (updated.priority, updated.priority_order) == ("critical", 3)
    assert (await store.get_team("research")).priority_order == 3
    await refused(store.update_team("research", priority="urgent"), "invalid")
    assert (await store.get_team("research")).priority == "critical"
    await refused(store.update_team("nobody", priority="batch"), "not_found")


async def test_delete_team_and_recreate_the_name(store: IdentityStore) -> None:
    await store.create_team("payments", "critical")
    await store.grant("payments", "llama")
    old_key, old_info = await store.create_key("payments", "ci")
    await store.create_team("research")

    await store.delete_team("payments")
    await refused(store.get_team("payments"), "not_found")
    await refused(store.delete_team("payments"), "not_found")
    await refused(store.grant("payments", "qwen"), "not_found")
    await refused(store.create_key("payments", "late"), "not_found")
    assert [t.name for t in await store.list_teams()] == ["research"]
    assert await store.lookup(old_key) == "team deleted"
    assert await store.principal(old_key) is None

    fresh = await store.create_team("payments", "batch")  # the name is free again: a NEW team
    assert (fresh.priority, fresh.priority_order, fresh.models) == ("batch", 200, ())
    assert (await store.get_team("payments")).models == ()  # no inherited grants
    assert await store.list_keys(team="payments") == []  # no inherited keys
    await store.grant("payments", "llama")
    assert await store.lookup(old_key) == "team deleted"  # the old key stays dead
    assert [t.name for t in await store.list_teams()] == ["payments", "research"]
    old_listed = next(k for k in await store.list_keys() if k.id == old_info.id)
    assert old_listed.team != "payments"

    new_key, _ = await store.create_key("payments", "ci")
    principal = await store.principal(new_key)
    assert (
        principal is not None and principal.models == frozenset({"llama"}) and principal.priority == "batch"
    )

    await store.delete_team("payments")  # deleting and re-creating again still works
    assert (await store.create_team("payments")).models == ()
    assert await store.lookup(new_key) == "team deleted"


async def test_recreate_a_deleted_team_with_the_longest_name(store: IdentityStore) -> None:
    name = "t" * 64
    await store.create_team(name)
    await store.delete_team(name)
    assert (await store.create_team(name)).name == name
    await store.delete_team(name)
    assert (await store.create_team(name)).name == name
    assert [t.name for t in await store.list_teams()] == [name]


# -- grants ------------------------------------------------------------------------------------------


async def test_grants(store: IdentityStore) -> None:
    await store.create_team("research")
    await store.create_team("payments")
    for model in ("qwen", "llama", "Mistral-7B/instruct"):
        await store.grant("research", model)
    await store.grant("research", "qwen")  # idempotent
    await store.grant("payments", "llama")
    assert (await store.get_team("research")).models == ("Mistral-7B/instruct", "llama", "qwen")
    teams = {t.name: t.models for t in await store.list_teams()}
    assert teams == {"payments": ("llama",), "research": ("Mistral-7B/instruct", "llama", "qwen")}

    await store.ungrant("research", "llama")
    assert (await store.get_team("research")).models == ("Mistral-7B/instruct", "qwen")
    assert (await store.get_team("payments")).models == ("llama",)  # other teams untouched
    await refused(store.ungrant("research", "llama"), "not_found")
    await refused(store.ungrant("research", "never-granted"), "not_found")
    await refused(store.grant("nobody", "llama"), "not_found")
    await refused(store.ungrant("nobody", "llama"), "not_found")


# -- keys --------------------------------------------------------------------------------------------


async def test_key_plaintext_is_never_stored(store: IdentityStore, database: Database) -> None:
    await store.create_team("payments")
    key, info = await store.create_key("payments", "ci")
    assert key.startswith("m2a-") and len(key) > 40
    assert info.prefix == key[:12]
    assert (info.team, info.role, info.name, info.priority) == ("payments", "member", "ci", None)
    assert info.revoked_at is None and info.expires_at is None and info.created_at.tzinfo is not None

    secret = key[12:]  # everything past the displayed prefix
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(*ApiKey.__table__.columns))).mappings().all()
    assert len(rows) == 1
    row = rows[0]
    for column, value in row.items():
        assert value != key, column
        assert secret not in str(value), column
    assert row["prefix"] == key[:12]
    assert re.fullmatch(r"[0-9a-f]{64}", row["key_hash"])
    assert row["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    for table, table_rows in (await dump(store.engine)).items():  # nor in any other table
        assert secret not in repr(table_rows), table

    if database.backend == "sqlite":  # not even in the raw database files
        for path in database.home.iterdir():
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path.name


async def test_member_key_principal(store: IdentityStore) -> None:
    await store.create_team("research", "batch", order=250)
    await store.grant("research", "qwen")
    key, info = await store.create_key("research", "notebook")
    principal = await store.lookup(key)
    assert isinstance(principal, Principal)
    assert principal == await store.principal(key)
    assert (principal.key_id, principal.key_prefix) == (info.id, key[:12])
    assert (principal.team, principal.role, principal.is_admin) == ("research", "member", False)
    assert (principal.priority, principal.priority_order) == ("batch", 250)
    assert principal.models == frozenset({"qwen"}) and principal.expires_at is None
    assert principal.may_use("qwen") and not principal.may_use("llama")

    await store.grant("research", "llama")  # a later grant shows on the next lookup
    principal = await store.principal(key)
    assert principal is not None and principal.models == frozenset({"qwen", "llama"})
    assert principal.may_use("llama")
    await store.ungrant("research", "qwen")
    principal = await store.principal(key)
    assert principal is not None and principal.models == frozenset({"llama"})

    await store.update_team("research", priority="critical")  # team changes show too
    principal = await store.principal(key)
    assert principal is not None and (principal.priority, principal.priority_order) == ("critical", 0)


async def test_key_priority_overrides_the_team(store: IdentityStore) -> None:
    await store.create_team("research", "standard", order=150)
    key, info = await store.create_key("research", "urgent", priority="critical")
    assert info.priority == "critical"
    principal = await store.principal(key)
    assert principal is not None and (principal.priority, principal.priority_order) == ("critical", 0)
    plain, _ = await store.create_key("research", "plain")
    principal = await store.principal(plain)
    assert principal is not None and (principal.priority, principal.priority_order) == ("standard", 150)
    await refused(store.create_key("research", "bad", priority="urgent"), "invalid")


async def test_admin_key(store: IdentityStore) -> None:
    key, info = await store.create_key(None, "root", role="admin")
    assert (info.team, info.role) == (None, "admin")
    principal = await store.principal(key)
    assert principal is not None
    assert (principal.team, principal.role, principal.is_admin) == (None, "admin", True)
    assert principal.models is None
    assert principal.may_use("anything") and principal.may_use("llama")
    assert (principal.priority, principal.priority_order) == ("critical", 0)

    batch_admin, _ = await store.create_key(None, "slow-root", role="admin", priority="batch")
    principal = await store.principal(batch_admin)
    assert principal is not None and (principal.priority, principal.priority_order) == ("batch", 200)


async def test_invalid_keys_are_refused(store: IdentityStore) -> None:
    await store.create_team("research")
    await refused(store.create_key(None, "orphan"), "invalid")  # a member key needs a team
    await refused(store.create_key(None, "orphan", role="member"), "invalid")
    await refused(store.create_key("research", "x", role="owner"), "invalid")
    await refused(store.create_key("research", "x", role="Admin"), "invalid")
    past = datetime.now(UTC) - timedelta(minutes=1)
    await refused(store.create_key("research", "x", expires_at=past), "invalid")
    await refused(store.create_key("nobody", "x"), "not_found")
    assert await store.list_keys() == []


async def test_key_with_future_expiry(store: IdentityStore) -> None:
    await store.create_team("research")
    expires = datetime.now(UTC) + timedelta(hours=1)
    key, info = await store.create_key("research", "temp", expires_at=expires)
    assert info.expires_at == expires
    principal = await store.principal(key)
    assert principal is not None and principal.expires_at == expires
    assert principal.expires_at.tzinfo is not None
    listed = await store.list_keys()
    assert [k.expires_at for k in listed] == [expires]


async def test_expiry_in_another_timezone(store: IdentityStore) -> None:
    await store.create_team("research")
    expires = datetime.now(UTC) + timedelta(hours=1)
    local = expires.astimezone(timezone(timedelta(hours=-5)))  # the same instant, five hours behind UTC
    key, info = await store.create_key("research", "temp", expires_at=local)
    assert info.expires_at == expires
    principal = await store.lookup(key)
    assert isinstance(principal, Principal) and principal.expires_at == expires
    assert [k.expires_at for k in await store.list_keys()] == [expires]


async def test_key_expires(store: IdentityStore) -> None:
    await store.create_team("research")
    key, _ = await store.create_key("research", "short", expires_at=datetime.now(UTC) + timedelta(seconds=1))
    first = await store.lookup(key)
    assert isinstance(first, Principal) or first == "expired"  # a slow box may already be past it
    deadline = time.monotonic() + 60
    while isinstance(await store.lookup(key), Principal) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert await store.lookup(key) == "expired"
    assert await store.principal(key) is None


async def test_revoked_unknown_and_orphaned_keys(store: IdentityStore) -> None:
    await store.create_team("research")
    key, info = await store.create_key("research", "ci")
    other, _ = await store.create_key("research", "other")
    await store.revoke_key(info.id)
    assert await store.lookup(key) == "revoked"
    assert await store.principal(key) is None
    assert isinstance(await store.lookup(other), Principal)  # only that key
    listed = {k.id: k for k in await store.list_keys()}
    assert listed[info.id].revoked_at is not None and listed[info.id].revoked_at.tzinfo is not None
    await store.revoke_key(info.id)  # revoking twice is fine
    await refused(store.revoke_key(info.id + 1000), "not_found")

    assert await store.lookup("m2a-" + "x" * 43) == "unknown"
    assert await store.lookup("") == "unknown"
    assert await store.principal("not-a-key") is None
    assert await store.lookup(key[:-1]) == "unknown"

    await store.delete_team("research")
    assert await store.lookup(other) == "team deleted"
    assert await store.lookup(key) == "revoked"  # revocation is reported first


# -- tenancy -----------------------------------------------------------------------------------------


async def test_teams_cannot_touch_each_others_keys(store: IdentityStore) -> None:
    await store.create_team("payments")
    await store.create_team("research")
    pay_key, pay = await store.create_key("payments", "billing")
    res_key, res = await store.create_key("research", "notebook")
    admin_key, admin = await store.create_key(None, "root", role="admin")

    await refused(store.revoke_key(pay.id, team="research"), "not_found")
    await refused(store.revoke_key(admin.id, team="research"), "not_found")
    principal = await store.principal(pay_key)
    assert principal is not None and principal.team == "payments"
    assert await store.principal(admin_key) is not None
    await refused(store.revoke_key(pay.id, team="nobody"), "not_found")

    assert [(k.id, k.team) for k in await store.list_keys(team="research")] == [(res.id, "research")]
    assert [(k.id, k.team) for k in await store.list_keys(team="payments")] == [(pay.id, "payments")]
    await refused(store.list_keys(team="nobody"), "not_found")
    everyone = [(k.id, k.name, k.team, k.role) for k in await store.list_keys()]
    assert everyone == [
        (pay.id, "billing", "payments", "member"),
        (res.id, "notebook", "research", "member"),
        (admin.id, "root", None, "admin"),
    ]

    await store.revoke_key(res.id, team="research")  # a team may revoke its own key
    assert await store.lookup(res_key) == "revoked"
    assert await store.principal(pay_key) is not None


# -- revision ----------------------------------------------------------------------------------------


async def test_every_change_bumps_the_revision_once(store: IdentityStore) -> None:
    async def delta(call: Awaitable[object]) -> int:
        before = await store.revision()
        await call
        return await store.revision() - before

    assert await store.revision() == 0
    assert await delta(store.create_team("payments")) == 1
    assert await delta(store.update_team("payments", priority="batch")) == 1
    assert await delta(store.update_team("payments", order=5)) == 1
    assert await delta(store.grant("payments", "llama")) == 1
    assert await delta(store.grant("payments", "llama")) == 0  # already granted
    assert await delta(store.ungrant("payments", "llama")) == 1
    before = await store.revision()
    _, info = await store.create_key("payments", "ci")
    assert await store.revision() - before == 1
    assert await delta(store.revoke_key(info.id)) == 1
    assert await delta(store.revoke_key(info.id)) == 0  # already revoked
    assert await delta(store.delete_team("payments")) == 1
    assert await delta(store.create_team("payments")) == 1  # re-creating a deleted name

    before = await store.revision()  # refused changes leave it alone
    await refused(store.create_team("payments"), "conflict")
    await refused(store.ungrant("payments", "llama"), "not_found")
    await refused(store.grant("nobody", "llama"), "not_found")
    await refused(store.update_team("payments", priority="urgent"), "invalid")
    await refused(store.create_key(None, "orphan"), "invalid")
    await refused(store.revoke_key(info.id + 1000), "not_found")
    await store.list_teams()
    await store.list_keys()
    await store.lookup("m2a-unknown")
    assert await store.revision() == before == 9


# -- concurrency -------------------------------------------------------------------------------------


async def test_concurrent_key_creation(store: IdentityStore) -> None:
    await store.create_team("research")
    await store.grant("research", "qwen")
    before = await store.revision()
    created = await asyncio.gather(*(store.create_key("research", f"k{i}") for i in range(20)))
    ids = {info.id for _, info in created}
    prefixes = {info.prefix for _, info in created}
    assert len(ids) == len(prefixes) == len({key for key, _ in created}) == 20
    assert await store.revision() == before + 20  # no lost increments
    assert {k.id for k in await store.list_keys(team="research")} == ids

    principals = await asyncio.gather(*(store.principal(key) for key, _ in created))
    assert all(p is not None and p.team == "research" and p.may_use("qwen") for p in principals)
    assert {p.key_id for p in principals if p is not None} == ids


async def test_racing_creates_of_one_team_name(store: IdentityStore) -> None:
    before = await store.revision()
    results = await asyncio.gather(*(store.create_team("dup") for _ in range(5)), return_exceptions=True)
    created = [r for r in results if not isinstance(r, BaseException)]
    assert len(created) == 1, results
    for r in results:
        if isinstance(r, BaseException):
            assert isinstance(r, IdentityError) and r.kind == "conflict", repr(r)
    assert [t.name for t in await store.list_teams()] == ["dup"]
    assert await store.revision() == before + 1


async def test_racing_grants_of_one_model(store: IdentityStore) -> None:
    await store.create_team("research")
    before = await store.revision()
    await asyncio.gather(*(store.grant("research", "qwen") for _ in range(5)))  # all succeed
    assert (await store.get_team("research")).models == ("qwen",)
    assert await store.revision() == before + 1
