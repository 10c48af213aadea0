"""Policy decisions for agents' actions, by Cedar (cedarpy): may this agent call this tool now, and may
this API key approve that call.

**Entities** (namespace ``M2A``; the schema is in ``policy_schema.py``):

- ``Agent::"<team>/<name>"`` (attrs ``team``, ``name``, ``version`` Long: 0 when unknown, ``spiffe``),
  a member of ``Team::"<team>"``; ``User`` is reserved (the person an agent acts for reaches Cedar as
  ``context.on_behalf_of``, the RFC 8693 subject, or ``""``);
- ``Key::"<key id>"`` (``Key::"none"`` for an approval without a key: the CLI) with ``team`` (its
  team, or ``""``) and ``admin``, a member of its team: the principal of approvals;
- ``Tool::"<server>/<tool>"`` with ``server``, ``name``, ``tier`` (``read``, ``write``, ``destructive``).

**Actions**: ``Action::"call"`` (an Agent on a Tool; context ``granted`` — the agent's manifest grants
the tool, ``tier``, ``on_behalf_of``, ``args``, ``guardrails`` — the detectors that flagged, a Set of
String) and ``Action::"approve"`` (a Key on a Tool; context ``agent_team``, ``tier``). ``args`` is the
call's arguments as a Cedar record: strings, bools, integers within i64, lists as Sets, objects as
records; other numbers reach it as their text, ``null`` is left out, objects nested past 16 levels
or spelled like Cedar's JSON escapes (``__entity``, ``__extn``) as their JSON text (details:
``policy_schema.cedar_value``). Since arguments differ per tool, a policy must guard each one:
``context.args has amount && context.args.amount > 1000`` (the validator refuses the unguarded form).

**Baseline** (always loaded, cannot be switched off, ids ``m2a.*``): ``m2a.granted`` permits a call
when ``context.granted``; ``m2a.ungranted`` forbids one unless ``context.granted``, so no policy can
open a tool the manifest does not grant: the grant is the first gate and policies only narrow from
there. ``m2a.approve.admin`` permits admin keys to approve anything; ``m2a.approve.team`` permits a
key of the agent's team to approve what is not ``destructive`` (destructive calls need an admin, or
a key a global ``permit`` names). Cedar denies whatever nothing permits.

**Scopes and sources.** ``global``, ``team:<team>``, ``agent:<team>/<name>``; from files
(``<policy_dir>/*.cedar`` global, ``<policy_dir>/teams/<team>/*.cedar``,
``<policy_dir>/agents/<team>/<name>/*.cedar``; ``.cedar`` files elsewhere are ignored with a warning)
and from the ``policies`` table (the admin API, the CLI). A call is decided on baseline + global + the
agent's team's + the agent's own policies, an approval on baseline + global + the agent's team's: a
team's policies are only ever evaluated for its agents, an agent's for it alone, by construction of
the policy set, built per (team, agent) and cached until the policies change. Team and agent scopes
hold only ``forbid`` policies (permits there could let other teams' keys approve); the global scope,
an admin's, holds both. A policy's id is its ``@id("...")`` annotation when it has one (unique in
the set, else the positional id), else ``<scope>/<name>/<n>``: ``name`` is the row's name or the
file's name (``limits.cedar``), ``n`` the policy's place in that text from 0.

**Fail closed.** A text that does not parse or validate (``validate``) is refused on write; one met at
load (a bad file, a row written around the API) is logged with its path and makes every decision of
its scope a denial naming it (a broken global text: every decision) rather than being dropped: a
broken ``forbid`` must not open the door. An evaluation error, a request that cannot be built, an
unknown tier or arguments that are not an object deny too, in either mode. Until policies have been
loaded once every decision is a denial.

**Modes.** ``enforce``: a denial refuses. ``log_only``: a Cedar denial is allowed, the decision saying
it would have been refused (``cedar_allowed`` False); errors still refuse, and so does a call the
manifest does not grant (log_only tries policies out, it does not switch the manifest off). The mode is
``TrustConfig.mode``, unless a row of the agent's team's or the agent's own scope carries one; when
such rows disagree the strictest (``enforce``) wins. Approvals are always enforced.

**Freshness.** Decisions run ``cedarpy.is_authorized`` on a cached, parsed policy set. At most once a
second a decision first checks a change marker (the files' mtimes and sizes, the table's row count,
latest ``updated_at`` and versions) and reloads when it moved, so a change written by one gateway
process is seen by the others within about a second; ``reload()`` checks at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cedarpy
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.store.policies import AGENT, MODES, TEAM, PolicyStore
from m2a.trust.policy_schema import (
    APPROVE,
    BASELINE_UNIT,
    CALL,
    TIERS,
    Unit,
    cedar_args,
    check_text,
    compile_unit,
    uid,
)

log = logging.getLogger("m2a.trust.policy")

REFRESH_S = 1.0
CACHE_SIZE = 4096
TABLE = "policies table"
_TEAM = re.compile(TEAM)
_AGENT = re.compile(AGENT)


@dataclass(frozen=True)
class CallRequest:
    """An agent's tool call, as the policy sees it."""

    agent_spiffe: str
    agent_id: int
    agent_name: str
    team: str
    version: int | None
    on_behalf_of: str | None
    server: str
    tool: str
    tier: str  # read | write | destructive
    granted: bool
    arguments: dict[str, Any] | None
    guardrails: tuple[str, ...] = ()


