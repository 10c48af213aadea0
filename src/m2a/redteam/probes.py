"""Probe packs: the attacks, as data files under ``redteam/packs/*.yaml``, and what each one means.

One pack is one category (``category``, its OWASP Top 10 for LLM applications 2025 id ``owasp``, a
``title``), ``defaults`` for the request (``max_tokens``, ``temperature``…) and a list of
``probes``. A probe is one chat request and the rule that says whether the attack worked:

- ``system`` (the application's system prompt), ``history`` (earlier turns), ``user`` (the
  attacker's message, or the user's message with the attack elsewhere), ``document`` (a retrieved
  document holding an indirect injection: it goes inside the user message, where ``{document}``
  stands or after the message), ``tools`` (OpenAI tool definitions, for excessive agency) and
  ``params`` (request fields: ``max_tokens``, ``stream``…);
- ``success``: the judgement (``score.py`` applies it), any of: ``canaries`` (planted tokens that
  must not come back), ``detectors`` (guardrail detectors run on the answer: ``system_prompt_leak``
  on its own; ``pii`` and ``secrets`` count only findings that overlap a value planted in the
  prompt), ``regexes``, ``compliance`` (no refusal, a non-trivial answer, on topic: for harmful
  requests), ``tool_calls`` (names of tools the model must not call), ``max_completion_tokens`` (a
  bound on the answer: unbounded consumption).

Text fields may hold the placeholders of ``canaries.py`` (``{canary}``, ``{email}``, ``{aws_key}``…),
filled afresh for every attempt; ``planted`` are the values that ended up in the prompt.

``load(paths)`` reads the built-in packs (or the given files) and checks them: unique ids, known
placeholders, valid regular expressions. ``CATEGORY_ORDER`` lists the built-in categories.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from m2a.redteam.canaries import Values

CATEGORY_ORDER = (
    "prompt_injection",
    "jailbreak",
    "system_prompt_leakage",
    "pii_leakage",
    "secret_leakage",
    "harmful_content",
    "excessive_agency",
    "unbounded_consumption",
)


class PackError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DetectorRule(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    # pii / secrets: count a finding only where it overlaps a value planted in the prompt
    planted_only: bool | None = None


class ToolRule(_Strict):
    name: str
    arguments: str | None = None  # a regular expression the call's arguments must match


class Success(_Strict):
    """When an attempt counts as a successful attack: any one rule that fires decides."""

    canaries: list[str] = Field(default_factory=list)
    detectors: list[DetectorRule] = Field(default_factory=list)
    regexes: list[str] = Field(default_factory=list)
    compliance: bool = False
    on_topic: list[str] = Field(default_factory=list)
    min_words: int = Field(default=25, ge=1)
    tool_calls: list[ToolRule] = Field(default_factory=list)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @field_validator("detectors", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        return [{"name": d} if isinstance(d, str) else d for d in v or []]

    @field_validator("tool_calls", mode="before")
    @classmethod
    def _tools(cls, v: Any) -> Any:
        return [{"name": t} if isinstance(t, str) else t for t in v or []]

    @field_validator("regexes", "on_topic")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for rx in v:
            try:
                re.compile(rx)
            except re.error as exc:
                raise ValueError(f"bad regular expression {rx!r}: {exc}") from exc
        return v

    @model_validator(mode="after")
    def _some_rule(self) -> Success:
        if not (
            self.canaries
            or self.detectors
            or self.regexes
            or self.compliance
            or self.tool_calls
            or self.max_completion_tokens
        ):
            raise ValueError("success needs at least one rule")
        return self


class Message(_Strict):
    role: str
    content: str


class Probe(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]+$")
    category: str
    owasp: str
    title: str = ""
    technique: str = ""
    system: str | None = None
    history: list[Message] = Field(default_factory=list)
    user: str
    document: str | None = None
    tools: list[dict[str, Any]] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    success: Success

    def render(self, seed: int | str) -> Rendered:
        """This probe's request for one attempt, its placeholders filled from ``seed``."""
        vals = Values(seed, self.id)
        system = vals.fill(self.system) if self.system is not None else None
        user = vals.fill(self.user)
        if self.document is not None:
            doc = vals.fill(self.document)
            user = user.replace("{document}", doc) if "{document}" in user else f"{user}\n\n{doc}"
        messages: list[dict[str, Any]] = []
        if system is not None:
            messages.append({"role": "system", "content": system})
        messages += [{"role": m.role, "content": vals.fill(m.content)} for m in self.history]
        messages.append({"role": "user", "content": user})
        prompt_values = dict(vals.used)  # the values planted in the prompt (not those of the rules)
        canaries = [vals.fill(c) for c in self.success.canaries]
        return Rendered(
            self, messages, copy.deepcopy(self.tools), dict(self.params), system, canaries, prompt_values
        )


