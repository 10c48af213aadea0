"""usage follows the team's identity (team_id) and carries its own cost

A team re-created under a deleted team's name must not see the old team's usage, so usage rows
are keyed by the team's id; the name stays as recorded. Each row also stores its cost, priced when
the request ended, so reports never depend on the prices configured later.

Older rows get the team whose lifetime holds their start (a deleted team keeps its original name
with a ``~deleted~<id>`` suffix); their cost stays NULL (unknown: priced at today's prices).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("team_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("cost", sa.Float, nullable=True))
        batch.create_index("ix_usage_team_id", ["team_id"])
    op.execute(
        """
        UPDATE usage SET team_id = (
            SELECT t.id FROM teams t
            WHERE (t.name = usage.team OR t.name LIKE usage.team || '~deleted~%')
              AND t.created_at <= usage.started_at
            ORDER BY t.created_at DESC LIMIT 1
        )
        WHERE usage.team IS NOT NULL
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_index("ix_usage_team_id")
        batch.drop_column("cost")
        batch.drop_column("team_id")
