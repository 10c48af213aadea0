"""trusted execution: consumed intents, the hash-chained audit log and its signed checkpoints,
Cedar policies, and the tiers and egress of tool servers and approvals

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    tz = sa.DateTime(timezone=True)
    big = sa.BigInteger().with_variant(sa.Integer, "sqlite")
    op.create_table(
        "intent_uses",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("audience", sa.String(128), nullable=False),
        sa.Column("consumed_at", tz, nullable=False),
        sa.Column("expires_at", tz, nullable=False, index=True),
    )
    op.create_table(
        "audit_records",
        sa.Column("seq", big, primary_key=True, autoincrement=False),
        sa.Column("at", tz, nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False, index=True),
        sa.Column("agent", sa.String(256), nullable=True, index=True),
        sa.Column("team_id", sa.Integer, nullable=True),
        sa.Column("trace_id", sa.String(32), nullable=True, index=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", big, primary_key=True, autoincrement=False),
        sa.Column("at", tz, nullable=False),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("kid", sa.String(128), nullable=False),
        sa.Column("signature", sa.Text, nullable=False),
    )
    op.create_table(
        "policies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("scope", sa.String(300), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("mode", sa.String(16), nullable=True),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("updated_at", tz, nullable=False),
        sa.Column("updated_by", sa.String(300), nullable=False),
        sa.UniqueConstraint("scope", "name"),
    )
    with op.batch_alter_table("tool_servers") as batch:
        batch.add_column(sa.Column("tiers", sa.Text, nullable=True))
        batch.add_column(sa.Column("egress", sa.Text, nullable=True))
    with op.batch_alter_table("tool_approvals") as batch:
        batch.add_column(sa.Column("tier", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tool_approvals") as batch:
        batch.drop_column("tier")
    with op.batch_alter_table("tool_servers") as batch:
        batch.drop_column("egress")
        batch.drop_column("tiers")
    for table in ("policies", "audit_checkpoints", "audit_records", "intent_uses"):
        op.drop_table(table)