@dataclass(frozen=True)
class ApproveRequest:
    """An API key approving a waiting call of an agent of ``agent_team``."""

    key_id: int | None
    key_team: str | None
    admin: bool
    agent_team: str
    server: str
    tool: str
    tier: str


@dataclass(frozen=True)
class Decision:
    allowed: bool  # may it go ahead (log_only: True even when Cedar said deny, unless errors or ungranted)
    cedar_allowed: bool  # what Cedar decided (False on any error: an error never permits)
    mode: str  # enforce | log_only
    policy_ids: tuple[str, ...]  # the determining policies (Cedar's diagnostics.reasons)
    policy_version: str  # sha256 hex (first 16) of the evaluated policy set
    errors: tuple[str, ...] = ()  # evaluation or load errors

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "policy_ids": list(self.policy_ids), "errors": list(self.errors)}


@dataclass(frozen=True)
class _Set:
    policies: cedarpy.PolicySet | None
    version: str
    errors: tuple[str, ...]


@dataclass
class _Loaded:
    units: dict[str, list[Unit]] = field(default_factory=dict)  # by scope
    modes: dict[str, str] = field(default_factory=dict)  # the strictest row mode per scope


def _strictest(a: str | None, b: str) -> str:
    return "enforce" if "enforce" in (a, b) else b


def _where(unit: Unit) -> str:
    if unit.origin == TABLE:
        return f"policy {unit.scope}/{unit.name} ({TABLE})"
    return f"policy file {unit.origin}"


