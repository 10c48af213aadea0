"""The keys m2a signs agent access tokens with: ES256 (P-256), kept in the store's ``signing_keys``.

One key signs at a time. Each row's ``created_at`` is when it *starts* signing and ``retired_at``
when it stops (null: no successor yet), so a rotation is written ahead of time:

- The first key is made on first use.
- When the signing key is within ``ahead_s`` of its rotation (``key_rotation_hours`` after it
  started), its successor is written with ``created_at`` = that moment, and the key's
  ``retired_at`` set to the same moment. The successor is in the JWKS from then on, ``ahead_s``
  (half the rotation period, at most 10 minutes) before it signs anything, so a verifier holding a
  cached JWKS already knows it when the first token signed by it arrives.
- Every process reads the rows at least every ``refresh_s`` (shorter than ``ahead_s``) and picks
  the signing key by time, so all processes switch at the same moment without talking to each
  other.
- A retired key stays in the JWKS ``keep_s`` after it stopped signing (the tokens' lifetime, the
  verifiers' leeway and a minute), until every token it signed has expired; then its row is
  deleted.

Writes happen under a lock that every process sharing the store takes (PostgreSQL: a transaction
advisory lock; SQLite: the database's write lock, taken by the transaction's first statement), and
the state is re-read under it, so two processes racing to create the first key or to rotate leave
one signing key and one successor, never two, and lose none. The private keys are stored as PEM in
the store: whoever reads the database could sign tokens, as whoever writes it could make API keys.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from m2a.store.schema import SigningKeyRow

ALG = "ES256"
LEEWAY_S = 10  # verifiers accept this much clock skew on exp / nbf
_PG_LOCK = 7265677  # pg_advisory_xact_lock id of key rotation (0007's neighbour of migrate's 7265676)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(jwk: dict[str, Any]) -> str:
    """The JWK's RFC 7638 thumbprint (SHA-256, base64url): m2a's ``kid``s, and registered keys'."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
    members = required.get(str(jwk.get("kty")))
    if members is None or any(not isinstance(jwk.get(m), str) for m in members):
        raise ValueError("a JWK needs kty EC (crv, x, y), RSA (n, e) or OKP (crv, x)")
    return _b64(hashlib.sha256(rfc8785.dumps({m: jwk[m] for m in members})).digest())


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK of a P-256 key, with its thumbprint as ``kid``."""
    nums = key.public_numbers()
    x, y = (_b64(n.to_bytes(32, "big")) for n in (nums.x, nums.y))
    jwk = {"kty": "EC", "crv": "P-256", "x": x, "y": y}
    return {**jwk, "kid": thumbprint(jwk), "alg": ALG, "use": "sig"}


def _aware(t: datetime | None) -> datetime | None:
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


@dataclass(frozen=True)
class KeyRecord:
    """One signing key as read from the store (times in epoch seconds)."""

    kid: str
    starts: float  # created_at: when it signs from
    ends: float | None  # retired_at: when it stops signing
    private_pem: str
    jwk: dict[str, Any]

    def signs_at(self, now: float) -> bool:
        return self.starts <= now and (self.ends is None or now < self.ends)


def _record(row: Any) -> KeyRecord:
    """A ``signing_keys`` row (read with Core: its columns by name)."""
    ends = _aware(row.retired_at)
    return KeyRecord(
        row.kid,
        _aware(row.created_at).timestamp(),  # type: ignore[union-attr]
        None if ends is None else ends.timestamp(),
        row.private_pem,
        json.loads(row.public_jwk),
    )


def _second(t: float) -> datetime:
    """A whole second (rounded down): stored and read back exactly, never after ``t``."""
    return datetime.fromtimestamp(math.floor(t), UTC)


_TABLE = SigningKeyRow.__table__
_OURS = select(_TABLE).where(_TABLE.c.alg == ALG)


@dataclass(frozen=True)
class Signer:
    kid: str
    key: ec.EllipticCurvePrivateKey


class SigningKeys:
    """m2a's token signing keys: the one to sign with now, and the public ones for the JWKS.

    ``clock`` (epoch seconds) is for tests; every decision about time uses it.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        rotation_hours: float = 24.0,
        token_ttl_s: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.rotate_s = rotation_hours * 3600
        self.ahead_s = min(self.rotate_s / 2, 600.0)
        self.refresh_s = min(30.0, self.ahead_s / 2)
        self.keep_s = token_ttl_s + LEEWAY_S + 60.0
        self.clock = clock
        self._rows: list[KeyRecord] = []
        self._read_at = float("-inf")
        self._private: dict[str, ec.EllipticCurvePrivateKey] = {}
        self._lock = asyncio.Lock()  # one refresh at a time in this process

    # -- reading -------------------------------------------------------------------------------

    async def _read(self) -> None:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(_OURS)).all()
        self._rows = sorted((_record(r) for r in rows), key=lambda k: k.starts)
        self._read_at = self.clock()

    def _signing(self, now: float) -> KeyRecord | None:
        active = [k for k in self._rows if k.signs_at(now)]
        return active[-1] if active else None  # the latest to start, should clocks ever overlap two

    def _needs_write(self, now: float) -> bool:
        current = self._signing(now)
        if current is None:
            return True
        return current.ends is None and now >= current.starts + self.rotate_s - self.ahead_s

    async def _fresh(self, force: bool = False) -> None:
        """Rows no older than ``refresh_s``; the first key or the next one written where due."""
        now = self.clock()
        if not force and now - self._read_at < self.refresh_s and not self._needs_write(now):
            return
        async with self._lock:
            now = self.clock()
            if not force and now - self._read_at < self.refresh_s and not self._needs_write(now):
                return  # another task refreshed while this one waited
            await self._read()
            if self._needs_write(self.clock()):
                await self.ensure()
                await self._read()

    # -- writing -------------------------------------------------------------------------------

    async def _take_lock(self, conn: AsyncConnection) -> None:
        if conn.dialect.name == "postgresql":
            await conn.execute(text(f"SELECT pg_advisory_xact_lock({_PG_LOCK})"))
        else:  # a write statement first: SQLite's write lock, held until commit (others wait on it)
            await conn.execute(update(SigningKeyRow).where(text("1 = 0")).values(alg=SigningKeyRow.alg))

    @staticmethod
    async def _insert(conn: AsyncConnection, starts: datetime) -> None:
        """A new key that signs from ``starts``."""
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = public_jwk(private.public_key())
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        await conn.execute(
            insert(SigningKeyRow).values(
                kid=jwk["kid"], alg=ALG, private_pem=pem, public_jwk=json.dumps(jwk), created_at=starts
            )
        )

    async def ensure(self) -> None:
        """Under the shared lock: a signing key now, its successor written ahead when due, and keys
        whose every token has expired deleted. Idempotent; safe to race from many processes."""
        async with self.engine.begin() as conn:
            await self._take_lock(conn)
            now = self.clock()
            rows = [_record(r) for r in await conn.execute(_OURS)]
            active = [k for k in rows if k.signs_at(now)]
            at = _second(now)
            if not active:
                # None signs now (first use, or every key ended): one that signs at once; whatever
                # else was open-ended or still to come stops here (it never signs).
                for k in rows:
                    if k.ends is None or k.ends > now:
                        await conn.execute(
                            update(SigningKeyRow).where(SigningKeyRow.kid == k.kid).values(retired_at=at)
                        )
                await self._insert(conn, at)
            else:
                current = max(active, key=lambda k: k.starts)
                due = current.starts + self.rotate_s
                if current.ends is None and now >= due - self.ahead_s:
                    # Late (no token was asked for a while): still publish the successor ahead.
                    begins = _second(now + self.ahead_s if now > due else due)
                    await self._insert(conn, begins)
                    retire = update(SigningKeyRow).where(SigningKeyRow.kid == current.kid)
                    await conn.execute(retire.values(retired_at=begins))
            gone = [k.kid for k in rows if k.ends is not None and k.ends + self.keep_s <= now]
            if gone:
                await conn.execute(delete(SigningKeyRow).where(SigningKeyRow.kid.in_(gone)))

    # -- what callers use ----------------------------------------------------------------------

    async def signer(self) -> Signer:
        """The key to sign with now (made or rotated first where due)."""
        await self._fresh()
        current = self._signing(self.clock())
        if current is None:  # a clock stepped backwards past every key's start: write one for now
            await self._fresh(force=True)
            current = self._signing(self.clock())
            if current is None:
                raise RuntimeError("no signing key could be made")
        private = self._private.get(current.kid)
        if private is None:
            loaded = serialization.load_pem_private_key(current.private_pem.encode(), password=None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            private = self._private[current.kid] = loaded
        return Signer(current.kid, private)

    def _published(self, now: float) -> list[dict[str, Any]]:
        return [k.jwk for k in self._rows if k.ends is None or now < k.ends + self.keep_s]

    async def jwks(self) -> dict[str, Any]:
        """The public keys for ``/.well-known/jwks.json``: the signing one, the one coming next,
        and retired ones whose tokens may still be alive."""
        await self._fresh()
        return {"keys": self._published(self.clock())}

    async def public(self, kid: str, reread: bool = False) -> dict[str, Any] | None:
        """The published JWK of ``kid``; ``reread``: read the store first when it is unknown (the
        caller limits how often)."""
        await self._fresh()
        for attempt in range(2):
            now = self.clock()
            for k in self._rows:
                if k.kid == kid and (k.ends is None or now < k.ends + self.keep_s):
                    return k.jwk
            if attempt == 0 and reread:
                async with self._lock:
                    await self._read()
        return None
