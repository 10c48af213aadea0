"""Quota definitions (QuotaStore) and the limits a key's principal carries, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable

import pytest

from m2a.store.identity import IdentityError, IdentityStore, Principal
from m2a.store.limits import MAX_LIMIT, Limit
from m2a.store.quotas import QuotaInfo, QuotaStore
from tests import db_fixtures

pytestmark = pytest.mark.asyncio(loop_scope="session")

database = db_fixtures.database  # each test runs on SQLite and on PostgreSQL
store = db_fixtures.store


@pytest.fixture
def quotas(store: IdentityStore) -> QuotaStore:
    return QuotaStore(store.engine)


async def refused(call: Awaitable[object], kind: str) -> IdentityError:
    with pytest.raises(IdentityError) as info:
        await call
    assert info.value.kind == kind, info.value.message
    return info.value


def rows(infos: list[QuotaInfo]) -> list[tuple[str, int | None, str, str, int]]:
    return [(q.team, q.key_id, q.metric, q.window, q.limit) for q in infos]


async def principal(store: IdentityStore, key: str) -> Principal:
    p = await store.lookup(key)
    assert isinstance(p, Principal), p
    return p


async def test_set_and_list(store: IdentityStore, quotas: QuotaStore) -> None:
    await store.create_team("research")
    await store.create_team("ops")
    _, key = await store.create_key("research", "notebook")
    assert await quotas.list() == []
    await quotas.set(
        "research", [("tokens", "day", 200_000), ("tokens", "minute", 20_000), ("requests", "minute", 60)]
    )
    await quotas.set("research", [("concurrency", "-", 8)])
    await quotas.set("research", [("output_tokens", "hour", 500)], key_id=key.id)
    await quotas.set("ops", [("cost", "month", 50_000_000)])
    expect_research = [
        ("research", None, "concurrency", "-", 8),
        ("research", None, "requests", "minute", 60),
        ("research", None, "tokens", "day", 200_000),
        ("research", None, "tokens", "minute", 20_000),
        ("research", key.id, "output_tokens", "hour", 500),
    ]
    listed = await quotas.list()
    # by team, then key; PostgreSQL sorts NULL keys last, SQLite first: compare the key groups as sets
    assert [q.team for q in listed] == ["ops"] + ["research"] * 5
    assert rows(listed)[0] == ("ops", None, "cost", "month", 50_000_000)
    assert sorted(rows(listed)[1:], key=str) == sorted(expect_research, key=str)
    assert sorted(rows(await quotas.list("research")), key=str) == sorted(expect_research, key=str)
    assert all(q.created_at is not None for q in listed)
    await refused(quotas.list("nobody"), "not_found")


async def test_set_replaces_the_same_metric_and_window(store: IdentityStore, quotas: QuotaStore) -> None:
    await store.create_team("research")
    await quotas.set("research", [("tokens", "day", 100), ("tokens", "hour", 10)])
    await quotas.set("research", [("tokens", "day", 300)])
    await quotas.set("research", [("tokens", "day", 400), ("tokens", "day", 500)])  # the last one wins
    assert sorted(rows(await quotas.list("research"))) == [
        ("research", None, "tokens", "day", 500),
        ("research", None, "tokens", "hour", 10),
    ]


async def test_zero_and_largest_limits(store: IdentityStore, quotas: QuotaStore) -> None:
    await store.create_team("research")
    await quotas.set("research", [("requests", "day", 0), ("tokens", "month", MAX_LIMIT)])
    assert sorted(rows(await quotas.list("research"))) == [
        ("research", None, "requests", "day", 0),
        ("research", None, "tokens", "month", MAX_LIMIT),
    ]


INVALID = [
    ("watts", "day", 1),
    ("tokens", "week", 1),
    ("tokens", "-", 1),
    ("concurrency", "day", 1),
    ("tokens", "day", -1),
    ("tokens", "day", MAX_LIMIT + 1),
    ("concurrency", "-", -1),
]


@pytest.mark.parametrize("limit", INVALID, ids=[f"{m}-{w}-{n}" for m, w, n in INVALID])
async def test_invalid_limits_are_refused_and_nothing_is_written(
    store: IdentityStore, quotas: QuotaStore, limit: tuple[str, str, int]
) -> None:
    await store.create_team("research")
    before = await store.revision()
    await refused(quotas.set("research", [("requests", "day", 5), limit]), "invalid")
    assert await quotas.list() == []
    assert await store.revision() == before


async def test_unknown_team_and_foreign_keys(store: IdentityStore, quotas: QuotaStore) -> None:
    await store.create_team("research")
    await store.create_team("ops")
    _, ops_key = await store.create_key("ops", "pager")
    _, admin = await store.create_key(None, "root", role="admin")
    await refused(quotas.set("nobody", [("tokens", "day", 1)]), "not_found")
    await refused(quotas.clear("nobody"), "not_found")
    for key_id in (ops_key.id, admin.id, 0, -1, 10**6, 2**31, 2**40):
        err = await refused(quotas.set("research", [("tokens", "day", 1)], key_id=key_id), "not_found")
        assert f"team 'research' has no key with id {key_id}" == err.message
        await refused(quotas.clear("research", key_id=key_id), "not_found")
    assert await quotas.list() == []


async def test_clear(store: IdentityStore, quotas: QuotaStore) -> None:
    await store.create_team("research")
    await store.create_team("ops")
    _, key = await store.create_key("research", "notebook")
    await quotas.set("research", [("tokens", "day", 100), ("tokens", "hour", 10), ("requests", "day", 5)])
    await quotas.set("research", [("tokens", "day", 50), ("requests", "minute", 1)], key_id=key.id)
    await quotas.set("ops", [("tokens", "day", 7)])

    assert await quotas.clear("research", metric="tokens") == 2  # the team's, not the key's
    assert sorted(rows(await quotas.list("research")), key=str) == sorted(
        [
            ("research", None, "requests", "day", 5),
            ("research", key.id, "tokens", "day", 50),
            ("research", key.id, "requests", "minute", 1),
        ],
        key=str,
    )
    assert await quotas.clear("research", key_id=key.id, metric="requests") == 1
    assert await quotas.clear("research", key_id=key.id) == 1
    assert rows(await quotas.list("research")) == [("research", None, "requests", "day", 5)]
    assert await quotas.clear("research") == 1
    assert await quotas.clear("research") == 0
    assert rows(await quotas.list()) == [("ops", None, "tokens", "day", 7)]


async def test_principal_carries_the_team_limits_and_its_own_only(
    store: IdentityStore, quotas: QuotaStore
) -> None:
    await store.create_team("research")
    await store.create_team("ops")
    k1, one = await store.create_key("research", "one")
    k2, two = await store.create_key("research", "two")
    k3, _ = await store.create_key("ops", "three")
    admin_key, _ = await store.create_key(None, "root", role="admin")
    research = (await principal(store, k1)).team_id
    ops = (await principal(store, k3)).team_id
    assert research is not None and ops is not None and research != ops
    assert (await principal(store, k1)).limits == ()

    await quotas.set("research", [("tokens", "day", 1000), ("concurrency", "-", 4)])
    await quotas.set("research", [("requests", "minute", 5)], key_id=one.id)
    await quotas.set("research", [("tokens", "hour", 50)], key_id=two.id)
    await quotas.set("ops", [("cost", "month", 9)])

    p1 = await principal(store, k1)
    assert p1.team_id == research
    assert set(p1.limits) == {
        Limit("team", research, "tokens", "day", 1000),
        Limit("team", research, "concurrency", "-", 4),
        Limit("key", one.id, "requests", "minute", 5),
    }
    assert len(p1.limits) == 3
    assert set((await principal(store, k2)).limits) == {
        Limit("team", research, "tokens", "day", 1000),
        Limit("team", research, "concurrency", "-", 4),
        Limit("key", two.id, "tokens", "hour", 50),
    }
    assert (await principal(store, k3)).limits == (Limit("team", ops, "cost", "month", 9),)
    admin = await principal(store, admin_key)
    assert admin.limits == () and admin.team_id is None

    await quotas.clear("research", key_id=one.id)
    assert set((await principal(store, k1)).limits) == {
        Limit("team", research, "tokens", "day", 1000),
        Limit("team", research, "concurrency", "-", 4),
    }


async def test_quota_changes_bump_the_revision(store: IdentityStore, quotas: QuotaStore) -> None:
    async def delta(call: Awaitable[object]) -> int:
        before = await store.revision()
        await call
        return await store.revision() - before

    await store.create_team("research")
    _, key = await store.create_key("research", "notebook")
    assert await delta(quotas.set("research", [("tokens", "day", 1), ("requests", "day", 2)])) == 1
    assert await delta(quotas.set("research", [("tokens", "day", 3)], key_id=key.id)) == 1
    assert await delta(quotas.clear("research", metric="requests")) == 1
    assert await delta(quotas.clear("research", key_id=key.id)) == 1
    assert await delta(quotas.list()) == 0
    assert await delta(refused(quotas.set("research", [("tokens", "day", -5)]), "invalid")) == 0
    assert (
        await delta(refused(quotas.set("research", [("tokens", "day", 5)], key_id=10**6), "not_found")) == 0
    )


async def test_deleted_team_quotas_are_not_listed(store: IdentityStore, quotas: QuotaStore) -> None:
    await store.create_team("research")
    await store.create_team("ops")
    await quotas.set("research", [("tokens", "day", 1)])
    await quotas.set("ops", [("tokens", "day", 2)])
    await store.delete_team("research")
    assert rows(await quotas.list()) == [("ops", None, "tokens", "day", 2)]
    await refused(quotas.set("research", [("tokens", "day", 1)]), "not_found")
    await store.create_team("research")  # the name is free again; the new team has no limits
    assert await quotas.list("research") == []
