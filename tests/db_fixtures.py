"""Database fixtures for store tests: every test runs on SQLite and on a throwaway PostgreSQL database.

Import the fixtures into a test module (``from tests.db_fixtures import database, store  # noqa: F401``).

The PostgreSQL variant connects to the ``test`` database of the server at ``M2A_TEST_POSTGRES_URL``
(default ``postgresql://postgres@127.0.0.1:5432/test``), creates ``m2a_test_<random hex>`` there, and
drops it (``WITH (FORCE)``) when the test ends; no table is ever created in ``test`` itself. If the
server cannot be reached the PostgreSQL variant is skipped (a user's machine need not run one), except
under CI (``CI`` set, or ``M2A_REQUIRE_POSTGRES=1``), where PostgreSQL runs and its absence fails.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.store.db import open_store
from m2a.store.identity import IdentityStore

BACKENDS = ["sqlite", "postgres"]
POSTGRES_ADMIN_URL = os.environ.get("M2A_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
CONNECT_TIMEOUT_S = 15


@dataclass
class Database:
    """One empty database for one test: open it (migrated) as often as the test likes."""

    backend: str  # "sqlite" or "postgres"
    url: str | None  # as configured: None means SQLite in home
    home: Path
    engines: list[AsyncEngine] = field(default_factory=list)

    async def open(self) -> AsyncEngine:
        """A migrated engine on this database, disposed when the test ends."""
        engine = await open_store(self.url, self.home)
        self.engines.append(engine)
        return engine

    async def dispose(self) -> None:
        for engine in self.engines:
            await engine.dispose()
        self.engines.clear()


async def _admin_connection() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        why = f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {type(exc).__name__}: {exc}"
        if os.environ.get("CI") or os.environ.get("M2A_REQUIRE_POSTGRES") == "1":
            pytest.fail(why + " (required under CI)", pytrace=False)
        pytest.skip(why)


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(params=BACKENDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    home = tmp_path / "home"
    if request.param == "sqlite":
        db = Database("sqlite", None, home)
        try:
            yield db
        finally:
            await db.dispose()
        return

    name = f"m2a_test_{secrets.token_hex(8)}"
    admin = await _admin_connection()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    db = Database("postgres", _with_database(POSTGRES_ADMIN_URL, name), home)
    try:
        yield db
    finally:
        await db.dispose()
        admin = await _admin_connection()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def store(database: Database) -> IdentityStore:
    """An identity store on a freshly migrated database (its engine is disposed by ``database``)."""
    return IdentityStore(await database.open())