class PolicyEngine:
    """Cedar decisions over the baseline, the policy files and the ``policies`` table."""

    def __init__(
        self,
        engine: AsyncEngine | None,
        policy_dir: Path | None,
        mode: str = "enforce",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self.store = PolicyStore(engine) if engine is not None else None
        self.policy_dir = Path(policy_dir) if policy_dir is not None else None
        self.mode = mode
        self.clock = clock
        self._loaded: _Loaded | None = None
        self._load_error = "policies have not been loaded yet"
        self._marker: Any = None
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()
        self._sets: OrderedDict[tuple[str, str | None], _Set] = OrderedDict()
        self._compiled: dict[tuple[str, str, str, str], Unit] = {}
        self._strays: set[Path] = set()  # .cedar files outside the layout, warned of once

    # -- checking texts --------------------------------------------------------------------------

    def validate(self, text: str, scope: str = "global") -> list[str]:
        """Cedar's and m2a's objections to ``text`` as a policy of ``scope``; ``[]`` when fine."""
        problems = check_text(text, scope)[0]
        return list(dict.fromkeys(problems))

    def problems(self) -> list[str]:
        """What the last load refused (each makes its scope deny), or why nothing is loaded."""
        if self._loaded is None:
            return [self._load_error]
        return [f"{_where(u)}: {u.error}" for units in self._loaded.units.values() for u in units if u.error]

    # -- loading ---------------------------------------------------------------------------------

    def _files(self) -> list[tuple[Path, str]]:
        """The policy files and their scopes; warns of ``.cedar`` files outside the layout."""
        root = self.policy_dir
        if root is None or not root.is_dir():
            return []
        found: list[tuple[Path, str]] = [(p, "global") for p in sorted(root.glob("*.cedar"))]
        for team_dir in sorted((root / "teams").glob("*/")):
            if _TEAM.fullmatch(team_dir.name):
                found += [(p, f"team:{team_dir.name}") for p in sorted(team_dir.glob("*.cedar"))]
        for agent_dir in sorted((root / "agents").glob("*/*/")):
            team, name = agent_dir.parent.name, agent_dir.name
            if _TEAM.fullmatch(team) and _AGENT.fullmatch(name):
                found += [(p, f"agent:{team}/{name}") for p in sorted(agent_dir.glob("*.cedar"))]
        known = {p for p, _ in found}
        for stray in sorted(root.rglob("*.cedar")):
            if stray not in known and stray not in self._strays:
                self._strays.add(stray)
                log.warning("ignoring policy file %s: not where m2a reads policies from", stray)
        return [(p, scope) for p, scope in found if p.is_file()]

    def _file_marker(self) -> tuple[tuple[str, int, int], ...]:
        marks = []
        for path, _ in self._files():
            try:
                st = path.stat()
                marks.append((str(path), st.st_mtime_ns, st.st_size))
            except OSError:
                marks.append((str(path), -1, -1))
        return tuple(marks)

    def _unit(self, text: str, scope: str, name: str, origin: str) -> Unit:
        key = (origin, scope, name, text)
        unit = self._compiled.get(key)
        if unit is None:
            unit = compile_unit(text, scope, name, origin)
            if unit.error:
                log.warning("%s refused: %s (its scope denies every decision)", _where(unit), unit.error)
            if len(self._compiled) > CACHE_SIZE:
                self._compiled.clear()
            self._compiled[key] = unit
        return unit

    async def _load(self) -> _Loaded:
        loaded = _Loaded()
        for path, scope in self._files():
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                unit = Unit(str(path), scope, path.name, (), f"cannot be read: {exc}")
                log.warning("%s: %s", _where(unit), unit.error)
            else:
                unit = self._unit(text, scope, path.name, str(path))
            loaded.units.setdefault(scope, []).append(unit)
        for row in await self.store.list() if self.store is not None else []:
            loaded.units.setdefault(row.scope, []).append(self._unit(row.text, row.scope, row.name, TABLE))
            if row.mode in MODES:
                loaded.modes[row.scope] = _strictest(loaded.modes.get(row.scope), row.mode)
        return loaded

    async def reload(self) -> None:
        """Check the change marker now and re-read files and rows if it moved."""
        async with self._lock:
            self._checked_at = self.clock()
            try:
                marker = (self._file_marker(), await self.store.marker() if self.store else None)
                if self._loaded is not None and marker == self._marker:
                    return
                loaded = await self._load()
            except Exception as exc:  # the database may blip: keep what was loaded, else deny
                log.warning("could not load the policies", exc_info=True)
                if self._loaded is None:
                    self._load_error = f"policies could not be loaded: {type(exc).__name__}: {exc}"
                return
            self._loaded, self._marker = loaded, marker
            self._sets.clear()

    async def _fresh(self) -> None:
        if self._loaded is not None and self.clock() - self._checked_at < REFRESH_S:
            return
        if self._lock.locked() and self._loaded is not None:
            return  # another decision is reloading: this one uses what is loaded
        await self.reload()

    # -- policy sets -----------------------------------------------------------------------------

    def _scopes(self, team: str, agent: str | None) -> list[str]:
        scopes = ["global", f"team:{team}"]
        return scopes + [f"agent:{team}/{agent}"] if agent is not None else scopes

    def _mode(self, team: str, agent: str) -> str:
        if self._loaded is None:
            return self.mode
        found = None
        for scope in self._scopes(team, agent)[1:]:
            if scope in self._loaded.modes:
                found = _strictest(found, self._loaded.modes[scope])
        return found or self.mode

    def _set(self, team: str, agent: str | None) -> _Set:
        key = (team, agent)
        hit = self._sets.get(key)
        if hit is not None:
            self._sets.move_to_end(key)
            return hit
        built = self._build(team, agent)
        self._sets[key] = built
        if len(self._sets) > CACHE_SIZE:
            self._sets.popitem(last=False)
        return built

    def _build(self, team: str, agent: str | None) -> _Set:
        if self._loaded is None:
            return _Set(None, "", (self._load_error,))
        units = [BASELINE_UNIT]
        for scope in self._scopes(team, agent):
            units += self._loaded.units.get(scope, [])
        errors = tuple(f"{_where(u)}: {u.error}" for u in units if u.error)
        static: dict[str, Any] = {}
        for unit in units:
            for positional, annotated, policy in unit.policies:
                pid = annotated if annotated and annotated not in static else positional
                n = 1
                while pid in static:
                    n, pid = n + 1, f"{positional}~{n}"
                static[pid] = policy
        as_json = json.dumps({"staticPolicies": static, "templates": {}, "templateLinks": []}, sort_keys=True)
        version = hashlib.sha256(as_json.encode()).hexdigest()[:16]
        if errors:
            return _Set(None, version, errors)
        try:
            return _Set(cedarpy.PolicySet.from_json_str(as_json), version, ())
        except ValueError as exc:
            return _Set(None, version, (f"the policy set for team {team} does not build: {exc}",))

    # -- decisions -------------------------------------------------------------------------------

    @staticmethod
    def _evaluate(
        request: dict[str, Any], entities: list[dict[str, Any]], pset: _Set, mode: str, enforced: bool
    ) -> Decision:
        assert pset.policies is not None
        try:
            result = cedarpy.is_authorized(request, pset.policies, entities)
        except Exception as exc:  # a request Cedar cannot take: deny
            errors: tuple[str, ...] = (f"evaluation failed: {type(exc).__name__}: {exc}",)
            return Decision(False, False, mode, (), pset.version, errors)
        errors = tuple(result.diagnostics.errors)
        if result.decision == cedarpy.Decision.NoDecision and not errors:
            errors = ("Cedar reached no decision",)
        cedar_allowed = result.allowed and not errors
        allowed = cedar_allowed or (not enforced and mode == "log_only" and not errors)
        return Decision(allowed, cedar_allowed, mode, tuple(result.diagnostics.reasons), pset.version, errors)

    async def decide_call(self, req: CallRequest) -> Decision:
        """May the agent make this call (``log_only``: it may, and the decision says what Cedar said)."""
        await self._fresh()
        mode = self._mode(req.team, req.agent_name)
        pset = self._set(req.team, req.agent_name)
        refused = list(pset.errors)
        if req.tier not in TIERS:
            refused.append(f"unknown tier {req.tier!r} (one of {', '.join(TIERS)})")
        if req.arguments is not None and not isinstance(req.arguments, dict):
            refused.append("the call's arguments are not a JSON object")
        if refused or pset.policies is None:
            return Decision(False, False, mode, (), pset.version, tuple(refused))
        team = uid("Team", req.team)
        tool = uid("Tool", f"{req.server}/{req.tool}")
        agent = uid("Agent", f"{req.team}/{req.agent_name}")
        entities = [
            {"uid": team, "attrs": {}, "parents": []},
            {
                "uid": agent,
                "attrs": {
                    "team": req.team,
                    "name": req.agent_name,
                    "version": req.version or 0,
                    "spiffe": req.agent_spiffe,
                },
                "parents": [team],
            },
            {"uid": tool, "attrs": {"server": req.server, "name": req.tool, "tier": req.tier}, "parents": []},
        ]
        request = {
            "principal": agent,
            "action": CALL,
            "resource": tool,
            "context": {
                "granted": bool(req.granted),
                "tier": req.tier,
                "on_behalf_of": req.on_behalf_of or "",
                "args": cedar_args(req.arguments),
                "guardrails": sorted({str(g) for g in req.guardrails}),
            },
        }
        # log_only never opens a tool the manifest does not grant: that refusal is always enforced
        return self._evaluate(request, entities, pset, mode, enforced=not req.granted)

    async def decide_approve(self, req: ApproveRequest) -> Decision:
        """May this key approve the call (always enforced: ``allowed`` is what Cedar decided)."""
        await self._fresh()
        pset = self._set(req.agent_team, None)
        refused = list(pset.errors)
        if req.tier not in TIERS:
            refused.append(f"unknown tier {req.tier!r} (one of {', '.join(TIERS)})")
        if refused or pset.policies is None:
            return Decision(False, False, "enforce", (), pset.version, tuple(refused))
        key = uid("Key", str(req.key_id) if req.key_id is not None else "none")
        parents = [uid("Team", req.key_team)] if req.key_team else []
        tool = uid("Tool", f"{req.server}/{req.tool}")
        entities = [
            {"uid": key, "attrs": {"team": req.key_team or "", "admin": bool(req.admin)}, "parents": parents},
            {"uid": tool, "attrs": {"server": req.server, "name": req.tool, "tier": req.tier}, "parents": []},
            *({"uid": p, "attrs": {}, "parents": []} for p in parents),
        ]
        request = {
            "principal": key,
            "action": APPROVE,
            "resource": tool,
            "context": {"agent_team": req.agent_team, "tier": req.tier},
        }
        return self._evaluate(request, entities, pset, "enforce", enforced=True)
