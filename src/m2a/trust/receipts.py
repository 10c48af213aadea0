"""Signed receipts: what an executor did with one intent, signed by m2a (a compact ES256 JWS).

A receipt names the intent (its ``jti`` and digest), the executor, the outcome (``ok``, ``error``,
``denied``, ``timeout``, ``refused``), a digest of the result (``result_digest``: SHA-256 of the
result's RFC 8785 canonical JSON, or of its bytes) and when it ran. It holds digests, never the
arguments or the result themselves, so it can be kept and shown anywhere; the audit log keeps each
receipt's token, so a record of an action carries a signature of its own besides the log's chain.
``verify_receipt`` checks one offline against a JWKS (ES256 only, ``typ`` checked).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
import rfc8785

from m2a.trust.signing import ALG, KeySource, sign

TYP = "m2a-receipt+jwt"
STATUSES = ("ok", "error", "denied", "timeout", "refused")
MAX_ERROR_CHARS = 2000
LEEWAY_S = 60  # a receipt's iat may be this far ahead of the verifier's clock
_CLAIMS = (
    "iss", "jti", "iat", "intent", "executor", "status", "result_sha256",
    "started_at", "finished_at", "duration_ms", "error",
)  # fmt: skip


class ReceiptError(ValueError):
    """A receipt that does not verify; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class SignedReceipt:
    token: str  # the compact JWS
    claims: dict[str, Any]
    hash: str  # sha256 hex of the token's ASCII: how the audit log and spans name this receipt


def result_digest(value: Any) -> str:
    """SHA-256 (hex) of ``value``'s RFC 8785 canonical JSON, or of ``value`` itself when it is bytes."""
    data = bytes(value) if isinstance(value, bytes | bytearray | memoryview) else rfc8785.dumps(value)
    return hashlib.sha256(data).hexdigest()


async def sign_receipt(
    keys: KeySource,
    *,
    issuer: str,
    intent_jti: str,
    intent_digest: str,
    executor: str,
    status: str,
    result_digest: str,
    started_at: float,
    finished_at: float,
    error: str | None = None,
    extra: dict[str, Any] | None = None,
) -> SignedReceipt:
    """A receipt of one execution, signed with the current key. ``extra`` (small facts: an exit code,
    an HTTP status) joins the claims; it may not replace one."""
    if status not in STATUSES:
        raise ValueError(f"a receipt's status is one of {', '.join(STATUSES)}, not {status!r}")
    if error is not None and len(error) > MAX_ERROR_CHARS:
        error = error[:MAX_ERROR_CHARS] + "…"
    claims: dict[str, Any] = {
        "iss": issuer,
        "jti": secrets.token_urlsafe(16),
        "iat": int(time.time()),
        "intent": {"jti": intent_jti, "digest": intent_digest},
        "executor": executor,
        "status": status,
        "result_sha256": result_digest,
        "started_at": started_at,
        "finished_at": finished_at,
        "duration_ms": round(max(0.0, finished_at - started_at) * 1000, 3),
        "error": error,
    }
    for name, value in (extra or {}).items():
        if name in claims:
            raise ValueError(f"a receipt's extra facts may not replace its {name!r} claim")
        claims[name] = value
    token = await sign(keys, claims, TYP)
    return SignedReceipt(token, claims, hashlib.sha256(token.encode("ascii")).hexdigest())


def verify_receipt(token: str, jwks: dict[str, Any], *, issuer: str | None = None) -> dict[str, Any]:
    """The claims of a receipt signed by a key in ``jwks`` (and by ``issuer``, when given), or
    ``ReceiptError``."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise ReceiptError(f"not a JWS: {exc}") from exc
    if header.get("alg") != ALG:  # the allow-list, checked before any key is looked at
        raise ReceiptError(f"receipts are signed with {ALG}, not {header.get('alg')!r}")
    if header.get("typ") != TYP:
        raise ReceiptError(f"not a receipt (typ {header.get('typ')!r}, not {TYP!r})")
    kid = header.get("kid")
    jwk = next((k for k in jwks.get("keys", []) if isinstance(k, dict) and kid and k.get("kid") == kid), None)
    if jwk is None:
        raise ReceiptError(f"signed with a key the JWKS does not hold (kid {kid!r})")
    try:
        key = jwt.PyJWK(jwk, ALG).key
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALG],
            issuer=issuer,
            leeway=LEEWAY_S,
            options={"require": ["iss", "jti", "iat"], "verify_aud": False, "verify_exp": False},
        )
    except jwt.PyJWTError as exc:
        raise ReceiptError(f"{type(exc).__name__}: {exc}") from exc
    missing = [c for c in _CLAIMS if c not in claims]
    if missing:
        raise ReceiptError(f"the receipt lacks {', '.join(missing)}")
    intent = claims["intent"]
    if not isinstance(intent, dict) or not all(isinstance(intent.get(k), str) for k in ("jti", "digest")):
        raise ReceiptError("the receipt's intent claim needs a jti and a digest")
    if claims["status"] not in STATUSES:
        raise ReceiptError(f"unknown status {claims['status']!r}")
    return claims
