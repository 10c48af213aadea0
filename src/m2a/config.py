"""The effective configuration of an m2a installation.

One optional YAML file, validated by pydantic, with a working default for everything.
Environment variables override the file: ``M2A_HOME``, ``M2A_ADMIN_KEY``, ``M2A_CONFIG`` and any
nested field as ``M2A_<SECTION>__<FIELD>`` (for example ``M2A_GATEWAY__PORT=9000``).
Nothing here imports another m2a layer; every layer may import this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from platformdirs import user_data_dir
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

EngineKind = Literal["auto", "vllm", "llamacpp", "remote"]
Task = Literal["chat", "embed"]


class ConfigError(Exception):
    """The configuration file or environment holds something m2a cannot use."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Price(_Strict):
    """What a model's tokens cost, in dollars per million tokens (for chargeback and cost budgets)."""

    input_per_1m: float = Field(default=0.0, ge=0)
    output_per_1m: float = Field(default=0.0, ge=0)
    cached_input_per_1m: float | None = Field(
        default=None, ge=0, description="Prompt tokens served from the prefix cache; default: input price."
    )

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        cached_price = self.input_per_1m if self.cached_input_per_1m is None else self.cached_input_per_1m
        fresh = max(input_tokens - cached_tokens, 0)
        return (
            fresh * self.input_per_1m + cached_tokens * cached_price + output_tokens * self.output_per_1m
        ) / 1e6


class ScorerConfig(_Strict):
    """One scorer of the routing pipeline and its weight (scores are in [0, 1])."""

    name: str = Field(description="A registered scorer: queue, kv_usage, inflight, prefix, session …")
    weight: float = Field(default=1.0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict, description="Scorer-specific settings.")


def default_scorers() -> list[ScorerConfig]:
    return [
        # Where replicas send KV events, precise_prefix decides and the approximate scorer steps back
        # (it only knows this gateway process's own decisions); elsewhere it is the prefix signal.
        ScorerConfig(name="prefix", weight=2.0, params={"defer_to_events": True}),
        ScorerConfig(name="precise_prefix", weight=2.0),
        ScorerConfig(name="queue", weight=1.0),
        ScorerConfig(name="kv_usage", weight=1.0),
        ScorerConfig(name="inflight", weight=1.0),
    ]


class RouterConfig(_Strict):
    """How the gateway picks a replica: filters, then weighted scorers, then a picker."""

    filters: list[str] = Field(default_factory=lambda: ["healthy", "not_overloaded"])
    scorers: list[ScorerConfig] = Field(default_factory=default_scorers)
    picker: str = Field(
        default="max_score", description="max_score, weighted_random, power_of_two or round_robin."
    )
    session_header: str = Field(
        default="x-session-id", description="Header naming a session (session scorer)."
    )


