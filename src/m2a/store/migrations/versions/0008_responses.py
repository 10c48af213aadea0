"""responses: the Responses API's stored responses (object, input items, chat history, owner, expiry)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "responses",
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("owner", sa.String(160), nullable=False, index=True),
        sa.Column("team_id", sa.Integer, nullable=True, index=True),
        sa.Column("key_id", sa.Integer, nullable=True),
        sa.Column("agent", sa.String(256), nullable=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("previous_id", sa.String(64), nullable=True),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("expires_at", tz, nullable=False, index=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("input_items", sa.Text, nullable=False),
        sa.Column("history", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("responses")
