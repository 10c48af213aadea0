"""Console sessions: a signed-in browser, kept in the store's ``console_sessions`` table.

Signing in stores a random session id's sha256 (the id itself only goes in the browser's cookie),
who signed in (for display), a CSRF token, and the bearer they signed in with, encrypted with
AES-GCM under a key derived (HKDF-SHA256) from the gateway's admin key: every gateway process
sharing the store can read it, and nothing in the database alone can. The row's id hash is the
cipher's associated data, so a ciphertext moved to another row does not decrypt.

A session lives ``idle_s`` past the last request (8 hours by default); ``load`` slides that
window forward at most once a minute (one write per minute per browser, not one per request).
Whether the bearer is still good (a revoked key, an expired agent token) is the extension's
check on each request (``extension.py``), which calls ``revoke`` when it is not.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from m2a.principal import Principal
from m2a.store.schema import ConsoleSessionRow

IDLE_S = 8 * 3600.0
TOUCH_S = 60.0  # the idle window slides at most this often (one write a minute per browser)


PURPOSE = b"m2a console session bearer v1"  # what the AES key is derived for (Access.derived_key)


def hash_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def subject_of(principal: Principal) -> str:
    """Who signed in, as the console shows it: the agent's name and SPIFFE id, or the key's prefix."""
    if principal.agent is not None:
        agent = principal.agent
        who = f"agent {agent.name} ({agent.spiffe_id})"
        return f"{who} for {agent.subject}" if agent.subject else who
    return f"key {principal.key_prefix}…" if principal.key_prefix != "bootstrap" else "the admin key"


@dataclass
class ConsoleSession:
    """A signed-in browser, as a view sees it. ``bearer`` is for ``ApiClient`` only: never render it."""

    id_hash: str
    subject: str
    key_id: int | None
    team_id: int | None
    admin: bool
    csrf: str
    created_at: datetime
    expires_at: datetime
    bearer: str

    def __repr__(self) -> str:  # keep the bearer out of logs and tracebacks
        return f"ConsoleSession(subject={self.subject!r}, admin={self.admin}, team_id={self.team_id})"


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


class SessionStore:
    """Create, load and end console sessions (the module docstring says how they are kept)."""

    def __init__(self, engine: AsyncEngine, secret: bytes, idle_s: float = IDLE_S) -> None:
        """``secret``: the 32-byte AES key, ``Access.derived_key(PURPOSE)`` (from the admin key)."""
        self.engine = engine
        self.idle_s = idle_s
        self._aead = AESGCM(secret)
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    def _seal(self, bearer: str, id_hash: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, bearer.encode(), id_hash.encode())
        return base64.urlsafe_b64encode(nonce + sealed).decode()

    def _open(self, blob: str, id_hash: str) -> str | None:
        try:
            raw = base64.urlsafe_b64decode(blob.encode())
            return self._aead.decrypt(raw[:12], raw[12:], id_hash.encode()).decode()
        except (InvalidTag, ValueError):  # another admin key, or an edited row: no session
            return None

    async def create(self, bearer: str, principal: Principal) -> tuple[str, ConsoleSession]:
        """A new session for ``bearer`` (already checked: ``principal`` is whose it is): the
        session id for the cookie, and the session."""
        session_id = secrets.token_urlsafe(32)
        id_hash = hash_id(session_id)
        at = datetime.now(UTC)
        row = ConsoleSessionRow(
            id_hash=id_hash,
            key_id=principal.key_id if principal.agent is None and principal.key_id else None,
            subject=subject_of(principal)[:300],
            team_id=principal.team_id,
            admin=principal.is_admin,
            bearer_enc=self._seal(bearer, id_hash),
            csrf=secrets.token_urlsafe(32),
            created_at=at,
            last_seen_at=at,
            expires_at=at + timedelta(seconds=self.idle_s),
            revoked_at=None,
        )
        async with self._session() as s, s.begin():
            await s.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.expires_at <= at))  # old ones
            s.add(row)
        return session_id, self._view(row, bearer)

    @staticmethod
    def _view(row: ConsoleSessionRow, bearer: str) -> ConsoleSession:
        return ConsoleSession(
            row.id_hash, row.subject, row.key_id, row.team_id, bool(row.admin), row.csrf,
            _aware(row.created_at), _aware(row.expires_at), bearer,
        )  # fmt: skip

    async def load(self, session_id: str | None) -> ConsoleSession | None:
        """The live session whose id the cookie carries, or None (unknown, expired, ended)."""
        if not session_id or len(session_id) > 128:
            return None
        id_hash = hash_id(session_id)
        at = datetime.now(UTC)
        async with self._session() as s:
            row = await s.get(ConsoleSessionRow, id_hash)
            if row is None or row.revoked_at is not None or _aware(row.expires_at) <= at:
                return None
            bearer = self._open(row.bearer_enc, id_hash)
            if bearer is None:
                return None
            if (at - _aware(row.last_seen_at)).total_seconds() >= TOUCH_S:
                row.last_seen_at = at
                row.expires_at = at + timedelta(seconds=self.idle_s)
                await s.execute(
                    update(ConsoleSessionRow)
                    .where(ConsoleSessionRow.id_hash == id_hash)
                    .values(last_seen_at=at, expires_at=row.expires_at)
                )
                await s.commit()
            return self._view(row, bearer)

    async def end(self, id_hash: str) -> None:
        """Delete the session (sign-out; a bearer that stopped working)."""
        async with self._session() as s, s.begin():
            await s.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.id_hash == id_hash))

    async def end_for_key(self, key_id: int) -> int:
        """Delete every session signed in with the key ``key_id``; how many there were."""
        async with self._session() as s, s.begin():
            done = await s.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.key_id == key_id))
            return done.rowcount or 0

    async def count(self) -> int:
        """Live sessions (tests, diagnostics)."""
        async with self._session() as s:
            rows = await s.execute(
                select(ConsoleSessionRow.id_hash).where(ConsoleSessionRow.revoked_at.is_(None))
            )
            return len(rows.all())