class ModelConfig(_Strict):
    """One model the platform serves."""

    name: str = Field(description="The name clients put in the `model` field.", min_length=1)
    source: str | None = Field(
        default=None,
        description="Where the weights come from: a Hugging Face id, a folder, a .gguf file, or "
        "pkg:<python package>/<path inside it>. Defaults to the built-in source of `name`.",
    )
    task: Task | None = Field(default=None, description="chat or embed; defaults from the source.")
    engine: EngineKind = "auto"
    url: str | None = Field(default=None, description="Base URL of a remote OpenAI-compatible server.")
    urls: list[str] | None = Field(
        default=None, min_length=1, description="Several remote servers of the same model: one replica each."
    )
    kv_events: list[str] | None = Field(
        default=None,
        min_length=1,
        description="ZMQ endpoints where remote vLLM servers publish KV-cache events, one per URL in "
        "`urls` order (for precise prefix-cache routing); m2a's own vLLM replicas publish anyway.",
    )
    api_key: str | None = Field(default=None, description="Key sent to a remote server.")
    priority_scheduling: bool = Field(
        default=False,
        description="The remote server schedules by priority (vLLM with --scheduling-policy priority): "
        "the gateway sends each request its team's priority. A client's own `priority` never passes.",
    )
    replicas: int = Field(default=1, ge=1, le=64)
    max_model_len: int | None = Field(default=None, ge=16)
    kv_cache_bytes: int | None = Field(
        default=None, ge=1 << 20, description="KV-cache size for vLLM on CPU (bytes)."
    )
    cpu_threads: int | None = Field(default=None, ge=1, description="Threads for a CPU engine.")
    cpu_cores: list[str] | None = Field(
        default=None,
        description="Cores per replica for vLLM on CPU, e.g. ['0-3', '4-7'] (replica n takes item n); "
        "overrides the automatic split.",
    )
    tool_parser: str | None = Field(
        default=None, description="vLLM tool-call parser; picked from the model family when unset."
    )
    extra_args: list[str] = Field(default_factory=list, description="Extra engine command-line flags.")
    license: str | None = None
    price: Price = Field(default_factory=Price, description="Dollars per million tokens.")
    router: RouterConfig | None = Field(default=None, description="This model's routing; default: `router`.")
    tokenizer: str | None = Field(
        default=None,
        description="How the router tokenizes prompts for prefix affinity: 'hf:<folder>' or 'simple' "
        "(the simulator's); default: the model's own folder for vLLM, none for remote models.",
    )
    max_inflight_per_replica: int | None = Field(
        default=None,
        ge=1,
        description="Requests one replica runs at once before lower priorities wait at the gateway; "
        "default from the engine (vLLM on CPU 16, on GPU 256, llama.cpp 1, remote: no limit).",
    )
    max_output_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Most output tokens one request may ask for per choice (a larger max_tokens gets "
        "400 max_tokens_too_large); default: max_model_len where set.",
    )
    guardrails: str | None = Field(
        default=None,
        description="A guardrail profile every request to this model passes, on top of the caller's "
        "(`m2a guardrails attach --model` overrides it).",
    )

    @model_validator(mode="after")
    def _remote_needs_url(self) -> ModelConfig:
        if self.url and self.urls:
            raise ValueError("give `url` or `urls`, not both")
        if self.engine == "remote" and not (self.url or self.urls):
            raise ValueError("engine 'remote' needs `url` (the server's OpenAI base URL) or `urls`")
        if (self.url or self.urls) and self.engine not in ("remote", "auto"):
            raise ValueError("`url` and `urls` are only for engine 'remote'")
        if self.urls and self.replicas == 1:
            object.__setattr__(self, "replicas", len(self.urls))
        if self.kv_events is not None:
            servers = self.urls or ([self.url] if self.url else [])
            if len(self.kv_events) != len(servers):
                raise ValueError("`kv_events` needs one endpoint per remote URL (`url` or `urls`)")
            if bad := [e for e in self.kv_events if not e.startswith(("tcp://", "ipc://"))]:
                raise ValueError(f"`kv_events` endpoints are tcp://host:port or ipc://path, not {bad[0]!r}")
        return self


class GatewayConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=8 << 20, ge=1024, description="Larger request bodies get 413.")
    upstream_timeout_s: float = Field(default=600.0, gt=0, description="Longest wait for an engine.")
    max_answer_bytes: int = Field(
        default=128 << 20,
        ge=1 << 20,
        description="A whole engine answer is held in memory up to this size; a larger one gets 502 "
        "and its engine connection is closed (one event of a stream is held up to 8 MiB).",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0)
    gc_gen0_threshold: int = Field(
        default=50_000,
        ge=0,
        description="Once serving, the start-up heap is frozen and the garbage collector's youngest "
        "generation runs every this many allocations (Python's default: 700); 0 leaves Python's.",
    )
    reserve_output_tokens: int = Field(
        default=1024,
        ge=1,
        description="Output tokens reserved against token quotas when a request sets no max_tokens.",
    )
    priorities: bool = Field(default=True, description="Hold lower priorities when a model is saturated.")
    priority_deadline_s: dict[str, float] = Field(
        default_factory=lambda: {"critical": 60.0, "standard": 30.0, "batch": 15.0},
        description="Longest wait at the gateway per priority before 503 (then Retry-After).",
    )
    priority_headroom: dict[str, float] = Field(
        default_factory=lambda: {"critical": 1.0, "standard": 0.9, "batch": 0.5},
        description="Share of a model's capacity each priority may fill; the rest is kept for higher ones.",
    )
    max_waiting: int = Field(
        default=1000, ge=0, description="Requests held per model before new ones get 503."
    )
    metrics_need_key: bool = Field(
        default=False,
        description="/metrics (team and model names, replica ids) only with the admin key; off: open, "
        "for Prometheus scrapers on the operator's network.",
    )
    explain_ungranted: bool = Field(
        default=False,
        description="A model served but not granted gets 403 naming the missing grant; off: 404, as "
        "for an unknown name, so a team key cannot probe which models exist.",
    )
    admin_docs: bool = Field(
        default=True, description="Serve /admin/docs and /admin/openapi.json (no data) without a key."
    )
    responses_retention_hours: float = Field(
        default=720.0,
        gt=0,
        description="How long a stored Responses API response (/v1/responses, store: true) is kept: "
        "retrievable and continuable with previous_response_id (default 30 days, as OpenAI).",
    )


