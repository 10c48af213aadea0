"""TrustyAI's detector API (the FMS Guardrails Orchestrator's ``/api/v1/text/contents``), both ways.

The API, as its OpenAPI spec (``docs/api/openapi_detector_api.yaml`` in
foundation-model-stack/fms-guardrails-orchestrator) and the orchestrator's client define it:

- ``POST /api/v1/text/contents`` with the header ``detector-id: <id>`` and the body
  ``{"contents": ["text", ...], "detector_params": {...}}`` (``detector_params`` optional, ``{}``);
- ``200``: one list of detections per content, in order; a detection is ``{"start", "end", "text",
  "detection", "detection_type", "score"}`` plus optional ``detector_id``, ``evidence`` (a list of
  ``{"name", "value", "score", "evidence": [{"name", "value", "score"}]}``) and ``metadata`` (an
  object); ``start`` / ``end`` are character offsets into the content;
- errors: ``{"code": <status>, "message": "..."}``, ``404`` for an unknown detector, ``422`` for a
  request that does not validate.

This module owns the pydantic models of that shape, the client detector ``trustyai`` (an async
detector: m2a asks a TrustyAI detector server — or any server of this API, m2a included — and maps
its detections to findings), and ``serve_contents``, the server side as a pure function the gateway
mounts: m2a's own detectors served under their registered names.

Client parameters: ``url`` (the server's base URL), ``detector_id``, ``headers`` (extra headers, an
``Authorization`` for instance), ``timeout_s`` (5), ``threshold`` (detections scoring below it are
dropped; 0), ``category`` (the findings' category; default each detection's ``detection_type``),
``detector_params`` (sent as is), ``name`` (this instance's name in results; default ``trustyai``).
It sends the original text, so the spans it gets back are spans of the caller's text as they are.
A detection's ``detection`` becomes the finding's kind; the detected ``text`` is not kept.

Server: the answer carries the detected ``text``, as the spec wants (it is the caller's own text,
sent in the same request); nothing of the contents is logged. ``detector_params`` is accepted and
ignored: m2a's detectors are configured by m2a's policy, not per call, so a caller cannot turn a
check off. A content longer than the budget's ``max_chars`` is refused (``413``) rather than checked
in part.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from m2a.guardrails.base import AnyDetector, Context, Finding, register_detector
from m2a.guardrails.judge import http_session
from m2a.guardrails.run import Budget, acheck

if TYPE_CHECKING:
    from m2a.guardrails.normalize import Prepared

CONTENTS_PATH = "/api/v1/text/contents"
DETECTOR_ID_HEADER = "detector-id"


class Evidence(BaseModel):
    name: str
    value: str | None = None
    score: float | None = None


class EvidenceObj(BaseModel):
    name: str
    value: str | None = None
    score: float | None = None
    evidence: list[Evidence] | None = None


class ContentAnalysisRequest(BaseModel):
    """The body of ``POST /api/v1/text/contents``."""

    model_config = ConfigDict(extra="ignore")

    contents: list[str]
    detector_params: dict[str, Any] | None = Field(default_factory=dict)


class ContentAnalysisResponse(BaseModel):
    """One detection in one content."""

    model_config = ConfigDict(extra="ignore")  # some servers add their own fields ("evidences")

    start: int
    end: int
    text: str | None = None  # optional in the spec; m2a's server always sends it
    detection: str
    detection_type: str
    detector_id: str | None = None
    score: float
    evidence: list[EvidenceObj] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ContentsAnalysisResponse(RootModel[list[list[ContentAnalysisResponse]]]):
    """The answer: one list of detections per content, in the order of ``contents``."""


class DetectorError(BaseModel):
    """The spec's error body."""

    code: int
    message: str


class TrustyAIError(RuntimeError):
    """The detector server answered with an error status (the status and the error's code only)."""


class ProtocolError(ValueError):
    """The detector server's answer is not in the API's shape (or its spans are not in the text)."""


