"""agents: the registry (agents, immutable versions, an alias per stage, their history)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "agents",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("team_id", sa.Integer, sa.ForeignKey("teams.id"), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("sponsors", sa.Text, nullable=False, server_default="[]"),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("created_by", sa.Integer, nullable=True),
        sa.Column("revoked_at", tz, nullable=True),
        sa.UniqueConstraint("team_id", "name"),
    )
    op.create_table(
        "agent_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("agent_id", sa.Integer, sa.ForeignKey("agents.id"), nullable=False, index=True),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("redteam", sa.Text, nullable=True),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("created_by", sa.Integer, nullable=True),
        sa.Column("revoked_at", tz, nullable=True),
        sa.UniqueConstraint("agent_id", "number"),
        sa.UniqueConstraint("agent_id", "digest"),
    )
    op.create_table(
        "agent_aliases",
        sa.Column("agent_id", sa.Integer, sa.ForeignKey("agents.id"), primary_key=True),
        sa.Column("alias", sa.String(16), primary_key=True),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("agent_versions.id"), nullable=False),
        sa.Column("updated_at", tz, nullable=False),
    )
    op.create_table(
        "agent_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("agent_id", sa.Integer, sa.ForeignKey("agents.id"), nullable=False, index=True),
        sa.Column("version_id", sa.Integer, nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("from_stage", sa.String(16), nullable=True),
        sa.Column("to_stage", sa.String(16), nullable=True),
        sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
        sa.Column("by_key", sa.Integer, nullable=True),
        sa.Column("at", tz, nullable=False),
    )


def downgrade() -> None:
    for table in ("agent_events", "agent_aliases", "agent_versions", "agents"):
        op.drop_table(table)
