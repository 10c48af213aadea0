"""identity: teams, API keys, model grants, revision counter

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "teams",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("priority_order", sa.Integer, nullable=False),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("deleted_at", tz, nullable=True),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id"), nullable=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("priority", sa.String(16), nullable=True),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("expires_at", tz, nullable=True),
        sa.Column("revoked_at", tz, nullable=True),
    )
    op.create_index("ix_api_keys_team_id", "api_keys", ["team_id"])
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"])
    op.create_table(
        "grants",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id"), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("created_at", tz, nullable=False),
        sa.UniqueConstraint("team_id", "model"),
    )
    op.create_index("ix_grants_team_id", "grants", ["team_id"])
    op.create_table(
        "identity_revision",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("value", sa.Integer, nullable=False),
    )
    op.execute("INSERT INTO identity_revision (id, value) VALUES (1, 0)")


def downgrade() -> None:
    for table in ("identity_revision", "grants", "api_keys", "teams"):
        op.drop_table(table)
