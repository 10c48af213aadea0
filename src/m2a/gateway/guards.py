"""Which guardrail policies a request passes, and the telemetry of every check.

Profiles come from three places, later ones winning on a name: the built-in ones (``default``,
``strict``, ``off``), the config file's ``guardrails.profiles``, and (for names the first two do not
use) profiles made through the admin API. A request passes:

- the caller's profile: the one attached to its key, else to its team, else
  ``guardrails.default_profile``;
- and the model's, when one is attached to the model (admin API, else the model's ``guardrails``
  in the config) and it is not the same profile.

``Guards.reload`` rebuilds from the store; the gateway calls it whenever the identity revision moves
(every attach and profile change bumps it). A name that resolves to no profile fails closed: the
request is refused (503 ``guardrail_profile_missing``), never let through unchecked.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span, Tracer
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from m2a.config import GuardrailProfile, GuardrailsConfig, ModelConfig
from m2a.gateway import tracing
from m2a.gateway.errors import GatewayError
from m2a.gateway.metrics import BoundedLabel, GatewayMetrics
from m2a.guardrails.policy import Policy, Verdict, profile_version
from m2a.principal import Principal

if TYPE_CHECKING:
    from m2a.store.guardrails import GuardrailStore

log = logging.getLogger("m2a.gateway.guards")

TARGETS = {"input": "llm_input", "output": "llm_output", "tool": "tool_call"}  # gen_ai.security.target.type


class Guards:
    def __init__(
        self,
        cfg: GuardrailsConfig | None = None,
        models: list[ModelConfig] | None = None,
        store: GuardrailStore | None = None,
    ) -> None:
        self.cfg = cfg or GuardrailsConfig()
        self.store = store
        self._config_models = {m.name: m.guardrails for m in models or [] if m.guardrails}
        self._model_profiles: dict[str, str] = dict(self._config_models)
        self._built: dict[tuple[str, str], Policy] = {}
        self.policies: dict[str, Policy] = {}
        self.stored: dict[str, int] = {}  # stored profile name -> version
        self._team = BoundedLabel()
        self._bound: dict[tuple[str, str, str, str], tuple[Any, Any, GatewayMetrics]] = {}
        self._set({n: (p, None) for n, p in self.cfg.all_profiles().items()})

    def _set(self, profiles: dict[str, tuple[GuardrailProfile, str | None]]) -> None:
        policies: dict[str, Policy] = {}
        for name, (profile, version) in profiles.items():
            version = version or profile_version(profile)
            policy = self._built.get((name, version)) or Policy(name, profile, version)
            policies[name] = policy
        self._built = {(p.name, p.version): p for p in policies.values()}
        self.policies = policies

    def fixed(self) -> set[str]:
        """Profile names the config (and m2a) define: the admin API may not replace them."""
        return set(self.cfg.all_profiles())

    async def reload(self) -> None:
        """Read stored profiles and model attachments again (after a change anywhere)."""
        if self.store is None:
            return
        stored = await self.store.profiles()
        models = await self.store.model_profiles()
        profiles: dict[str, tuple[GuardrailProfile, str | None]] = {
            n: (p, None) for n, p in self.cfg.all_profiles().items()
        }
        self.stored = {}
        for sp in stored:
            if sp.name in profiles:
                continue  # the config's own wins: it cannot be changed from the API
            try:
                profiles[sp.name] = (GuardrailProfile.model_validate(sp.spec), f"v{sp.version}")
                self.stored[sp.name] = sp.version
            except Exception:  # validated when stored; a detector since removed: fail closed later
                log.exception("stored guardrail profile %r no longer builds", sp.name)
        self._set(profiles)
        self._model_profiles = {**self._config_models, **models}

    def for_request(self, principal: Principal, model: str) -> list[Policy]:
        """The policies a request passes, in order: the caller's, then the model's."""
        names: list[str] = []
        own = principal.guardrails or self.cfg.default_profile
        if own:
            names.append(own)
        bound = self._model_profiles.get(model)
        if bound and bound not in names:
            names.append(bound)
        out = []
        for name in names:
            policy = self.policies.get(name)
            if policy is None:
                log.error("guardrail profile %r is attached but not defined: refusing", name)
                raise GatewayError(
                    503,
                    f"The guardrail profile '{name}' this request needs is not defined; "
                    "the request was not sent.",
                    code="guardrail_profile_missing",
                )
            if policy.rules:
                out.append(policy)
        return out

    @staticmethod
    def scope(principal: Principal | None) -> str | None:
        """Whose texts a request's checks see, for the policies' memo (``guardrails/run.py`` ``Memo``):
        the team, or the key of a caller without one; one tenant's texts never answer for another's."""
        if principal is None:
            return None
        return f"team:{principal.team_id}" if principal.team_id is not None else f"key:{principal.key_id}"

    def record(
        self,
        verdict: Verdict,
        principal: Principal | None,
        metrics: GatewayMetrics,
        tracer: Tracer | None,
        span: Span | None,
    ) -> None:
        """The check's metrics, and its ``apply_guardrail`` span under the request's span."""
        team = self._team(principal.team if principal else None)
        key = (verdict.direction, verdict.policy, verdict.decision, team)
        bound = self._bound.get(key)
        if bound is None or bound[2] is not metrics:  # the labelled series, looked up once
            bound = (
                metrics.guardrail_checks.labels(*key),
                metrics.guardrail_seconds.labels(verdict.direction),
                metrics,
            )
            self._bound[key] = bound
        bound[0].inc()
        bound[1].observe(verdict.duration_s)
        for kind, found in (
            ("block", verdict.blocked),
            ("redact", verdict.redacted),
            ("flag", verdict.flagged),
        ):
            for f in found:
                metrics.guardrail_findings.labels(f.detector, f.category, kind, team).inc()
        for name in verdict.errors:
            metrics.guardrail_errors.labels(name, verdict.errors[name]).inc()
        if verdict.errors:
            log.warning("guardrail detectors failed (%s): %s", verdict.policy, verdict.errors)
        if tracer is None or span is None or not span.is_recording():
            return
        attrs: dict[str, object] = {
            "gen_ai.operation.name": "apply_guardrail",
            "gen_ai.security.target.type": TARGETS[verdict.direction],
            "gen_ai.security.decision.type": verdict.decision,
            "gen_ai.security.policy.id": verdict.policy,
            "gen_ai.security.policy.name": verdict.policy,
            "gen_ai.security.policy.version": verdict.version,
            "gen_ai.security.content.modified": verdict.decision == "modify",
            "m2a.guardrail.findings": len(verdict.findings),
        }
        if verdict.reason:
            attrs["gen_ai.security.decision.reason"] = verdict.reason
        if verdict.errors:
            attrs["m2a.guardrail.errors"] = sorted(verdict.errors)
        child = tracing.child(tracer, span, f"apply_guardrail {verdict.policy}", **attrs)  # type: ignore[arg-type]
        for kind, found in (
            ("block", verdict.blocked),
            ("redact", verdict.redacted),
            ("flag", verdict.flagged),
        ):
            for f in found:
                child.add_event(
                    "gen_ai.security.finding",
                    {
                        "gen_ai.security.risk.category": f.category,
                        "gen_ai.security.risk.score": f.score,
                        "m2a.guardrail.kind": f.kind,
                        "m2a.guardrail.detector": f.detector,
                        "m2a.guardrail.action": kind,
                    },
                )
        child.end()


def refusal(verdict: Verdict, where: str, param: str | None = None) -> GatewayError:
    """The 400 a denied check answers with: OpenAI's ``content_filter`` code, the category and the
    detector named (in the message, and in ``error.guardrail``), the text never echoed."""
    return GatewayError(
        400,
        f"The {where} was blocked by guardrail profile '{verdict.policy}': {verdict.reason}.",
        code="content_filter",
        type="invalid_request_error",
        param=param,
        extra={"guardrail": guardrail_info(verdict)},
    )


def guardrail_info(verdict: Verdict) -> dict[str, object]:
    return {
        "profile": verdict.policy,
        "version": verdict.version,
        "direction": verdict.direction,
        "category": verdict.category,
        "detector": verdict.detector,
    }


class MemoCollector:
    """The policies' memos on ``/metrics`` (read when scraped: nothing is counted per request):
    texts replayed from a memo, texts examined, and entries held, per policy."""

    def __init__(self, guards: Guards) -> None:
        self.guards = guards

    def collect(self) -> Any:
        by = ["policy"]
        hits = CounterMetricFamily("m2a_guardrail_memo_hits", "Texts replayed from a policy memo", labels=by)
        misses = CounterMetricFamily("m2a_guardrail_memo_misses", "Texts a policy examined anew", labels=by)
        entries = GaugeMetricFamily("m2a_guardrail_memo_entries", "Texts a policy's memo holds", labels=by)
        for name, policy in sorted(self.guards.policies.items()):
            hits.add_metric([name], policy.memo.hits)
            misses.add_metric([name], policy.memo.misses)
            entries.add_metric([name], len(policy.memo))
        yield from (hits, misses, entries)

