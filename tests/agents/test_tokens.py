"""m2a's signing keys and agent access tokens (``agents/keys.py``, ``agents/tokens.py``) on a real,
migrated store: SQLite and PostgreSQL (``tests/db_fixtures.py``; PostgreSQL is skipped where none runs).

The keys' clock is a test clock (rotation is about hours); the tokens' own times are the system's,
because PyJWT checks them against it. Several ``SigningKeys`` on their own engines stand for
several gateway processes sharing the store.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import jwt
import pytest
from sqlalchemy import select

from m2a.agents.keys import ALG, SigningKeys, thumbprint
from m2a.agents.tokens import MAX_TTL_S, TokenError, Tokens, parse_spiffe, spiffe_id
from m2a.store.schema import SigningKeyRow
from tests.db_fixtures import Database, database  # noqa: F401 (a fixture)

pytestmark = pytest.mark.asyncio(loop_scope="session")

ISSUER = "https://m2a.test"
AUDIENCE = "m2a"
HOUR = 3600.0
SUB = "spiffe://m2a.local/team/research/agent/support-bot"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def claims(**over: Any) -> dict[str, Any]:
    base = dict(sub=SUB, client_id=SUB, team="research", agent_id=1, agent_version=1)
    return {**base, **over}


async def rows(db: Database) -> list[Any]:
    """The stored signing keys (kid, created_at, retired_at …)."""
    engine = await db.open()
    async with engine.connect() as conn:
        return list(await conn.execute(select(SigningKeyRow.__table__)))


def _b64(part: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def tampered(token: str, **changes: Any) -> str:
    """The token with claims changed and the signature left as it was."""
    head, body, sig = token.split(".")
    payload = json.dumps({**_b64(body), **changes}).encode()
    return f"{head}.{base64.urlsafe_b64encode(payload).decode().rstrip('=')}.{sig}"


async def test_first_use_makes_one_key_and_a_token_verifies(database: Database) -> None:  # noqa: F811
    keys = SigningKeys(await database.open())
    tokens = Tokens(keys, ISSUER, AUDIENCE, ttl_s=300)
    assert await rows(database) == []  # nothing before first use
    issued = await tokens.issue(**claims())
    header, payload, _ = issued.token.split(".")
    head = _b64(header)
    assert head["alg"] == "ES256" and head["typ"] == "at+jwt"
    jwks = (await keys.jwks())["keys"]
    assert [k["kid"] for k in jwks] == [head["kid"]]
    assert jwks[0]["kid"] == thumbprint(jwks[0]) and jwks[0]["crv"] == "P-256" and "d" not in jwks[0]
    body = _b64(payload)
    assert body["iss"] == ISSUER and body["aud"] == AUDIENCE and body["sub"] == SUB
    assert body["exp"] - body["iat"] == 300 and body["nbf"] == body["iat"] and body["jti"]
    assert (body["team"], body["agent_id"], body["agent_version"]) == ("research", 1, 1)
    assert (await tokens.verify(issued.token))["sub"] == SUB
    # A second process reads the same key: it verifies the first one's token and signs with it.
    other = SigningKeys(await database.open())
    assert (await Tokens(other, ISSUER, AUDIENCE).verify(issued.token))["jti"] == body["jti"]
    assert (await other.signer()).kid == head["kid"]
    assert len(await rows(database)) == 1


async def test_rotation_publishes_ahead_keeps_the_old_key_then_drops_it(database: Database) -> None:  # noqa: F811
    clock = Clock()
    keys = SigningKeys(await database.open(), rotation_hours=1, token_ttl_s=300, clock=clock)
    tokens = Tokens(keys, ISSUER, AUDIENCE, ttl_s=300)
    first = await tokens.issue(**claims())
    k1 = (await keys.signer()).kid
    assert keys.ahead_s == 600
    # Ten minutes before the hour: the successor is written and published, but k1 still signs.
    clock.now += HOUR - keys.ahead_s + 1
    assert (await keys.signer()).kid == k1
    published = [k["kid"] for k in (await keys.jwks())["keys"]]
    assert len(published) == 2 and k1 in published
    k2 = next(k for k in published if k != k1)
    # A verifier in another process that read the JWKS now already knows the next key.
    reader = SigningKeys(await database.open(), rotation_hours=1, token_ttl_s=300, clock=clock)
    assert {k["kid"] for k in (await reader.jwks())["keys"]} == {k1, k2}
    # On the hour every process switches to k2 by itself, without reading the store again.
    clock.now += keys.ahead_s
    assert (await keys.signer()).kid == k2
    assert (await reader.signer()).kid == k2
    second = await tokens.issue(**claims())
    assert _b64(second.token.split(".")[0])["kid"] == k2
    # Tokens signed by k1 still verify (k1 stays until all its tokens are expired).
    assert (await tokens.verify(first.token))["jti"]
    assert (await tokens.verify(second.token))["jti"]
    assert len(await rows(database)) == 2
    # After keep_s, k1 leaves the JWKS and its row is deleted at the next write.
    clock.now += keys.keep_s + 1
    assert [k["kid"] for k in (await keys.jwks())["keys"]] == [k2]
    with pytest.raises(TokenError, match="unknown signing key"):
        await tokens.verify(first.token)
    clock.now += HOUR  # the next rotation's write prunes k1
    await keys.signer()
    kids = {r.kid for r in await rows(database)}
    assert k1 not in kids and k2 in kids and len(kids) == 2


async def test_a_late_rotation_still_publishes_the_next_key_ahead(database: Database) -> None:  # noqa: F811
    clock = Clock()
    keys = SigningKeys(await database.open(), rotation_hours=1, clock=clock)
    k1 = (await keys.signer()).kid
    clock.now += 5 * HOUR  # nobody asked for a token for hours
    assert (await keys.signer()).kid == k1  # the successor is announced first
    assert len((await keys.jwks())["keys"]) == 2
    clock.now += keys.ahead_s
    assert (await keys.signer()).kid != k1


@pytest.mark.parametrize("moment", ["first use", "rotation"])
async def test_processes_racing_leave_one_signing_key_and_lose_none(
    database: Database,  # noqa: F811
    moment: str,
) -> None:
    clock = Clock()
    procs = [SigningKeys(await database.open(), rotation_hours=1, clock=clock) for _ in range(6)]
    if moment == "rotation":
        await procs[0].signer()
        clock.now += HOUR - procs[0].ahead_s + 1  # every process finds the successor due
    await asyncio.gather(*(p.ensure() for p in procs), *(p.signer() for p in procs))
    stored = await rows(database)
    assert len(stored) == (1 if moment == "first use" else 2)
    open_ended = [r for r in stored if r.retired_at is None]
    assert len(open_ended) == 1  # one key without a successor: never two current keys
    seen: set[str] = set()
    for _ in range(5):  # half-hour steps through two rotations: every process agrees at each
        signers = {s.kid for s in await asyncio.gather(*(p.signer() for p in procs))}
        assert len(signers) == 1
        assert sum(r.retired_at is None for r in await rows(database)) == 1
        for p in procs:  # ... and publishes the key signing now
            assert signers <= {k["kid"] for k in (await p.jwks())["keys"]}
        seen |= signers
        clock.now += HOUR / 2
    assert len(seen) >= 2  # it did rotate


async def test_verify_refuses_what_is_not_an_m2a_access_token(database: Database) -> None:  # noqa: F811
    keys = SigningKeys(await database.open())
    tokens = Tokens(keys, ISSUER, AUDIENCE)
    good = await tokens.issue(**claims())
    signer = await keys.signer()
    now = int(time.time())
    base = {
        "iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 60, "jti": "x", **claims(),
    }  # fmt: skip
    head = {"kid": signer.kid, "typ": "at+jwt"}

    def signed(payload: dict[str, Any], headers: dict[str, Any] = head) -> str:
        return jwt.encode(payload, signer.key, algorithm=ALG, headers=headers)

    cases = {
        "another issuer": signed({**base, "iss": "https://evil.test"}),
        "two audiences": signed({**base, "aud": [AUDIENCE, "other"]}),
        "wrong audience": signed({**base, "aud": "other"}),
        "expired": signed({**base, "iat": now - 400, "nbf": now - 400, "exp": now - 100}),
        "not yet valid": signed({**base, "nbf": now + 120, "exp": now + 200}),
        "too long a life": signed({**base, "exp": now + MAX_TTL_S + 60}),
        "no jti": signed({k: v for k, v in base.items() if k != "jti"}),
        "not an access token": signed(base, {"kid": signer.kid}),
        "unknown kid": signed(base, {**head, "kid": "nope"}),
        "agent id as text": signed({**base, "agent_id": "1"}),
        "tampered": tampered(good.token, team="other"),
        "garbage": "eyJhbGciOi.not.a-token",
    }
    for name, token in cases.items():
        with pytest.raises(TokenError):
            await tokens.verify(token)
            pytest.fail(f"{name}: accepted")
    assert (await tokens.verify(signed(base)))["jti"] == "x"  # the same, well made, passes


async def test_spiffe_ids_round_trip_and_refuse_other_shapes() -> None:
    value = spiffe_id("m2a.local", "research", "support-bot")
    assert value == SUB and parse_spiffe(value) == ("m2a.local", "research", "support-bot")
    for bad in (
        "spiffe://m2a.local/team/research/agent/support-bot/extra",
        "spiffe://m2a.local/team/research/key/3",
        "spiffe://M2A.local/team/research/agent/x",
        "https://m2a.local/team/research/agent/x",
        "spiffe://m2a.local/team/research/agent/x\n",
        "spiffe://m2a.local/team/../agent/x",
    ):
        assert parse_spiffe(bad) is None, bad


async def test_tokens_never_live_past_five_minutes() -> None:
    with pytest.raises(ValueError):
        Tokens(None, ISSUER, AUDIENCE, ttl_s=301)  # type: ignore[arg-type]
