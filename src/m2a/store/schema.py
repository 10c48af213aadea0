"""Tables of the store: teams, API keys, model grants, a change counter, quotas, the usage ledger,
guardrail profiles, the data services' files, vector stores, their files and file batches, and
the agents: registry, versions, aliases, their history, signing keys and credentials, the
Responses API's stored responses, the tools: MCP servers, tool calls and approvals, and trusted
execution: consumed intents, the hash-chained audit log and its checkpoints, Cedar policies."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    priority: Mapped[str] = mapped_column(String(16))  # critical, standard, batch
    priority_order: Mapped[int] = mapped_column(Integer)  # finer order: lower runs first
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    guardrails: Mapped[str | None] = mapped_column(String(64), nullable=True)  # profile attached


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"), nullable=True, index=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16), index=True)  # shown in listings
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the key, hex
    role: Mapped[str] = mapped_column(String(16))  # member or admin
    priority: Mapped[str | None] = mapped_column(String(16), nullable=True)  # overrides the team's
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    guardrails: Mapped[str | None] = mapped_column(String(64), nullable=True)  # overrides the team's


class Grant(Base):
    __tablename__ = "grants"
    __table_args__ = (UniqueConstraint("team_id", "model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    model: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Revision(Base):
    """One row counting identity changes: gateways poll it to drop cached keys at once."""

    __tablename__ = "identity_revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


class Quota(Base):
    """One limit of a team, or of one key of a team (``key_id`` set): metric per window."""

    __tablename__ = "quotas"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True)
    metric: Mapped[str] = mapped_column(
        String(16)
    )  # tokens, input_tokens, output_tokens, requests, cost, concurrency
    window: Mapped[str] = mapped_column(String(8))  # minute, hour, day, month; "-" for concurrency
    limit: Mapped[int] = mapped_column(BigInteger)  # cost in micro-dollars
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Usage(Base):
    """One request that reached (or was on its way to) an engine: the ledger chargeback reads."""

    __tablename__ = "usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(36), unique=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    team: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)  # as recorded
    team_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)  # the team's identity
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(256), index=True)
    route: Mapped[str] = mapped_column(String(32))
    replica: Mapped[str | None] = mapped_column(String(128), nullable=True)
    priority: Mapped[str] = mapped_column(String(16))
    stream: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))  # ok, error, cancelled, interrupted
    http_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    duration_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    cost: Mapped[float | None] = mapped_column(Float, nullable=True)  # dollars, at the request's prices
    agent: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)  # its SPIFFE id


class GuardrailProfileRow(Base):
    """A guardrail profile made through the admin API (the config file's live in the config)."""

    __tablename__ = "guardrail_profiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    spec: Mapped[str] = mapped_column(Text)  # the profile as JSON (config.GuardrailProfile)
    version: Mapped[int] = mapped_column(Integer)  # 1, then one more per change
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelGuardrails(Base):
    """The profile every request to a model passes (overrides the model's config)."""

    __tablename__ = "model_guardrails"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(256), unique=True)
    profile: Mapped[str] = mapped_column(String(64))


# -- data services: /v1/files and /v1/vector_stores (store/data.py reads and writes them) -----------
# Each table has an integer ``seq`` (the order lists page in) and OpenAI's string ``id``. JSON
# columns are Text holding JSON. Every row carries its team: another team's id is not found.


