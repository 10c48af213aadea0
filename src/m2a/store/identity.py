"""Teams, API keys and model grants: who may call, with which priority, on which models.

Keys are random (256 bits), shown once, and stored only as a SHA-256 hash with a short prefix kept
for display. Every change bumps one revision counter in the same transaction, so gateways can
cache key lookups and drop the cache as soon as anything changes.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from m2a.principal import PRIORITIES, Principal  # noqa: F401  (importable from here too)
from m2a.store.limits import limits_for
from m2a.store.schema import ApiKey, Grant, Revision, Team

ROLES = ("member", "admin")
KEY_PREFIX = "m2a-"
MAX_ID = 2**31 - 1  # ids are 32-bit integer columns
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class IdentityError(Exception):
    """A refused identity change; ``kind`` is not_found, conflict or invalid."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class TeamInfo:
    name: str
    priority: str
    priority_order: int
    created_at: datetime
    models: tuple[str, ...]


@dataclass(frozen=True)
class KeyInfo:
    id: int
    name: str
    prefix: str
    team: str | None
    role: str
    priority: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def now() -> datetime:
    return datetime.now(UTC)


def _aware(t: datetime | None) -> datetime | None:
    """SQLite hands timezone-aware columns back naive (in UTC)."""
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


def _check_priority(priority: str) -> None:
    if priority not in PRIORITIES:
        raise IdentityError("invalid", f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")


class IdentityStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    # -- helpers -------------------------------------------------------------------------------

    async def _team(self, s: AsyncSession, name: str) -> Team:
        team = (await s.execute(select(Team).where(Team.name == name, Team.deleted_at.is_(None)))).scalar()
        if team is None:
            raise IdentityError("not_found", f"no team named {name!r}")
        return team

    async def _bump(self, s: AsyncSession) -> None:
        await s.execute(update(Revision).where(Revision.id == 1).values(value=Revision.value + 1))

    async def revision(self) -> int:
        async with self._session() as s:
            return int((await s.execute(select(Revision.value).where(Revision.id == 1))).scalar_one())

    # -- teams ---------------------------------------------------------------------------------

    async def create_team(self, name: str, priority: str = "standard", order: int | None = None) -> TeamInfo:
        if not _NAME.fullmatch(name):  # not match: "$" would let a trailing newline through
            raise IdentityError(
                "invalid", "team names are 1-64 of a-z, 0-9, '-' and '_', starting alphanumeric"
            )
        _check_priority(priority)
        async with self._session() as s, s.begin():
            taken = (await s.execute(select(Team).where(Team.name == name))).scalar()
            if taken is not None and taken.deleted_at is None:
                raise IdentityError("conflict", f"team {name!r} exists")
            if taken is not None:  # a deleted team's name is free again; its keys stay dead
                suffix = f"~deleted~{taken.id}"  # unique by id; cut the name to fit the 64-char column
                taken.name = name[: 64 - len(suffix)] + suffix
                await s.flush()
            team = Team(
                name=name,
                priority=priority,
                priority_order=PRIORITIES[priority] if order is None else order,
                created_at=now(),
            )
            s.add(team)
            try:
                await s.flush()
            except IntegrityError as exc:  # a concurrent create of the same name committed first
                raise IdentityError("conflict", f"team {name!r} exists") from exc
            await self._bump(s)
        return TeamInfo(team.name, team.priority, team.priority_order, team.created_at, ())

    async def update_team(self, name: str, priority: str | None = None, order: int | None = None) -> TeamInfo:
        async with self._session() as s, s.begin():
            team = await self._team(s, name)
            if priority is not None:
                _check_priority(priority)
                team.priority = priority
                team.priority_order = PRIORITIES[priority] if order is None else order
            elif order is not None:
                team.priority_order = order
            await self._bump(s)
        return await self.get_team(name)

    async def delete_team(self, name: str) -> None:
        """Soft delete: the team's keys stop working at once; its usage history stays."""
        async with self._session() as s, s.begin():
            team = await self._team(s, name)
            team.deleted_at = now()
            await self._bump(s)

    async def get_team(self, name: str) -> TeamInfo:
        async with self._session() as s:
            team = await self._team(s, name)
            models = (await s.execute(select(Grant.model).where(Grant.team_id == team.id))).scalars().all()
            return TeamInfo(
                team.name, team.priority, team.priority_order, _aware(team.created_at), tuple(sorted(models))
            )  # type: ignore[arg-type]

    async def list_teams(self) -> list[TeamInfo]:
        async with self._session() as s:
            teams = (
                await s.execute(select(Team).where(Team.deleted_at.is_(None)).order_by(Team.name))
            ).scalars()
            grants = (await s.execute(select(Grant.team_id, Grant.model))).all()
            by_team: dict[int, list[str]] = {}
            for team_id, model in grants:
                by_team.setdefault(team_id, []).append(model)
            return [
                TeamInfo(
                    t.name,
                    t.priority,
                    t.priority_order,
                    _aware(t.created_at),
                    tuple(sorted(by_team.get(t.id, []))),
                )  # type: ignore[arg-type]
                for t in teams
            ]

    # -- grants --------------------------------------------------------------------------------

    async def grant(self, team_name: str, model: str) -> None:
        try:
            async with self._session() as s, s.begin():
                team = await self._team(s, team_name)
                exists = (
                    await s.execute(select(Grant).where(Grant.team_id == team.id, Grant.model == model))
                ).scalar()
                if exists is None:
                    s.add(Grant(team_id=team.id, model=model, created_at=now()))
                    await self._bump(s)
        except IntegrityError:  # a concurrent grant of the same model committed first: granted already
            pass

    async def ungrant(self, team_name: str, model: str) -> None:
        async with self._session() as s, s.begin():
            team = await self._team(s, team_name)
            grant = (
                await s.execute(select(Grant).where(Grant.team_id == team.id, Grant.model == model))
            ).scalar()
            if grant is None:
                raise IdentityError("not_found", f"team {team_name!r} has no grant for {model!r}")
            await s.delete(grant)
            await self._bump(s)

    # -- keys ----------------------------------------------------------------------------------

    async def create_key(
        self,
        team: str | None,
        name: str,
        *,
        role: str = "member",
        expires_at: datetime | None = None,
        priority: str | None = None,
    ) -> tuple[str, KeyInfo]:
        """A new key: the plaintext (shown once, never stored) and its record."""
        if role not in ROLES:
            raise IdentityError("invalid", f"role must be one of {', '.join(ROLES)}")
        if role == "member" and team is None:
            raise IdentityError("invalid", "a member key belongs to a team")
        if priority is not None:
            _check_priority(priority)
        if expires_at is not None and expires_at <= now():
            raise IdentityError("invalid", "expiry must be in the future")
        if expires_at is not None:  # SQLite keeps no offset: store UTC so it reads back right
            expires_at = expires_at.astimezone(UTC)
        plaintext = new_key()
        async with self._session() as s, s.begin():
            team_row = await self._team(s, team) if team is not None else None
            key = ApiKey(
                team_id=team_row.id if team_row else None,
                name=name,
                prefix=plaintext[:12],
                key_hash=hash_key(plaintext),
                role=role,
                priority=priority,
                created_at=now(),
                expires_at=expires_at,
            )
            s.add(key)
            try:
                await s.flush()
            except IntegrityError as exc:  # pragma: no cover - 256 random bits do not collide
                raise IdentityError("conflict", "key collision, try again") from exc
            await self._bump(s)
        return plaintext, self._info(key, team)

    @staticmethod
    def _info(key: ApiKey, team: str | None) -> KeyInfo:
        return KeyInfo(
            key.id,
            key.name,
            key.prefix,
            team,
            key.role,
            key.priority,
            _aware(key.created_at),
            _aware(key.expires_at),
            _aware(key.revoked_at),  # type: ignore[arg-type]
        )

    async def list_keys(self, team: str | None = None) -> list[KeyInfo]:
        async with self._session() as s:
            q = select(ApiKey, Team.name).outerjoin(Team, ApiKey.team_id == Team.id).order_by(ApiKey.id)
            if team is not None:
                q = q.where(ApiKey.team_id == (await self._team(s, team)).id)
            return [self._info(k, t) for k, t in (await s.execute(q)).all()]

    async def revoke_key(self, key_id: int, team: str | None = None) -> None:
        """Revoke by id; with ``team``, only a key of that team (tenants cannot touch others' keys)."""
        if not 1 <= key_id <= MAX_ID:  # beyond the id column: cannot exist (and PostgreSQL would refuse)
            raise IdentityError("not_found", f"no key with id {key_id}")
        async with self._session() as s, s.begin():
            key = await s.get(ApiKey, key_id)
            if key is not None and team is not None and key.team_id != (await self._team(s, team)).id:
                key = None
            if key is None:
                raise IdentityError("not_found", f"no key with id {key_id}")
            if key.revoked_at is None:
                key.revoked_at = now()
                await self._bump(s)

    async def principal(self, key: str) -> Principal | None:
        """The principal of a presented key, or None if it is unknown, revoked, expired or orphaned."""
        found = await self.lookup(key)
        return found if isinstance(found, Principal) else None

    async def lookup(self, key: str) -> Principal | str:
        """The principal of a presented key, or why it is refused: unknown, revoked, expired, team deleted."""
        async with self._session() as s:
            row = (
                await s.execute(
                    select(ApiKey, Team)
                    .outerjoin(Team, ApiKey.team_id == Team.id)
                    .where(ApiKey.key_hash == hash_key(key))
                )
            ).first()
            if row is None:
                return "unknown"
            k, team = row
            expires = _aware(k.expires_at)
            if k.revoked_at is not None:
                return "revoked"
            if expires is not None and expires <= now():
                return "expired"
            if k.role == "admin":
                priority = k.priority or "critical"
                return Principal(
                    k.id, k.prefix, None, "admin", priority, PRIORITIES[priority], None, expires,
                    guardrails=k.guardrails,
                )  # fmt: skip
            if team is None or team.deleted_at is not None:
                return "team deleted"
            return await self.member_principal(s, team, k.id, k.prefix, k.priority, k.guardrails, expires)

    async def team_principal(self, team_id: int) -> Principal | None:
        """The team's own principal, as a member key with no settings of its own would have it
        (``key_id`` 0, prefix ``internal``): for work the gateway does on a team's behalf, such as
        embedding the team's files. None when there is no such team (or it was deleted)."""
        async with self._session() as s:
            team = await s.get(Team, team_id)
            if team is None or team.deleted_at is not None:
                return None
            return await self.member_principal(s, team, 0, "internal", None, None, None)

    @staticmethod
    async def member_principal(
        s: AsyncSession,
        team: Team,
        key_id: int,
        prefix: str,
        key_priority: str | None,
        key_guardrails: str | None,
        expires: datetime | None,
    ) -> Principal:
        """A member's principal: the team's grants, priority, limits and guardrails, the key's overrides."""
        models = (await s.execute(select(Grant.model).where(Grant.team_id == team.id))).scalars().all()
        priority = key_priority or team.priority
        order = PRIORITIES[key_priority] if key_priority else team.priority_order
        limits = await limits_for(s, team.id, key_id)
        return Principal(
            key_id,
            prefix,
            team.name,
            "member",
            priority,
            order,
            frozenset(models),
            expires,
            team.id,
            limits,
            key_guardrails or team.guardrails,
        )