@register_detector("trustyai")
class TrustyAIDetector:
    name = "trustyai"

    def __init__(self, url: str, detector_id: str, headers: Mapping[str, str] | None = None,
                 timeout_s: float = 5.0, threshold: float = 0.0, category: str | None = None,
                 detector_params: Mapping[str, Any] | None = None,
                 name: str | None = None) -> None:  # fmt: skip
        self.url = url.rstrip("/") + CONTENTS_PATH
        self.detector_id = detector_id
        self.headers = {
            **(headers or {}),
            DETECTOR_ID_HEADER: detector_id,
            "content-type": "application/json",
        }
        self.timeout_s = timeout_s
        self.threshold = threshold
        self.category = category
        self.detector_params = dict(detector_params or {})
        if name:
            self.name = name

    async def detections(self, contents: list[str]) -> list[list[ContentAnalysisResponse]]:
        """The server's detections for ``contents``, validated against the API's shape."""
        body = ContentAnalysisRequest(contents=contents, detector_params=self.detector_params).model_dump()
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with http_session().post(self.url, json=body, headers=self.headers, timeout=timeout) as resp:
            if resp.status != 200:
                try:
                    code: int | str = DetectorError.model_validate(await resp.json(content_type=None)).code
                except Exception:
                    code = "?"
                raise TrustyAIError(
                    f"detector {self.detector_id!r} answered HTTP {resp.status} (code {code})"
                )
            data = await resp.json(content_type=None)
        try:
            out = ContentsAnalysisResponse.model_validate(data).root
        except ValidationError as exc:
            raise ProtocolError("the detector's answer is not a list of lists of detections") from exc
        if len(out) != len(contents):
            raise ProtocolError(f"{len(out)} lists of detections for {len(contents)} contents")
        return out

    async def acheck(self, ctx: Context, text: Prepared) -> list[Finding] | None:
        original = text.original
        if not original:
            return []
        (found,) = await self.detections([original])
        n = len(original)
        out = []
        for d in found:
            if d.score < self.threshold:
                continue
            if not 0 <= d.start <= d.end <= n:
                raise ProtocolError("a detection's span is outside the text")
            category = self.category or d.detection_type
            description = f"{d.detection_type}: {d.detection} (detector {self.detector_id})"[:200]
            score = min(1.0, max(0.0, d.score))
            out.append(Finding(category, d.detection, self.name, score, d.start, d.end, description))
        return out


def _error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, DetectorError(code=status, message=message).model_dump()


def _validation_message(exc: ValidationError) -> str:
    """Where and what, never the input values (they are the caller's text)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


async def serve_contents(detector_id: str | None, body: Any, detectors: Mapping[str, AnyDetector], *,
                         budget: Budget | None = None, timeout_s: float = 30.0,
                         context: Context | None = None,
                         ) -> tuple[int, dict[str, Any] | list[Any]]:  # fmt: skip
    """Answer ``POST /api/v1/text/contents`` (``detector_id`` from the ``detector-id`` header, ``body``
    the parsed JSON) with the detector of that name in ``detectors``: ``(status, JSON answer)``.

    ``200`` and one list of detections per content; ``404`` for an unknown detector; ``422`` for a
    missing header or a body that does not validate; ``413`` for a content over ``budget``;
    ``500`` when the detector failed, ``504`` when it timed out (``timeout_s``). Errors are in the
    spec's ``{"code", "message"}`` shape and never quote the contents."""
    if not detector_id:
        return _error(422, f"the {DETECTOR_ID_HEADER} header is required")
    det = detectors.get(detector_id)
    if det is None:
        return _error(404, f"detector {detector_id!r} not found; known: {', '.join(sorted(detectors))}")
    if not isinstance(body, Mapping):
        return _error(422, "the body must be a JSON object with 'contents'")
    try:
        req = ContentAnalysisRequest.model_validate(body)
    except ValidationError as exc:
        return _error(422, _validation_message(exc))
    budget = budget or Budget()
    ctx = context or Context()
    results = await asyncio.gather(*(acheck([det], c, budget, context=ctx, timeout_s=timeout_s)
                                     for c in req.contents))  # fmt: skip
    answer: list[list[dict[str, Any]]] = []
    for i, (content, r) in enumerate(zip(req.contents, results, strict=True)):
        if r.timed_out:
            return _error(504, f"detector {detector_id!r} timed out on contents[{i}]")
        if r.errors:
            error = next(iter(r.errors.values()))
            return _error(500, f"detector {detector_id!r} failed on contents[{i}] ({error})")
        if r.examined < r.total:  # (an encoded run too long to decode in full is checked as text)
            return _error(413, f"contents[{i}] is longer than the {budget.max_chars} characters examined")
        answer.append([
            ContentAnalysisResponse(start=f.start, end=f.end, text=content[f.start : f.end], detection=f.kind,
                                    detection_type=f.category, detector_id=detector_id, score=f.score,
                                    metadata={"description": f.description, **({"encoding": f.encoding}
                                                                               if f.encoding else {})},
                                    ).model_dump(exclude_none=True)
            for f in r.findings
        ])  # fmt: skip
    return 200, answer
