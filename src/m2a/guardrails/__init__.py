"""Guardrails: detectors of sensitive or forbidden content, run over prompts, answers and tool calls.

This package is the detector layer: it knows nothing of HTTP, policies or the gateway; the
gateway's guard stages call ``run.check`` and decide what a finding means (block, redact, log).
It imports only the standard library and ``m2a.guardrails`` itself.

Modules: ``base`` (Finding, Context, the Detector interface, the registry), ``normalize`` (invisible
characters, NFKC, homoglyphs, base64 / hex decoding, leetspeak, offset maps), ``run`` (check,
Result, Budget, redact), ``checksums`` (Luhn, mod-97, ...), and one module per built-in detector:
``pii`` ("pii"), ``credentials`` ("secrets"), ``denylist`` ("denylist"), ``leakage``
("system_prompt_leak").

Extension points:

- a new detector: a class with ``check(ctx, text: Prepared) -> list[Finding] | None`` registered
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
    Context,
    Detector,
    Finding,
    UnknownDetector,
    build,
    build_all,
    known,
    register_detector,
)
from m2a.guardrails.normalize import Prepared, View, prepare
from m2a.guardrails.run import Budget, Result, check, redact, redact_messages

__all__ = [
    "DENYLIST", "LEAKAGE", "PII", "SECRET", "Budget", "Context", "Detector", "Finding", "Prepared",
    "Result", "UnknownDetector", "View", "build", "build_all", "check", "known", "prepare", "redact",
    "redact_messages", "register_detector",
]  # fmt: skip
