"""Guardrail profiles made through the admin API, and which profile is attached to a team, a key or
a model.

Profiles from the config file (and the built-in ``default``, ``strict``, ``off``) are not stored
here: they are read-only; a stored profile may not take one of their names. Every change bumps the
identity revision, so every gateway process drops its cached principals and reloads the profiles
within about a second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from m2a.store.identity import IdentityError, _aware, now
from m2a.store.schema import ApiKey, GuardrailProfileRow, ModelGuardrails, Revision, Team


@dataclass(frozen=True)
class StoredProfile:
    name: str
    spec: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime


class GuardrailStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    @staticmethod
    def _row(r: GuardrailProfileRow) -> StoredProfile:
        return StoredProfile(
            r.name, json.loads(r.spec), r.version, _aware(r.created_at) or r.created_at,
            _aware(r.updated_at) or r.updated_at,
        )  # fmt: skip

    async def profiles(self) -> list[StoredProfile]:
        async with self._session() as s:
            rows = (await s.execute(select(GuardrailProfileRow).order_by(GuardrailProfileRow.name))).scalars()
            return [self._row(r) for r in rows]

    async def put_profile(self, name: str, spec: dict[str, Any]) -> StoredProfile:
        """Create the profile, or replace it with one more version. ``spec`` must be validated."""
        async with self._session() as s, s.begin():
            row = (
                await s.execute(select(GuardrailProfileRow).where(GuardrailProfileRow.name == name))
            ).scalar()
            t = now()
            if row is None:
                row = GuardrailProfileRow(
                    name=name, spec=json.dumps(spec), version=1, created_at=t, updated_at=t
                )
                s.add(row)
            else:
                row.spec, row.version, row.updated_at = json.dumps(spec), row.version + 1, t
            await s.flush()
            await s.execute(update(Revision).where(Revision.id == 1).values(value=Revision.value + 1))
            return self._row(row)

    async def delete_profile(self, name: str) -> None:
        """Delete a stored profile; refused while a team, key or model still has it."""
        async with self._session() as s, s.begin():
            row = (
                await s.execute(select(GuardrailProfileRow).where(GuardrailProfileRow.name == name))
            ).scalar()
            if row is None:
                raise IdentityError("not_found", f"no stored guardrail profile named {name!r}")
            if users := await self._users(s, name):
                raise IdentityError(
                    "conflict", f"profile {name!r} is attached to {', '.join(users)}: detach it first"
                )
            await s.delete(row)
            await s.execute(update(Revision).where(Revision.id == 1).values(value=Revision.value + 1))

    async def _users(self, s: Any, name: str) -> list[str]:
        teams = (
            (await s.execute(select(Team.name).where(Team.guardrails == name, Team.deleted_at.is_(None))))
            .scalars()
            .all()
        )
        keys = (
            (await s.execute(select(ApiKey.id).where(ApiKey.guardrails == name, ApiKey.revoked_at.is_(None))))
            .scalars()
            .all()
        )
        models = (
            (await s.execute(select(ModelGuardrails.model).where(ModelGuardrails.profile == name)))
            .scalars()
            .all()
        )
        return [f"team {t}" for t in teams] + [f"key {k}" for k in keys] + [f"model {m}" for m in models]

    async def attach(
        self, profile: str | None, *, team: str | None = None, key_id: int | None = None,
        model: str | None = None,
    ) -> None:  # fmt: skip
        """Attach ``profile`` to exactly one of a team, a key or a model (None: detach)."""
        if sum(x is not None for x in (team, key_id, model)) != 1:
            raise IdentityError("invalid", "name one team, one key or one model")
        async with self._session() as s, s.begin():
            if team is not None:
                row = (
                    await s.execute(select(Team).where(Team.name == team, Team.deleted_at.is_(None)))
                ).scalar()
                if row is None:
                    raise IdentityError("not_found", f"no team named {team!r}")
                row.guardrails = profile
            elif key_id is not None:
                key = await s.get(ApiKey, key_id)
                if key is None or key.revoked_at is not None:
                    raise IdentityError("not_found", f"no active key with id {key_id}")
                key.guardrails = profile
            else:
                row = (
                    await s.execute(select(ModelGuardrails).where(ModelGuardrails.model == model))
                ).scalar()
                if profile is None:
                    if row is not None:
                        await s.delete(row)
                elif row is None:
                    s.add(ModelGuardrails(model=model, profile=profile))
                else:
                    row.profile = profile
            await s.execute(update(Revision).where(Revision.id == 1).values(value=Revision.value + 1))

    async def model_profiles(self) -> dict[str, str]:
        async with self._session() as s:
            return {m.model: m.profile for m in (await s.execute(select(ModelGuardrails))).scalars()}

    async def attachments(self) -> list[dict[str, Any]]:
        """Every attachment: ``{"team"|"key"|"model": ..., "profile": ...}``."""
        async with self._session() as s:
            teams = (
                await s.execute(
                    select(Team.name, Team.guardrails).where(
                        Team.guardrails.is_not(None), Team.deleted_at.is_(None)
                    )
                )
            ).all()
            keys = (
                await s.execute(
                    select(ApiKey.id, ApiKey.guardrails).where(
                        ApiKey.guardrails.is_not(None), ApiKey.revoked_at.is_(None)
                    )
                )
            ).all()
            models = (await s.execute(select(ModelGuardrails.model, ModelGuardrails.profile))).all()
        return ([{"team": t, "profile": p} for t, p in teams] + [{"key": k, "profile": p} for k, p in keys]
                + [{"model": m, "profile": p} for m, p in models])  # fmt: skip
