"""vector_store_files.reserved_bytes: the storage an ingestion job holds against its team's
storage_bytes quota while it works, taken under a lock so that files ingested at once cannot
together pass the quota

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"


def upgrade() -> None:
    with op.batch_alter_table("vector_store_files") as batch:
        batch.add_column(sa.Column("reserved_bytes", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("vector_store_files") as batch:
        batch.drop_column("reserved_bytes")
