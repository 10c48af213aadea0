"""Alembic environment: migrations run on the connection m2a hands over (see m2a.store.db.migrate)."""

from alembic import context

from m2a.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
