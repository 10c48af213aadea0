"""Admin API routes for guardrail profiles and their attachments (mounted by ``admin.py``).

Owns ``/admin/v1/guardrails/...``: listing every profile with where it comes from (built in, the
config file, or stored through this API), storing and deleting profiles, attaching a profile to a
team, a key or a model, and checking a text against a profile so an admin can try it. Admin keys
only (``admin_access.TABLE``: paths not listed there need an admin key).

A stored profile is validated twice before it is kept: by pydantic (``config.GuardrailProfile``) and
by building its ``Policy`` (an unknown detector or parameters a detector refuses answer 400, never
500). Names of built-in and config profiles are refused (409): those change in the config file
only. After each change the caller's own process reloads its guards before answering; other
processes follow the identity revision. A check's findings never carry the text found; the
``redacted`` text (the caller's own text, masked) comes back only when the profile redacts.
(No ``from __future__ import annotations``: FastAPI reads the annotations at runtime.)
"""

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.exc import IntegrityError

from m2a.config import GuardrailProfile, GuardrailRule, builtin_profiles
from m2a.gateway.access import Access
from m2a.gateway.admin_access import caller
from m2a.gateway.errors import GatewayError
from m2a.gateway.guards import Guards
from m2a.guardrails.base import Context
from m2a.guardrails.policy import Policy, Verdict
from m2a.guardrails.run import redact
from m2a.principal import Principal
from m2a.store.guardrails import GuardrailStore, StoredProfile
from m2a.store.identity import MAX_ID

NO_NUL = r"^[^\x00]*$"
PROFILE_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # the rule team names follow
ProfileName = Annotated[str, Path(pattern=PROFILE_NAME, description="Lower-case letters, digits, - and _.")]
MAX_CHECK_CHARS = 1_000_000
Source = Literal["builtin", "config", "stored"]


class ProfileOut(BaseModel):
    name: str
    source: Source = Field(description="builtin (m2a's), config (the config file) or stored (this API).")
    version: str = Field(description="As traces carry it: v1, v2 … for stored profiles, else a digest.")
    revision: int | None = Field(description="Stored profiles: 1, then one more per PUT; else null.")
    active: bool = Field(description="Whether this gateway process runs the profile as shown.")
    updated_at: datetime | None
    description: str
    rules: list[GuardrailRule]
    stream_hold_chars: int
    max_chars: int
    over_budget: str


