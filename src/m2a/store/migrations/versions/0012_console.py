"""the web console: its sessions, and usage summed per day, team, key and model (kept as the ledger
grows; filled from the ledger's existing rows here)

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.Integer, nullable=True, index=True),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("team_id", sa.Integer, nullable=True),
        sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("bearer_enc", sa.Text, nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("last_seen_at", tz, nullable=False),
        sa.Column("expires_at", tz, nullable=False, index=True),
        sa.Column("revoked_at", tz, nullable=True),
    )
    big = sa.BigInteger()
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("team_id", sa.Integer, primary_key=True),
        sa.Column("key_id", sa.Integer, primary_key=True),
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("team", sa.String(64), nullable=True),
        sa.Column("requests", big, nullable=False, server_default="0"),
        sa.Column("errors", big, nullable=False, server_default="0"),
        sa.Column("input_tokens", big, nullable=False, server_default="0"),
        sa.Column("output_tokens", big, nullable=False, server_default="0"),
        sa.Column("cached_tokens", big, nullable=False, server_default="0"),
        sa.Column("cost", sa.Float, nullable=False, server_default="0"),
        sa.Column("duration_ms", sa.Float, nullable=False, server_default="0"),
    )
    pg = op.get_bind().dialect.name == "postgresql"
    day = "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')" if pg else "substr(started_at, 1, 10)"
    keys = f"{day}, COALESCE(team_id, 0), COALESCE(key_id, 0), model"
    op.execute(
        "INSERT INTO usage_daily (day, team_id, key_id, model, team, requests, errors, input_tokens, "
        "output_tokens, cached_tokens, cost, duration_ms) "
        f"SELECT {keys}, MAX(team), COUNT(*), "
        "SUM(CASE WHEN status = 'ok' THEN 0 ELSE 1 END), SUM(input_tokens), SUM(output_tokens), "
        "SUM(cached_tokens), SUM(COALESCE(cost, 0)), SUM(COALESCE(duration_ms, 0)) "
        f"FROM usage GROUP BY {keys}"
    )


def downgrade() -> None:
    op.drop_table("usage_daily")
    op.drop_table("console_sessions")
