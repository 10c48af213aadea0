"""Attacks on signed intents: each is refused with its own code, and nothing is consumed (the store's
``intent_uses`` stays empty, and the genuine intent is still admitted once afterwards).

Real keys (m2a's SigningKeys on SQLite and PostgreSQL), a real JWKS server, and real OS processes
racing to consume one intent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.agents.keys import SigningKeys
from m2a.principal import AgentRef
from m2a.store.schema import IntentUseRow
from m2a.trust.intents import TYP, IntentIssuer, SignedIntent, args_digest
from m2a.trust.replay import SQLiteReplayCache, StoreReplay, admit
from m2a.trust.signing import sign
from m2a.trust.verify import IntentError, JwksSource, verify_intent
from tests.db_fixtures import Database
from tests.trust.conftest import JwksServer, StaticKeys

aio = pytest.mark.asyncio(loop_scope="session")  # the loop the store fixtures run on

AUD = "m2a:executor:mcp"
ISS = "https://m2a.test"
AGENT = AgentRef("spiffe://m2a.test/team/fin/agent/payer", 3, "payer", 1, 11)
ARGS = {"to": "ACME GmbH", "iban": "DE02120300000000202051", "amount_cents": 12_500}
EVIL_ARGS = {**ARGS, "iban": "DE89370400440532013000"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def hand_made(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(signature)}"


async def issue(keys: Any, clock: Any = time.time, **over: Any) -> SignedIntent:
    kw: dict[str, Any] = dict(
        audience=AUD, agent=AGENT, server="bank", tool="transfer", arguments=ARGS, tier="write",
        policy={"id": "fin-payments", "version": "2", "mode": "enforce"}, guardrails=[],
    )  # fmt: skip
    kw.update(over)
    return await IntentIssuer(keys, ISS, clock=clock).issue(**kw)


@dataclass
class Executor:
    """An executor's view: m2a's keys and JWKS, its replay store, and the genuine intent."""

    engine: AsyncEngine
    keys: SigningKeys
    replay: StoreReplay
    genuine: SignedIntent
    jwks: dict[str, Any]

    async def uses(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(IntentUseRow))).scalar_one())

    async def refused(
        self, token: Any, code: str, arguments: Any = ARGS, audience: str = AUD, **kw: Any
    ) -> str:
        with pytest.raises(IntentError) as exc:
            await admit(
                token, arguments, jwks=kw.pop("jwks", self.jwks), audience=audience, issuer=ISS,
                replay=self.replay, **kw,
            )  # fmt: skip
        assert exc.value.code == code, exc.value.message
        assert await self.uses() == 0, "a refused intent was consumed"
        return exc.value.message

    async def genuine_still_admitted_once(self) -> None:
        intent = await admit(
            self.genuine.token, ARGS, jwks=self.jwks, audience=AUD, issuer=ISS, replay=self.replay
        )
        assert intent.jti == self.genuine.claims.jti and await self.uses() == 1

    async def signed(self, claims: dict[str, Any], typ: str = TYP) -> str:
        return await sign(self.keys, claims, typ)


@pytest.fixture
async def ex(engine: AsyncEngine) -> Executor:
    keys = SigningKeys(engine)
    genuine = await issue(keys)
    return Executor(engine, keys, StoreReplay(engine), genuine, await keys.jwks())


# -- replays --------------------------------------------------------------------------------------


@aio
async def test_replay_in_the_same_process(ex: Executor) -> None:
    await ex.genuine_still_admitted_once()
    with pytest.raises(IntentError) as exc:
        await admit(ex.genuine.token, ARGS, jwks=ex.jwks, audience=AUD, issuer=ISS, replay=ex.replay)
    assert exc.value.code == "replayed" and await ex.uses() == 1
    with pytest.raises(IntentError, match="replayed"):  # a second executor object on the same store
        await admit(
            ex.genuine.token, ARGS, jwks=ex.jwks, audience=AUD, issuer=ISS, replay=StoreReplay(ex.engine)
        )


WORKER = r"""
import asyncio, json, sys
from pathlib import Path
from m2a.trust.verify import IntentError, JwksSource