Direction = Literal["input", "output", "tool"]


class GuardrailRule(_Strict):
    """One detector of a guardrail profile: where it looks, what a finding does, and if it fails."""

    detector: str = Field(description="A registered detector: pii, secrets, prompt_injection, denylist …")
    params: dict[str, Any] = Field(default_factory=dict, description="The detector's own settings.")
    where: list[Direction] = Field(
        default_factory=lambda: ["input", "output", "tool"],
        min_length=1,
        description="input: prompts (every message, completion prompts, embedding inputs); output: "
        "answers, whole or streamed; tool: tool calls the model makes and tool results sent back.",
    )
    action: Literal["block", "redact", "flag"] = Field(
        default="block",
        description="block: refuse (400 content_filter); redact: mask the span; flag: log only.",
    )
    threshold: float = Field(default=0.5, ge=0, le=1, description="Findings scoring below are ignored.")
    fail: Literal["closed", "open"] = Field(
        default="closed", description="When the detector errors or times out: closed blocks, open lets pass."
    )
    timeout_s: float = Field(default=2.0, gt=0, le=120, description="Longest wait for a slow detector.")


class GuardrailProfile(_Strict):
    """A named set of detectors with actions (a guardrail policy), attached to teams, keys, models."""

    description: str = ""
    rules: list[GuardrailRule] = Field(default_factory=list)
    stream_hold_chars: int = Field(
        default=128,
        ge=0,
        le=8192,
        description="Streamed answers: characters held back and checked before the client sees them "
        "(a finding longer than this may be partly sent before it is recognised).",
    )
    max_chars: int = Field(
        default=100_000, ge=1, description="Characters examined per check; past it `over_budget` decides."
    )
    over_budget: Literal["block", "allow"] = Field(
        default="block", description="A prompt or answer longer than `max_chars`: refuse it, or let it pass."
    )

    @model_validator(mode="after")
    def _one_rule_per_detector(self) -> GuardrailProfile:
        for where in ("input", "output", "tool"):
            names = [r.detector for r in self.rules if where in r.where]
            if dup := {n for n in names if names.count(n) > 1}:
                raise ValueError(f"detector {sorted(dup)[0]!r} appears twice for {where}")
        return self


def builtin_profiles() -> dict[str, GuardrailProfile]:
    """Profiles m2a ships: ``default`` (on unless configured otherwise), ``strict``, ``off``."""
    R = GuardrailRule
    return {
        "default": GuardrailProfile(
            description="Credentials masked both ways, system-prompt leaks refused, prompt injection "
            "and personal data flagged.",
            rules=[
                R(detector="secrets", action="redact", fail="open"),
                # Flagged, not refused: technical text about LLMs scores high (5-10% of m2a's own
                # docs' paragraphs), so refusing is for profiles that choose it (strict).
                R(
                    detector="prompt_injection",
                    where=["input", "tool"],
                    action="flag",
                    threshold=0.7,
                    fail="open",
                ),
                R(detector="system_prompt_leak", where=["output"], action="block", fail="open"),
                R(detector="pii", action="flag", fail="open"),
            ],
            over_budget="allow",
        ),
        "strict": GuardrailProfile(
            description="Credentials and prompt injection refused, personal data masked, every "
            "detector failing closed.",
            rules=[
                R(detector="secrets", action="block"),
                R(detector="prompt_injection", where=["input", "tool"], action="block", threshold=0.5),
                R(detector="system_prompt_leak", where=["output"], action="block"),
                R(detector="pii", action="redact"),
            ],
            over_budget="block",
        ),
        "off": GuardrailProfile(description="No checks."),
    }


