"""Tables of the store: teams, API keys, model grants, a change counter, quotas and the usage ledger."""

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