kind, url, home, token, jwks_path = sys.argv[1:6]
AUD, ARGS = "m2a:executor:mcp", json.loads(sys.argv[6])

async def main():
    jwks = JwksSource.from_file(jwks_path)
    if kind == "cache":
        from m2a.trust.replay import SQLiteReplayCache, admit_sync
        replay = SQLiteReplayCache(Path(home) / "replay.db")
        go = lambda: admit_sync(token, ARGS, jwks=jwks, audience=AUD, issuer=None, replay=replay)
    else:
        from m2a.store.db import database_url, make_engine
        from m2a.trust.replay import StoreReplay, admit
        engine = make_engine(database_url(None if url == "-" else url, Path(home)))
        async with engine.connect():
            pass  # connected before the start line, so the race is the insert alone
        replay = StoreReplay(engine)
        go = lambda: admit(token, ARGS, jwks=jwks, audience=AUD, issuer=None, replay=replay)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    try:
        result = go()
        if asyncio.iscoroutine(result):
            await result
        print("won", flush=True)
    except IntentError as exc:
        print(exc.code, flush=True)
    if kind != "cache":
        await engine.dispose()

asyncio.run(main())
"""


def race(kind: str, url: str | None, home: Path, token: str, jwks_path: Path, n: int = 3) -> list[str]:
    """``n`` real processes admit the same intent at once (released together); their verdicts."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                kind,
                url or "-",
                str(home),
                token,
                str(jwks_path),
                json.dumps(ARGS),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(n)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            assert line == "ready", (line, p.stderr.read() if p.stderr else "")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        verdicts = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            verdicts.append(out.strip())
        return sorted(verdicts)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@aio
async def test_replay_across_processes_on_the_store(database: Database, ex: Executor, tmp_path: Path) -> None:
    jwks_path = tmp_path / "jwks.json"
    jwks_path.write_text(json.dumps(ex.jwks))
    verdicts = race(database.backend, database.url, database.home, ex.genuine.token, jwks_path)
    assert verdicts == ["replayed", "replayed", "won"]
    assert await ex.uses() == 1
    with pytest.raises(IntentError, match="replayed"):  # and this process is refused too
        await admit(ex.genuine.token, ARGS, jwks=ex.jwks, audience=AUD, issuer=ISS, replay=ex.replay)


@aio
async def test_replay_across_processes_on_a_sqlite_replay_cache(tmp_path: Path) -> None:
    keys = StaticKeys()
    signed = await issue(keys)
    jwks_path = tmp_path / "jwks.json"
    jwks_path.write_text(json.dumps(await keys.jwks()))
    assert race("cache", None, tmp_path, signed.token, jwks_path) == ["replayed", "replayed", "won"]
    assert not SQLiteReplayCache(tmp_path / "replay.db").consume(signed.claims.jti, signed.claims.exp)


# -- time -----------------------------------------------------------------------------------------


@aio
async def test_expired_and_future_intents(ex: Executor) -> None:
    old = await issue(ex.keys, clock=lambda: time.time() - 120)
    assert "expired" in await ex.refused(old.token, "expired")
    future = await issue(ex.keys, clock=lambda: time.time() + 120)
    await ex.refused(future.token, "not_yet_valid")
    # the leeway is small: 6 s past exp with 5 s of leeway is too late
    with pytest.raises(IntentError, match="expired"):
        verify_intent(ex.genuine.token, ex.jwks, audience=AUD, now=ex.genuine.claims.exp + 6)
    assert verify_intent(ex.genuine.token, ex.jwks, audience=AUD, now=ex.genuine.claims.exp + 4)
    await ex.genuine_still_admitted_once()


@aio
async def test_intent_living_longer_than_60_s(ex: Executor) -> None:
    claims = ex.genuine.claims.claims()
    for life in (61, 3600, 10**9):
        token = await ex.signed({**claims, "jti": secrets.token_hex(16), "exp": claims["iat"] + life})
        await ex.refused(token, "too_long_lived")
    backwards = await ex.signed({**claims, "jti": secrets.token_hex(16), "exp": claims["iat"] - 1})
    await ex.refused(backwards, "malformed")
    await ex.genuine_still_admitted_once()


