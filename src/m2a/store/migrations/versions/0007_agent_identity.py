"""agent identity: token signing keys, agents' client credentials, seen client-assertion ids, and
the agent a ledger row was for

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("private_pem", sa.Text, nullable=False),
        sa.Column("public_jwk", sa.Text, nullable=False),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("retired_at", tz, nullable=True),
    )
    op.create_table(
        "agent_credentials",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("agent_id", sa.Integer, sa.ForeignKey("agents.id"), nullable=False, index=True),
        sa.Column("client_id", sa.String(256), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=True),
        sa.Column("public_jwk", sa.Text, nullable=True),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("revoked_at", tz, nullable=True),
    )
    op.create_table(
        "assertion_jtis",
        sa.Column("client_id", sa.String(256), primary_key=True),
        sa.Column("jti", sa.String(256), primary_key=True),
        sa.Column("expires_at", tz, nullable=False, index=True),
    )
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("agent", sa.String(256), nullable=True))
        batch.create_index("ix_usage_agent", ["agent"])


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_index("ix_usage_agent")
        batch.drop_column("agent")
    for table in ("assertion_jtis", "agent_credentials", "signing_keys"):
        op.drop_table(table)