class GuardrailsConfig(_Strict):
    """Guardrail profiles and which one applies where nothing else is attached."""

    default_profile: str | None = Field(
        default="default",
        description="The profile of callers (teams, keys) with none attached; null or 'off': none.",
    )
    profiles: dict[str, GuardrailProfile] = Field(
        default_factory=dict, description="Profiles by name, beside the built-in ones (same name: yours)."
    )

    def all_profiles(self) -> dict[str, GuardrailProfile]:
        return {**builtin_profiles(), **self.profiles}

    @model_validator(mode="after")
    def _default_exists(self) -> GuardrailsConfig:
        if self.default_profile is not None and self.default_profile not in self.all_profiles():
            raise ValueError(f"default_profile {self.default_profile!r} is not a profile")
        return self


class SupervisorConfig(_Strict):
    ready_timeout_s: float = Field(default=900.0, gt=0, description="Longest wait for an engine to start.")
    health_interval_s: float = Field(default=2.0, gt=0)
    restart_backoff_s: float = Field(default=1.0, gt=0, description="First wait before a restart.")
    restart_backoff_max_s: float = Field(default=60.0, gt=0)
    stop_grace_s: float = Field(default=15.0, gt=0, description="SIGTERM, then SIGKILL after this.")
    base_port: int = Field(default=18100, ge=1024, le=65000, description="First port given to engines.")


class TelemetryConfig(_Strict):
    """Traces and metrics: what is recorded, and where it goes."""

    tracing: bool = Field(default=True, description="One OpenTelemetry trace per gateway request.")
    traces_per_second: float = Field(
        default=10.0,
        ge=0,
        description="Record at most this many new traces a second (every request at low load; 0: all). "
        "A caller's sampled traceparent is always recorded.",
    )
    record_content: bool = Field(
        default=False, description="Put prompt and completion text on spans (off: never recorded)."
    )
    trace_store: bool = Field(default=True, description="Keep traces in $M2A_HOME/traces.db (m2a traces).")
    trace_retention_hours: float = Field(default=72.0, gt=0, description="Older spans are pruned.")
    trace_max_spans: int = Field(default=200_000, ge=1000, description="Oldest spans pruned beyond this.")
    otlp_endpoint: str | None = Field(
        default=None,
        description="Also send traces to this OTLP/HTTP collector (or $OTEL_EXPORTER_OTLP_ENDPOINT): "
        "Jaeger, Tempo, Langfuse, MLflow …",
    )
    engine_tracing: bool = Field(
        default=True, description="Start vLLM engines with OTLP tracing pointed at the gateway."
    )
    device_metrics: bool = Field(default=True, description="GPU/CPU metrics on /metrics.")


class DataConfig(_Strict):
    """Files and vector stores (``/v1/files``, ``/v1/vector_stores``): ingestion and search."""

    embedding_model: str = Field(
        default="all-minilm-l6-v2",
        description="The served model that embeds chunks and queries (through the gateway, so it is "
        "metered and counted against the owning team's quotas; the team must be granted it).",
    )
    max_file_bytes: int = Field(
        default=512 << 20, ge=1024, description="Larger uploads to /v1/files get 413."
    )
    backend: Literal["sqlite", "postgres"] = Field(
        default="sqlite",
        description="Where chunks and vectors live: sqlite (embedded) or postgres (PostgreSQL with the "
        "pgvector extension: at scale, and for several gateway processes).",
    )
    db_path: Path | None = Field(
        default=None, description="The SQLite backend's file; default $M2A_HOME/vectors.db."
    )
    postgres_url: str | None = Field(
        default=None,
        description="The postgres backend's database (postgresql://...); default the gateway's own "
        "database_url when that is PostgreSQL (its tables are named m2a_vs_*).",
    )
    workers: int = Field(default=2, ge=1, le=32, description="Files ingested at once per gateway process.")

    @field_validator("postgres_url")
    @classmethod
    def _postgres_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
            raise ValueError("postgres_url must be a postgresql:// URL")
        return url


class TrustedIssuer(_Strict):
    """An outside issuer whose JWTs the gateway accepts as agent identities (SPIRE's JWT-SVIDs)."""

    issuer: str = Field(description="The tokens' `iss`.")
    jwks_url: str | None = Field(default=None, description="Where its signing keys are (JWKS).")
    jwks_file: Path | None = Field(default=None, description="Or a JWKS file on disk.")
    audience: str = Field(default="m2a", description="The `aud` its tokens must name.")
    trust_domain: str = Field(
        description="Only `sub` SPIFFE ids in this trust domain (spiffe://<domain>/team/T/agent/N)."
    )