# -- what it is for -------------------------------------------------------------------------------


@aio
async def test_arguments_swapped_after_signing(ex: Executor) -> None:
    await ex.refused(ex.genuine.token, "args_mismatch", arguments=EVIL_ARGS)
    await ex.refused(ex.genuine.token, "args_mismatch", arguments={**ARGS, "amount_cents": 12_500.5})
    await ex.refused(ex.genuine.token, "args_mismatch", arguments=None)
    await ex.refused(ex.genuine.token, "args_mismatch", arguments={"n": 2**60})  # not even canonical
    reordered = dict(reversed(list(ARGS.items())))  # the same arguments, keys in another order: fine
    assert verify_intent(ex.genuine.token, ex.jwks, audience=AUD, arguments=reordered)
    await ex.genuine_still_admitted_once()


@aio
async def test_intent_for_another_executor(ex: Executor) -> None:
    http = await issue(ex.keys, audience="m2a:executor:http")
    await ex.refused(http.token, "wrong_audience")
    await ex.refused(ex.genuine.token, "wrong_audience", audience="m2a:executor:command")
    await ex.refused(ex.genuine.token, "wrong_audience", audience=AUD + " ")  # exactly equal, no more
    listed = await ex.signed({**ex.genuine.claims.claims(), "aud": [AUD, "m2a:executor:http"]})
    await ex.refused(listed, "malformed")  # aud is one string
    await ex.genuine_still_admitted_once()


@aio
async def test_wrong_issuer_and_wrong_type(ex: Executor) -> None:
    other = await IntentIssuer(ex.keys, "https://evil.test").issue(
        audience=AUD, agent=AGENT, server="bank", tool="transfer", arguments=ARGS, tier="write",
        policy={"id": "p", "version": "1", "mode": "enforce"},
    )  # fmt: skip
    await ex.refused(other.token, "wrong_issuer")
    claims = ex.genuine.claims.claims()
    for typ in ("at+jwt", "JWT", "m2a-receipt+jwt"):  # an agent token or a receipt is no intent
        await ex.refused(await ex.signed(claims, typ=typ), "wrong_type")
    signer = await ex.keys.signer()
    untyped = jwt.encode(claims, signer.key, algorithm="ES256", headers={"kid": signer.kid, "typ": None})
    assert "typ" not in jwt.get_unverified_header(untyped)
    await ex.refused(untyped, "wrong_type")
    await ex.genuine_still_admitted_once()


# -- forgeries ------------------------------------------------------------------------------------


@aio
async def test_forged_signature_same_kid(ex: Executor) -> None:
    kid = (await ex.keys.signer()).kid
    forger = StaticKeys(kid=kid)  # another P-256 key claiming m2a's kid
    forged = await issue(forger, arguments=EVIL_ARGS)
    await ex.refused(forged.token, "bad_signature", arguments=EVIL_ARGS)
    # the forger's key in the token's own header (jwk) or a URL of its JWKS (jku) changes nothing
    h = {"alg": "ES256", "typ": TYP, "kid": kid, "jwk": forger.jwk, "jku": "http://127.0.0.1:9/jwks"}
    token = jwt.api_jws.encode(unb64(forged.token.split(".")[1]), forger.private, "ES256", headers=h)
    await ex.refused(token, "bad_signature", arguments=EVIL_ARGS)
    await ex.genuine_still_admitted_once()


@aio
async def test_payload_edited_after_signing(ex: Executor) -> None:
    header, payload, signature = ex.genuine.token.split(".")
    for edit in (
        {"args_sha256": args_digest(EVIL_ARGS)},
        {"tier": "read"},
        {"aud": "m2a:executor:mcp"},  # the same value, re-serialized: the bytes differ, so no
        {"exp": ex.genuine.claims.exp + 30},
    ):
        claims = {**json.loads(unb64(payload)), **edit}
        edited = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
        args = EVIL_ARGS if "args_sha256" in edit else ARGS
        await ex.refused(edited, "bad_signature", arguments=args)
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    await ex.refused(f"{header}.{payload}.{flipped}", "bad_signature")
    await ex.genuine_still_admitted_once()


