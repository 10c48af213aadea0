"""The agent registry: agents of a team, their immutable versions, an alias per stage, their history.

An agent belongs to a team and has sponsors; its name (``AGENT_NAME``) is part of its SPIFFE id,
``spiffe://<trust domain>/team/<team>/agent/<name>``. A revoked agent keeps its name: a new agent
never inherits an old one's identity.

A version is a manifest, stored as its canonical JSON with that JSON's sha256 (``manifest.py``),
numbered 1, 2, … per agent. Adding the same manifest again gives the existing version back.

Stages: ``draft → tested → approved → production``, one step at a time; ``deprecated`` and
``revoked`` from anywhere (``revoked`` is final). A version's ``stage`` is the furthest it got;
the aliases ``draft``, ``tested``, ``approved`` and ``production`` each point at the version that
most recently reached that stage (or was rolled back to). A version may be promoted again to the
stage it already has while that stage's alias points elsewhere (rolling forward after a rollback).

- ``tested`` needs a red-team report (``RedteamReport``) whose gate passed, for one of the
  manifest's models, under the manifest's guardrail profile, with the sha256 of its system prompt.
  The server cannot re-run the attack: a forged report still needs an admin's approval before the
  version can reach production. The report is kept on the version and in the event.
- ``approved`` needs an admin (separation of duties: a team cannot approve its own agent).
- ``rollback`` moves the production alias back to the version that held it before the current one
  (the events are the stack: a promotion to production pushes, a rollback pops, a revocation or
  deprecation that took the production alias pops), refused when that version is revoked; a
  deprecated one is reinstated.
- Deprecating or revoking a version drops the aliases pointing at it; revoking an agent revokes all
  its versions and drops all its aliases.

Every change is one transaction that first locks the agent's row (an ``UPDATE`` of it: a row lock on
PostgreSQL, the write lock on SQLite), so concurrent changes of one agent run one after the other
and none sees a half state; the stage, the alias and the event row are written together. Every
stage change (promotion, rollback, deprecation, revocation) bumps the identity revision in the same
transaction, so every gateway process drops its cached principals (the token verifier relies on it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from m2a.agents.manifest import AGENT_NAME, Manifest, check_sponsors
from m2a.store.schema import AgentAliasRow, AgentEventRow, AgentRow, AgentVersionRow, Revision, Team

STAGES = ("draft", "tested", "approved", "production", "deprecated", "revoked")
ORDER = ("draft", "tested", "approved", "production")
ALIASES = ORDER  # one alias per stage of the order
MAX_VERSION = 2**31 - 1
_NAME = re.compile(AGENT_NAME)
_HEX64 = r"^[0-9a-f]{64}$"


class RegistryError(Exception):
    """A refused registry operation; ``kind`` is not_found, conflict, invalid or forbidden."""

    def __init__(self, kind: str, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code or kind
        self.param = param


# -- the red-team report a promotion to tested carries ---------------------------------------------
class GateVerdict(BaseModel):
    """One category's verdict of the red-team gate (``redteam/gate.py``'s ``Verdict``)."""

    model_config = ConfigDict(extra="forbid")
    category: str = Field(min_length=1, max_length=64)
    verdict: Literal["pass", "fail", "not run"]
    rate: float | None = Field(default=None, ge=0, le=1)
    compared: float | None = Field(default=None, ge=0, le=1)
    limit: float = Field(ge=0, le=1)
    judged: int = Field(ge=0, le=10_000_000)
    errors: int = Field(default=0, ge=0, le=10_000_000)
    reason: str = Field(default="", max_length=1000)


class RedteamReport(BaseModel):
    """The summary of a red-team run and its gate, as `m2a agents test` posts it."""

    model_config = ConfigDict(extra="forbid")
    run: Annotated[int, Field(ge=1)] | Annotated[str, Field(min_length=1, max_length=128)] = Field(
        description="The run's id where it is stored (the tester's redteam.db)."
    )
    model: str = Field(min_length=1, max_length=256, description="The model attacked.")
    profile: str | None = Field(default=None, max_length=64, description="The guardrail profile in force.")
    system_prompt_sha256: str | None = Field(
        default=None, pattern=_HEX64, description="sha256 (hex) of the system prompt sent; none: none sent."
    )
    passed: bool
    verdicts: list[GateVerdict] = Field(min_length=1, max_length=64)
    thresholds: dict[str, float] | None = Field(default=None, max_length=64)
    categories: list[dict[str, Any]] = Field(default_factory=list, max_length=64)
    probes: int | None = Field(default=None, ge=0, le=10_000_000)
    seed: int | None = None
    source: str = Field(default="m2a", max_length=32)
    gateway: str | None = Field(default=None, max_length=1000)
    digest: str | None = Field(default=None, pattern=_HEX64, description="The version's digest tested.")
    started_at: datetime | None = None
    finished_at: datetime | None = None


def check_report(manifest: Manifest, report: RedteamReport | None) -> None:
    """Refuse (``RegistryError`` invalid) a report that does not let this manifest reach ``tested``."""
    if report is None:
        raise RegistryError(
            "invalid",
            "A version reaches 'tested' only with a passed red-team gate: run `m2a agents test NAME`, "
            "or send its report as 'redteam'.",
            code="redteam_required",
            param="redteam",
        )
    failed = [v.category for v in report.verdicts if v.verdict == "fail"]
    if not report.passed or failed:
        raise RegistryError(
            "invalid",
            "The red-team gate failed" + (f" for: {', '.join(failed)}" if failed else "") + ".",
            code="redteam_failed",
            param="redteam.passed",
        )
    passed = [v for v in report.verdicts if v.verdict == "pass"]
    if not passed:
        raise RegistryError(
            "invalid", "The red-team report judged no category: no evidence.", code="redteam_failed",
            param="redteam.verdicts",
        )  # fmt: skip
    for v in passed:
        if v.judged < 1 or v.compared is None or v.compared > v.limit + 1e-12:
            raise RegistryError(
                "invalid",
                f"The red-team report says {v.category} passed, but its numbers do not "
                f"({v.judged} judged, {v.compared} against the limit {v.limit}).",
                code="redteam_inconsistent",
                param="redteam.verdicts",
            )
    if report.model not in manifest.models:
        raise RegistryError(
            "invalid",
            f"The red-team run attacked {report.model!r}, which is not a model of this version "
            f"({', '.join(manifest.models)}).",
            code="redteam_mismatch",
            param="redteam.model",
        )
    if report.profile != manifest.guardrails:
        raise RegistryError(
            "invalid",
            f"The red-team run was under guardrail profile {report.profile!r}; this version's is "
            f"{manifest.guardrails!r}.",
            code="redteam_mismatch",
            param="redteam.profile",
        )
    if report.system_prompt_sha256 != manifest.system_prompt_sha256():
        raise RegistryError(
            "invalid",
            "The red-team run was not made with this version's system prompt (its sha256 differs).",
            code="redteam_mismatch",
            param="redteam.system_prompt_sha256",
        )


# -- what the registry hands out --------------------------------------------------------------------
@dataclass(frozen=True)
class AgentInfo:
    id: int
    team: str
    team_id: int
    name: str
    spiffe_id: str
    sponsors: tuple[str, ...]
    created_at: datetime
    created_by: int | None
    revoked_at: datetime | None
    aliases: dict[str, int] = field(default_factory=dict)  # alias -> version number
    versions: int = 0
    latest: int | None = None


@dataclass(frozen=True)
class VersionInfo:
    id: int
    agent_id: int
    team: str
    agent: str
    number: int
    digest: str
    stage: str
    manifest: Manifest
    redteam: dict[str, Any] | None
    aliases: tuple[str, ...]
    created_at: datetime
    created_by: int | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class EventInfo:
    id: int
    action: str
    version: int | None
    from_stage: str | None
    to_stage: str | None
    detail: dict[str, Any]
    by_key: int | None
    at: datetime


def spiffe_id(trust_domain: str, team: str, name: str) -> str:
    return f"spiffe://{trust_domain}/team/{team}/agent/{name}"


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(t: datetime | None) -> datetime | None:
    """SQLite hands timezone-aware columns back naive (in UTC)."""
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


def _not_found(team: str, name: str) -> RegistryError:
    return RegistryError("not_found", f"No agent named '{name}' in team '{team}'.", code="agent_not_found")


class Registry:
    """The registry's rules over the store's ``agents*`` tables (any SQLAlchemy async engine)."""

    def __init__(self, engine: AsyncEngine, trust_domain: str = "m2a.local") -> None:
        self.engine = engine
        self.trust_domain = trust_domain
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    # -- helpers -----------------------------------------------------------------------------------
    async def _ids(self, s: AsyncSession, team: str, name: str) -> tuple[int, int]:
        """The agent's and its team's ids (a live team), or not_found."""
        if not _NAME.fullmatch(name) or len(team) > 64:
            raise _not_found(team, name)
        row = (
            await s.execute(
                select(AgentRow.id, Team.id)
                .join(Team, AgentRow.team_id == Team.id)
                .where(Team.name == team, Team.deleted_at.is_(None), AgentRow.name == name)
            )
        ).first()
        if row is None:
            raise _not_found(team, name)
        return int(row[0]), int(row[1])

    @staticmethod
    async def _lock(s: AsyncSession, agent_id: int) -> AgentRow:
        """Serialize changes of one agent (see the module docstring), then read it afresh."""
        await s.execute(
            update(AgentRow)
            .where(AgentRow.id == agent_id)
            .values(name=AgentRow.name)
            .execution_options(synchronize_session=False)
        )
        agent = (
            await s.execute(
                select(AgentRow).where(AgentRow.id == agent_id).execution_options(populate_existing=True)
            )
        ).scalar_one()
        return agent

    async def _locked(self, s: AsyncSession, team: str, name: str, *, live: bool = True) -> AgentRow:
        agent_id, _ = await self._ids(s, team, name)
        agent = await self._lock(s, agent_id)
        if live and agent.revoked_at is not None:
            raise RegistryError("conflict", f"Agent '{team}/{name}' is revoked.", code="agent_revoked")
        return agent

    @staticmethod
    async def _version(s: AsyncSession, agent: AgentRow, team: str, number: int) -> AgentVersionRow:
        row = None
        if 1 <= number <= MAX_VERSION:
            row = (
                await s.execute(
                    select(AgentVersionRow)
                    .where(AgentVersionRow.agent_id == agent.id, AgentVersionRow.number == number)
                    .execution_options(populate_existing=True)
                )
            ).scalar()
        if row is None:
            raise RegistryError(
                "not_found", f"Agent '{team}/{agent.name}' has no version {number}.", code="version_not_found"
            )
        return row

    @staticmethod
    async def _aliases(s: AsyncSession, agent_id: int) -> dict[str, AgentAliasRow]:
        rows = (
            await s.execute(
                select(AgentAliasRow)
                .where(AgentAliasRow.agent_id == agent_id)
                .execution_options(populate_existing=True)
            )
        ).scalars()
        return {a.alias: a for a in rows}

    @staticmethod
    async def _point(s: AsyncSession, agent_id: int, alias: str, version_id: int) -> int | None:
        """Point ``alias`` at the version; the version it pointed at before (or None)."""
        row = (
            await s.execute(
                select(AgentAliasRow)
                .where(AgentAliasRow.agent_id == agent_id, AgentAliasRow.alias == alias)
                .execution_options(populate_existing=True)
            )
        ).scalar()
        if row is None:
            s.add(AgentAliasRow(agent_id=agent_id, alias=alias, version_id=version_id, updated_at=_now()))
            return None
        before = row.version_id
        row.version_id, row.updated_at = version_id, _now()
        return before

    @staticmethod
    async def _drop_aliases(s: AsyncSession, agent_id: int, version_id: int | None = None) -> list[str]:
        """Drop the aliases pointing at the version (all the agent's with None); their names."""
        q = select(AgentAliasRow.alias).where(AgentAliasRow.agent_id == agent_id)
        d = delete(AgentAliasRow).where(AgentAliasRow.agent_id == agent_id)
        if version_id is not None:
            q = q.where(AgentAliasRow.version_id == version_id)
            d = d.where(AgentAliasRow.version_id == version_id)
        names = sorted((await s.execute(q)).scalars().all())
        if names:
            await s.execute(d)
        return names

    @staticmethod
    def _event(
        s: AsyncSession,
        agent_id: int,
        action: str,
        by_key: int | None,
        version_id: int | None = None,
        from_stage: str | None = None,
        to_stage: str | None = None,
        **detail: Any,
    ) -> None:
        s.add(
            AgentEventRow(
                agent_id=agent_id,
                version_id=version_id,
                action=action,
                from_stage=from_stage,
                to_stage=to_stage,
                detail=json.dumps({k: v for k, v in detail.items() if v is not None}, sort_keys=True),
                by_key=by_key,
                at=_now(),
            )
        )

    @staticmethod
    async def _bump(s: AsyncSession) -> None:
        """The identity revision: every gateway process drops its cached principals."""
        await s.execute(update(Revision).where(Revision.id == 1).values(value=Revision.value + 1))

    def _agent_info(
        self, agent: AgentRow, team: str, aliases: dict[str, int], versions: int, latest: int | None
    ) -> AgentInfo:
        return AgentInfo(
            agent.id,
            team,
            agent.team_id,
            agent.name,
            spiffe_id(self.trust_domain, team, agent.name),
            tuple(json.loads(agent.sponsors or "[]")),
            _aware(agent.created_at),  # type: ignore[arg-type]
            agent.created_by,
            _aware(agent.revoked_at),
            dict(sorted(aliases.items(), key=lambda kv: ALIASES.index(kv[0]) if kv[0] in ALIASES else 99)),
            versions,
            latest,
        )

    @staticmethod
    def _version_info(v: AgentVersionRow, team: str, agent: str, aliases: list[str]) -> VersionInfo:
        return VersionInfo(
            v.id,
            v.agent_id,
            team,
            agent,
            v.number,
            v.digest,
            v.stage,
            Manifest.model_validate_json(v.manifest),
            json.loads(v.redteam) if v.redteam else None,
            tuple(a for a in ALIASES if a in aliases),
            _aware(v.created_at),  # type: ignore[arg-type]
            v.created_by,
            _aware(v.revoked_at),
        )

    async def _describe(self, s: AsyncSession, agents: list[tuple[AgentRow, str]]) -> list[AgentInfo]:
        ids = [a.id for a, _ in agents]
        if not ids:
            return []
        numbers = dict(
            (
                await s.execute(
                    select(AgentVersionRow.id, AgentVersionRow.number).where(
                        AgentVersionRow.agent_id.in_(ids)
                    )
                )
            ).all()
        )
        counts = {
            agent_id: (n, latest)
            for agent_id, n, latest in (
                await s.execute(
                    select(AgentVersionRow.agent_id, func.count(), func.max(AgentVersionRow.number))
                    .where(AgentVersionRow.agent_id.in_(ids))
                    .group_by(AgentVersionRow.agent_id)
                )
            ).all()
        }
        aliases: dict[int, dict[str, int]] = {}
        for a in (await s.execute(select(AgentAliasRow).where(AgentAliasRow.agent_id.in_(ids)))).scalars():
            aliases.setdefault(a.agent_id, {})[a.alias] = numbers[a.version_id]
        return [
            self._agent_info(a, team, aliases.get(a.id, {}), *counts.get(a.id, (0, None)))
            for a, team in agents
        ]

    # -- agents ------------------------------------------------------------------------------------
    async def create(
        self,
        team: str,
        name: str,
        sponsors: list[str],
        *,
        by_key: int | None = None,
        manifest: Manifest | None = None,
    ) -> tuple[AgentInfo, VersionInfo | None]:
        """A new agent of ``team`` (with version 1 as a draft when a manifest is given)."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise RegistryError(
                "invalid",
                "Agent names are 1-63 of a-z, 0-9 and '-', starting with a letter or digit "
                "(the name is part of the agent's SPIFFE id).",
                code="invalid_name",
                param="name",
            )
        try:
            sponsors = check_sponsors(sponsors)
        except ValueError as exc:
            raise RegistryError("invalid", str(exc), code="invalid_sponsors", param="sponsors") from exc
        try:
            async with self._session() as s, s.begin():
                team_row = (
                    await s.execute(select(Team).where(Team.name == team, Team.deleted_at.is_(None)))
                ).scalar()
                if team_row is None:
                    raise RegistryError(
                        "not_found", f"No team named '{team}'.", code="team_not_found", param="team"
                    )
                taken = (
                    await s.execute(
                        select(AgentRow.revoked_at).where(
                            AgentRow.team_id == team_row.id, AgentRow.name == name
                        )
                    )
                ).first()
                if taken is not None:
                    raise self._taken(team, name, taken[0] is not None)
                agent = AgentRow(
                    team_id=team_row.id, name=name, sponsors=json.dumps(sponsors), created_at=_now(),
                    created_by=by_key,
                )  # fmt: skip
                s.add(agent)
                await s.flush()
                self._event(s, agent.id, "create", by_key, sponsors=sponsors)
                version = None
                if manifest is not None:
                    version = await self._add(s, agent, team, manifest, by_key)
        except IntegrityError as exc:  # a concurrent create of the same name committed first
            raise self._taken(team, name, False) from exc
        info = await self.get(team, name)
        return info, version

    @staticmethod
    def _taken(team: str, name: str, revoked: bool) -> RegistryError:
        why = " (a revoked agent keeps its name: its identity is never reused)" if revoked else ""
        return RegistryError("conflict", f"Team '{team}' has an agent named '{name}'{why}.", param="name")

    async def get(self, team: str, name: str) -> AgentInfo:
        async with self._session() as s:
            agent_id, _ = await self._ids(s, team, name)
            agent = await s.get(AgentRow, agent_id)
            assert agent is not None
            return (await self._describe(s, [(agent, team)]))[0]

    async def list(self, team: str | None = None) -> list[AgentInfo]:
        """Every agent (of ``team``), by team and name, revoked ones included."""
        async with self._session() as s:
            q = (
                select(AgentRow, Team.name)
                .join(Team, AgentRow.team_id == Team.id)
                .where(Team.deleted_at.is_(None))
                .order_by(Team.name, AgentRow.name)
            )
            if team is not None:
                q = q.where(Team.name == team)
            return await self._describe(s, [(a, t) for a, t in (await s.execute(q)).all()])

    async def set_sponsors(
        self, team: str, name: str, sponsors: list[str], *, by_key: int | None = None
    ) -> AgentInfo:
        try:
            sponsors = check_sponsors(sponsors)
        except ValueError as exc:
            raise RegistryError("invalid", str(exc), code="invalid_sponsors", param="sponsors") from exc
        async with self._session() as s, s.begin():
            agent = await self._locked(s, team, name)
            agent.sponsors = json.dumps(sponsors)
            self._event(s, agent.id, "sponsors", by_key, sponsors=sponsors)
        return await self.get(team, name)

    async def revoke(
        self, team: str, name: str, *, by_key: int | None = None, reason: str | None = None
    ) -> AgentInfo:
        """Revoke the agent: every version revoked, every alias dropped; its identity ends at once."""
        async with self._session() as s, s.begin():
            agent = await self._locked(s, team, name, live=False)
            if agent.revoked_at is None:
                at = _now()
                agent.revoked_at = at
                await s.execute(
                    update(AgentVersionRow)
                    .where(AgentVersionRow.agent_id == agent.id, AgentVersionRow.stage != "revoked")
                    .values(stage="revoked", revoked_at=at)
                )
                dropped = await self._drop_aliases(s, agent.id)
                self._event(s, agent.id, "revoke", by_key, to_stage="revoked", dropped=dropped, reason=reason)
                await self._bump(s)
        return await self.get(team, name)

    # -- versions ----------------------------------------------------------------------------------
    async def _add(
        self, s: AsyncSession, agent: AgentRow, team: str, manifest: Manifest, by_key: int | None
    ) -> VersionInfo:
        number = (
            int(
                (
                    await s.execute(
                        select(func.coalesce(func.max(AgentVersionRow.number), 0)).where(
                            AgentVersionRow.agent_id == agent.id
                        )
                    )
                ).scalar_one()
            )
            + 1
        )
        version = AgentVersionRow(
            agent_id=agent.id,
            number=number,
            digest=manifest.digest(),
            manifest=manifest.canonical().decode(),
            stage="draft",
            created_at=_now(),
            created_by=by_key,
        )
        s.add(version)
        await s.flush()
        await self._point(s, agent.id, "draft", version.id)
        self._event(s, agent.id, "version", by_key, version.id, None, "draft", digest=version.digest)
        return self._version_info(version, team, agent.name, ["draft"])

    async def add_version(
        self, team: str, name: str, manifest: Manifest, *, by_key: int | None = None
    ) -> tuple[VersionInfo, bool]:
        """The version of ``manifest`` and whether it is new (the same manifest twice: the same one)."""
        async with self._session() as s, s.begin():
            agent = await self._locked(s, team, name)
            same = (
                await s.execute(
                    select(AgentVersionRow.number).where(
                        AgentVersionRow.agent_id == agent.id, AgentVersionRow.digest == manifest.digest()
                    )
                )
            ).scalar()
            if same is None:
                made = await self._add(s, agent, team, manifest, by_key)
        if same is not None:
            return await self.version(team, name, int(same)), False
        return await self.version(team, name, made.number), True

    async def versions(self, team: str, name: str) -> list[VersionInfo]:
        async with self._session() as s:
            agent_id, _ = await self._ids(s, team, name)
            rows = (
                (
                    await s.execute(
                        select(AgentVersionRow)
                        .where(AgentVersionRow.agent_id == agent_id)
                        .order_by(AgentVersionRow.number)
                    )
                )
                .scalars()
                .all()
            )
            by_version: dict[int, list[str]] = {}
            for alias in (await self._aliases(s, agent_id)).values():
                by_version.setdefault(alias.version_id, []).append(alias.alias)
            return [self._version_info(v, team, name, by_version.get(v.id, [])) for v in rows]

    async def version(self, team: str, name: str, number: int) -> VersionInfo:
        async with self._session() as s:
            agent_id, _ = await self._ids(s, team, name)
            agent = await s.get(AgentRow, agent_id)
            assert agent is not None
            v = await self._version(s, agent, team, number)
            aliases = [a.alias for a in (await self._aliases(s, agent_id)).values() if a.version_id == v.id]
            return self._version_info(v, team, name, aliases)

    async def resolve(self, team: str, name: str, ref: str) -> VersionInfo:
        """A version by number (``3``) or by alias (``production``)."""
        if ref.isdigit():
            return await self.version(team, name, int(ref))
        async with self._session() as s:
            agent_id, _ = await self._ids(s, team, name)
            alias = (await self._aliases(s, agent_id)).get(ref)
            number = None
            if alias is not None:
                number = (
                    await s.execute(
                        select(AgentVersionRow.number).where(AgentVersionRow.id == alias.version_id)
                    )
                ).scalar_one()
        if number is None:
            raise RegistryError(
                "not_found", f"Agent '{team}/{name}' has no version at '{ref}'.", code="version_not_found"
            )
        return await self.version(team, name, int(number))

    async def events(self, team: str, name: str) -> list[EventInfo]:
        async with self._session() as s:
            agent_id, _ = await self._ids(s, team, name)
            numbers = dict(
                (
                    await s.execute(
                        select(AgentVersionRow.id, AgentVersionRow.number).where(
                            AgentVersionRow.agent_id == agent_id
                        )
                    )
                ).all()
            )
            rows = (
                await s.execute(
                    select(AgentEventRow).where(AgentEventRow.agent_id == agent_id).order_by(AgentEventRow.id)
                )
            ).scalars()
            return [
                EventInfo(
                    e.id,
                    e.action,
                    numbers.get(e.version_id) if e.version_id is not None else None,
                    e.from_stage,
                    e.to_stage,
                    json.loads(e.detail or "{}"),
                    e.by_key,
                    _aware(e.at),  # type: ignore[arg-type]
                )
                for e in rows
            ]

    # -- stages ------------------------------------------------------------------------------------
    async def promote(
        self,
        team: str,
        name: str,
        number: int,
        to: str,
        *,
        by_key: int | None = None,
        admin: bool = False,
        redteam: RedteamReport | None = None,
        reason: str | None = None,
    ) -> VersionInfo:
        """Move a version one stage on (or to deprecated / revoked), its stage's alias with it."""
        if to not in STAGES:
            raise RegistryError(
                "invalid", f"Stages are {', '.join(STAGES)}; not {to!r}.", code="invalid_stage", param="to"
            )
        if to == "revoked":
            return await self.revoke_version(team, name, number, by_key=by_key, reason=reason)
        if to == "draft":
            raise RegistryError(
                "conflict",
                "A version is a draft when it is made; none goes back to draft.",
                code="invalid_transition",
            )
        if to == "approved" and not admin:  # before anything is read: the answer does not depend on it
            raise RegistryError(
                "forbidden",
                "Approving a version needs an admin key (separation of duties: a team does not approve "
                "its own agents).",
                code="approval_needs_admin",
            )
        async with self._session() as s, s.begin():
            agent = await self._locked(s, team, name)
            v = await self._version(s, agent, team, number)
            if v.stage == "revoked":
                raise RegistryError(
                    "conflict", f"Version {number} is revoked; that is final.", code="version_revoked"
                )
            if to == "deprecated":
                if v.stage == "deprecated":
                    raise RegistryError(
                        "conflict", f"Version {number} is deprecated already.", code="invalid_transition"
                    )
                dropped = await self._drop_aliases(s, agent.id, v.id)
                self._event(
                    s, agent.id, "deprecate", by_key, v.id, v.stage, to, dropped=dropped, reason=reason
                )
                v.stage = to
                await self._bump(s)
                return await self._info_in(s, v, team, agent.name)
            before = ORDER[ORDER.index(to) - 1]
            alias = (await self._aliases(s, agent.id)).get(to)
            again = v.stage == to and (alias is None or alias.version_id != v.id)  # rolling forward
            if v.stage != before and not again:
                if v.stage == to:
                    raise RegistryError(
                        "conflict", f"Version {number} is {to} already.", code="invalid_transition"
                    )
                nxt = ORDER[ORDER.index(v.stage) + 1] if v.stage in ORDER[:-1] else None
                raise RegistryError(
                    "conflict",
                    f"Version {number} is {v.stage}: "
                    + (f"it goes to {nxt} next" if nxt else "it cannot be promoted")
                    + " (draft → tested → approved → production, one step at a time).",
                    code="invalid_transition",
                    param="to",
                )
            report = None
            if to == "tested":
                manifest = Manifest.model_validate_json(v.manifest)
                check_report(manifest, redteam)
                assert redteam is not None
                report = {
                    **redteam.model_dump(mode="json"),
                    "accepted_at": _now().isoformat(),
                    "by_key": by_key,
                }
                v.redteam = json.dumps(report, sort_keys=True)
            previous = await self._point(s, agent.id, to, v.id)
            self._event(
                s,
                agent.id,
                "promote",
                by_key,
                v.id,
                v.stage,
                to,
                previous=previous,
                redteam=report,
                reason=reason,
            )
            v.stage = to
            await self._bump(s)
            return await self._info_in(s, v, team, agent.name)

    async def _info_in(self, s: AsyncSession, v: AgentVersionRow, team: str, agent: str) -> VersionInfo:
        await s.flush()
        aliases = [a.alias for a in (await self._aliases(s, v.agent_id)).values() if a.version_id == v.id]
        return self._version_info(v, team, agent, aliases)

    async def rollback(
        self, team: str, name: str, *, by_key: int | None = None, reason: str | None = None
    ) -> VersionInfo:
        """The production alias back to the version that held it before (see the module docstring)."""
        async with self._session() as s, s.begin():
            agent = await self._locked(s, team, name)
            alias = (await self._aliases(s, agent.id)).get("production")
            current = alias.version_id if alias is not None else None
            stack = await self._production_stack(s, agent.id)
            if current is not None and stack and stack[-1] == current:
                stack.pop()
            if not stack:
                raise RegistryError(
                    "conflict", f"Agent '{team}/{name}' has no earlier production version to roll back to.",
                    code="nothing_to_roll_back",
                )  # fmt: skip
            target = (
                await s.execute(
                    select(AgentVersionRow)
                    .where(AgentVersionRow.id == stack[-1])
                    .execution_options(populate_existing=True)
                )
            ).scalar_one()
            if target.stage == "revoked":
                raise RegistryError(
                    "conflict",
                    f"Version {target.number}, which held production before, is revoked: promote another "
                    "version instead.",
                    code="version_revoked",
                )
            from_number = None
            if current is not None:
                from_number = (
                    await s.execute(select(AgentVersionRow.number).where(AgentVersionRow.id == current))
                ).scalar_one()
            await self._point(s, agent.id, "production", target.id)
            self._event(
                s, agent.id, "rollback", by_key, target.id, target.stage, "production",
                from_version_id=current, from_version=from_number, reason=reason,
            )  # fmt: skip
            target.stage = "production"  # a deprecated one is reinstated
            await self._bump(s)
            return await self._info_in(s, target, team, agent.name)

    @staticmethod
    async def _production_stack(s: AsyncSession, agent_id: int) -> list[int]:
        """The versions that held production, oldest first, as the events tell it."""
        stack: list[int] = []
        rows = (
            await s.execute(
                select(
                    AgentEventRow.action,
                    AgentEventRow.version_id,
                    AgentEventRow.to_stage,
                    AgentEventRow.detail,
                )
                .where(AgentEventRow.agent_id == agent_id)
                .order_by(AgentEventRow.id)
            )
        ).all()
        for action, version_id, to_stage, detail in rows:
            d = json.loads(detail or "{}")
            if action == "promote" and to_stage == "production":
                stack.append(version_id)
            elif action == "rollback":
                if d.get("from_version_id") is not None and stack and stack[-1] == d["from_version_id"]:
                    stack.pop()
                if not stack or stack[-1] != version_id:
                    stack.append(version_id)
            elif action in ("deprecate", "revoke"):
                left = "production" in d.get("dropped", []) and bool(stack) and stack[-1] == version_id
                if left:  # the holder of production lost it
                    stack.pop()
        return stack

    async def revoke_version(
        self, team: str, name: str, number: int, *, by_key: int | None = None, reason: str | None = None
    ) -> VersionInfo:
        """Revoke a version (final): its aliases dropped, its tokens dead within seconds everywhere."""
        async with self._session() as s, s.begin():
            agent = await self._locked(s, team, name, live=False)
            v = await self._version(s, agent, team, number)
            if v.stage != "revoked":
                dropped = await self._drop_aliases(s, agent.id, v.id)
                self._event(
                    s, agent.id, "revoke", by_key, v.id, v.stage, "revoked", dropped=dropped, reason=reason
                )
                v.stage, v.revoked_at = "revoked", _now()
                await self._bump(s)
            return await self._info_in(s, v, team, agent.name)
