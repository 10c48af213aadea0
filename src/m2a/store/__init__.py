"""Store: the platform's durable state (teams, API keys, model grants; later quotas and the ledger).

SQLAlchemy 2 (async) with Alembic migrations: SQLite in ``$M2A_HOME`` by default (WAL mode),
PostgreSQL when ``M2A_DATABASE_URL`` points to one. Imports only ``m2a.config``.
"""