@aio
async def test_algorithm_confusion(ex: Executor) -> None:
    kid = (await ex.keys.signer()).kid
    claims = ex.genuine.claims.claims()
    for alg in ("none", "None", "NONE"):
        await ex.refused(hand_made({"alg": alg, "typ": TYP, "kid": kid}, claims), "bad_signature")
    jwk = next(k for k in ex.jwks["keys"] if k["kid"] == kid)
    public = jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(jwk))
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for secret in (
        pem,
        json.dumps(jwk).encode(),
        unb64(jwk["x"]) + unb64(jwk["y"]),
    ):  # HS256 keyed with the public key
        for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
            head = {"alg": alg, "typ": TYP, "kid": kid}
            signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(claims).encode())}"
            mac = hmac.new(secret, signing_input.encode(), digest).digest()
            await ex.refused(f"{signing_input}.{b64(mac)}", "bad_signature")
    for alg in ("RS256", "ES384", "EdDSA", "PS256"):
        await ex.refused(hand_made({"alg": alg, "typ": TYP, "kid": kid}, claims, b"x" * 64), "bad_signature")
    await ex.genuine_still_admitted_once()


@aio
async def test_unknown_and_missing_claims(ex: Executor) -> None:
    claims = ex.genuine.claims.claims()
    extras = (
        {"admin": True},
        {"agent": {**claims["agent"], "role": "admin"}},
        {"act": {"sub": "user:ana", "scope": "all"}},
        {"tool": {**claims["tool"], "server_url": "http://evil"}},
    )
    for extra in extras:
        message = await ex.refused(await ex.signed({**claims, **extra}), "malformed")
        assert "not valid" in message
    for name in ("tier", "args_sha256", "aud", "jti", "policy"):
        await ex.refused(await ex.signed({k: v for k, v in claims.items() if k != name}), "malformed")
    for bad in (
        {"iat": str(claims["iat"])},
        {"exp": float(claims["exp"])},
        {"tier": "admin"},
        {"jti": "short"},
    ):
        await ex.refused(await ex.signed({**claims, **bad}), "malformed")
    await ex.refused(await ex.signed({}), "malformed")
    signer = await ex.keys.signer()
    array = jwt.api_jws.encode(b"[1, 2]", signer.key, "ES256", headers={"kid": signer.kid, "typ": TYP})
    await ex.refused(array, "malformed")  # signed, but no JSON object of claims
    await ex.genuine_still_admitted_once()


@aio
async def test_garbage(ex: Executor) -> None:
    real = ex.genuine.token
    h, p, s = real.split(".")
    garbage: list[Any] = [
        "", " ", "garbage", "a.b.c", "...", "..", f"{h}.{p}", f"{h}.{p}.{s}.{s}", f"{h}..{s}",
        f"{h}.{p}.!!!", f"{h}.%%%.{s}", "é.é.é", "x" * 100_000, f"{b64(b'[1,2]')}.{p}.{s}",
        f"{b64(b'not json')}.{p}.{s}", None, 42, b"bytes", ["list"], real + "\n\x00",
        f"{b64(b'[' * 5000)}.{p}.{s}", f"{b64(json.dumps({'alg': 'ES256'}).encode())}x.{p}.{s}",
    ]  # fmt: skip
    for token in garbage:
        await ex.refused(token, "malformed")
    await ex.genuine_still_admitted_once()


# -- keys that change -----------------------------------------------------------------------------


