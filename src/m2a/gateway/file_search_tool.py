"""The Responses API's ``file_search`` tool, run in the gateway over m2a's own vector stores.

It plugs into the Responses layer through its hosted-tool seam (``responses_api.register_hosted_tool``)
and is registered where the gateway sets up its data services (``gateway/app.py``): a gateway
without them answers a ``file_search`` tool with 400 ``unsupported_tool``. A tool
``{"type": "file_search", "vector_store_ids": [...], "max_num_results": 1-50, "filters": {...},
"ranking_options": {"ranker": "auto", "score_threshold": 0.5, "hybrid_search": {...}}}``:

- **Checked before any model call** (400 in OpenAI's shape, ``param`` naming the field:
  ``tools.0.max_num_results`` …): an unknown field (``unknown_parameter``), ``vector_store_ids``
  missing, empty, not strings, or more than ``MAX_STORES``; ``max_num_results`` outside 1..50;
  ``filters`` as the search API checks them; ``ranking_options`` (``ranker`` ``auto`` or
  ``default-2024-11-15``, ``score_threshold`` 0..1, ``hybrid_search`` weights). Admin keys own no
  data: 400 ``team_required``.
- **Access as the data API's**: a team searches its own stores only; an agent only those its
  manifest's ``data_scopes`` name. Any other id — another team's, one outside the agent's scopes,
  one that never existed — is 404 ``not_found`` ("No vector store found with id …", ``param``
  ``tools.N.vector_store_ids``), the same answer for each, before the model is called.
- **The model** is offered one function, ``file_search(queries: [str])`` (a string ``query`` is
  taken too). Its queries (at most ``MAX_QUERIES``, each cut at ``MAX_QUERY_CHARS``) are embedded
  in one call on the team's behalf, through the gateway (metered and counted against its quotas,
  as ``/v1/vector_stores/{id}/search``), and each is searched in each store with the same hybrid
  search, filters, threshold and weights; a chunk found by several queries counts once, with its
  best score, and the best ``max_num_results`` chunks over all stores are kept. Hybrid scores are
  rank-based within a store, so across stores they interleave by rank.
- **What the model reads**: the results as numbered sources, one per file (two chunks of one file
  share its number), best first; each chunk is a header line ``[n] filename (file_id), score s``
  and its text with every line quoted (``> ``), so that only m2a writes a line that starts with
  ``[``. The function's description asks the model to cite a source it uses as ``[n]``. Numbers
  run on over the searches of a response and of the conversation it continues (read back from the
  earlier searches' results in the history), so ``[1]`` names one file throughout a chain.
- **The output**: a ``file_search_call`` item (``id`` ``fs_…``, ``status`` ``completed``, or
  ``failed`` for arguments that are not ``{"queries": [...]}`` or a search that could not run —
  the model is told why and goes on —, ``queries``), with ``results`` (``file_id``, ``filename``,
  ``score``, ``text`` as the model got it, ``attributes``) only when the request's ``include`` has
  ``"file_search_call.results"``, else ``null``. Streamed, the item is followed by
  ``response.file_search_call.in_progress``, ``.searching`` and ``.completed`` once it has run.
- **Citations**: each ``[n]`` (or ``[n, m]``) in an answer that names a known source becomes a
  ``file_citation`` annotation (``file_id``, ``filename``, ``index``: where the marker starts in the
  text, which keeps the marker: a stream has sent it already). An answer after a search that marks
  none cites every file whose results the model was given, at the end of the text (``index`` its
  length), best first: an answer drawn from the files still says which. In a stream the
  annotations are ``response.output_text.annotation.added`` events before
  ``response.output_text.done``, and in ``response.completed``.
- **Indirect prompt injection**: every chunk passes the guardrail profiles of the request (the
  caller's and the model's, as the model call's own guard) under their ``tool`` rules — the
  ``prompt_injection`` detector first of all — before the model sees it, each chunk as its own
  text: a chunk a ``block`` rule finds (or a check that fails closed, or runs over the profile's
  budget with ``over_budget: block``) is dropped; ``redact`` findings are masked in it; ``flag``
  findings let it through. So with ``strict`` a poisoned document is dropped, and with ``default``
  it is flagged and given to the model. The model is told how many results were withheld.
  OpenAI's item has no field for this, so m2a adds one: ``guardrail`` on the ``file_search_call``
  item when a profile checked the results — ``{"profiles", "checked", "dropped", "redacted",
  "flagged", "findings": [{"file_id", "filename", "action": "dropped"|"redacted"|"flagged",
  "profile", "category", "detector", "score"}]}``, never the text found —, each check an
  ``apply_guardrail`` span (and ``m2a_guardrail_*`` metrics) under an ``execute_tool file_search``
  span in the response's trace, which counts the results, and those dropped, masked and flagged.

``file_search_call`` items sent back as input (``store: false`` clients replay their output) become
the call and its results (when the item has them) in the conversation.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from m2a.data.filters import Filter, FilterError, compile_filter
from m2a.data.ingest import EmbedError
from m2a.data.search import DEFAULT_RESULTS, MAX_RESULTS, SearchError, SearchQuery
from m2a.data.stores import StoreNotFound
from m2a.gateway.data_shapes import live
from m2a.gateway.errors import GatewayError
from m2a.gateway.responses_api import HostedResult, ToolContext, register_hosted_tool
from m2a.guardrails.base import Context, Finding
from m2a.guardrails.run import redact
from m2a.principal import Principal

if TYPE_CHECKING:
    from m2a.gateway.data_api import DataService
    from m2a.gateway.guards import Guards
    from m2a.gateway.metrics import GatewayMetrics
    from m2a.guardrails.policy import Policy, Verdict

log = logging.getLogger("m2a.gateway.file_search")

KIND = "file_search"
FUNCTION = "file_search"  # the function the model is offered
INCLUDE_RESULTS = "file_search_call.results"
MAX_STORES = 10
MAX_QUERIES = 5
MAX_QUERY_CHARS = 2000
RANKERS = ("auto", "default-2024-11-15")
_FIELDS = {"type", "vector_store_ids", "max_num_results", "filters", "ranking_options"}
_RANKING_FIELDS = {"ranker", "score_threshold", "hybrid_search"}
_PROPAGATOR = TraceContextTextMapPropagator()
# A citation marker in an answer: [1], [2, 3].
_MARK = re.compile(r"\[(\d{1,4}(?:\s*,\s*\d{1,4})*)\]")
# A source's header line in the results m2a gave the model (chunk lines are quoted, never start with "[").
_HEADER = re.compile(r"^\[(\d{1,4})\] (.*) \((file-[\w-]+)\), score [0-9.]+$", re.MULTILINE)
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]+")

DESCRIPTION = (
    "Search the files of the vector stores this response may read, with one or more queries. The "
    "results are numbered sources, [1], [2] …: cite a source you use as [n] right after what it supports."
)
PARAMETERS = {
    "type": "object",
    "properties": {
        "queries": {
            "type": "array",
            "items": {"type": "string"},
            "description": "What to search for: one to five short queries.",
        }
    },
    "required": ["queries"],
}


def _id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _bad(param: str, message: str, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- the tool's spec -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """A ``file_search`` tool's spec, validated."""

    store_ids: list[str]
    k: int = DEFAULT_RESULTS
    filter: Filter | None = None
    threshold: float = 0.0
    weights: tuple[float, float] | None = None