class AgentsConfig(_Strict):
    """Agents: their identities (SPIFFE ids, OAuth tokens) and registry."""

    trust_domain: str = Field(
        default="m2a.local", description="Agents' SPIFFE ids: spiffe://<trust_domain>/team/T/agent/N."
    )
    issuer: str | None = Field(
        default=None, description="The `iss` of m2a's agent tokens; default the gateway's own URL."
    )
    audience: str = Field(default="m2a", description="The one `aud` of the tokens m2a issues.")
    token_ttl_s: int = Field(default=300, ge=10, le=300, description="Access tokens live at most 5 min.")
    key_rotation_hours: float = Field(
        default=24.0, gt=0, description="A new signing key this often; the old one stays in the JWKS."
    )
    trusted_issuers: list[TrustedIssuer] = Field(default_factory=list)
    approval_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        le=30 * 86400,
        description="How long an MCP tool call waiting for approval (an mcp_approval_request) may wait.",
    )


Tier = Literal["read", "write", "destructive"]
ACTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class ActionConfig(_Strict):
    """An action m2a itself executes for agents: an allow-listed HTTP endpoint or a sandboxed local
    command. Agents see the actions as the tools of the built-in server ``actions`` (``/mcp``),
    granted in their manifest like any MCP server's tools."""

    name: str = Field(pattern=ACTION_NAME, description="The tool's name (actions__<name> on /mcp).")
    kind: Literal["http", "command"]
    description: str | None = None
    tier: Tier = Field(default="write", description="read, write or destructive (needs a person's approval).")
    input_schema: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object"}, description="The JSON Schema of its arguments."
    )
    # http: the arguments are the JSON body sent to exactly this URL (no other URL is reachable)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str | None = Field(default=None, description="http: the endpoint (http:// or https://).")
    headers: dict[str, str] = Field(default_factory=dict, description="http: m2a's headers for it.")
    # command: argv as given (no shell); the arguments arrive as JSON on stdin
    argv: list[str] = Field(default_factory=list, max_length=256, description="command: what runs.")
    egress: list[str] = Field(
        default_factory=list, description="command: host:port it may reach, through the egress proxy only."
    )
    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    cpu_s: int = Field(default=10, ge=1, le=3600, description="command: CPU seconds.")
    memory_mb: int = Field(default=512, ge=16, le=65536, description="command: address space.")
    max_procs: int = Field(
        default=64, ge=1, le=4096, description="command: processes (fork bombs stop here)."
    )
    max_output_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)

    @model_validator(mode="after")
    def _kind(self) -> ActionConfig:
        if self.kind == "http" and not (self.url or "").startswith(("http://", "https://")):
            raise ValueError(f"action {self.name!r}: an http action needs url: http(s)://...")
        if self.kind == "command" and not self.argv:
            raise ValueError(f"action {self.name!r}: a command action needs argv: [program, args...]")
        return self


class TrustConfig(_Strict):
    """Trusted execution: signed intents, Cedar policies, sandboxed executors, egress, the audit log."""

    enabled: bool = Field(
        default=True, description="Every agent's tool call takes the trusted path (off: calls go straight)."
    )
    mode: Literal["enforce", "log_only"] = Field(
        default="enforce", description="Policy decisions: enforce, or log_only (logged, never refused)."
    )
    policy_dir: Path | None = Field(
        default=None, description="Cedar policy files (*.cedar); default <home>/policies."
    )
    intent_ttl_s: int = Field(default=30, ge=1, le=60, description="Intents expire within 60 s.")
    checkpoint_every: int = Field(default=256, ge=1, description="A signed checkpoint per this many records.")
    checkpoint_interval_s: float = Field(
        default=60.0, gt=0, description="...or this often when records came."
    )
    actions: list[ActionConfig] = Field(default_factory=list)
    sandbox: Literal["auto", "bwrap", "unshare", "none"] = Field(
        default="auto", description="How commands are isolated; 'none' refuses to run commands."
    )
    egress_listen: str = Field(
        default="127.0.0.1:0", description="host:port of the egress proxy (HTTP CONNECT); port 0: any."
    )

    @field_validator("actions")
    @classmethod
    def _unique_actions(cls, v: list[ActionConfig]) -> list[ActionConfig]:
        names = [a.name for a in v]
        if len(names) != len(set(names)):
            raise ValueError("two actions have the same name")
        return v