@aio
async def test_rotated_out_key_is_refused(engine: AsyncEngine) -> None:
    now = [time.time()]
    keys = SigningKeys(engine, rotation_hours=1, clock=lambda: now[0])
    old = await issue(keys, clock=lambda: now[0])
    old_kid = jwt.get_unverified_header(old.token)["kid"]
    now[0] += 3600 - 600 + 1  # the successor is published ahead of its start
    assert {k["kid"] for k in (await keys.jwks())["keys"]} >= {old_kid}
    now[0] += 600 + keys.keep_s + 1  # the old key stopped signing long enough ago: unpublished
    jwks = await keys.jwks()
    assert old_kid not in {k["kid"] for k in jwks["keys"]}
    replay = StoreReplay(engine)
    with pytest.raises(IntentError) as exc:
        await admit(
            old.token, ARGS, jwks=jwks, audience=AUD, issuer=ISS, replay=replay, now=old.claims.iat + 1
        )
    assert exc.value.code == "unknown_key"
    new = await issue(keys, clock=lambda: now[0])
    assert jwt.get_unverified_header(new.token)["kid"] != old_kid
    assert await admit(new.token, ARGS, jwks=jwks, audience=AUD, issuer=ISS, replay=replay, now=now[0])


@aio
async def test_jwks_source_picks_up_a_rotated_in_key_and_resists_forged_kids(jwks_server: JwksServer) -> None:
    a, b = StaticKeys(), StaticKeys()
    jwks_server.doc = {"keys": [a.jwk]}
    clock = [5000.0]
    source = JwksSource(jwks_server.url, clock=lambda: clock[0])
    assert verify_intent((await issue(a)).token, source, audience=AUD)
    assert jwks_server.hits == 1

    jwks_server.doc = {"keys": [a.jwk, b.jwk]}  # m2a rotated b in
    by_b = await issue(b)
    clock[0] += 1
    with pytest.raises(IntentError, match="unknown_key"):  # re-read at most every 10 s
        verify_intent(by_b.token, source, audience=AUD)
    assert jwks_server.hits == 1
    clock[0] += 10
    assert verify_intent(by_b.token, source, audience=AUD).jti == by_b.claims.jti
    assert jwks_server.hits == 2

    # forged kids: each unknown, and together they make at most one read per 10 s
    for i in range(30):
        forged = await issue(StaticKeys(kid=f"forged-{i}"))
        with pytest.raises(IntentError) as exc:
            verify_intent(forged.token, source, audience=AUD)
        assert exc.value.code == "unknown_key"
        clock[0] += 0.5  # 15 s in all
    assert jwks_server.hits == 2 + 1


@aio
async def test_jwks_source_fails_closed(jwks_server: JwksServer, tmp_path: Path) -> None:
    keys = StaticKeys()
    signed = await issue(keys)
    jwks_server.status = 503
    with pytest.raises(IntentError) as exc:
        verify_intent(signed.token, JwksSource(jwks_server.url), audience=AUD)
    assert exc.value.code == "unknown_key" and "cannot be read" in exc.value.message

    jwks_server.status = 200
    jwks_server.doc = await keys.jwks()
    clock = [0.0]
    source = JwksSource(jwks_server.url, ttl_s=300, clock=lambda: clock[0])
    assert verify_intent(signed.token, source, audience=AUD)
    jwks_server.stop()  # the JWKS goes away: the cached copy serves until its ttl, then nothing does
    clock[0] += 200
    assert verify_intent(signed.token, source, audience=AUD)
    clock[0] += 200
    with pytest.raises(IntentError, match="unknown_key"):
        verify_intent(signed.token, source, audience=AUD)

    for doc in ("not json", json.dumps({"keys": "nope"}), json.dumps([signed.token])):
        path = tmp_path / "jwks.json"
        path.write_text(doc)
        with pytest.raises(IntentError, match="unknown_key"):
            verify_intent(signed.token, JwksSource.from_file(path), audience=AUD)
    twice = {"keys": [keys.jwk, {**StaticKeys().jwk, "kid": keys.kid}]}  # two keys, one kid: neither
    with pytest.raises(IntentError, match="unknown_key"):
        verify_intent(signed.token, twice, audience=AUD)
    wrong_kind = {"keys": [{**keys.jwk, "crv": "P-384"}]}
    with pytest.raises(IntentError, match="unknown_key"):
        verify_intent(signed.token, wrong_kind, audience=AUD)
