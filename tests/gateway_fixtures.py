"""Fixtures shared by the gateway's access and admin-API tests: a fake engine and a SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from m2a.store.db import open_store
from m2a.store.identity import IdentityStore
from tests.fake_engine import FakeEngine


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine() -> AsyncIterator[FakeEngine]:
    fake = FakeEngine()
    await fake.start()
    yield fake
    await fake.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def store(tmp_path: Path) -> AsyncIterator[IdentityStore]:
    """A fresh, migrated SQLite identity store."""
    db = await open_store(None, tmp_path / "home")
    yield IdentityStore(db)
    await db.dispose()
