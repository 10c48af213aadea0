"""tools: MCP servers registered in m2a, every tool call agents made, and tool-call approvals

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "tool_servers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("headers", sa.Text, nullable=False),
        sa.Column("timeout_s", sa.Float, nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("updated_at", tz, nullable=False),
    )
    op.create_table(
        "tool_calls",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", tz, nullable=False, index=True),
        sa.Column("agent", sa.String(256), nullable=False, index=True),
        sa.Column("agent_id", sa.Integer, nullable=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("team_id", sa.Integer, nullable=True, index=True),
        sa.Column("server", sa.String(64), nullable=False, index=True),
        sa.Column("tool", sa.String(256), nullable=False),
        sa.Column("args_sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("call_id", sa.String(128), nullable=True),
        sa.Column("trace_id", sa.String(32), nullable=True),
        sa.Column("response_id", sa.String(64), nullable=True),
    )
    op.create_table(
        "tool_approvals",
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("agent", sa.String(256), nullable=False, index=True),
        sa.Column("agent_id", sa.Integer, nullable=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("team_id", sa.Integer, nullable=True, index=True),
        sa.Column("server", sa.String(64), nullable=False),
        sa.Column("tool", sa.String(256), nullable=False),
        sa.Column("args_sha256", sa.String(64), nullable=False),
        sa.Column("arguments", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("response_id", sa.String(64), nullable=True),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("expires_at", tz, nullable=False, index=True),
        sa.Column("decided_by", sa.String(300), nullable=True),
        sa.Column("decided_at", tz, nullable=True),
        sa.Column("used_at", tz, nullable=True),
    )


def downgrade() -> None:
    for table in ("tool_approvals", "tool_calls", "tool_servers"):
        op.drop_table(table)
