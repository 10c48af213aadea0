"""The detector interface, the finding it reports, and the registry detectors are built from.

A detector is a small class registered by name with ``@register_detector("name")`` and built from
configuration with ``build(name, params)`` (``params`` are its constructor's keyword arguments), as
the router's scorers are. The runner (``run.py``) normalises the text once (``normalize.py``) and
calls ``check(ctx, text)`` on each detector with the same ``Prepared`` text:

- it returns a list of ``Finding`` (possibly empty: it looked and found nothing), or ``None`` to
  abstain (it has nothing to say about this text: the leakage detector without a system prompt);
- spans are character offsets into ``text.original``, the text as the caller gave it: a detector
  that matched in a normalised or decoded view maps its match back with ``view.span(start, end)``;
- a finding's ``description`` says what was found ("e-mail address", "AWS access key id"), never
  the value itself: findings are logged and traced;
- it must be cheap (regular expressions without nested unbounded repetition, linear in the text)
  and offline; the runner bounds its input (``Budget``) and turns an exception into an error
  result, so a detector may raise.

A detector that needs I/O (asking a model, calling an external detector service) defines instead
``async def acheck(self, ctx, text: Prepared) -> list[Finding] | None``, with the same contract
(``is_async(det)`` tells which kind a detector is). Only the async runner (``run.acheck``) calls it,
concurrently with the other async detectors and under a per-detector timeout; the sync runner
(``run.check``, used per chunk by the stream rails) does not wait on I/O: it records such a detector
in ``Result.errors`` as ``"NeedsAsync"`` and goes on with the others.
"""

from __future__ import annotations

import inspect
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from m2a.plugins import Registry

if TYPE_CHECKING:
    from m2a.guardrails.normalize import Prepared

T = TypeVar("T")

# Categories of the built-in detectors (a plugin may use its own).
PII = "pii"
SECRET = "secret"
DENYLIST = "denylist"
LEAKAGE = "leakage"


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing found: what (category, kind), by whom, how sure, and where in the original text."""

    category: str  # pii, secret, denylist, leakage, ...
    kind: str  # email, phone, card, aws_access_key_id, ...: finer than the category
    detector: str  # the registered name of the detector that found it
    score: float  # in [0, 1]: how sure the detector is
    start: int  # character span [start, end) into the original text
    end: int
    description: str  # short and non-sensitive: never the value found
    label: str = ""  # what redaction writes in its place (EMAIL gives "[EMAIL]"); default the category
    encoding: str | None = None  # "base64" or "hex" when found in a decoded run of the text
    message: int | None = None  # with a list of messages: the message's index
    part: int | None = None  # and the content part's index, when the content is a list of parts

    @property
    def mask(self) -> str:
        return f"[{self.label or self.category.upper()}]"


@dataclass(slots=True)
class Context:
    """What a detector may know beyond the text: the request's system prompt, the direction."""

    system_prompt: str | None = None  # for the leakage detector
    direction: str = "input"  # input (the prompt), output (the answer), tool (a tool call's arguments)
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Detector(Protocol):
    name: str  # set by the registry on the class: the name it was registered under

    def check(self, ctx: Context, text: Prepared) -> list[Finding] | None: ...


@runtime_checkable
class AsyncDetector(Protocol):
    name: str

    async def acheck(self, ctx: Context, text: Prepared) -> list[Finding] | None: ...


AnyDetector = Detector | AsyncDetector


def is_async(det: object) -> bool:
    """Whether ``det`` is an async detector (it has a coroutine ``acheck``)."""
    acheck = getattr(det, "acheck", None)
    return acheck is not None and inspect.iscoroutinefunction(acheck)


def disjoint(spans: Iterable[tuple[int, int, float, T]]) -> list[tuple[int, int, float, T]]:
    """Of overlapping ``(start, end, score, item)`` spans keep the highest score (then the longest),
    in text order; O(n log n)."""
    starts: list[int] = []
    kept: list[tuple[int, int, float, T]] = []
    for h in sorted(spans, key=lambda h: (-h[2], h[0] - h[1], h[0])):
        i = bisect_left(starts, h[0])
        if (i < len(kept) and kept[i][0] < h[1]) or (i > 0 and kept[i - 1][1] > h[0]):
            continue
        starts.insert(i, h[0])
        kept.insert(i, h)
    return kept


class UnknownDetector(ValueError):
    pass


def _load_builtins() -> None:
    from m2a.guardrails import credentials, denylist, injection, judge, leakage, pii, trustyai  # noqa: F401  (they register)


_DETECTORS = Registry("detector", _load_builtins, UnknownDetector)
register_detector = _DETECTORS.register  # @register_detector("name") on a detector class
known = _DETECTORS.known  # the registered detector names


def build(name: str, params: dict[str, Any] | None = None) -> AnyDetector:
    """A new detector registered as ``name``, built with ``params`` (its keyword arguments)."""
    return _DETECTORS.build(name, params)  # type: ignore[no-any-return]


def build_all(specs: list[dict[str, Any]] | None) -> list[AnyDetector]:
    """Detectors from config entries ``{"name": ..., "params": {...}}`` (a bare string: no params)."""
    out = []
    for spec in specs or []:
        if isinstance(spec, str):
            out.append(build(spec))
        else:
            out.append(build(spec["name"], spec.get("params")))
    return out
