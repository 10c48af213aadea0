"""quotas per team and key; the usage ledger

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "quotas",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id"), nullable=False),
        sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=True),
        sa.Column("metric", sa.String(16), nullable=False),
        sa.Column("window", sa.String(8), nullable=False),
        sa.Column("limit", sa.BigInteger, nullable=False),
        sa.Column("created_at", tz, nullable=False),
    )
    op.create_index("ix_quotas_team_id", "quotas", ["team_id"])
    op.create_table(
        "usage",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("request_id", sa.String(36), nullable=False, unique=True),
        sa.Column("started_at", tz, nullable=False),
        sa.Column("finished_at", tz, nullable=True),
        sa.Column("team", sa.String(64), nullable=True),
        sa.Column("key_id", sa.Integer, nullable=True),
        sa.Column("key_prefix", sa.String(16), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("route", sa.String(32), nullable=False),
        sa.Column("replica", sa.String(128), nullable=True),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("http_status", sa.Integer, nullable=True),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False),
        sa.Column("ttft_ms", sa.Float, nullable=True),
        sa.Column("duration_ms", sa.Float, nullable=True),
    )
    op.create_index("ix_usage_started_at", "usage", ["started_at"])
    op.create_index("ix_usage_team", "usage", ["team"])
    op.create_index("ix_usage_model", "usage", ["model"])


def downgrade() -> None:
    op.drop_table("usage")
    op.drop_table("quotas")
