"""What trusted execution signs with: any ``KeySource`` (m2a's ES256 signing keys, ``agents/keys.py``),
and one helper that makes a compact JWS of a JSON object with the current key."""

from __future__ import annotations

from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ALG = "ES256"


class SignerLike(Protocol):
    kid: str
    key: ec.EllipticCurvePrivateKey


class KeySource(Protocol):
    """Signing keys: the one that signs now, and the public keys verifiers may meet (a JWKS)."""

    async def signer(self) -> SignerLike: ...

    async def public(self, kid: str, reread: bool = False) -> dict[str, Any] | None: ...

    async def jwks(self) -> dict[str, Any]: ...


async def sign(keys: KeySource, claims: dict[str, Any], typ: str) -> str:
    """A compact JWS (ES256, ``kid`` and ``typ`` in the header) of ``claims`` with the current key."""
    signer = await keys.signer()
    return jwt.encode(claims, signer.key, algorithm=ALG, headers={"kid": signer.kid, "typ": typ})