class DataFile(Base):
    """An uploaded file; its bytes live on disk under ``$M2A_HOME/files/<team_id>/<id>``."""

    __tablename__ = "files"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)  # file-<hex>
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))  # uploaded, processed, error (OpenAI: deprecated)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class VectorStoreRow(Base):
    __tablename__ = "vector_stores"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)  # vs_<hex>
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    meta: Mapped[str] = mapped_column("metadata", Text, default="{}")  # OpenAI's metadata, JSON
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_active_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))  # as stored; in_progress/expired are computed
    expires_after: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON {anchor, days}
    usage_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class VectorStoreFileRow(Base):
    """A file attached to a vector store: the ingestion queue's row (``in_progress`` until done)."""

    __tablename__ = "vector_store_files"
    __table_args__ = (UniqueConstraint("vector_store_id", "file_id"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    vector_store_id: Mapped[str] = mapped_column(String(40), index=True)
    file_id: Mapped[str] = mapped_column(String(40), index=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    batch_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # in_progress, completed, cancelled, failed
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON {code, message}
    attributes: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    chunking_strategy: Mapped[str] = mapped_column(Text)  # JSON, as OpenAI reports it
    usage_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # what the attempt in progress holds of its team's storage_bytes quota (``DataStore.reserve``)
    reserved_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # bumped by every (re)queue: stale jobs lose
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the process working it
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class VectorStoreFileBatchRow(Base):
    __tablename__ = "vector_store_file_batches"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)  # vsfb_<hex>
    vector_store_id: Mapped[str] = mapped_column(String(40), index=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # in_progress or cancelled; completed is computed
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AgentRow(Base):
    """A registered agent: owned by a team, with sponsors (the people answerable for it)."""

    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("team_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))  # [a-z0-9-]: part of its SPIFFE id
    sponsors: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of people (e-mails)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the key that made it
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AgentVersionRow(Base):
    """One immutable version of an agent: its canonical manifest and that manifest's sha256."""

    __tablename__ = "agent_versions"
    __table_args__ = (UniqueConstraint("agent_id", "number"), UniqueConstraint("agent_id", "digest"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, … per agent
    digest: Mapped[str] = mapped_column(String(64))  # sha256 hex of ``manifest``
    manifest: Mapped[str] = mapped_column(Text)  # canonical JSON: never changes once written
    stage: Mapped[str] = mapped_column(String(16))  # draft, tested, approved, production, deprecated, revoked
    redteam: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: the gate run attached
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AgentAliasRow(Base):
    """An alias per stage (``production`` …) pointing at one version; moved atomically."""

    __tablename__ = "agent_aliases"

    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(16), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("agent_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AgentEventRow(Base):
    """The history of an agent: versions made, promoted, rolled back, revoked — by whom, when."""

    __tablename__ = "agent_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    action: Mapped[str] = mapped_column(String(16))  # create, version, promote, rollback, revoke
    from_stage: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_stage: Mapped[str | None] = mapped_column(String(16), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    by_key: Mapped[int | None] = mapped_column(Integer, nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SigningKeyRow(Base):
    """A key m2a signs agent tokens with (ES256). One signs at a time; retired ones stay in the
    JWKS until every token they signed has expired, so rotation needs no downtime."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    private_pem: Mapped[str] = mapped_column(Text)
    public_jwk: Mapped[str] = mapped_column(Text)  # JSON
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AgentCredentialRow(Base):
    """How an agent authenticates at the token endpoint: a client secret (its sha256) or a public
    key (a JWK) for signed client assertions (``private_key_jwt``, RFC 7523)."""

    __tablename__ = "agent_credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    client_id: Mapped[str] = mapped_column(String(256), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # secret or jwk
    secret_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    public_jwk: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AssertionJti(Base):
    """A client assertion's ``jti``, kept until it expires: inserting it twice fails, so a replay is
    refused in every gateway process sharing the store."""

    __tablename__ = "assertion_jtis"

    client_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    jti: Mapped[str] = mapped_column(String(256), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class StoredResponse(Base):
    """A Responses API response kept for retrieval and ``previous_response_id`` (store/responses.py).

    ``owner`` is who may see it (one API key, or one agent acting for one subject); ``history``
    holds the chat messages of the whole conversation up to and including this response, so a
    continuation reads one row. Rows past ``expires_at`` are invisible and pruned.
    """

    __tablename__ = "responses"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)  # resp_<hex>
    owner: Mapped[str] = mapped_column(String(160), index=True)
    team_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    agent: Mapped[str | None] = mapped_column(String(256), nullable=True)  # the agent's SPIFFE id
    model: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))  # completed, incomplete, failed, cancelled
    previous_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    conversation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # its chain's first
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    body: Mapped[str] = mapped_column(Text)  # the Response object, JSON
    input_items: Mapped[str] = mapped_column(Text)  # this response's input items (with ids), JSON
    history: Mapped[str] = mapped_column(Text)  # chat messages to continue from, JSON


# -- tools: MCP servers registered in m2a, every tool call, approvals (store/tools.py) -------------


class ToolServerRow(Base):
    """An MCP server (streamable HTTP) agents reach through m2a; ``headers`` are m2a's own
    credentials for it (JSON), sent on every call and never shown back in full."""

    __tablename__ = "tool_servers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    url: Mapped[str] = mapped_column(Text)
    headers: Mapped[str] = mapped_column(Text, default="{}")  # JSON {name: value}
    timeout_s: Mapped[float] = mapped_column(Float)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    tiers: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON {tool: read|write|destructive}
    egress: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON [host:port]


class ToolCallRow(Base):
    """One tool call an agent made through m2a (the MCP endpoint or a Responses ``mcp`` tool)."""

    __tablename__ = "tool_calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    agent: Mapped[str] = mapped_column(String(256), index=True)  # the agent's SPIFFE id
    agent_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the agent version's number
    team_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    server: Mapped[str] = mapped_column(String(64), index=True)
    tool: Mapped[str] = mapped_column(String(256))
    args_sha256: Mapped[str] = mapped_column(String(64))  # of the RFC 8785 canonical arguments
    status: Mapped[str] = mapped_column(String(16))  # ok, error, denied, timeout
    error: Mapped[str | None] = mapped_column(Text, nullable=True)  # why, in short
    duration_ms: Mapped[float] = mapped_column(Float)
    via: Mapped[str] = mapped_column(String(16))  # mcp (the /mcp endpoint) or responses
    call_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    trace_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    response_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ToolApprovalRow(Base):
    """A tool call waiting for (or given) a person's approval: the Responses ``mcp`` tool's
    ``mcp_approval_request``. It keeps the arguments, so the call can run once it is approved."""

    __tablename__ = "tool_approvals"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)  # mcpr_<hex>
    agent: Mapped[str] = mapped_column(String(256), index=True)  # the agent's SPIFFE id
    agent_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    team_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    server: Mapped[str] = mapped_column(String(64))
    tool: Mapped[str] = mapped_column(String(256))
    args_sha256: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[str] = mapped_column(Text)  # JSON, as the model gave them
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending, approved, denied, expired
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    response_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the response that asked
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    decided_by: Mapped[str | None] = mapped_column(String(300), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # ran once
    tier: Mapped[str | None] = mapped_column(String(16), nullable=True)  # read, write, destructive


# -- trusted execution: intents, the audit log, policies (trust/) ---------------------------------


class IntentUseRow(Base):
    """A signed intent an executor consumed: inserting its ``jti`` twice fails, so a replayed intent
    is refused in every process sharing the store. Kept until it expires (then no copy is valid)."""

    __tablename__ = "intent_uses"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    audience: Mapped[str] = mapped_column(String(128))  # the executor that consumed it
    consumed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class AuditRecordRow(Base):
    """One record of the hash-chained audit log: ``hash`` = sha256 of ``prev_hash`` and the record's
    canonical form (trust/audit.py); ``seq`` is gapless, assigned under the log's write lock."""

    __tablename__ = "audit_records"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)  # intent, decision, approval, receipt, ...
    agent: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)  # SPIFFE id
    team_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    trace_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    body: Mapped[str] = mapped_column(Text)  # RFC 8785 canonical JSON of the record
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpointRow(Base):
    """A signed checkpoint: the Merkle root of every audit record up to ``seq`` (a compact JWS)."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    root: Mapped[str] = mapped_column(String(64))
    head_hash: Mapped[str] = mapped_column(String(64))  # the chain's hash at seq
    kid: Mapped[str] = mapped_column(String(128))
    signature: Mapped[str] = mapped_column(Text)  # compact JWS over {seq, root, head_hash, at}


class PolicyRow(Base):
    """A Cedar policy set for a scope (``global``, ``team:<name>``, ``agent:<team>/<name>``),
    written through the admin API; files in the policy folder sit beside these."""

    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("scope", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(300), index=True)
    name: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)  # Cedar
    version: Mapped[int] = mapped_column(Integer)  # 1, 2, ... on each change
    mode: Mapped[str | None] = mapped_column(String(16), nullable=True)  # log_only, enforce; None: global
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str] = mapped_column(String(300))


# -- the web console: sessions, and daily usage kept as the ledger grows (console/) ---------------


class ConsoleSessionRow(Base):
    """A signed-in browser: the cookie carries the id, the table its sha256. ``bearer_enc`` is the
    key or token it signed in with, encrypted (AES-GCM, console/sessions.py), so the console can call
    m2a's APIs as that principal; it is never rendered."""

    __tablename__ = "console_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    subject: Mapped[str] = mapped_column(String(300))  # who, for display: a key prefix, an agent
    team_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    bearer_enc: Mapped[str] = mapped_column(Text)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class UsageDailyRow(Base):
    """Usage summed per UTC day, team, key and model, kept up to date as ledger rows are written, so
    usage by day stays fast on a ledger of millions of rows. 0 stands for "none" in ``team_id`` and
    ``key_id`` (so the primary key holds no NULLs)."""

    __tablename__ = "usage_daily"

    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD (UTC)
    team_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    team: Mapped[str | None] = mapped_column(String(64), nullable=True)  # as last recorded
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)  # summed: mean = / requests
