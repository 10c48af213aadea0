"""The audit log on real SQLite and PostgreSQL stores: appends (one, many, concurrent tasks, two real
OS processes at once), the records' canonical form and chain, show and export (and ``m2a audit
show|export``), signed checkpoints (inline, by time, after a key rotation, continued by a new
process from the signed frontier, refused over a changed log), and the RFC 6962 Merkle tree hash
against the Certificate Transparency reference vectors."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import rfc8785
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from m2a.agents.keys import SigningKeys
from m2a.cli.audit_cmd import audit_app, parse_when
from m2a.trust import merkle
from m2a.trust.audit import (
    CHECKPOINT_TYP,
    GENESIS,
    AuditError,
    AuditItem,
    AuditLog,
    canonical,
    chain_hash,
)
from tests.db_fixtures import Database
from tests.trust.conftest import StaticKeys

aio = pytest.mark.asyncio(loop_scope="session")

ISS = "https://m2a.test"
ALICE = "spiffe://m2a.test/team/eng/agent/alice"
BOB = "spiffe://m2a.test/team/ops/agent/bob"
TRACE = "0af7651916cd43dd8448eb211c80319c"


async def rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT * FROM audit_records ORDER BY seq"))).all()


async def checkpoint_rows(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT * FROM audit_checkpoints ORDER BY seq"))).all()


def cli_env(database: Database) -> dict[str, str]:
    return {"M2A_HOME": str(database.home), "M2A_DATABASE_URL": database.url or "", "COLUMNS": "250"}


# -- the Merkle tree ---------------------------------------------------------------------------

CT_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962's definition, recursively, as written there."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + reference_root(leaves[:k]) + reference_root(leaves[k:])).digest()


def test_merkle_roots_match_the_certificate_transparency_vectors() -> None:
    for n in range(9):
        assert merkle.root(CT_LEAVES[:n]).hex() == CT_ROOTS[n], n


def test_merkle_accumulator_matches_the_recursive_definition_and_resumes_from_its_frontier() -> None:
    leaves = [bytes([i, i * 7 % 256]) for i in range(70)]
    acc = merkle.Accumulator()
    for n, leaf in enumerate(leaves, start=1):
        acc.add(leaf)
        assert acc.root() == reference_root(leaves[:n]), n
        resumed = merkle.Accumulator(acc.size, acc.frontier())
        for more in leaves[n : n + 3]:
            resumed.add(more)
        assert resumed.root() == reference_root(leaves[: n + 3])
    with pytest.raises(ValueError):
        merkle.Accumulator(5, [bytes(32)])  # 5 leaves need 2 subtree roots


def test_merkle_inclusion_proofs() -> None:
    assert [h.hex()[:8] for h in merkle.inclusion_proof(CT_LEAVES, 0)] == ["96a296d2", "5f083f0a", "6b47aaf2"]
    assert [h.hex()[:8] for h in merkle.inclusion_proof(CT_LEAVES, 5)] == ["bc1a0643", "ca854ea1", "d37ee418"]
    leaves = [bytes([i]) for i in range(21)]
    for size in range(1, 22):
        root = merkle.root(leaves[:size])
        for i in range(size):
            proof = merkle.inclusion_proof(leaves[:size], i)
            assert merkle.verify_inclusion(leaves[i], i, size, proof, root)
            assert not merkle.verify_inclusion(b"forged", i, size, proof, root)
            if size > 1:
                assert not merkle.verify_inclusion(leaves[i], (i + 1) % size, size, proof, root)
                assert not merkle.verify_inclusion(leaves[i], i, size, proof[:-1], root)


# -- records -----------------------------------------------------------------------------------


def test_the_canonical_form_is_rfc_8785_of_the_whole_record() -> None:
    body = {"z": [1, 2.5, 1e21], "a": 'é\u2028"q"', "n": None, "nested": {"b": True, "a": -0.0}}
    doc = {
        "seq": 42,
        "at": "2025-01-31T12:00:00.000001Z",
        "kind": "receipt",
        "agent": ALICE,
        "team_id": 3,
        "trace_id": TRACE,
        "body": body,
    }
    made = canonical(42, doc["at"], "receipt", ALICE, 3, TRACE, rfc8785.dumps(body))
    assert made == rfc8785.dumps(doc)
    assert canonical(1, doc["at"], "x", None, None, None, b"{}") == rfc8785.dumps(
        {"seq": 1, "at": doc["at"], "kind": "x", "agent": None, "team_id": None, "trace_id": None, "body": {}}
    )


@aio
async def test_append_chains_gapless_records_in_canonical_form(engine: AsyncEngine) -> None:
    log = AuditLog(engine, None, issuer=ISS)
    first = await log.append(
        "decision", {"tool": "erp.create_invoice", "allowed": True}, agent=ALICE, team_id=1, trace_id=TRACE
    )
    more = await log.append_many(
        [
            AuditItem("intent", {"jti": "j1", "digest": "d" * 64}, ALICE, 1, TRACE),
            AuditItem("receipt", {"ok": True}),
        ]
    )
    last = await log.append("egress", {"host": "example.com", "port": 443}, agent=BOB)
    assert [e.seq for e in [first, *more, last]] == [1, 2, 3, 4]
    stored = await rows(engine)
    assert [r.seq for r in stored] == [1, 2, 3, 4]
    prev = GENESIS
    for r, entry in zip(stored, [first, *more, last], strict=True):
        assert r.prev_hash == prev and r.hash == entry.hash
        assert r.hash == hashlib.sha256(prev.encode() + r.body.encode()).hexdigest()
        doc = json.loads(r.body)
        assert rfc8785.dumps(doc).decode() == r.body
        assert doc["seq"] == r.seq and doc["kind"] == r.kind and doc["agent"] == r.agent
        assert (
            datetime.fromisoformat(doc["at"]) == entry.at and doc["at"].endswith("Z") and len(doc["at"]) == 27
        )
        prev = r.hash
    assert [e.at for e in [first, *more, last]] == sorted(e.at for e in [first, *more, last])
    assert json.loads(stored[1].body)["body"] == {"digest": "d" * 64, "jti": "j1"}
    assert (await log.verify()).ok


@aio
async def test_bad_records_are_refused_before_anything_is_written(sqlite_engine: AsyncEngine) -> None:
    log = AuditLog(sqlite_engine, None, issuer=ISS)
    for kind, body, kw in (
        ("receipt", {"at": datetime.now(UTC)}, {}),  # not JSON
        ("receipt", {"big": 2**60}, {}),  # beyond I-JSON's integers
        ("", {}, {}),
        ("k" * 33, {}, {}),
        ("receipt", {}, {"team_id": "1"}),
        ("receipt", {}, {"trace_id": "x" * 33}),
    ):
        with pytest.raises(ValueError):
            await log.append(kind, body, **kw)
    with pytest.raises(ValueError):
        await log.append_many([AuditItem("ok", {}), AuditItem("bad", {"x": {1, 2}})])
    assert await rows(sqlite_engine) == []


@aio
async def test_concurrent_appends_in_one_process_share_transactions(engine: AsyncEngine) -> None:
    log = AuditLog(engine, None, issuer=ISS)
    entries = await asyncio.gather(*(log.append("receipt", {"n": i}) for i in range(60)))
    assert sorted(e.seq for e in entries) == list(range(1, 61))
    stored = await rows(engine)
    assert sorted(json.loads(r.body)["body"]["n"] for r in stored) == list(range(60))
    assert len({r.at for r in stored}) < 60  # grouped: records written together share their time
    assert (await log.verify()).ok


CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from m2a.agents.keys import SigningKeys
    from m2a.store.db import open_store
    from m2a.trust.audit import AuditLog

    async def main(url, home, name, n, flags):
        engine = await open_store(url or None, Path(home))
        log = AuditLog(engine, SigningKeys(engine), issuer="https://m2a.test", checkpoint_every=16)
        Path(flags, name + ".ready").touch()
        while not Path(flags, "go").exists():
            time.sleep(0.005)
        async def writer(k):
            for i in range(n // 4):
                await log.append("receipt", {"writer": name, "task": k, "n": i}, agent=name)
        await asyncio.gather(*(writer(k) for k in range(4)))
        await engine.dispose()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
    """
)


