"""The audit log's read-only API (``GET /admin/v1/audit``) over a real store (SQLite and PostgreSQL),
real keys resolved by the gateway's ``Access`` and an agent's principal, served in process through
httpx's ASGI transport: who reads which records, the filters and paging, what is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
import pytest_asyncio

from m2a.gateway.access import Access
from m2a.principal import AgentRef, Principal
from m2a.store.identity import IdentityStore
from m2a.trust.audit import AuditLog
from m2a.trust.audit_api import PREFIX, create_audit_api
from tests.db_fixtures import Database
from tests.openai_shape import assert_openai_error

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADMIN = "sk-audit-admin-" + "a" * 24
AGENT_TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJib3QifQ.c2ln"  # looks like a JWT: Access asks `tokens`
TRACE = "ab" * 16


@dataclass
class Api:
    http: httpx.AsyncClient
    sales: str
    support: str
    sales_id: int
    support_id: int

    async def get(self, key: str | None = ADMIN, **params: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return await self.http.get(PREFIX, headers=headers, params=params)


@pytest_asyncio.fixture(loop_scope="session")
async def api(database: Database) -> AsyncIterator[Api]:
    db = await database.open()
    identity = IdentityStore(db)
    for name in ("sales", "support"):
        await identity.create_team(name)
    sales, _ = await identity.create_key("sales", "sales dev")
    support, _ = await identity.create_key("support", "support dev")
    access = Access(ADMIN, identity)
    team, other = await identity.lookup(sales), await identity.lookup(support)
    assert isinstance(team, Principal) and isinstance(other, Principal)
    assert team.team_id is not None and other.team_id is not None

    async def verify(token: str) -> Principal:
        if token != AGENT_TOKEN:
            raise ValueError("not a token")
        return replace(team, agent=AgentRef("spiffe://m2a.local/team/sales/agent/bot", 1, "bot", 1))

    access.tokens = verify  # type: ignore[assignment]
    log = AuditLog(db, None, issuer="https://m2a.test")
    spiffe = "spiffe://m2a.local/team/sales/agent/bot"
    await log.append("decision", {"tool": "lookup"}, agent=spiffe, team_id=team.team_id, trace_id=TRACE)
    await log.append("receipt", {"tool": "lookup"}, agent=spiffe, team_id=team.team_id)
    await log.append("decision", {"tool": "refund"}, team_id=other.team_id)
    await log.append("egress", {"host": "example.test"})  # no team
    app = create_audit_api(log, access)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m2a.test") as http:
        yield Api(http, sales, support, team.team_id, other.team_id)


async def test_admin_reads_every_record_with_filters_and_paging(api: Api) -> None:
    every = await api.get()
    assert every.status_code == 200, every.text
    records = every.json()
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    first = records[0]
    assert first["object"] == "audit_record" and first["kind"] == "decision"
    assert first["body"] == {"tool": "lookup"} and first["trace_id"] == TRACE
    assert len(first["hash"]) == 64 and first["prev_hash"] == "0" * 64
    assert [r["seq"] for r in (await api.get(kind="decision")).json()] == [1, 3]
    assert [r["seq"] for r in (await api.get(trace_id=TRACE)).json()] == [1]
    assert [r["seq"] for r in (await api.get(limit=2)).json()] == [3, 4]  # the newest two
    assert [r["seq"] for r in (await api.get(after=1, limit=2)).json()] == [2, 3]  # paging on
    assert [r["seq"] for r in (await api.get(before=4, limit=2)).json()] == [2, 3]  # paging back
    assert [r["seq"] for r in (await api.get(before=2)).json()] == [1]
    assert (await api.get(since="2000-01-01T00:00:00", until="2000-01-02T00:00:00")).json() == []


async def test_a_team_key_reads_its_own_team_only(api: Api) -> None:
    sales = (await api.get(api.sales)).json()
    assert [r["seq"] for r in sales] == [1, 2] and {r["team_id"] for r in sales} == {api.sales_id}
    support = (await api.get(api.support)).json()
    assert [r["seq"] for r in support] == [3]
    assert (await api.get(api.support, trace_id=TRACE)).json() == []  # another team's: as if none


async def test_refusals(api: Api) -> None:
    assert_openai_error(await api.get(None), 401)
    assert_openai_error(await api.get(AGENT_TOKEN), 403, "agents_cannot_manage")
    assert_openai_error(await api.get(limit=0), 400, "invalid_request")
    assert_openai_error(await api.get(trace_id="not-hex"), 400, "invalid_request")
    posted = await api.http.post(PREFIX, headers={"authorization": f"Bearer {ADMIN}"}, json={})
    assert_openai_error(posted, 405)
    other = await api.http.get(PREFIX + "/1", headers={"authorization": f"Bearer {ADMIN}"})
    assert_openai_error(other, 404, "unknown_url")