class _Target(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team: str | None = Field(default=None, min_length=1, max_length=64, pattern=NO_NUL)
    key_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    model: str | None = Field(default=None, min_length=1, max_length=256, pattern=NO_NUL)

    @model_validator(mode="after")
    def _exactly_one(self) -> "_Target":
        if sum(x is not None for x in (self.team, self.key_id, self.model)) != 1:
            raise ValueError("name exactly one of team, key_id or model")
        return self


class DetachIn(_Target):
    pass


class AttachIn(_Target):
    profile: str = Field(min_length=1, max_length=64, pattern=NO_NUL, examples=["strict"])


class AttachmentOut(BaseModel):
    profile: str
    team: str | None = None
    key_id: int | None = None
    model: str | None = None


class CheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    profile: str = Field(min_length=1, max_length=64, pattern=NO_NUL, examples=["default"])
    direction: Literal["input", "output", "tool"] = "input"
    text: str = Field(max_length=MAX_CHECK_CHARS)
    system_prompt: str | None = Field(
        default=None, max_length=MAX_CHECK_CHARS, description="For the system-prompt leak detector."
    )


class FindingOut(BaseModel):
    action: Literal["block", "redact", "flag"]
    category: str
    kind: str
    detector: str
    score: float
    start: int
    end: int
    description: str
    encoding: str | None


class CheckOut(BaseModel):
    decision: Literal["allow", "warn", "modify", "deny"]
    profile: str
    version: str
    direction: str
    reason: str
    category: str | None
    detector: str | None
    findings: list[FindingOut] = Field(description="Spans and descriptions only, never the text found.")
    errors: dict[str, str] = Field(description="Detectors that failed, with the exception's class.")
    over_budget: bool
    redacted: str | None = Field(description="The text with redacted spans masked, when the profile redacts.")
    duration_ms: float


def _profile_out(
    name: str, profile: GuardrailProfile, source: Source, guards: Guards, stored: StoredProfile | None = None
) -> ProfileOut:
    policy = guards.policies.get(name)
    version = f"v{stored.version}" if stored else policy.version if policy else "?"
    return ProfileOut(
        name=name,
        source=source,
        version=version,
        revision=stored.version if stored else None,
        active=policy is not None and policy.version == version,
        updated_at=stored.updated_at if stored else None,
        **profile.model_dump(),
    )


def _findings(verdict: Verdict) -> list[FindingOut]:
    out = []
    for action, found in (
        ("block", verdict.blocked),
        ("redact", verdict.redacted),
        ("flag", verdict.flagged),
    ):
        for f in found:
            out.append(
                FindingOut(
                    action=action,  # type: ignore[arg-type]
                    category=f.category,
                    kind=f.kind,
                    detector=f.detector,
                    score=f.score,
                    start=f.start,
                    end=f.end,
                    description=f.description,
                    encoding=f.encoding,
                )
            )
    return sorted(out, key=lambda f: (f.start, f.end))


def build_policy(name: str, profile: GuardrailProfile) -> Policy:
    """The profile's policy, or a 400 naming the rule whose detector cannot be built."""
    try:
        return Policy(name, profile)
    except Exception as whole:  # a detector's constructor may raise anything on bad params
        for i, rule in enumerate(profile.rules):
            try:
                Policy(name, GuardrailProfile(rules=[rule]))
            except Exception as exc:
                raise GatewayError(
                    400,
                    f"rules.{i} ({rule.detector}): {str(exc)[:500] or type(exc).__name__}",
                    param=f"rules.{i}",
                    code="invalid_profile",
                ) from exc
        raise GatewayError(400, f"invalid profile: {str(whole)[:500]}", code="invalid_profile") from whole


def guardrails_router(access: Access, guards: Guards, store: GuardrailStore) -> APIRouter:
    router = APIRouter(prefix="/v1/guardrails", tags=["guardrails"])
    Admin = Annotated[Principal, Depends(caller)]  # admin_access.TABLE: admin keys only

    async def changed() -> None:
        access.invalidate()  # principals of this process, and (in the background) the guards
        await guards.reload()  # and now, so this process enforces the change before we answer

    def fixed_source(name: str) -> Source | None:
        if name in guards.cfg.profiles:
            return "config"
        return "builtin" if name in builtin_profiles() else None

    def refuse_fixed(name: str, doing: str) -> None:
        source = fixed_source(name)
        if source is not None or name in guards.fixed():
            where = "built into m2a" if source == "builtin" else "defined in the config file"
            raise GatewayError(
                409,
                f"The profile '{name}' is {where}; it cannot be {doing} through the API.",
                code="conflict",
            )

    async def stored_profiles() -> dict[str, StoredProfile]:
        return {p.name: p for p in await store.profiles()}

    async def all_profiles() -> list[ProfileOut]:
        out = [
            _profile_out(n, p, fixed_source(n) or "config", guards)
            for n, p in guards.cfg.all_profiles().items()
        ]
        fixed = guards.fixed()
        for name, sp in (await stored_profiles()).items():
            if name in fixed:  # a config profile of the same name wins (it was added later)
                continue
            try:
                profile = GuardrailProfile.model_validate(sp.spec)
            except ValueError as exc:  # stored by an older m2a whose profiles had other fields
                profile = GuardrailProfile(description=f"(cannot be read: {str(exc)[:300]})")
            out.append(_profile_out(name, profile, "stored", guards, sp))
        return sorted(out, key=lambda p: p.name)

    @router.get("/profiles", response_model=list[ProfileOut])
    async def list_profiles(_: Admin) -> list[ProfileOut]:
        """Every profile: built in, from the config file, and stored through this API."""
        return await all_profiles()

    @router.get("/profiles/{name}", response_model=ProfileOut)
    async def get_profile(name: ProfileName, _: Admin) -> ProfileOut:
        for p in await all_profiles():
            if p.name == name:
                return p
        raise GatewayError(404, f"No guardrail profile named '{name}'.", code="not_found")

    @router.put("/profiles/{name}", response_model=ProfileOut, responses={201: {"model": ProfileOut}})
    async def put_profile(
        name: ProfileName, body: GuardrailProfile, response: Response, _: Admin
    ) -> ProfileOut:
        """Store a profile (201), or replace a stored one with its next version (200)."""
        refuse_fixed(name, "replaced")
        build_policy(name, body)
        try:
            stored = await store.put_profile(name, body.model_dump(mode="json"))
        except IntegrityError as exc:  # the same new name stored by a concurrent request
            raise GatewayError(
                409, f"The profile '{name}' changed meanwhile; try again.", code="conflict"
            ) from exc
        await changed()
        response.status_code = 201 if stored.version == 1 else 200
        return _profile_out(name, body, "stored", guards, stored)

    @router.delete("/profiles/{name}", status_code=204)
    async def delete_profile(name: ProfileName, _: Admin) -> Response:
        """Delete a stored profile (409 while a team, key or model has it attached)."""
        refuse_fixed(name, "deleted")
        await store.delete_profile(name)
        await changed()
        return Response(status_code=204)

    @router.get("/attachments", response_model=list[AttachmentOut])
    async def list_attachments(_: Admin) -> list[AttachmentOut]:
        """Profiles attached to teams, keys and models through this API."""
        return [
            AttachmentOut(profile=a["profile"], team=a.get("team"), key_id=a.get("key"), model=a.get("model"))
            for a in await store.attachments()
        ]

    @router.put("/attachments", response_model=AttachmentOut)
    async def attach(body: AttachIn, _: Admin) -> AttachmentOut:
        """Attach a profile to one team, key or model (replacing the one it had)."""
        if body.profile not in guards.fixed() and body.profile not in await stored_profiles():
            raise GatewayError(
                404, f"No guardrail profile named '{body.profile}'.", param="profile", code="not_found"
            )
        await store.attach(body.profile, team=body.team, key_id=body.key_id, model=body.model)
        await changed()
        return AttachmentOut(profile=body.profile, team=body.team, key_id=body.key_id, model=body.model)

    @router.delete("/attachments", status_code=204)
    async def detach(body: DetachIn, _: Admin) -> Response:
        """Detach the profile of one team, key or model (it falls back to the default, or the config's)."""
        await store.attach(None, team=body.team, key_id=body.key_id, model=body.model)
        await changed()
        return Response(status_code=204)

    @router.post("/check", response_model=CheckOut)
    async def check(body: CheckIn, _: Admin) -> CheckOut:
        """Check a text against a profile as the gateway would, without sending it anywhere."""
        policy = guards.policies.get(body.profile)
        if policy is None:
            raise GatewayError(
                404, f"No guardrail profile named '{body.profile}'.", param="profile", code="not_found"
            )
        ctx = Context(system_prompt=body.system_prompt, direction=body.direction)
        verdict = await policy.acheck(body.direction, body.text, ctx)
        return CheckOut(
            decision=verdict.decision,  # type: ignore[arg-type]
            profile=verdict.policy,
            version=verdict.version,
            direction=verdict.direction,
            reason=verdict.reason,
            category=verdict.category,
            detector=verdict.detector,
            findings=_findings(verdict),
            errors=verdict.errors,
            over_budget=verdict.over_budget,
            redacted=redact(body.text, verdict.redacted) if verdict.redacted else None,
            duration_ms=round(verdict.duration_s * 1000, 3),
        )

    return router
