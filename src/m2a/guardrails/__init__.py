"""Guardrails: detectors of sensitive or forbidden content, run over prompts, answers and tool calls.

This package is the detector layer: it knows nothing of policies or the gateway; the gateway's
guard stages call ``run.check`` (``run.acheck`` with async detectors) and decide what a finding
means (block, redact, log). It imports only the standard library and ``m2a.guardrails`` itself,
except the detectors that talk to a service (``judge``, ``trustyai``: aiohttp, pydantic).

Modules: ``base`` (Finding, Context, the Detector interface, the registry), ``normalize`` (invisible
characters, NFKC, homoglyphs, base64 / hex decoding, leetspeak, offset maps), ``run`` (check,
Result, Budget, redact), ``checksums`` (Luhn, mod-97, ...), and one module per built-in detector:
``pii`` ("pii"), ``credentials`` ("secrets"), ``denylist`` ("denylist"), ``leakage``
("system_prompt_leak"), ``injection`` ("prompt_injection", a trained classifier; its weights in
``data/``); the async ones, asking a service: ``judge`` ("llm_judge", a safety classifier
model over an OpenAI-compatible endpoint) and ``trustyai`` ("trustyai", a detector server of
TrustyAI's detector API; and ``serve_contents``, m2a's detectors served in that API).
``moderation`` shapes results as OpenAI's ``/v1/moderations`` answers.

Extension points:

- a new detector: a class with ``check(ctx, text: Prepared) -> list[Finding] | None`` (or, when
  it waits on I/O, ``async def acheck(...)``, run by ``acheck`` only) registered
  with ``@register_detector("name")``, built from config by ``build("name", params)`` /
  ``build_all([{"name": ..., "params": {...}}])``;
- the deny list's ``terms`` / ``regexes`` / ``topics``, and each built-in's ``kinds`` to select what
  it looks for;
- ``Context`` (system prompt, direction, ``extra``) for what a detector needs beyond the text;
- ``Budget`` for how much one call examines;
- ``Finding.label`` for what ``redact`` writes in place of a span.
"""

from m2a.guardrails.base import (
    DENYLIST,
    LEAKAGE,
    PII,
    SECRET,
    AnyDetector,
    AsyncDetector,
    Context,
    Detector,
    Finding,
    UnknownDetector,
    build,
    build_all,
    is_async,
    known,
    register_detector,
)
from m2a.guardrails.normalize import Prepared, View, prepare
from m2a.guardrails.run import Budget, Memo, Result, acheck, check, redact, redact_messages

__all__ = [
    "DENYLIST", "LEAKAGE", "PII", "SECRET", "AnyDetector", "AsyncDetector", "Budget", "Context", "Detector",
    "Finding", "Memo", "Prepared", "Result", "UnknownDetector", "View", "acheck", "build", "build_all",
    "check", "is_async", "known", "prepare", "redact", "redact_messages", "register_detector",
]  # fmt: skip