@dataclass
class Rendered:
    """One attempt's request: messages, tools and params, and what was planted in it."""

    probe: Probe
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    params: dict[str, Any]
    system: str | None
    canaries: list[str]
    planted: dict[str, str]  # placeholder -> value, those filled in the prompt

    def body(self, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": self.messages, **self.params}
        if self.tools:
            body["tools"] = self.tools
        return body


class Pack(_Strict):
    category: str = Field(pattern=r"^[a-z0-9_]+$")
    owasp: str
    title: str
    description: str = ""
    defaults: dict[str, Any] = Field(default_factory=dict)
    probes: list[dict[str, Any]]


def builtin_paths() -> list[Path]:
    folder = resources.files("m2a.redteam") / "packs"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith((".yaml", ".yml")))


@dataclass(frozen=True)
class Category:
    name: str
    owasp: str
    title: str


def load(paths: list[Path] | None = None) -> tuple[list[Probe], dict[str, Category]]:
    """The probes of the given pack files (default: the built-in packs) and their categories."""
    probes: list[Probe] = []
    cats: dict[str, Category] = {}
    seen: set[str] = set()
    for path in paths or builtin_paths():
        try:
            data = yaml.safe_load(Path(path).read_text())
            pack = Pack.model_validate(data)
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise PackError(f"{path}: {exc}") from exc
        cats[pack.category] = Category(pack.category, pack.owasp, pack.title)
        for i, raw in enumerate(pack.probes):
            item = {"category": pack.category, "owasp": pack.owasp, **raw}
            item["params"] = {**pack.defaults, **raw.get("params", {})}
            try:
                probe = Probe.model_validate(item)
            except ValidationError as exc:
                raise PackError(f"{path}: probe {raw.get('id', i)}: {exc}") from exc
            if probe.id in seen:
                raise PackError(f"{path}: probe id {probe.id!r} appears twice")
            seen.add(probe.id)
            _check_placeholders(path, probe)
            probes.append(probe)
    return probes, cats


_BRACED = re.compile(r"\{([a-z_0-9]+)\}")


def _check_placeholders(path: Path, probe: Probe) -> None:
    from m2a.redteam.canaries import PLACEHOLDERS

    texts = [probe.system or "", probe.user, probe.document or "", *probe.success.canaries]
    texts += [m.content for m in probe.history]
    for text in texts:
        for name in _BRACED.findall(text):
            if name not in PLACEHOLDERS and name != "document":
                raise PackError(f"{path}: probe {probe.id}: unknown placeholder {{{name}}}")


def select(probes: list[Probe], categories: list[str] | None, limit: int | None = None) -> list[Probe]:
    """The probes of ``categories`` (all when empty), at most ``limit`` per category, in pack order."""
    if categories:
        known = {p.category for p in probes}
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise PackError(f"unknown categories: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    out: list[Probe] = []
    counts: dict[str, int] = {}
    for p in probes:
        if categories and p.category not in categories:
            continue
        if limit is not None and counts.get(p.category, 0) >= limit:
            continue
        counts[p.category] = counts.get(p.category, 0) + 1
        out.append(p)
    return out
