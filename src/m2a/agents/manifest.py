"""What one version of an agent is: its manifest, strict, canonical and content-addressed.

A manifest holds the agent's description in the shape of an A2A agent card (``card``: name,
description, version, skills …, in A2A's camelCase; snake_case names are accepted too), the models
it may use (``models``, at least one; the red team attacks the first), its ``system_prompt``, the
MCP tools it may call (``tools``: a server and the tool names on it), its guardrail profile
(``guardrails``, a profile name), its ``priority`` within its team's (critical, standard or batch;
none: the team's; never above the team's at use), its own ``limits`` (the metrics and windows of
team quotas, ``store/limits.py``), its data scopes (``data_scopes``: vector store ids) and an egress
allow-list (``egress``: ``host:port`` entries; a host may start with ``*.`` for its subdomains).
Unknown fields are refused everywhere, so a typo never silently drops a restriction.

``canonical()`` is the manifest as RFC 8785 JSON (the ``rfc8785`` package) with fields left at
their defaults omitted: key order, YAML layout and spelling out a default do not change it; any
change of meaning does. ``digest()`` is its sha256 (hex): a version's identity. A stored version
keeps the canonical text it was made from, so a later m2a that adds an optional field does not
change old digests.

``load_agent_file`` reads an ``agent.yaml`` as kept in the agent's own repository: the manifest's
fields at the top level, beside three that describe the agent rather than the version (``name``,
``team``, ``sponsors``); errors name the file and the field (``ManifestError``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import rfc8785
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from m2a.store.limits import NO_WINDOW, WINDOWS
from m2a.trust.allowlist import check_entry as check_egress  # one rule for manifests and the proxy

AGENT_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"  # a path segment of the SPIFFE id
PROFILE_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # as guardrail profiles are named
SERVER_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # as MCP servers are registered (`m2a tools add NAME`)
TOOL_NAME = r"^[A-Za-z0-9_.-]{1,128}$"  # MCP's rule for tool names
VECTOR_STORE_ID = r"^vs_[A-Za-z0-9_-]{1,64}$"
SPONSOR = r"^[^@\s\x00]{1,64}@[^@\s\x00]+\.[^@\s\x00]+$"  # an e-mail address
MAX_SAFE_INT = 2**53 - 1  # RFC 8785 numbers are IEEE doubles: larger integers are not exact
MAX_ITEMS = 256
MAX_TEXT = 10_000
MAX_SYSTEM_PROMPT = 100_000
NO_NUL = r"^[^\x00]*$"
AGENT_FIELDS = ("name", "team", "sponsors")  # in agent.yaml, beside the manifest's own

Text = Annotated[str, Field(max_length=MAX_TEXT, pattern=NO_NUL)]
Short = Annotated[str, Field(min_length=1, max_length=256, pattern=NO_NUL)]
Priority = Literal["critical", "standard", "batch"]
Metric = Literal["tokens", "input_tokens", "output_tokens", "requests", "cost", "concurrency"]  # store/limits


class ManifestError(ValueError):
    """A manifest (or agent.yaml) that cannot be used; ``errors`` are (field, message) pairs."""

    def __init__(self, where: str, errors: list[tuple[str, str]]) -> None:
        self.where = where
        self.errors = errors
        lines = [f"invalid agent manifest in {where}:"] + [f"  {loc}: {msg}" for loc, msg in errors]
        super().__init__("\n".join(lines))


def _no_duplicates(items: list[Any]) -> list[Any]:
    seen = set()
    for item in items:
        if item in seen:
            raise ValueError(f"{item!r} is listed twice")
        seen.add(item)
    return items


def _version_text(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, str):
        raise ValueError(
            f'the card\'s version is text: quote it in YAML (version: "{v}"), or 1.10 would read as 1.1'
        )
    return v


Egress = Annotated[str, AfterValidator(check_egress)]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )


class Skill(_Strict):
    """One skill of an A2A agent card."""

    id: Short
    name: Short
    description: Text
    tags: Annotated[list[Short], Field(default_factory=list, max_length=64)]
    examples: Annotated[list[Text], Field(default_factory=list, max_length=64)]
    input_modes: list[Short] | None = Field(default=None, alias="inputModes", max_length=32)
    output_modes: list[Short] | None = Field(default=None, alias="outputModes", max_length=32)


class Provider(_Strict):
    organization: Short
    url: Short | None = None


class Capabilities(_Strict):
    streaming: bool = False
    push_notifications: bool = Field(default=False, alias="pushNotifications")
    state_transition_history: bool = Field(default=False, alias="stateTransitionHistory")


class AgentCard(_Strict):
    """The agent's description, in the shape of an A2A ``AgentCard`` (A2A's names, camelCase).

    ``url`` (where the agent answers A2A) is optional here: m2a may serve the card itself."""

    name: Short
    description: Text
    version: Annotated[
        str, BeforeValidator(_version_text), Field(min_length=1, max_length=64, pattern=NO_NUL)
    ]
    url: Short | None = None
    protocol_version: Short | None = Field(default=None, alias="protocolVersion")
    provider: Provider | None = None
    icon_url: Short | None = Field(default=None, alias="iconUrl")
    documentation_url: Short | None = Field(default=None, alias="documentationUrl")
    capabilities: Capabilities = Field(default_factory=Capabilities)
    default_input_modes: list[Short] = Field(
        default_factory=lambda: ["text/plain"], alias="defaultInputModes", max_length=32
    )
    default_output_modes: list[Short] = Field(
        default_factory=lambda: ["text/plain"], alias="defaultOutputModes", max_length=32
    )
    skills: list[Skill] = Field(default_factory=list, max_length=MAX_ITEMS)

    @field_validator("skills")
    @classmethod
    def _unique_skills(cls, v: list[Skill]) -> list[Skill]:
        _no_duplicates([s.id for s in v])
        return v


class ToolGrant(_Strict):
    """The tools of one MCP server the agent may call (by name: no wildcards)."""

    server: Annotated[str, Field(pattern=SERVER_NAME, description="An MCP server registered in m2a.")]
    tools: Annotated[
        list[Annotated[str, Field(pattern=TOOL_NAME)]], Field(min_length=1, max_length=MAX_ITEMS)
    ]

    @field_validator("tools")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return _no_duplicates(v)


class AgentLimit(_Strict):
    """One limit of the agent's own, within its team's: the metrics and windows of team quotas."""

    metric: Metric
    window: str = Field(default=NO_WINDOW, description="minute, hour, day, month; '-' for concurrency.")
    limit: int = Field(ge=0, le=MAX_SAFE_INT, description="Cost in micro-dollars.")

    @model_validator(mode="after")
    def _window(self) -> AgentLimit:
        if self.metric == "concurrency":
            if self.window != NO_WINDOW:
                raise ValueError("concurrency has no window (leave it out, or '-')")
        elif self.window not in WINDOWS:
            raise ValueError(f"the window of {self.metric} is one of {', '.join(WINDOWS)}")
        return self


class Manifest(_Strict):
    """One version of an agent: what it is, what it may use, and within which bounds."""

    card: AgentCard
    models: Annotated[list[Short], Field(min_length=1, max_length=64)]
    system_prompt: str | None = Field(default=None, max_length=MAX_SYSTEM_PROMPT, pattern=NO_NUL)
    tools: list[ToolGrant] = Field(default_factory=list, max_length=MAX_ITEMS)
    guardrails: Annotated[str, Field(pattern=PROFILE_NAME)] | None = Field(
        default=None, description="A guardrail profile's name; none: the team's."
    )
    priority: Priority | None = Field(default=None, description="None: the team's; never above it.")
    limits: list[AgentLimit] = Field(default_factory=list, max_length=32)
    data_scopes: list[Annotated[str, Field(pattern=VECTOR_STORE_ID)]] = Field(
        default_factory=list, max_length=MAX_ITEMS
    )
    egress: list[Egress] = Field(default_factory=list, max_length=MAX_ITEMS)

    @field_validator("models", "data_scopes", "egress")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return _no_duplicates(v)

    @field_validator("tools")
    @classmethod
    def _one_entry_per_server(cls, v: list[ToolGrant]) -> list[ToolGrant]:
        _no_duplicates([t.server for t in v])
        return v

    @field_validator("limits")
    @classmethod
    def _one_limit_per_window(cls, v: list[AgentLimit]) -> list[AgentLimit]:
        _no_duplicates([(x.metric, x.window) for x in v])
        return v

    def as_json(self) -> dict[str, Any]:
        """The manifest as JSON data (A2A names), fields left at their defaults omitted."""
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=True)

    def canonical(self) -> bytes:
        """RFC 8785 canonical JSON of ``as_json()``."""
        return rfc8785.dumps(self.as_json())

    def digest(self) -> str:
        """sha256 (hex) of the canonical form: the version's identity."""
        return hashlib.sha256(self.canonical()).hexdigest()

    def system_prompt_sha256(self) -> str | None:
        """sha256 (hex, UTF-8) of the system prompt, or None without one (what a red-team run names)."""
        return None if self.system_prompt is None else hashlib.sha256(self.system_prompt.encode()).hexdigest()


