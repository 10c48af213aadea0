"""Tampering with the audit log, on real SQLite and PostgreSQL stores: each change made with SQL the
way someone with write access to the database would make it, and each reported by ``verify`` as its
own kind at the right seq — and by ``m2a audit verify``, which exits 1 naming it.

The log under attack has 20 records and checkpoints at 10 and 20, signed with m2a's real keys.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import jwt
import pytest
import rfc8785
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from m2a.agents.keys import SigningKeys
from m2a.cli.audit_cmd import audit_app
from m2a.trust.audit import CHECKPOINT_TYP, GENESIS, PROBLEM_KINDS, AuditLog, chain_hash
from tests.db_fixtures import Database
from tests.trust.conftest import StaticKeys

aio = pytest.mark.asyncio(loop_scope="session")

ISS = "https://m2a.test"
AGENT = "spiffe://m2a.test/team/eng/agent/billing-bot"
N, EVERY = 20, 10


async def build(engine: AsyncEngine, keys: Any, n: int = N) -> AuditLog:
    log = AuditLog(engine, keys, issuer=ISS, checkpoint_every=EVERY, checkpoint_interval_s=3600)
    for i in range(n):
        body = {"n": i, "result_sha256": f"{i:064x}"}
        await log.append("receipt", body, agent=AGENT, team_id=1, trace_id=f"{i:032x}")
    return log


async def sql(engine: AsyncEngine, statement: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(statement), params)


async def record(engine: AsyncEngine, seq: int) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT * FROM audit_records WHERE seq = :s"), {"s": seq})).one()


async def renumber(engine: AsyncEngine, start: int, delta: int) -> None:
    """Rows from ``start`` on moved by ``delta`` (through negative numbers: seq is the primary key)."""
    await sql(engine, "UPDATE audit_records SET seq = -(seq + :d) WHERE seq >= :s", d=delta, s=start)
    await sql(engine, "UPDATE audit_records SET seq = -seq WHERE seq < 0")


def edited_body(body: str, **changes: Any) -> str:
    doc = json.loads(body)
    doc["body"].update(changes)
    return rfc8785.dumps(doc).decode()


async def problems(log: AuditLog, keys: Any) -> list[tuple[str, int]]:
    report = await log.verify(await keys.jwks())
    assert all(p.detail for p in report.problems)
    assert report.ok is not report.problems
    return [(p.kind, p.seq) for p in report.problems]


async def cli_verify(database: Database) -> Any:
    env = {"M2A_HOME": str(database.home), "M2A_DATABASE_URL": database.url or "", "COLUMNS": "250"}
    return await asyncio.to_thread(CliRunner().invoke, audit_app, ["verify"], env=env)


async def assert_cli_names(database: Database, expected: list[tuple[str, int]]) -> None:
    result = await cli_verify(database)
    assert result.exit_code == 1, result.output
    for kind, seq in expected:
        assert f"seq {seq}: {kind}: " in result.output, result.output


@pytest.fixture
async def log(engine: AsyncEngine, keys: SigningKeys) -> AuditLog:
    built = await build(engine, keys)
    report = await built.verify(await keys.jwks())
    assert report.ok and (report.records, report.checkpoints, report.verified_seq) == (N, 2, N), report
    return built


@aio
async def test_untouched_log_is_intact_and_the_cli_says_so(log: AuditLog, database: Database) -> None:
    result = await cli_verify(database)
    assert result.exit_code == 0, result.output
    assert "the audit log is intact: 20 records, 2 checkpoints" in result.output
    assert "vouch for records 1..20" in result.output


@aio
async def test_an_edited_body(
    log: AuditLog, keys: SigningKeys, engine: AsyncEngine, database: Database
) -> None:
    row = await record(engine, 7)
    await sql(engine, "UPDATE audit_records SET body = :b WHERE seq = 7", b=edited_body(row.body, n=700))
    assert await problems(log, keys) == [("edited", 7)]
    await assert_cli_names(database, [("edited", 7)])


@aio
async def test_an_edited_body_with_its_hash_recomputed(
    log: AuditLog, keys: SigningKeys, engine: AsyncEngine, database: Database
) -> None:
    row = await record(engine, 7)
    body = edited_body(row.body, result_sha256="f" * 64)
    new = chain_hash(row.prev_hash, body.encode())
    await sql(engine, "UPDATE audit_records SET body = :b, hash = :h WHERE seq = 7", b=body, h=new)
    report = await log.verify(await keys.jwks())
    assert [(p.kind, p.seq) for p in report.problems] == [("edited", 7)]
    assert "re-hashed" in report.problems[0].detail and "record 8" in report.problems[0].detail
    await assert_cli_names(database, [("edited", 7)])


@aio
async def test_an_edited_column(log: AuditLog, keys: SigningKeys, engine: AsyncEngine) -> None:
    await sql(
        engine, "UPDATE audit_records SET agent = 'spiffe://m2a.test/team/eng/agent/other' WHERE seq = 4"
    )
    report = await log.verify(await keys.jwks())
    assert [(p.kind, p.seq) for p in report.problems] == [("edited", 4)]
    assert "agent" in report.problems[0].detail


@aio
async def test_a_deleted_middle_record(
    log: AuditLog, keys: SigningKeys, engine: AsyncEngine, database: Database
) -> None:
    await sql(engine, "DELETE FROM audit_records WHERE seq = 7")
    assert await problems(log, keys) == [("deleted", 7)]
    await assert_cli_names(database, [("deleted", 7)])


@aio
async def test_deleted_records_with_the_rest_renumbered_to_close_the_gap(
    log: AuditLog, keys: SigningKeys, engine: AsyncEngine
) -> None:
    await sql(engine, "DELETE FROM audit_records WHERE seq IN (7, 8)")
    await renumber(engine, 9, -2)
    report = await log.verify(await keys.jwks())
    assert [(p.kind, p.seq) for p in report.problems] == [("deleted", 7)]
    assert "records 7..8 are missing" in report.problems[0].detail


@aio
async def test_the_first_record_deleted(log: AuditLog, keys: SigningKeys, engine: AsyncEngine) -> None:
    await sql(engine, "DELETE FROM audit_records WHERE seq = 1")
    assert await problems(log, keys) == [("deleted", 1)]


@aio
async def test_the_last_records_deleted_after_a_checkpoint(
    log: AuditLog, keys: SigningKeys, engine: AsyncEngine, database: Database
) -> None:
    await sql(engine, "DELETE FROM audit_records WHERE seq >= 18")
    report = await log.verify(await keys.jwks())
    assert [(p.kind, p.seq) for p in report.problems] == [("truncated", 18)]
    assert "records 18..20 are missing" in report.problems[0].detail
    await assert_cli_names(database, [("truncated", 18)])


@aio
async def test_two_records_swapped(
    log: AuditLog, keys: SigningKeys, engine: AsyncEngine, database: Database
) -> None:
    await sql(engine, "UPDATE audit_records SET seq = -5 WHERE seq = 5")
    await sql(engine, "UPDATE audit_records SET seq = 5 WHERE seq = 6")
    await sql(engine, "UPDATE audit_records SET seq = 6 WHERE seq = -5")
    report = await log.verify(await keys.jwks())
    assert [(p.kind, p.seq) for p in report.problems] == [("reordered", 5)]
    assert "row 5 holds record 6" in report.problems[0].detail
    await assert_cli_names(database, [("reordered", 5)])


@aio
async def test_two_distant_records_swapped(log: AuditLog, keys: SigningKeys, engine: AsyncEngine) -> None:
    await sql(engine, "UPDATE audit_records SET seq = -5 WHERE seq = 5")
    await sql(engine, "UPDATE audit_records SET seq = 5 WHERE seq = 15")
    await sql(engine, "UPDATE audit_records SET seq = 15 WHERE seq = -5")
    assert await problems(log, keys) == [("reordered", 5), ("reordered", 15)]


@aio
async def test_a_forged_record_inserted_in_the_middle(
    log: AuditLog, keys: SigningKeys, engine: AsyncEngine, database: Database
) -> None:
    """The forger renumbers the rows after it and chains the forgery to the record before."""
    before = await record(engine, 7)
    await renumber(engine, 8, 1)
    doc = json.loads(before.body)
    doc.update(seq=8, body={"n": 999, "result_sha256": "0" * 64})
    body = rfc8785.dumps(doc).decode()
    await sql(
        engine,
        "INSERT INTO audit_records (seq, at, kind, agent, team_id, trace_id, body, prev_hash, hash) "
        "VALUES (8, :at, 'receipt', :agent, 1, :trace, :body, :prev, :hash)",
        at=before.at,
        agent=AGENT,
        trace=doc["trace_id"],
        body=body,
        prev=before.hash,
        hash=chain_hash(before.hash, body.encode()),
    )
    report = await log.verify(await keys.jwks())
    assert [(p.kind, p.seq) for p in report.problems] == [("inserted", 8)]
    assert "record 8" in report.problems[0].detail
    await assert_cli_names(database, [("inserted", 8)])


@aio
async def test_a_copy_of_a_record_appended(log: AuditLog, keys: SigningKeys, engine: AsyncEngine) -> None:
    row = await record(engine, 9)
    await sql(
        engine,
        "INSERT INTO audit_records (seq, at, kind, agent, team_id, trace_id, body, prev_hash, hash) "
        "VALUES (21, :at, :kind, :agent, :team, :trace, :body, :prev, :hash)",
        at=row.at,
        kind=row.kind,
        agent=row.agent,
        team=row.team_id,
        trace=row.trace_id,
        body=row.body,
        prev=row.prev_hash,
        hash=row.hash,
    )
    report = await log.verify(await keys.jwks())
    assert [(p.kind, p.seq) for p in report.problems] == [("inserted", 21)]
    assert "a copy" in report.problems[0].detail


@aio
async def test_the_whole_chain_rewritten_consistently_without_the_key(
    log: AuditLog, keys: SigningKeys, engine: AsyncEngine, database: Database
) -> None:
    """Record 3 changed and every hash from it on recomputed: the chain is flawless, the signed
    checkpoints' roots are not."""
    prev = (await record(engine, 2)).hash
    for seq in range(3, N + 1):
        row = await record(engine, seq)
        body = edited_body(row.body, n=-seq) if seq == 3 else row.body
        new = chain_hash(prev, body.encode())
        await sql(
            engine,
            "UPDATE audit_records SET body = :b, prev_hash = :p, hash = :h WHERE seq = :s",
            b=body,
            p=prev,
            h=new,
            s=seq,
        )
        prev = new
    report = await log.verify(await keys.jwks())
    assert [(p.kind, p.seq) for p in report.problems] == [("checkpoint", 10), ("checkpoint", 20)]
    assert "changed after it was signed" in report.problems[0].detail
    await assert_cli_names(database, [("checkpoint", 10), ("checkpoint", 20)])


