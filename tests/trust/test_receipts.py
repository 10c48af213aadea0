"""Signed receipts: made with m2a's real signing keys (SQLite and PostgreSQL stores) and a key made
here, verified offline from the JWKS, and refused when forged, edited, of another type, of another
algorithm or missing what a receipt says."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

import jwt
import pytest
import rfc8785

from m2a.agents.keys import SigningKeys
from m2a.trust.receipts import TYP, ReceiptError, SignedReceipt, result_digest, sign_receipt, verify_receipt
from m2a.trust.signing import sign
from tests.trust.conftest import StaticKeys

aio = pytest.mark.asyncio(loop_scope="session")

ISS = "https://m2a.test"
RESULT = {"content": [{"type": "text", "text": "invoice 1042 created"}], "isError": False}


async def receipt(keys: Any, **over: Any) -> SignedReceipt:
    kw: dict[str, Any] = dict(
        issuer=ISS,
        intent_jti="in_7f3a",
        intent_digest="a" * 64,
        executor="m2a:executor:mcp",
        status="ok",
        result_digest=result_digest(RESULT),
        started_at=1700000000.25,
        finished_at=1700000000.75,
    )
    kw.update(over)
    return await sign_receipt(keys, **kw)


def test_result_digest_is_sha256_of_the_canonical_json_or_of_bytes() -> None:
    assert result_digest(RESULT) == hashlib.sha256(rfc8785.dumps(RESULT)).hexdigest()
    assert result_digest({"b": 1, "a": [1.0, "é"]}) == result_digest({"a": [1, "é"], "b": 1})
    assert result_digest(b"\x00raw bytes") == hashlib.sha256(b"\x00raw bytes").hexdigest()
    assert (
        result_digest(bytearray(b"x")) == result_digest(memoryview(b"x")) == hashlib.sha256(b"x").hexdigest()
    )
    assert result_digest("text") != result_digest(b"text")  # a JSON string is not its bytes
    assert result_digest(None) == hashlib.sha256(b"null").hexdigest()


@aio
async def test_a_receipt_signed_with_m2a_s_keys_verifies_from_the_jwks(keys: SigningKeys) -> None:
    made = await receipt(keys, extra={"exit_code": 0, "http_status": 201})
    assert made.hash == hashlib.sha256(made.token.encode()).hexdigest()
    header = jwt.get_unverified_header(made.token)
    assert header["typ"] == TYP and header["alg"] == "ES256" and header["kid"] == (await keys.signer()).kid
    claims = verify_receipt(made.token, await keys.jwks(), issuer=ISS)
    assert claims == made.claims
    assert claims["intent"] == {"jti": "in_7f3a", "digest": "a" * 64}
    assert claims["executor"] == "m2a:executor:mcp" and claims["status"] == "ok" and claims["error"] is None
    assert claims["result_sha256"] == result_digest(RESULT)
    assert (claims["started_at"], claims["finished_at"], claims["duration_ms"]) == (
        1700000000.25,
        1700000000.75,
        500.0,
    )
    assert claims["exit_code"] == 0 and claims["http_status"] == 201
    assert abs(claims["iat"] - time.time()) < 3600 and len(claims["jti"]) >= 16
    other = await receipt(keys)
    assert other.claims["jti"] != made.claims["jti"]


@aio
async def test_errors_and_statuses() -> None:
    keys = StaticKeys()
    for status in ("error", "denied", "timeout", "refused"):
        made = await receipt(keys, status=status, error="exit 3: boom")
        assert verify_receipt(made.token, await keys.jwks())["status"] == status
    long = await receipt(keys, status="error", error="x" * 10_000)
    assert len(long.claims["error"]) < 2100
    with pytest.raises(ValueError, match="status"):
        await receipt(keys, status="success")
    with pytest.raises(ValueError, match="status"):
        await receipt(keys, extra={"status": "ok"})  # extra facts never replace a claim


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@aio
async def test_forged_and_edited_receipts_are_refused() -> None:
    keys, forger = StaticKeys(kid="m2a-key"), StaticKeys(kid="m2a-key")
    jwks = await keys.jwks()
    made = await receipt(keys)

    def refused(token: str, match: str, **kw: Any) -> None:
        with pytest.raises(ReceiptError, match=match):
            verify_receipt(token, jwks, **kw)

    refused((await receipt(forger)).token, "InvalidSignature")  # another key under m2a's kid
    refused((await receipt(StaticKeys())).token, "does not hold")  # a key the JWKS doesn't have
    head, payload, sig = made.token.split(".")
    edited = json.loads(base64.urlsafe_b64decode(payload + "=="))
    edited["status"] = "error"
    refused(f"{head}.{_b64(json.dumps(edited).encode())}.{sig}", "InvalidSignature")
    none = _b64(json.dumps({"alg": "none", "typ": TYP, "kid": "m2a-key"}).encode())
    refused(f"{none}.{payload}.", "ES256")
    hs = jwt.encode(made.claims, "secret" * 6, algorithm="HS256", headers={"kid": "m2a-key", "typ": TYP})
    refused(hs, "ES256")
    intent_like = await sign(keys, made.claims, "m2a-intent+jwt")
    refused(intent_like, "not a receipt")
    refused(made.token, "iss", issuer="https://elsewhere.test")
    refused("not a token", "not a JWS")
    bare = await sign(
        keys, {"iss": ISS, "jti": "x", "iat": int(time.time())}, TYP
    )  # signed, but says nothing
    refused(bare, "lacks")
    odd = await sign(keys, {**made.claims, "status": "maybe"}, TYP)
    refused(odd, "unknown status")
    refused(made.token.replace(made.token[-5:], "AAAAA"), "Signature|signature|Decode")