def read_spec(spec: dict[str, Any], where: str) -> Spec:
    """The spec checked as OpenAI checks it (400 naming the field), before anything runs."""
    unknown = sorted(set(spec) - _FIELDS)
    if unknown:
        raise _bad(
            f"{where}.{unknown[0]}", f"Unknown parameter: '{where}.{unknown[0]}'.", "unknown_parameter"
        )
    ids = spec.get("vector_store_ids")
    if ids is None:
        raise _bad(
            f"{where}.vector_store_ids",
            f"Missing required parameter: '{where}.vector_store_ids'.",
            "missing_required",
        )
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise _bad(
            f"{where}.vector_store_ids", "vector_store_ids: expected a non-empty list of vector store ids."
        )
    ids = list(dict.fromkeys(ids))
    if len(ids) > MAX_STORES:
        raise _bad(f"{where}.vector_store_ids", f"vector_store_ids: at most {MAX_STORES} vector stores.")
    k = spec.get("max_num_results", DEFAULT_RESULTS)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_RESULTS:
        raise _bad(
            f"{where}.max_num_results",
            f"Invalid 'max_num_results': expected an integer between 1 and {MAX_RESULTS}.",
        )
    ranking = spec.get("ranking_options")
    ranking = {} if ranking is None else ranking
    if not isinstance(ranking, dict):
        raise _bad(f"{where}.ranking_options", "Invalid type for 'ranking_options': expected an object.")
    extra = sorted(set(ranking) - _RANKING_FIELDS)
    if extra:
        param = f"{where}.ranking_options.{extra[0]}"
        raise _bad(param, f"Unknown parameter: '{param}'.", "unknown_parameter")
    ranker = ranking.get("ranker")
    if ranker is not None and ranker not in RANKERS:
        raise _bad(
            f"{where}.ranking_options.ranker",
            f"Invalid 'ranking_options.ranker': expected one of {', '.join(RANKERS)}.",
        )
    threshold = ranking.get("score_threshold", 0.0)
    threshold = 0.0 if threshold is None else threshold
    weights = None
    hybrid = ranking.get("hybrid_search")
    if hybrid is not None:
        param = f"{where}.ranking_options.hybrid_search"
        if not isinstance(hybrid, dict) or not set(hybrid) <= {"embedding_weight", "text_weight"}:
            raise _bad(param, "Invalid 'ranking_options.hybrid_search': {embedding_weight, text_weight}.")
        weights = (hybrid.get("embedding_weight", 1.0), hybrid.get("text_weight", 1.0))
        if not all(_number(w) for w in weights):
            raise _bad(param, "Invalid 'ranking_options.hybrid_search': the weights are numbers.")
    try:
        flt = compile_filter(spec["filters"], f"{where}.filters") if spec.get("filters") is not None else None
        SearchQuery.make([1.0], "x", k, flt, "hybrid", threshold, weights)  # checks what is left
    except FilterError as exc:
        raise _bad(exc.param, str(exc)) from exc
    except SearchError as exc:
        raise _bad(f"{where}.{exc.param}", str(exc)) from exc
    return Spec(ids, k, flt, float(threshold), weights)