@aio
async def test_a_checkpoint_re_signed_by_another_key_under_m2a_s_kid(
    log: AuditLog, keys: SigningKeys, engine: AsyncEngine, database: Database
) -> None:
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM audit_checkpoints WHERE seq = 10"))).one()
    claims = jwt.decode(row.signature, options={"verify_signature": False})
    forger = StaticKeys(kid=row.kid)
    token = jwt.encode(
        claims, forger.private, algorithm="ES256", headers={"kid": row.kid, "typ": CHECKPOINT_TYP}
    )
    await sql(engine, "UPDATE audit_checkpoints SET signature = :t WHERE seq = 10", t=token)
    report = await log.verify(await keys.jwks())
    assert [(p.kind, p.seq) for p in report.problems] == [("checkpoint", 10)]
    assert "does not verify" in report.problems[0].detail
    await assert_cli_names(database, [("checkpoint", 10)])


@aio
async def test_a_checkpoint_row_edited_beside_its_signature(
    log: AuditLog, keys: SigningKeys, engine: AsyncEngine
) -> None:
    await sql(engine, "UPDATE audit_checkpoints SET root = :r WHERE seq = 20", r="ab" * 32)
    report = await log.verify(await keys.jwks())
    assert [(p.kind, p.seq) for p in report.problems] == [("checkpoint", 20)]
    assert "root" in report.problems[0].detail


