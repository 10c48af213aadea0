"""Shared fixtures of the trusted-execution tests: m2a's real signing keys on a real store, and a
tiny in-memory key source for pure unit tests (and for forging tokens with a key m2a never had).

- ``engine``: a migrated store on SQLite and on a throwaway PostgreSQL database (two runs per test);
  ``sqlite_engine``: the SQLite one alone, for tests that are not about the backend.
- ``keys`` / ``sqlite_keys``: ``m2a.agents.keys.SigningKeys`` on those stores (a ``KeySource``).
- ``StaticKeys``: a ``KeySource`` over one generated P-256 key (``StaticKeys(kid="k1")``); its
  ``private`` key signs, ``jwks()`` publishes its public key.
- ``jwks_server``: a real HTTP server on loopback serving ``.doc`` (a JWKS, change it at will) at
  ``.url``, counting ``.hits``; ``.status`` other than 200 makes it fail.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.ext.asyncio import AsyncEngine

from m2a.agents.keys import Signer, SigningKeys, public_jwk
from m2a.store.db import open_store
from tests.db_fixtures import Database, database  # noqa: F401


class StaticKeys:
    """A ``KeySource`` of one P-256 key, made here (``kid`` defaults to its RFC 7638 thumbprint)."""

    def __init__(self, kid: str | None = None, private: ec.EllipticCurvePrivateKey | None = None) -> None:
        self.private = private or ec.generate_private_key(ec.SECP256R1())
        jwk = public_jwk(self.private.public_key())
        self.kid = kid or jwk["kid"]
        self.jwk: dict[str, Any] = {**jwk, "kid": self.kid}

    async def signer(self) -> Signer:
        return Signer(self.kid, self.private)

    async def public(self, kid: str, reread: bool = False) -> dict[str, Any] | None:
        return self.jwk if kid == self.kid else None

    async def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}


@pytest.fixture
async def engine(database: Database) -> AsyncEngine:  # noqa: F811
    """A migrated store, once on SQLite and once on PostgreSQL (disposed by ``database``)."""
    return await database.open()


@pytest.fixture
async def keys(engine: AsyncEngine) -> SigningKeys:
    return SigningKeys(engine)


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> Any:
    eng = await open_store(None, tmp_path / "sqlite-home")
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
async def sqlite_keys(sqlite_engine: AsyncEngine) -> SigningKeys:
    return SigningKeys(sqlite_engine)


class JwksServer:
    """A JWKS served over real HTTP from a thread (see the module docstring)."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {"keys": []}
        self.hits = 0
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.hits += 1
                body = json.dumps(outer.doc).encode() if outer.status == 200 else b"unavailable"
                self.send_response(outer.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    try:
        yield server
    finally:
        server.stop()