# -- what a search found -------------------------------------------------------------------------


@dataclass
class Passage:
    """One chunk found, as the model will read it (``text`` masked where a guardrail says)."""

    store_id: str
    file_id: str
    filename: str
    score: float
    text: str
    attributes: dict[str, Any] = field(default_factory=dict)
    chunk_id: int = 0


@dataclass
class Screened:
    """What the guardrails made of a search's passages."""

    kept: list[Passage]
    profiles: list[str] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0
    redacted: int = 0
    flagged: int = 0

    def record(self, checked: int) -> dict[str, Any] | None:
        """The item's ``guardrail`` field (None when no profile checked the results)."""
        if not self.profiles:
            return None
        return {
            "profiles": self.profiles,
            "checked": checked,
            "dropped": self.dropped,
            "redacted": self.redacted,
            "flagged": self.flagged,
            "findings": self.findings,
        }


def clean_name(name: str) -> str:
    """A filename on one line (it is a header line of the results)."""
    return _UNPRINTABLE.sub(" ", name).strip() or "file"


def quoted(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines() or [""])


def render(queries: Sequence[str], passages: Sequence[tuple[int, Passage]], withheld: int = 0) -> str:
    """The results as the model reads them: numbered sources, each chunk's lines quoted."""
    asked = ", ".join(json.dumps(q, ensure_ascii=False) for q in queries)
    if not passages:
        head = f"file_search found no results for {asked}."
    else:
        head = f"file_search found {len(passages)} result{'s' if len(passages) != 1 else ''} for {asked}."
    blocks = [head]
    for n, p in passages:
        blocks.append(f"[{n}] {clean_name(p.filename)} ({p.file_id}), score {p.score:.3f}\n{quoted(p.text)}")
    if withheld:
        blocks.append(f"{withheld} result{'s were' if withheld != 1 else ' was'} withheld by the guardrails.")
    return "\n\n".join(blocks)