@aio
async def test_a_garbage_checkpoint_signature(log: AuditLog, keys: SigningKeys, engine: AsyncEngine) -> None:
    await sql(engine, "UPDATE audit_checkpoints SET signature = 'not.a.jws' WHERE seq = 10")
    assert await problems(log, keys) == [("checkpoint", 10)]


@aio
async def test_checkpoints_of_retired_keys_are_unverifiable_forged_newer_ones_are_not(
    engine: AsyncEngine,
) -> None:
    """Keys are deleted oldest first: an unknown key below a known one was retired; above it, forged."""
    old, new, forger = StaticKeys(), StaticKeys(), StaticKeys()
    await build(engine, old, 10)  # checkpoint at 10 by the old key
    log = AuditLog(engine, new, issuer=ISS, checkpoint_every=EVERY)
    await log.append("receipt", {"n": 10})  # the key rotated: re-anchored at once, at 11
    report = await log.verify(await new.jwks())  # the old key was deleted since
    assert report.ok and (report.checkpoints, report.unverifiable, report.verified_seq) == (2, 1, 11), report
    assert await AuditLog(engine, forger, issuer=ISS).checkpoint() is None  # 11 is covered already
    await AuditLog(engine, None, issuer=ISS).append("receipt", {"n": 11})
    assert (await AuditLog(engine, forger, issuer=ISS).checkpoint()) is not None  # at 12
    report = await log.verify(await new.jwks())
    assert [(p.kind, p.seq) for p in report.problems] == [("checkpoint", 12)]
    assert "never signed" in report.problems[0].detail
    both = {"keys": [*(await old.jwks())["keys"], *(await new.jwks())["keys"]]}
    report = await log.verify(both)
    assert [(p.kind, p.seq) for p in report.problems] == [("checkpoint", 12)]
    assert report.unverifiable == 0 and report.verified_seq == 11