@aio
async def test_two_processes_appending_at_once_keep_one_gapless_chain(
    database: Database, tmp_path: Path
) -> None:
    engine = await database.open()
    flags = tmp_path / "flags"
    flags.mkdir()
    n = 120
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, database.url or "", str(database.home), name, str(n), str(flags)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for name in ("p1", "p2")
    ]
    try:
        while not all((flags / f"{name}.ready").exists() for name in ("p1", "p2")):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            await asyncio.sleep(0.02)
        (flags / "go").touch()
        outcomes = [await asyncio.to_thread(p.communicate, timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outcomes
    stored = await rows(engine)
    assert [r.seq for r in stored] == list(range(1, 2 * n + 1))
    writers = [json.loads(r.body)["body"]["writer"] for r in stored]
    assert writers.count("p1") == writers.count("p2") == n
    assert any(a != b for a, b in zip(writers, writers[1:], strict=False))  # they did interleave
    report = await AuditLog(engine, None, issuer=ISS).verify(await SigningKeys(engine).jwks())
    assert report.ok and report.records == 2 * n and report.checkpoints >= 2 * n // 16 - 2, report
    assert report.verified_seq >= 2 * n - 16


# -- show and export ---------------------------------------------------------------------------


async def some_records(log: AuditLog) -> None:
    for i in range(6):
        agent = ALICE if i % 2 == 0 else BOB
        await log.append(
            "receipt" if i % 3 else "decision",
            {"n": i},
            agent=agent,
            team_id=i % 2 + 1,
            trace_id=TRACE if i < 3 else f"{i:032x}",
        )


@aio
async def test_show_filters_and_pages(engine: AsyncEngine) -> None:
    log = AuditLog(engine, None, issuer=ISS)
    await some_records(log)
    everything = await log.show()
    assert [r["seq"] for r in everything] == [1, 2, 3, 4, 5, 6]
    r = everything[0]
    assert set(r) == {"seq", "at", "kind", "agent", "team_id", "trace_id", "body", "prev_hash", "hash"}
    assert (r["kind"], r["agent"], r["team_id"], r["trace_id"], r["body"]) == (
        "decision",
        ALICE,
        1,
        TRACE,
        {"n": 0},
    )
    assert r["prev_hash"] == GENESIS
    assert [r["seq"] for r in await log.show(agent=BOB)] == [2, 4, 6]
    assert [r["seq"] for r in await log.show(trace_id=TRACE)] == [1, 2, 3]
    assert [r["seq"] for r in await log.show(kind="decision")] == [1, 4]
    assert [r["seq"] for r in await log.show(agent=ALICE, kind="receipt")] == [3, 5]
    assert [r["seq"] for r in await log.show(limit=2)] == [5, 6]  # the newest
    assert [r["seq"] for r in await log.show(limit=2, after_seq=2)] == [3, 4]
    at4 = datetime.fromisoformat(everything[3]["at"])
    assert [r["seq"] for r in await log.show(since=at4)] == [4, 5, 6]
    assert [r["seq"] for r in await log.show(until=at4)] == [1, 2, 3]
    local = at4.astimezone(UTC).replace(tzinfo=None)  # naive: UTC
    assert [r["seq"] for r in await log.show(since=local)] == [4, 5, 6]
    assert await log.show(since=datetime.now(UTC) + timedelta(hours=1)) == []


@aio
async def test_export_writes_every_record_as_a_json_line(engine: AsyncEngine) -> None:
    log = AuditLog(engine, None, issuer=ISS)
    await some_records(log)
    buf = io.StringIO()
    assert await log.export(buf) == 6
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert lines == await log.show()
    buf = io.StringIO()
    assert await log.export(buf, agent=BOB, after_seq=2) == 2
    assert [json.loads(line)["seq"] for line in buf.getvalue().splitlines()] == [4, 6]


@aio
async def test_the_cli_shows_and_exports(database: Database, tmp_path: Path) -> None:
    log = AuditLog(await database.open(), None, issuer=ISS)
    await some_records(log)
    env, runner = cli_env(database), CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(audit_app, list(args), env=env)

    result = await asyncio.to_thread(run, "show", "--agent", BOB, "--json")
    assert result.exit_code == 0, result.output
    assert [r["seq"] for r in json.loads(result.output)] == [2, 4, 6]
    result = await asyncio.to_thread(run, "show", "--kind", "decision", "--since", "1h")
    assert result.exit_code == 0, result.output
    assert "decision" in result.output and '{"n":3}' in result.output and "receipt" not in result.output
    out = tmp_path / "audit.jsonl"
    result = await asyncio.to_thread(run, "export", "--out", str(out), "--trace", TRACE)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == [1, 2, 3]
    result = await asyncio.to_thread(run, "show", "--since", "yesterday")
    assert result.exit_code == 2 and "ISO 8601" in result.output and "Traceback" not in result.output
    result = await asyncio.to_thread(run, "verify", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["records"] == 6


def test_parse_when() -> None:
    now = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    assert parse_when("30m", "--since", now) == now - timedelta(minutes=30)
    assert parse_when("1.5h", "--since", now) == now - timedelta(hours=1.5)
    assert parse_when("2025-01-01T00:00:00", "--since") == datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_when("2025-01-01T01:00:00+01:00", "--since") == datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_when(None, "--since") is None


# -- checkpoints -------------------------------------------------------------------------------


@aio
async def test_checkpoints_are_signed_inline_and_verify(engine: AsyncEngine, keys: SigningKeys) -> None:
    log = AuditLog(engine, keys, issuer=ISS, checkpoint_every=5, checkpoint_interval_s=3600)
    for i in range(12):
        await log.append("receipt", {"n": i})
    ckpts = await checkpoint_rows(engine)
    assert [c.seq for c in ckpts] == [5, 10]
    hashes = [bytes.fromhex(r.hash) for r in await rows(engine)]
    jwks = await keys.jwks()
    for c in ckpts:
        header = jwt.get_unverified_header(c.signature)
        assert header["typ"] == CHECKPOINT_TYP and header["alg"] == "ES256" and header["kid"] == c.kid
        jwk = next(k for k in jwks["keys"] if k["kid"] == c.kid)
        claims = jwt.decode(c.signature, jwt.PyJWK(jwk).key, algorithms=["ES256"])
        assert claims["iss"] == ISS and claims["seq"] == c.seq
        assert claims["root"] == c.root == merkle.root(hashes[: c.seq]).hex()
        assert claims["head_hash"] == c.head_hash == (await rows(engine))[c.seq - 1].hash
        frontier = [bytes.fromhex(h) for h in claims["frontier"]]
        assert merkle.Accumulator(c.seq, frontier).root().hex() == c.root
    made = await log.checkpoint()
    assert made is not None and made.seq == 12 and made.root == merkle.root(hashes).hex()
    assert await log.checkpoint() is None  # nothing new to cover
    report = await log.verify(jwks)
    assert report.ok and report.checkpoints == 3 and report.verified_seq == 12


@aio
async def test_a_checkpoint_is_due_when_the_oldest_uncovered_record_waited(
    sqlite_engine: AsyncEngine,
) -> None:
    log = AuditLog(sqlite_engine, StaticKeys(), issuer=ISS, checkpoint_every=1000, checkpoint_interval_s=0.2)
    await log.append("receipt", {"n": 0})
    assert await log.maybe_checkpoint() is None  # not yet
    await asyncio.sleep(0.3)
    made = await log.maybe_checkpoint()
    assert made is not None and made.seq == 1
    assert await log.maybe_checkpoint() is None
    await log.append("receipt", {"n": 1})
    await asyncio.sleep(0.3)
    await log.append("receipt", {"n": 2})  # inline: the record before it waited long enough
    assert [c.seq for c in await checkpoint_rows(sqlite_engine)] == [1, 3]


@aio
async def test_without_keys_nothing_is_signed(sqlite_engine: AsyncEngine) -> None:
    log = AuditLog(sqlite_engine, None, issuer=ISS, checkpoint_every=1)
    for i in range(3):
        await log.append("receipt", {"n": i})
    assert await log.checkpoint() is None and await checkpoint_rows(sqlite_engine) == []
    report = await log.verify({"keys": []})
    assert report.ok and (report.records, report.checkpoints) == (3, 0)


@aio
async def test_a_new_process_continues_the_tree_from_the_signed_frontier(
    engine: AsyncEngine, keys: SigningKeys
) -> None:
    first = AuditLog(engine, keys, issuer=ISS, checkpoint_every=7)
    for i in range(9):
        await first.append("receipt", {"n": i})
    # Record 3's body edited (its hash left): a process rebuilding its tree from the rows would
    # stop there; a later process reads only the records after the checkpoint at 7, whose signed
    # frontier stands for records 1..7, so it goes on signing — the true history.
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE audit_records SET body = replace(body, :a, :b) WHERE seq = 3"),
            {"a": '"n":2', "b": '"n":22'},
        )
    second = AuditLog(engine, keys, issuer=ISS, checkpoint_every=7)
    for i in range(9, 16):
        await second.append("receipt", {"n": i})
    hashes = [bytes.fromhex(r.hash) for r in await rows(engine)]
    ckpts = await checkpoint_rows(engine)
    assert [c.seq for c in ckpts] == [7, 14]
    assert ckpts[1].root == merkle.root(hashes[:14]).hex()
    report = await second.verify(await keys.jwks())
    assert [(p.kind, p.seq) for p in report.problems] == [("edited", 3)]


@aio
async def test_no_checkpoint_is_signed_over_a_changed_log(engine: AsyncEngine, keys: SigningKeys) -> None:
    log = AuditLog(engine, keys, issuer=ISS, checkpoint_every=5)
    for i in range(8):
        await log.append("receipt", {"n": i})
    async with engine.begin() as conn:  # record 7 edited and re-hashed: record 8 no longer chains to it
        r = (await conn.execute(text("SELECT prev_hash, body FROM audit_records WHERE seq = 7"))).one()
        body = r.body.replace('"n":6', '"n":66')
        await conn.execute(
            text("UPDATE audit_records SET body = :b, hash = :h WHERE seq = 7"),
            {"b": body, "h": chain_hash(r.prev_hash, body.encode())},
        )
    with pytest.raises(AuditError, match="record 8 does not chain"):
        await log.checkpoint()
    for fresh in (True, False):  # a new process (rebuilding its tree from the rows) refuses too
        other = AuditLog(engine, keys, issuer=ISS, checkpoint_every=5) if fresh else log
        entry = await other.append(
            "receipt", {"n": 99}
        )  # the append itself succeeds; the checkpoint is refused
        assert entry.seq in (9, 10)
    assert [c.seq for c in await checkpoint_rows(engine)] == [5]


@aio
async def test_a_log_that_no_longer_matches_its_checkpoint_is_not_signed_again(
    sqlite_engine: AsyncEngine,
) -> None:
    """A process whose key can't check the newest checkpoint rebuilds the tree from the rows and
    compares it with that checkpoint's root."""
    first = AuditLog(sqlite_engine, StaticKeys(), issuer=ISS, checkpoint_every=4)
    for i in range(4):
        await first.append("receipt", {"n": i})
    prev = GENESIS
    async with sqlite_engine.begin() as conn:  # the whole chain rewritten consistently
        for r in (await conn.execute(text("SELECT * FROM audit_records ORDER BY seq"))).all():
            body = r.body.replace('"n":', '"n":1')
            h = chain_hash(prev, body.encode())
            await conn.execute(
                text("UPDATE audit_records SET body = :b, prev_hash = :p, hash = :h WHERE seq = :s"),
                {"b": body, "p": prev, "h": h, "s": r.seq},
            )
            prev = h
    other = AuditLog(sqlite_engine, StaticKeys(), issuer=ISS, checkpoint_every=4)
    await other.append("receipt", {"n": 4})
    with pytest.raises(AuditError, match="no longer matches its checkpoint at 4"):
        await other.checkpoint()


@aio
async def test_a_rotated_key_re_anchors_the_log_at_once(sqlite_engine: AsyncEngine) -> None:
    old, new = StaticKeys(), StaticKeys()
    log = AuditLog(sqlite_engine, old, issuer=ISS, checkpoint_every=100, checkpoint_interval_s=3600)
    await log.append("receipt", {"n": 0})
    assert (await log.checkpoint()) is not None
    log.keys = new  # what SigningKeys does at a rotation: signer() returns the next key
    await log.append("receipt", {"n": 1})
    ckpts = await checkpoint_rows(sqlite_engine)
    assert [(c.seq, c.kid) for c in ckpts] == [(1, old.kid), (2, new.kid)]
    report = await log.verify(await new.jwks())
    assert report.ok and report.verified_seq == 2 and report.unverifiable == 1


@aio
async def test_appends_per_second_smoke(sqlite_engine: AsyncEngine) -> None:
    """Not a timing assertion: many appends, grouped, then one verify of all of them."""
    log = AuditLog(sqlite_engine, StaticKeys(), issuer=ISS, checkpoint_every=256)
    started = time.perf_counter()
    for batch in range(10):
        await asyncio.gather(*(log.append("receipt", {"b": batch, "n": i}) for i in range(100)))
    assert time.perf_counter() > started
    report = await log.verify(None)
    assert report.ok and report.records == 1000 and report.checkpoints >= 3


@aio
async def test_the_cli_checks_old_checkpoints_against_a_saved_jwks(
    database: Database, tmp_path: Path
) -> None:
    """Checkpoints signed by a key the store no longer publishes: unverifiable, not forged, until a
    JWKS kept from back then is given."""
    retired = StaticKeys()
    log = AuditLog(await database.open(), retired, issuer=ISS, checkpoint_every=3)
    for i in range(7):
        await log.append("receipt", {"n": i})
    env = cli_env(database)
    result = await asyncio.to_thread(CliRunner().invoke, audit_app, ["verify"], env=env)
    assert result.exit_code == 0, result.output
    assert "intact: 7 records, 2 checkpoints" in result.output and "vouch for no records" in result.output
    assert "2 checkpoints were signed by keys m2a has since retired" in result.output
    saved = tmp_path / "jwks.json"
    saved.write_text(json.dumps(await retired.jwks()))
    result = await asyncio.to_thread(
        CliRunner().invoke, audit_app, ["verify", "--jwks", str(saved), "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert (doc["ok"], doc["verified_seq"], doc["unverifiable"]) == (True, 6, 0)
    saved.write_text("[]")
    result = await asyncio.to_thread(CliRunner().invoke, audit_app, ["verify", "--jwks", str(saved)], env=env)
    assert result.exit_code == 2 and "not a JWKS" in result.output
