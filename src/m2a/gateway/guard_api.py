"""The guardrails as services of their own: OpenAI's ``POST /v1/moderations`` and TrustyAI's
detector API (``POST /api/v1/text/contents`` with the ``detector-id`` header).

- ``/v1/moderations``: any valid key; ``model`` names a guardrail profile (``default``, ``strict``,
  one of yours), or the caller's own profile when it is absent or one of OpenAI's moderation model
  names (``omni-moderation-latest``…). Every detector of the profile runs (all directions); an input
  is ``flagged`` when a finding reaches its rule's threshold, whatever the rule's action. OpenAI's
  categories are always present; m2a's (``pii``, ``secret``, ``prompt_injection``…) are added.
- ``/api/v1/text/contents``: any valid key; ``detector-id`` names one of m2a's in-process detectors
  with its default settings (``pii``, ``secrets``, ``prompt_injection``, ``system_prompt_leak``…),
  so other guardrail orchestrators (TrustyAI's FMS orchestrator) can call them.

Neither logs nor stores the texts.
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from m2a.gateway.access import Access
from m2a.gateway.body import parse_json, read_body
from m2a.gateway.errors import GatewayError
from m2a.gateway.guards import Guards
from m2a.guardrails import base, run
from m2a.guardrails.moderation import ModerationInputError, moderation_result, parse_moderation_input
from m2a.guardrails.policy import Policy, run_async
from m2a.guardrails.trustyai import DETECTOR_ID_HEADER, serve_contents

log = logging.getLogger("m2a.gateway.guard_api")

MAX_INPUTS = 256  # texts in one moderation request
# Characters one request may have checked, all its texts together: detectors run on the event loop,
# so a body of many texts (within max_body_bytes) must not hold it for seconds. Past it: 413.
MAX_TOTAL_CHARS = 262_144
OPENAI_MODELS = ("omni-moderation", "text-moderation")  # their names mean: the caller's own profile


class GuardAPI:
    def __init__(self, access: Access, guards: Guards, max_body_bytes: int) -> None:
        self.access = access
        self.guards = guards
        self.max_body_bytes = max_body_bytes
        self._detectors: dict[str, base.Detector] | None = None

    def detectors(self) -> dict[str, base.Detector]:
        """m2a's detectors that work with their default settings, built once."""
        if self._detectors is None:
            built: dict[str, base.Detector] = {}
            for name in base.known():
                try:
                    built[name] = base.build(name)
                except Exception:  # needs settings (a judge's URL, a remote detector's): not served
                    continue
            self._detectors = built
        return self._detectors

    def _policy(self, model: str | None, own: str | None) -> Policy:
        name = (own or "default") if model is None or model.startswith(OPENAI_MODELS) else model
        policy = self.guards.policies.get(name)
        if policy is None:
            raise GatewayError(404, f"The guardrail profile '{name}' does not exist.", param="model",
                               code="model_not_found")  # fmt: skip
        return policy

    async def moderations(self, request: Request) -> Response:
        principal = await self.access.principal(request)
        payload = parse_json(await read_body(request, self.max_body_bytes))
        try:
            texts = parse_moderation_input(payload)
        except ModerationInputError as exc:
            raise GatewayError(400, exc.message, param=exc.param, code="invalid_request") from exc
        if len(texts) > MAX_INPUTS:
            raise GatewayError(400, f"At most {MAX_INPUTS} inputs per request.", param="input")
        _bounded(texts, "input")
        model = payload.get("model") if isinstance(payload, dict) else None
        own = principal.guardrails or self.guards.cfg.default_profile
        policy = self._policy(model if isinstance(model, str) else None, own)
        rules = {det.name: rule for rule, det in policy.rules}
        detectors = [det for _, det in policy.rules]
        categories = sorted({_category(det) for det in detectors} - {""})
        results = []
        for text in texts:
            if any(run_async(d) for d in detectors):
                timeouts = {d.name: rules[d.name].timeout_s for d in detectors}
                result = await run.acheck(detectors, text, policy.budget, timeout_s=timeouts)
            else:
                result = run.check(detectors, text, policy.budget)
            result.findings = [f for f in result.findings if f.score >= rules[f.detector].threshold]
            entry = moderation_result(result, categories)
            if result.errors:  # a detector that failed flags nothing: say so, never silently
                entry["m2a_errors"] = sorted(result.errors)
            results.append(entry)
        return JSONResponse({"id": f"modr-{uuid.uuid4().hex}", "model": policy.name, "results": results,
                             "created": int(time.time())})  # fmt: skip

    async def contents(self, request: Request) -> Response:
        await self.access.principal(request)
        body = parse_json(await read_body(request, self.max_body_bytes))
        contents = body.get("contents") if isinstance(body, dict) else None
        if isinstance(contents, list):
            _bounded([c for c in contents if isinstance(c, str)], "contents")
        status, answer = await serve_contents(request.headers.get(DETECTOR_ID_HEADER), body, self.detectors())
        return JSONResponse(answer, status_code=status)


def _bounded(texts: list[str], param: str) -> None:
    total = sum(len(t) for t in texts)
    if total > MAX_TOTAL_CHARS:
        message = f"The texts hold {total} characters; one request may have {MAX_TOTAL_CHARS} checked."
        raise GatewayError(413, message, param=param, code="too_many_characters")


CATEGORIES = {
    "pii": base.PII,
    "secrets": base.SECRET,
    "denylist": base.DENYLIST,
    "system_prompt_leak": base.LEAKAGE,
}


def _category(det: base.Detector) -> str:
    """The category a detector reports (for the categories a moderation answer always lists)."""
    return str(getattr(det, "category", "") or CATEGORIES.get(det.name, det.name))