@aio
async def test_a_forged_record_claiming_a_later_number(
    log: AuditLog, keys: SigningKeys, engine: AsyncEngine
) -> None:
    """Slipped in after record 20 under the number 30 (to hide among later records), chained to 20."""
    last = await record(engine, N)
    doc = json.loads(last.body)
    doc.update(seq=30, body={"n": 30})
    body = rfc8785.dumps(doc).decode()
    await sql(
        engine,
        "INSERT INTO audit_records (seq, at, kind, agent, team_id, trace_id, body, prev_hash, hash) "
        "VALUES (21, :at, 'receipt', :agent, 1, :trace, :body, :prev, :hash)",
        at=last.at,
        agent=AGENT,
        trace=doc["trace_id"],
        body=body,
        prev=last.hash,
        hash=chain_hash(last.hash, body.encode()),
    )
    assert await problems(log, keys) == [("inserted", 21)]


@aio
async def test_record_one_re_chained_off_genesis(
    log: AuditLog, keys: SigningKeys, engine: AsyncEngine
) -> None:
    row = await record(engine, 1)
    new = chain_hash("1" * 64, row.body.encode())
    await sql(engine, "UPDATE audit_records SET prev_hash = :p, hash = :h WHERE seq = 1", p="1" * 64, h=new)
    kinds = await problems(log, keys)
    assert kinds == [("edited", 1)], kinds
    assert GENESIS != "1" * 64