def parse_queries(arguments: str) -> list[str]:
    """The model's queries (``{"queries": [...]}``, or ``{"query": "..."}``); ValueError if none."""
    args = json.loads(arguments) if arguments.strip() else {}
    if not isinstance(args, dict):
        raise ValueError("the arguments are not a JSON object")
    raw = args.get("queries", args.get("query"))
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise ValueError("'queries' must be a list of strings")
    queries = [q.strip()[:MAX_QUERY_CHARS] for q in raw if isinstance(q, str) and q.strip()]
    queries = list(dict.fromkeys(queries))[:MAX_QUERIES]
    if not queries:
        raise ValueError("'queries' must hold at least one non-empty string")
    return queries


# -- one request's tool --------------------------------------------------------------------------


class FileSearchToolset:
    """One ``file_search`` tool of one request: the function offered, the searches run, the citations."""

    def __init__(
        self,
        svc: DataService,
        principal: Principal,
        ctx: ToolContext,
        spec: Spec,
        policies: list[Policy],
        guards: Guards | None,
        metrics: GatewayMetrics | None,
        tracer: Tracer | None,
    ) -> None:
        assert principal.team_id is not None
        self.svc = svc
        self.principal = principal
        self.team = principal.team_id
        self.ctx = ctx
        self.spec = spec
        self.policies = policies
        self.guards = guards
        self.metrics = metrics
        self.tracer = tracer
        self.include = INCLUDE_RESULTS in ctx.include
        self.functions = [
            {
                "type": "function",
                "function": {"name": FUNCTION, "description": DESCRIPTION, "parameters": PARAMETERS},
            }
        ]
        self.numbers: dict[str, int] = {}  # file id → its source number in this conversation
        self.by_number: dict[int, tuple[str, str]] = {}  # number → (file id, filename)
        self.given: list[str] = []  # files whose results the model got in this response, best first
        self._parent = _PROPAGATOR.extract(dict(ctx.request.headers))
        self._seed(ctx.history)

    def owns(self, name: str) -> bool:
        return name == FUNCTION

    def items(self) -> list[dict[str, Any]]:
        return []

    # -- numbering -------------------------------------------------------------------------------

    def _seed(self, history: Sequence[dict[str, Any]]) -> None:
        """The sources earlier searches of the conversation numbered (the results in its history)."""
        calls: set[str] = set()
        for m in history:
            if not isinstance(m, dict):
                continue
            for tc in m.get("tool_calls") or ():
                fn = tc.get("function") if isinstance(tc, dict) else None
                if isinstance(fn, dict) and fn.get("name") == FUNCTION and isinstance(tc.get("id"), str):
                    calls.add(tc["id"])
            content = m.get("content")
            if m.get("role") == "tool" and m.get("tool_call_id") in calls and isinstance(content, str):
                for h in _HEADER.finditer(content):
                    self._assign(h.group(3), h.group(2), int(h.group(1)))

    def _assign(self, file_id: str, filename: str, n: int | None = None) -> int:
        """The file's number: its own if it has one, else ``n`` (taken from another file) or the next."""
        if n is None:
            if file_id in self.numbers:
                return self.numbers[file_id]
            n = max(self.by_number, default=0) + 1
        old = self.by_number.get(n)
        if old is not None and old[0] != file_id:
            self.numbers.pop(old[0], None)
        if file_id in self.numbers and self.numbers[file_id] != n:
            self.by_number.pop(self.numbers[file_id], None)
        self.numbers[file_id] = n
        self.by_number[n] = (file_id, filename)
        return n

    # -- a call the model makes ------------------------------------------------------------------

    async def call(self, call_id: str, name: str, arguments: str) -> HostedResult:
        item_id = _id("fs_")
        try:
            queries = parse_queries(arguments)
        except (ValueError, RecursionError) as exc:
            item = self._item(item_id, "failed", [], None)
            return HostedResult(
                item, f'The search did not run: call file_search with {{"queries": ["..."]}} ({exc}).'
            )
        span = self._span(item_id)
        try:
            passages = await self._search(queries)
            screened = await self._screen(passages, span)
        except _Failed as exc:
            self._end(span, error=exc.code)
            return HostedResult(self._item(item_id, "failed", queries, None), f"The search failed: {exc}.")
        except BaseException as exc:  # the caller hears of it (responses_api); the span still ends
            self._end(span, error=type(exc).__name__)
            raise
        numbered = [(self._assign(p.file_id, clean_name(p.filename)), p) for p in screened.kept]
        for _, p in numbered:
            if p.file_id not in self.given:
                self.given.append(p.file_id)
        results = [
            {
                "file_id": p.file_id,
                "filename": p.filename,
                "score": p.score,
                "text": p.text,
                "attributes": p.attributes,
            }
            for p in screened.kept
        ]
        item = self._item(item_id, "completed", queries, results if self.include else None)
        record = screened.record(len(passages))
        if record is not None:
            item["guardrail"] = record
        self._end(span, found=len(passages), screened=screened)
        return HostedResult(item, render(queries, numbered, screened.dropped))

    @staticmethod
    def _item(
        item_id: str, status: str, queries: list[str], results: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        return {
            "type": "file_search_call",
            "id": item_id,
            "status": status,
            "queries": queries,
            "results": results,
        }

    async def _search(self, queries: list[str]) -> list[Passage]:
        """Each query in each store (one embedding call for all queries), the best chunks overall."""
        svc, spec = self.svc, self.spec
        try:
            vectors = await svc.embedder(self.team, queries)
        except EmbedError as exc:
            raise _Failed(exc.message, "embedding_failed") from exc
        best: dict[tuple[str, int], Passage] = {}
        searched: list[str] = []
        for store_id in spec.store_ids:
            try:
                for query, vector in zip(queries, vectors, strict=True):
                    hits = await svc.backend.search(
                        store_id, vector, query, spec.k, spec.filter, "hybrid", spec.threshold, spec.weights
                    )
                    for h in hits:
                        key = (store_id, h.chunk_id)
                        if key not in best or best[key].score < h.score:
                            best[key] = Passage(
                                store_id, h.file_id, "", h.score, h.text, dict(h.attributes), h.chunk_id
                            )
            except StoreNotFound:
                continue  # deleted since the request began: nothing to find there
            except (SearchError, FilterError) as exc:
                raise _Failed(str(exc), "invalid_request") from exc
            searched.append(store_id)
        top = sorted(best.values(), key=lambda p: (-p.score, p.file_id, p.chunk_id))[: spec.k]
        names = await svc.rows.files_by_id(self.team, list({p.file_id for p in top}))
        for p in top:
            p.filename = names[p.file_id].filename if p.file_id in names else ""
        for store_id in searched:
            await svc.rows.touch_store(store_id)
        return top

    # -- guardrails over what was found -----------------------------------------------------------

    async def _screen(self, passages: list[Passage], span: Span | None) -> Screened:
        """Each passage through the request's profiles (``tool`` rules): dropped, masked or flagged."""
        out = Screened(list(passages))
        for policy in self.policies:
            if not policy.applies("tool") or not out.kept:
                continue
            out.profiles.append(policy.name)
            kept: list[Passage] = []
            for batch in _batches(out.kept, policy.profile.max_chars):
                content = [{"role": "tool", "content": p.text} for p in batch]
                v = await policy.acheck("tool", content, Context(direction="tool"))
                if self.guards is not None and self.metrics is not None:
                    self.guards.record(v, self.principal, self.metrics, self.tracer, span)
                kept += self._apply(policy.name, v, batch, out)
            out.kept = kept
        return out

    def _apply(self, profile: str, v: Verdict, batch: list[Passage], out: Screened) -> list[Passage]:
        whole = v.decision == "deny" and not v.blocked  # failed closed, or over the profile's budget
        kept: list[Passage] = []
        for i, p in enumerate(batch):
            blocked, redacted, flagged = (
                [f for f in found if f.message == i] for found in (v.blocked, v.redacted, v.flagged)
            )
            if whole or blocked:
                out.dropped += 1
                if blocked:
                    out.findings += [self._finding(p, "dropped", profile, f) for f in blocked]
                else:
                    out.findings.append(
                        {**self._source(p), "action": "dropped", "profile": profile,
                         "category": v.category, "detector": v.detector, "score": None}
                    )  # fmt: skip
                continue
            if redacted:
                p.text = redact(p.text, redacted)
                out.redacted += 1
                out.findings += [self._finding(p, "redacted", profile, f) for f in redacted]
            if flagged:
                out.flagged += 1
                out.findings += [self._finding(p, "flagged", profile, f) for f in flagged]
            kept.append(p)
        return kept

    @staticmethod
    def _source(p: Passage) -> dict[str, Any]:
        return {"file_id": p.file_id, "filename": p.filename}

    def _finding(self, p: Passage, action: str, profile: str, f: Finding) -> dict[str, Any]:
        return {
            **self._source(p),
            "action": action,
            "profile": profile,
            "category": f.category,
            "detector": f.detector,
            "score": round(f.score, 4),
        }

    # -- the span --------------------------------------------------------------------------------

    def _span(self, item_id: str) -> Span | None:
        if self.tracer is None:
            return None
        return self.tracer.start_span(
            f"execute_tool {FUNCTION}",
            context=self._parent,
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": FUNCTION,
                "gen_ai.tool.type": "datastore",
                "gen_ai.tool.call.id": item_id,
                "m2a.file_search.vector_store_ids": list(self.spec.store_ids),
                "m2a.team": self.principal.team or "-",
            },
        )

    @staticmethod
    def _end(
        span: Span | None, found: int = 0, screened: Screened | None = None, error: str | None = None
    ) -> None:
        if span is None:
            return
        if screened is not None:
            span.set_attributes(
                {
                    "m2a.file_search.results": found,
                    "m2a.file_search.given": len(screened.kept),
                    "m2a.file_search.dropped": screened.dropped,
                    "m2a.file_search.redacted": screened.redacted,
                    "m2a.file_search.flagged": screened.flagged,
                }
            )
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    # -- citations -------------------------------------------------------------------------------

    def annotate(self, text: str) -> list[dict[str, Any]]:
        """``file_citation``s for ``text``: each ``[n]`` naming a known source, where it starts; else,
        after a search of this response, every file the model was given, at the end."""
        notes: list[dict[str, Any]] = []
        for m in _MARK.finditer(text):
            for part in m.group(1).split(","):
                source = self.by_number.get(int(part))
                if source is not None:
                    notes.append(_citation(source[0], source[1], m.start()))
        if not notes and self.given:
            notes = [
                _citation(fid, self.by_number[self.numbers[fid]][1], len(text))
                for fid in self.given
                if fid in self.numbers
            ]
        return notes