class AgentFile(BaseModel):
    """An ``agent.yaml``: the agent's name, team and sponsors (all optional) and its manifest."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str | None = None
    team: str | None = None
    sponsors: list[str] = Field(default_factory=list)
    manifest: Manifest


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def errors_of(exc: ValidationError) -> list[tuple[str, str]]:
    """Pydantic's errors as (field, message) pairs, the messages without pydantic's prefixes."""
    out = []
    for e in exc.errors():
        msg = str(e["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (a typo? the manifest refuses fields it does not know)"
        out.append((_loc(e["loc"]), msg))
    return out


def parse_manifest(data: Any, where: str = "the manifest") -> Manifest:
    """A ``Manifest`` from JSON data, or ``ManifestError`` naming each bad field."""
    if not isinstance(data, dict):
        raise ManifestError(where, [("(top level)", "a manifest is a mapping of fields")])
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(where, errors_of(exc)) from exc


_SPONSORS = re.compile(SPONSOR)
MAX_SPONSORS = 32


def check_sponsors(sponsors: list[str]) -> list[str]:
    """E-mail addresses of the people answerable for an agent: at least one, lower-cased, unique."""
    if not sponsors:
        raise ValueError("an agent needs at least one sponsor (the e-mail of a person answerable for it)")
    if len(sponsors) > MAX_SPONSORS:
        raise ValueError(f"at most {MAX_SPONSORS} sponsors")
    out: list[str] = []
    for s in sponsors:
        if not isinstance(s, str) or len(s) > 254 or not _SPONSORS.fullmatch(s.strip()):
            raise ValueError(f"sponsor {s!r} is not an e-mail address")
        if s.strip().lower() not in out:
            out.append(s.strip().lower())
    return out


def parse_agent_file(text: str, where: str = "agent.yaml") -> AgentFile:
    """An ``agent.yaml``'s content: YAML, the manifest's fields plus ``name``, ``team``, ``sponsors``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(where, [("(YAML)", str(exc).replace("\n", " "))]) from exc
    if not isinstance(data, dict):
        raise ManifestError(where, [("(top level)", "agent.yaml holds a mapping: card, models, …")])
    data = dict(data)
    problems: list[tuple[str, str]] = []
    name, team = data.pop("name", None), data.pop("team", None)
    sponsors = data.pop("sponsors", [])
    if name is not None and not (isinstance(name, str) and re.fullmatch(AGENT_NAME, name)):
        problems.append(("name", "1-63 of a-z, 0-9 and '-', starting with a letter or digit"))
    if team is not None and not isinstance(team, str):
        problems.append(("team", "a team's name"))
    if isinstance(sponsors, str):
        sponsors = [sponsors]
    try:
        sponsors = check_sponsors(sponsors) if sponsors else []
    except ValueError as exc:
        problems.append(("sponsors", str(exc)))
    manifest = None
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        problems += errors_of(exc)
    if problems or manifest is None:
        raise ManifestError(where, problems)
    return AgentFile(name=name, team=team, sponsors=sponsors, manifest=manifest)


def load_agent_file(path: Path) -> AgentFile:
    """Read an ``agent.yaml`` (see ``parse_agent_file``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(str(path), [("(file)", f"cannot read it: {exc}")]) from exc
    return parse_agent_file(text, str(path))