async def tamper_once(engine: AsyncEngine, rnd: random.Random) -> str:
    """One random change of the kinds above (a few of them at random seqs)."""
    async with engine.connect() as conn:
        stored = (await conn.execute(text("SELECT * FROM audit_records ORDER BY seq"))).all()
    seqs = [r.seq for r in stored]
    k = rnd.choice(seqs)
    row = next(r for r in stored if r.seq == k)
    what = rnd.choice(["edit", "rehash", "delete", "close", "swap", "move", "copy", "forge", "column"])
    if what == "edit":
        await sql(
            engine, "UPDATE audit_records SET body = :b WHERE seq = :s", b=edited_body(row.body, n=-1), s=k
        )
    elif what == "rehash":
        body = edited_body(row.body, n=-2)
        new = chain_hash(row.prev_hash, body.encode())
        await sql(engine, "UPDATE audit_records SET body = :b, hash = :h WHERE seq = :s", b=body, h=new, s=k)
    elif what in ("delete", "close"):
        m = rnd.randint(1, 3)
        await sql(engine, "DELETE FROM audit_records WHERE seq >= :a AND seq < :b", a=k, b=k + m)
        if what == "close":
            await renumber(engine, k + m, -m)
    elif what == "swap":
        j = rnd.choice([s for s in seqs if s != k])
        await sql(engine, "UPDATE audit_records SET seq = -1 WHERE seq = :a", a=k)
        await sql(engine, "UPDATE audit_records SET seq = :a WHERE seq = :b", a=k, b=j)
        await sql(engine, "UPDATE audit_records SET seq = :b WHERE seq = -1", b=j)
    elif what == "move":
        await sql(
            engine, "UPDATE audit_records SET seq = :n WHERE seq = :a", n=max(seqs) + rnd.randint(1, 5), a=k
        )
    elif what == "column":
        await sql(engine, "UPDATE audit_records SET trace_id = 'x' WHERE seq = :a", a=k)
    else:
        doc = json.loads(row.body)
        body, prev = row.body, row.prev_hash
        if what == "forge":
            await renumber(engine, k, 1)
            doc.update(seq=rnd.choice([k, k + 1, k + 5, 10**6, 1]), body={"forged": True})
            body, prev = rfc8785.dumps(doc).decode(), rnd.choice([row.prev_hash, "1" * 64, row.hash])
        await sql(
            engine,
            "INSERT INTO audit_records (seq, at, kind, agent, team_id, trace_id, body, prev_hash, hash) "
            "VALUES (:s, :at, :kind, :agent, :team, :trace, :body, :prev, :hash)",
            s=k if what == "forge" else max(seqs) + 1,
            at=row.at,
            kind=row.kind,
            agent=row.agent,
            team=row.team_id,
            trace=row.trace_id,
            body=body,
            prev=prev,
            hash=chain_hash(prev, body.encode()) if what == "forge" else row.hash,
        )
    return f"{what} {k}"


@aio
async def test_random_tampering_is_always_reported_and_never_breaks_verify(
    sqlite_engine: AsyncEngine,
) -> None:
    keys = StaticKeys()
    jwks = await keys.jwks()
    for seed in range(24):
        await sql(sqlite_engine, "DELETE FROM audit_records")
        await sql(sqlite_engine, "DELETE FROM audit_checkpoints")
        await build(sqlite_engine, keys)
        rnd = random.Random(seed)
        done = [await tamper_once(sqlite_engine, rnd) for _ in range(rnd.randint(1, 3))]
        report = await AuditLog(sqlite_engine, None, issuer=ISS).verify(jwks)
        assert not report.ok, (seed, done)
        assert all(p.kind in PROBLEM_KINDS and p.detail and p.seq >= 1 for p in report.problems), (seed, done)


@aio
async def test_bodies_that_are_not_records(sqlite_engine: AsyncEngine) -> None:
    keys = StaticKeys()
    log = await build(sqlite_engine, keys, 6)
    for seq, body in (
        (2, "not json"),
        (3, '{"seq": 1e400}'),
        (4, json.dumps({"seq": 10**30, "at": "x"})),
        (5, "[]"),
    ):
        await sql(sqlite_engine, "UPDATE audit_records SET body = :b WHERE seq = :s", b=body, s=seq)
    report = await log.verify(await keys.jwks())
    assert [(p.kind, p.seq) for p in report.problems] == [("edited", s) for s in (2, 2, 3, 3, 4, 4, 5, 5)]
    assert "not an audit record" in report.problems[1].detail