class _Failed(Exception):
    """A search that could not run; its message is for the model."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _citation(file_id: str, filename: str, index: int) -> dict[str, Any]:
    return {"type": "file_citation", "file_id": file_id, "filename": filename, "index": index}


def _batches(passages: list[Passage], max_chars: int) -> list[list[Passage]]:
    """Passages in groups of at most ``max_chars`` characters (one longer passage alone), so each
    check examines all of its text."""
    out: list[list[Passage]] = []
    size = 0
    for p in passages:
        if not out or size + len(p.text) > max_chars:
            out.append([])
            size = 0
        out[-1].append(p)
        size += len(p.text)
    return out


# -- the factory ---------------------------------------------------------------------------------


async def file_search_tool(spec: dict[str, Any], ctx: ToolContext) -> FileSearchToolset:
    """The hosted-tool factory for ``{"type": "file_search", ...}`` (see the module docstring)."""
    where = f"tools.{ctx.index}"
    state = ctx.request.app.state
    svc: DataService | None = getattr(state, "data", None)
    if svc is None:
        raise _bad(
            f"{where}.type", "the tool type 'file_search' is not served by this gateway", "unsupported_tool"
        )
    parsed = read_spec(spec, where)
    p = ctx.principal
    if p.team_id is None:
        raise _bad(
            where,
            "Vector stores belong to a team, and admin keys have none: use a key of the team.",
            "team_required",
        )
    for store_id in parsed.store_ids:
        allowed = p.data_scopes is None or store_id in p.data_scopes
        row = await svc.rows.store(p.team_id, store_id) if allowed else None
        if row is None:
            raise GatewayError(
                404, f"No vector store found with id '{store_id}'.",
                param=f"{where}.vector_store_ids", code="not_found",
            )  # fmt: skip
        live(row)
    guards: Guards | None = getattr(state, "guards", None)
    policies = guards.for_request(p, ctx.model) if guards is not None and ctx.model else []
    responses = getattr(state, "responses", None)
    tracer = responses.tracer if responses is not None else None
    svc.embedder.learn(ctx.request)
    return FileSearchToolset(svc, p, ctx, parsed, policies, guards, getattr(state, "metrics", None), tracer)


# -- items sent back as input --------------------------------------------------------------------


def _replayed_call(item: dict[str, Any]) -> list[dict[str, Any]]:
    """A ``file_search_call`` sent back: the call, and its results when the item has them."""
    queries = item.get("queries")
    queries = [q for q in queries if isinstance(q, str)] if isinstance(queries, list) else []
    call_id = item.get("id") if isinstance(item.get("id"), str) and item["id"] else _id("fs_")
    results = item.get("results")
    if isinstance(results, list):
        numbers: dict[str, int] = {}
        passages: list[tuple[int, Passage]] = []
        for r in results:
            if not isinstance(r, dict) or not isinstance(r.get("file_id"), str):
                continue
            fid = r["file_id"]
            n = numbers.setdefault(fid, len(numbers) + 1)
            score = r.get("score") if _number(r.get("score")) else 0.0
            text = r.get("text") if isinstance(r.get("text"), str) else ""
            name = r.get("filename") if isinstance(r.get("filename"), str) else ""
            passages.append((n, Passage("", fid, name, float(score), text)))
        text = render(queries, passages)
    else:
        text = "file_search ran here; its results are not part of this conversation."
    call = {
        "id": call_id,
        "type": "function",
        "function": {"name": FUNCTION, "arguments": json.dumps({"queries": queries}, ensure_ascii=False)},
    }
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": text},
    ]


def register() -> None:
    """Serve the ``file_search`` tool type in this process (idempotent)."""
    register_hosted_tool(KIND, file_search_tool, {"file_search_call": _replayed_call})  # type: ignore[arg-type]
