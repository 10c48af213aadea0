"""OpenAI's moderation shape over detector results: ``/v1/moderations`` requests and answers.

``parse_moderation_input(body)`` reads and validates the request (``input``: a string, a list of
strings, or a list of ``{"type": "text", "text": ...}`` parts; ``model`` optional); anything else
raises ``ModerationInputError`` (a ``ValueError``) with the offending ``param``.

``moderation_result(result, categories)`` builds one entry of the answer's ``results`` from a
``run.Result``: ``flagged``, ``categories`` ``{name: bool}``, ``category_scores`` ``{name: float}``
and ``category_applied_input_types`` ``{name: ["text"]}``. OpenAI's own category names are always
present (False / 0.0 unless a finding maps to them), then m2a's: the ``categories`` the caller ran
(``pii``, ``secret``, ``denylist``, ``leakage``, ``prompt_injection``, ``unsafe_content``...) and any
other category found. A category's score is the highest score of its findings.

Findings map to OpenAI's categories by ``category.kind`` (then by ``category`` alone), with
``OPENAI_MAP`` by default — the ``llm_judge`` taxonomy (``unsafe_content``):

====================================  ===========================================
kind (code)                           OpenAI categories
====================================  ===========================================
violent_crimes (S1)                   violence, illicit/violent
non_violent_crimes (S2)               illicit
sex_crimes (S3)                       sexual, illicit/violent
child_exploitation (S4)               sexual, sexual/minors
defamation (S5)                       harassment
indiscriminate_weapons (S9)           violence, illicit/violent
hate (S10)                            hate
self_harm (S11)                       self-harm
sexual_content (S12)                  sexual
====================================  ===========================================

S6 (specialized advice), S7 (privacy), S8 (intellectual property), S13 (elections) and S14 (code
interpreter abuse) have no OpenAI counterpart: they show under ``unsafe_content`` only (m2a's PII
detector covers privacy under ``pii``). The caller may pass its own ``mapping``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from m2a.guardrails.run import Result

OPENAI_CATEGORIES: tuple[str, ...] = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)  # fmt: skip

OPENAI_MAP: dict[str, tuple[str, ...]] = {
    "unsafe_content.violent_crimes": ("violence", "illicit/violent"),
    "unsafe_content.non_violent_crimes": ("illicit",),
    "unsafe_content.sex_crimes": ("sexual", "illicit/violent"),
    "unsafe_content.child_exploitation": ("sexual", "sexual/minors"),
    "unsafe_content.defamation": ("harassment",),
    "unsafe_content.indiscriminate_weapons": ("violence", "illicit/violent"),
    "unsafe_content.hate": ("hate",),
    "unsafe_content.self_harm": ("self-harm",),
    "unsafe_content.sexual_content": ("sexual",),
}


def moderation_result(result: Result, categories: Iterable[str],
                      mapping: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:  # fmt: skip
    """One entry of OpenAI's moderation ``results`` for ``result``; ``categories``: those of the
    detectors that ran (they show even when nothing was found)."""
    table = OPENAI_MAP if mapping is None else mapping
    scores: dict[str, float] = dict.fromkeys(OPENAI_CATEGORIES, 0.0)
    flags: dict[str, bool] = dict.fromkeys(OPENAI_CATEGORIES, False)
    for name in categories:
        scores.setdefault(name, 0.0)
        flags.setdefault(name, False)
    for f in result.findings:
        targets = [f.category, *table.get(f"{f.category}.{f.kind}", table.get(f.category, ()))]
        for name in targets:
            flags[name] = True
            scores[name] = max(scores.get(name, 0.0), f.score)
    return {
        "flagged": any(flags.values()),
        "categories": flags,
        "category_scores": scores,
        "category_applied_input_types": {name: ["text"] for name in flags},
    }


class ModerationInputError(ValueError):
    """A moderation request that does not validate; ``param`` names the field at fault."""

    def __init__(self, message: str, param: str | None = "input") -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def parse_moderation_input(body: Any) -> list[str]:
    """The texts to moderate in an OpenAI ``/v1/moderations`` request ``body`` (parsed JSON)."""
    if not isinstance(body, Mapping):
        raise ModerationInputError("the request body must be a JSON object", None)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ModerationInputError("'model' must be a string", "model")
    if "input" not in body:
        raise ModerationInputError("'input' is required")
    raw = body["input"]
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list):
        raise ModerationInputError("'input' must be a string, a list of strings or a list of text parts")
    if not raw:
        raise ModerationInputError("'input' must not be empty")
    if isinstance(raw[0], str):  # the first item says which kind of list it is
        odd = next((i for i, x in enumerate(raw) if not isinstance(x, str)), None)
        if odd is None:
            return list(raw)
        raise ModerationInputError("'input' mixes strings and content parts", f"input[{odd}]")
    out = []
    for i, part in enumerate(raw):
        if isinstance(part, str):
            raise ModerationInputError("'input' mixes strings and content parts", f"input[{i}]")
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise ModerationInputError("each part of 'input' must be an object with a 'type'", f"input[{i}]")
        kind = part["type"]
        if kind == "image_url":
            raise ModerationInputError("image inputs are not supported by this moderation endpoint "
                                       "(text only)", f"input[{i}]")  # fmt: skip
        if kind != "text":
            raise ModerationInputError(f"unknown part type {kind!r} (expected 'text')", f"input[{i}].type")
        if not isinstance(part.get("text"), str):
            raise ModerationInputError("a text part needs a string 'text'", f"input[{i}].text")
        out.append(part["text"])
    return out