class TokenPrice(_Strict):
    """Dollars per million tokens, input and output: an external API's list price, or m2a's own."""

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_million + output_tokens * self.output_per_million) / 1e6


class ServingCost(_Strict):
    """What serving a model here costs: its hardware by the hour (divided by the throughput the
    ledger measured), or a price per million tokens."""

    hardware_cost_per_hour: float | None = Field(
        default=None, ge=0, description="Dollars per hour of one replica's hardware (amortized, power in)."
    )
    price_per_million: TokenPrice | None = Field(
        default=None, description="Or a set price per million tokens (used when no hardware cost is given)."
    )

    @model_validator(mode="after")
    def _one_cost(self) -> ServingCost:
        if self.hardware_cost_per_hour is None and self.price_per_million is None:
            raise ValueError("give hardware_cost_per_hour or price_per_million")
        return self


class EconomicsConfig(_Strict):
    """Token economics (the console's page): serving tokens here beside buying them from an API."""

    serving: dict[str, ServingCost] = Field(
        default_factory=dict,
        description="By model name, or by engine kind (vllm, llamacpp, remote) for models without "
        "an entry of their own; other models are costed at their chargeback `price`.",
    )
    external_prices: dict[str, TokenPrice] = Field(
        default_factory=dict,
        description="What the same tokens would cost at external APIs, by a name of your choice.",
    )


def default_home() -> Path:
    return Path(user_data_dir("m2a", appauthor=False))


def default_models() -> list[ModelConfig]:
    return [ModelConfig(name="smollm2-135m-instruct"), ModelConfig(name="all-minilm-l6-v2")]


class Settings(_Strict):
    """Everything m2a reads from its config file and environment."""

    home: Path = Field(default_factory=default_home, description="State directory ($M2A_HOME).")
    admin_key: str | None = Field(
        default=None, description="The gateway's API key ($M2A_ADMIN_KEY); generated when unset."
    )
    database_url: str | None = Field(
        default=None,
        description="Where teams, keys and usage live ($M2A_DATABASE_URL): a postgresql:// URL; "
        "default SQLite in the state directory.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Quota counters shared by gateway processes ($M2A_REDIS_URL); default in process.",
    )
    redis_prefix: str = Field(
        default="m2a:q:",
        min_length=1,
        description="Namespace of the counters in Redis ($M2A_REDIS_PREFIX), one per installation.",
    )
    models: list[ModelConfig] = Field(default_factory=default_models)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    guardrails: GuardrailsConfig = Field(default_factory=GuardrailsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    agents: AgentsConfig = Field(default_factory=AgentsConfig)
    trust: TrustConfig = Field(default_factory=TrustConfig)
    economics: EconomicsConfig = Field(default_factory=EconomicsConfig)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for m in models:
            if m.name in seen:
                raise ValueError(f"model name {m.name!r} appears twice")
            seen.add(m.name)
        return models

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


_TOP_LEVEL_ENV = {
    "M2A_HOME": "home",
    "M2A_ADMIN_KEY": "admin_key",
    "M2A_DATABASE_URL": "database_url",
    "M2A_REDIS_URL": "redis_url",
    "M2A_REDIS_PREFIX": "redis_prefix",
}


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if key in _TOP_LEVEL_ENV:
            out[_TOP_LEVEL_ENV[key]] = value
        elif key.startswith("M2A_") and "__" in key:
            section, _, field = key[4:].lower().partition("__")
            if section in ("gateway", "supervisor", "telemetry", "router", "guardrails", "data"):
                out.setdefault(section, {})[field] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"invalid configuration in {where}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def config_path(environ: dict[str, str] | None = None, explicit: Path | None = None) -> Path | None:
    """The config file in force: --config, then $M2A_CONFIG, then $M2A_HOME/config.yaml if present."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return explicit
    if env.get("M2A_CONFIG"):
        return Path(env["M2A_CONFIG"])
    home = Path(env["M2A_HOME"]) if env.get("M2A_HOME") else default_home()
    candidate = home / "config.yaml"
    return candidate if candidate.exists() else None


def load_settings(path: Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read the config file (if any) and the environment into validated settings."""
    env = dict(os.environ if environ is None else environ)
    path = config_path(env, path)
    data: dict[str, Any] = {}
    where = "defaults and environment"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level")
        data = loaded
    data = _merge(data, _env_overrides(env))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from exc
