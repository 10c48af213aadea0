"""Signed intents: issued with m2a's real signing keys (SQLite and PostgreSQL stores), verified offline
from the JWKS (a document, a file, a real HTTP server), consumed once, and checked by `m2a intents`."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from m2a.agents.keys import SigningKeys
from m2a.cli.intents_cmd import intents_app
from m2a.principal import AgentRef
from m2a.store.schema import IntentUseRow
from m2a.trust.intents import TYP, IntentIssuer, SignedIntent, args_digest, intent_digest, on_behalf_of
from m2a.trust.replay import (
    GRACE_S,
    MemoryReplayCache,
    SQLiteReplayCache,
    StoreReplay,
    admit,
    admit_sync,
)
from m2a.trust.verify import Intent, IntentError, JwksSource, averify_intent, verify_intent
from tests.trust.conftest import JwksServer, StaticKeys

aio = pytest.mark.asyncio(loop_scope="session")  # the loop the store fixtures run on

AUD = "m2a:executor:mcp"
ISS = "https://m2a.test"
AGENT = AgentRef("spiffe://m2a.test/team/eng/agent/billing-bot", 7, "billing-bot", 3, 31, subject="user:ana")
POLICY = {"id": "team-eng-tools", "version": "4", "mode": "enforce"}
ARGS = {"invoice": 1042, "lines": [{"sku": "A-1", "qty": 2}], "note": "ok"}


async def issue(keys: Any, **over: Any) -> SignedIntent:
    kw: dict[str, Any] = dict(
        audience=AUD,
        agent=AGENT,
        server="erp",
        tool="create_invoice",
        arguments=ARGS,
        tier="write",
        policy=POLICY,
        guardrails=[{"detector": "pii", "action": "allow"}],
        trace_id="0af7651916cd43dd8448eb211c80319c",
    )
    kw.update(over)
    return await IntentIssuer(keys, ISS).issue(**kw)


async def uses(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(IntentUseRow))).scalar_one())


# -- the digest of the arguments ------------------------------------------------------------------


def test_args_digest_is_sha256_of_the_canonical_json() -> None:
    assert (
        args_digest({"b": 1, "a": [1.5, "é"]}) == hashlib.sha256(b'{"a":[1.5,"\xc3\xa9"],"b":1}').hexdigest()
    )
    assert args_digest({"a": 1, "b": 2}) == args_digest({"b": 2, "a": 1})  # key order is not meaning
    assert args_digest(None) == args_digest({}) == hashlib.sha256(b"{}").hexdigest()
    assert args_digest({"a": 1}) != args_digest({"a": "1"})


@pytest.mark.parametrize(
    "bad", [{"n": 2**53 + 1}, {"x": math.nan}, {"x": math.inf}, {"s": {1, 2}}, {1: "int key"}, object()]
)
def test_args_digest_refuses_what_jcs_cannot_canonicalize(bad: Any) -> None:
    with pytest.raises(ValueError, match="RFC 8785"):
        args_digest(bad)


# -- issuing ----------------------------------------------------------------------------------------


@aio
async def test_issue_then_verify_round_trip_with_m2a_signing_keys(keys: SigningKeys) -> None:
    signed = await issue(keys)
    header = jwt.get_unverified_header(signed.token)
    signer = await keys.signer()
    assert header == {"alg": "ES256", "typ": TYP, "kid": signer.kid}
    assert signed.digest == hashlib.sha256(signed.token.encode()).hexdigest() == intent_digest(signed.token)

    intent = verify_intent(signed.token, await keys.jwks(), audience=AUD, issuer=ISS, arguments=ARGS)
    assert intent == signed.claims
    assert intent.sub == AGENT.spiffe_id and intent.aud == AUD and intent.iss == ISS
    assert intent.agent.model_dump() == {
        "id": 7, "name": "billing-bot", "team": "eng", "version": 3, "version_id": 31
    }  # fmt: skip
    assert intent.act is not None and intent.act.chain() == ["user:ana"]  # the user the agent acts for
    assert intent.tool.server == "erp" and intent.tool.name == "create_invoice"
    assert intent.args_sha256 == args_digest(ARGS)
    assert intent.policy.mode == "enforce" and intent.guardrails[0].detector == "pii"
    assert len(intent.jti) == 32 and int(intent.jti, 16) >= 0
    assert intent.exp - intent.iat == 30 and abs(intent.iat - time.time()) < 120

    raw = json.loads(base64.urlsafe_b64decode(signed.token.split(".")[1] + "=="))
    assert raw["act"] == {"sub": "user:ana"}  # RFC 8693 shape: no "act": null inside
    assert raw["approval"] is None and set(raw) == set(Intent.model_fields)


@aio
async def test_each_intent_has_its_own_nonce() -> None:
    keys = StaticKeys()
    jtis = {(await issue(keys)).claims.jti for _ in range(50)}
    assert len(jtis) == 50


@aio
async def test_issue_from_the_agent_claim_and_a_nested_chain() -> None:
    keys = StaticKeys()
    chain = on_behalf_of("user:ana", "spiffe://m2a.test/team/ops/agent/planner")
    signed = await issue(
        keys,
        agent={"id": 1, "name": "a", "team": "ops", "version": None, "version_id": None},
        sub="spiffe://m2a.test/team/ops/agent/a",
        act=chain,
        tier="destructive",
        approval="mcpr_0123",
        guardrails=[],
        trace_id=None,
    )
    intent = verify_intent(signed.token, await keys.jwks(), audience=AUD)
    assert intent.act is not None and intent.act.chain() == [
        "user:ana",
        "spiffe://m2a.test/team/ops/agent/planner",
    ]
    assert intent.approval == "mcpr_0123" and intent.tier == "destructive" and intent.guardrails == []
    raw = jwt.decode(signed.token, options={"verify_signature": False})
    assert raw["act"] == {"sub": "user:ana", "act": {"sub": "spiffe://m2a.test/team/ops/agent/planner"}}


@aio
async def test_issue_refuses_what_it_must_not_sign() -> None:
    keys = StaticKeys()
    for ttl in (0, 61, -5, 3600):
        with pytest.raises(ValueError, match="1..60"):
            IntentIssuer(keys, ISS, ttl_s=ttl)
    assert IntentIssuer(keys, ISS, ttl_s=60).ttl_s == 60
    with pytest.raises(ValueError, match="approval"):
        await issue(keys, tier="destructive")  # destructive needs a person's approval first
    with pytest.raises(ValueError, match="RFC 8785"):
        await issue(keys, arguments={"n": 2**60})
    with pytest.raises(ValueError, match="sub"):
        await issue(keys, agent={"id": 1, "name": "a", "team": "t", "version": 1, "version_id": 1})
    with pytest.raises(ValueError):
        await issue(keys, tier="delete-everything")
    with pytest.raises(ValueError):
        await issue(keys, policy={"id": "p", "version": "1", "mode": "sometimes"})
    with pytest.raises(ValueError):
        await issue(keys, trace_id="not-hex")
    with pytest.raises(ValueError, match="team"):
        await issue(keys, agent=AgentRef("spiffe://elsewhere/agent-without-team", 1, "x"))


# -- the JWKS ---------------------------------------------------------------------------------------


@aio
async def test_jwks_source_reads_m2a_keys_over_http_and_from_a_file(
    sqlite_keys: SigningKeys, jwks_server: JwksServer, tmp_path: Path
) -> None:
    signed = await issue(sqlite_keys)
    jwks_server.doc = await sqlite_keys.jwks()
    source = JwksSource(jwks_server.url)
    for _ in range(3):
        assert verify_intent(signed.token, source, audience=AUD, arguments=ARGS).jti == signed.claims.jti
    assert jwks_server.hits == 1  # cached

    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(await sqlite_keys.jwks()))
    assert verify_intent(signed.token, JwksSource.from_file(path), audience=AUD).jti == signed.claims.jti

    intent = await averify_intent(signed.token, JwksSource(jwks_server.url), audience=AUD, arguments=ARGS)
    assert intent.jti == signed.claims.jti and jwks_server.hits == 2


@aio
async def test_jwks_source_refreshes_after_its_ttl(jwks_server: JwksServer) -> None:
    keys = StaticKeys()
    jwks_server.doc = await keys.jwks()
    clock = [1000.0]
    source = JwksSource(jwks_server.url, ttl_s=300, clock=lambda: clock[0])
    signed = await issue(keys)
    verify_intent(signed.token, source, audience=AUD)
    clock[0] += 299
    verify_intent(signed.token, source, audience=AUD)
    assert jwks_server.hits == 1
    clock[0] += 2
    verify_intent(signed.token, source, audience=AUD)
    assert jwks_server.hits == 2


# -- single use -------------------------------------------------------------------------------------


@aio
async def test_admit_consumes_once_in_the_store(engine: AsyncEngine) -> None:
    keys = SigningKeys(engine)
    signed = await issue(keys)
    replay = StoreReplay(engine)
    jwks = await keys.jwks()
    intent = await admit(signed.token, ARGS, jwks=jwks, audience=AUD, issuer=ISS, replay=replay)
    assert intent.jti == signed.claims.jti and await uses(engine) == 1
    with pytest.raises(IntentError) as exc:
        await admit(signed.token, ARGS, jwks=jwks, audience=AUD, issuer=ISS, replay=replay)
    assert exc.value.code == "replayed" and await uses(engine) == 1
    async with engine.connect() as conn:
        row = (await conn.execute(select(IntentUseRow))).one()
    assert row.jti == signed.claims.jti and row.audience == AUD
    assert int(row.expires_at.timestamp()) == signed.claims.exp


@aio
async def test_store_replay_holding_one_connection(engine: AsyncEngine) -> None:
    keys = SigningKeys(engine)
    jwks = await keys.jwks()
    async with StoreReplay(engine, hold=True) as held, StoreReplay(engine, hold=True) as other:
        first = await issue(keys)
        await admit(first.token, ARGS, jwks=jwks, audience=AUD, issuer=ISS, replay=held)
        for replay in (held, other, StoreReplay(engine)):
            with pytest.raises(IntentError, match="replayed"):
                await admit(first.token, ARGS, jwks=jwks, audience=AUD, issuer=ISS, replay=replay)
        second = await issue(keys)
        assert await other.consume(second.claims.jti, AUD, second.claims.exp)  # committed at once:
        assert not await held.consume(second.claims.jti, AUD, second.claims.exp)  # seen by the other
        if engine.dialect.name == "postgresql":  # the held connection dies: a new one takes over
            assert held._conn is not None
            pid = (await held._conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            async with engine.connect() as conn:
                await conn.execute(text(f"SELECT pg_terminate_backend({int(pid)})"))
            third = await issue(keys)
            assert await held.consume(third.claims.jti, AUD, third.claims.exp)
            assert not await held.consume(third.claims.jti, AUD, third.claims.exp)
    assert held._conn is None and await uses(engine) == (3 if engine.dialect.name == "postgresql" else 2)


@aio
async def test_store_replay_prunes_only_long_expired_uses(sqlite_engine: AsyncEngine) -> None:
    now = time.time()
    replay = StoreReplay(sqlite_engine, clock=lambda: now)
    assert await replay.consume("a" * 32, AUD, int(now - GRACE_S - 10))  # expired long ago
    assert await replay.consume("b" * 32, AUD, int(now - 1))  # just expired: a copy may still verify
    assert await replay.consume("c" * 32, AUD, int(now + 30))
    assert await replay.prune() == 1
    assert await uses(sqlite_engine) == 2
    assert not await replay.consume("b" * 32, AUD, int(now - 1))


@aio
async def test_admit_with_a_sync_replay_cache() -> None:
    keys = StaticKeys()
    signed = await issue(keys)
    cache = MemoryReplayCache()
    jwks = await keys.jwks()
    await admit(signed.token, ARGS, jwks=jwks, audience=AUD, issuer=ISS, replay=cache)
    with pytest.raises(IntentError) as exc:
        await admit(signed.token, ARGS, jwks=jwks, audience=AUD, issuer=ISS, replay=cache)
    assert exc.value.code == "replayed"
    other = await issue(keys)
    assert (
        admit_sync(other.token, ARGS, jwks=jwks, audience=AUD, issuer=None, replay=cache).jti
        == other.claims.jti
    )
    with pytest.raises(IntentError, match="replayed"):
        admit_sync(other.token, ARGS, jwks=jwks, audience=AUD, issuer=None, replay=cache)


def test_replay_caches_consume_once_and_prune(tmp_path: Path) -> None:
    now = [10_000.0]
    for cache in (
        MemoryReplayCache(clock=lambda: now[0]),
        SQLiteReplayCache(tmp_path / "r.db", clock=lambda: now[0]),
    ):
        assert cache.consume("x" * 32, int(now[0]) + 30)
        assert not cache.consume("x" * 32, int(now[0]) + 30)
        assert cache.consume("y" * 32, int(now[0]) + 30)
        now[0] += 30 + GRACE_S + 1  # both long expired: forgotten at the next prune
        assert cache.consume("z" * 32, int(now[0]) + 30)
        assert cache.consume("x" * 32, int(now[0]) + 30)  # forgotten (it could not verify any more)
        now[0] = 10_000.0
    again = SQLiteReplayCache(tmp_path / "r.db", clock=lambda: 10_000.0)  # the file is the memory
    assert not again.consume("z" * 32, 99_999)


# -- the CLI ----------------------------------------------------------------------------------------

runner = CliRunner()


async def _cli_setup(keys: SigningKeys, tmp_path: Path) -> tuple[SignedIntent, Path, Path]:
    signed = await issue(keys)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(await keys.jwks()))
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"note": "ok", "lines": [{"qty": 2, "sku": "A-1"}], "invoice": 1042}))
    return signed, jwks, args


@aio
async def test_cli_verify_valid_intent(
    sqlite_keys: SigningKeys, tmp_path: Path, jwks_server: JwksServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed, jwks, args = await _cli_setup(sqlite_keys, tmp_path)
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(intents_app, ["verify", signed.token, "--jwks", "jwks.json", "--audience", AUD])
    assert res.exit_code == 0, res.output  # a relative path
    assert "(not checked: no --args)" in res.output
    res = runner.invoke(
        intents_app,
        [
            "verify",
            signed.token,
            "--jwks",
            str(jwks),
            "--audience",
            AUD,
            "--issuer",
            ISS,
            "--args",
            str(args),
        ],
    )
    assert res.exit_code == 0, res.output
    assert f"valid intent {signed.claims.jti} for {AUD}" in res.output
    assert "user:ana" in res.output and "(matches --args)" in res.output

    jwks_server.doc = await sqlite_keys.jwks()
    res = runner.invoke(
        intents_app,
        ["verify", "-", "--jwks", jwks_server.url, "--audience", AUD, "--json"],
        input=signed.token + "\n",
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["valid"] is True and out["args_checked"] is False
    assert out["claims"] == signed.claims.claims()


@aio
async def test_cli_verify_refusals(sqlite_keys: SigningKeys, tmp_path: Path) -> None:
    signed, jwks, args = await _cli_setup(sqlite_keys, tmp_path)
    res = runner.invoke(
        intents_app, ["verify", signed.token, "--jwks", str(jwks), "--audience", "m2a:executor:http"]
    )
    assert res.exit_code == 1
    assert res.stderr.startswith("error: wrong_audience: ")
    assert "Traceback" not in res.output

    other = tmp_path / "other.json"
    other.write_text(json.dumps({**ARGS, "invoice": 1043}))
    res = runner.invoke(
        intents_app,
        ["verify", signed.token, "--jwks", str(jwks), "--audience", AUD, "--args", str(other), "--json"],
    )
    assert res.exit_code == 1 and res.stderr.startswith("error: args_mismatch: ")
    assert json.loads(res.stdout)["error"]["code"] == "args_mismatch"

    res = runner.invoke(intents_app, ["verify", "not.a.token", "--jwks", str(jwks), "--audience", AUD])
    assert res.exit_code == 1 and res.stderr.startswith("error: malformed: ")

    res = runner.invoke(
        intents_app, ["verify", signed.token, "--jwks", str(tmp_path / "missing.json"), "--audience", AUD]
    )
    assert res.exit_code == 1 and res.stderr.startswith("error: unknown_key: ")  # fails closed

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = runner.invoke(
        intents_app, ["verify", signed.token, "--jwks", str(jwks), "--audience", AUD, "--args", str(bad)]
    )
    assert res.exit_code == 2 and "is not JSON" in res.stderr and "Traceback" not in res.output


@aio
async def test_cli_decode_says_it_did_not_verify(sqlite_keys: SigningKeys, tmp_path: Path) -> None:
    forged = await issue(StaticKeys(kid=(await sqlite_keys.signer()).kid))  # decode shows it all the same
    res = runner.invoke(intents_app, ["decode", forged.token])
    assert res.exit_code == 0
    assert "NOT VERIFIED" in res.stdout and "NOT VERIFIED" in res.stderr
    assert forged.claims.jti in res.stdout and TYP in res.stdout
    res = runner.invoke(intents_app, ["decode", "-", "--json"], input=forged.token)
    out = json.loads(res.stdout)
    assert (
        out["verified"] is False and out["claims"] == forged.claims.claims() and out["header"]["typ"] == TYP
    )
    res = runner.invoke(intents_app, ["decode", "garbage"])
    assert res.exit_code == 1 and res.stderr.startswith("error: malformed: ")


def test_verify_module_stays_light() -> None:
    """Third-party executors import verify.py alone: no store, gateway, agents or config."""
    import subprocess
    import sys

    code = (
        "import sys, m2a.trust.verify\n"
        "heavy = ('m2a.store', 'm2a.gateway', 'm2a.agents', 'm2a.config', 'sqlalchemy', 'fastapi')\n"
        "print([m for m in sys.modules if m.startswith(heavy)])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
