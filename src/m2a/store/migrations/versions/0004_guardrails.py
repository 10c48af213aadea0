"""guardrail profiles made through the admin API, and the profile attached to a team, key or model

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("teams") as batch:
        batch.add_column(sa.Column("guardrails", sa.String(64), nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("guardrails", sa.String(64), nullable=True))
    op.create_table(
        "guardrail_profiles",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "model_guardrails",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model", sa.String(256), nullable=False, unique=True),
        sa.Column("profile", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("model_guardrails")
    op.drop_table("guardrail_profiles")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("guardrails")
    with op.batch_alter_table("teams") as batch:
        batch.drop_column("guardrails")
