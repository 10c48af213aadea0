"""What a higher layer adds to the gateway without the gateway importing it: routes, a token
verifier, work that starts and stops with the app.

The composition root (``m2a up``, or a test) passes ``create_app(extensions=[factory, ...])``; each
factory gets the ``Host`` (what the gateway lends: its access, pipeline, pool, stores …) and returns
an ``Extension``. Its routes are served before the admin API's mount, so an extension may own paths
under ``/admin/v1/`` too; ``start`` runs after the gateway's own start-up, ``close`` before its
shutdown. An extension that verifies tokens sets ``host.access.tokens``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from opentelemetry.trace import Tracer
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from m2a.config import GatewayConfig
    from m2a.gateway.access import Access
    from m2a.gateway.guards import Guards
    from m2a.gateway.metrics import GatewayMetrics
    from m2a.gateway.pipeline import Pipeline
    from m2a.gateway.quota import Quotas
    from m2a.router.pool import Pool
    from m2a.store.identity import IdentityStore
    from m2a.store.ledger import Ledger


@dataclass
class Host:
    """What the gateway lends its extensions (all made once, for the app's life)."""

    cfg: GatewayConfig
    pool: Pool
    access: Access
    pipeline: Pipeline
    guards: Guards
    metrics: GatewayMetrics
    quotas: Quotas
    identity: IdentityStore | None
    ledger: Ledger | None
    tracer: Tracer | None
    db: AsyncEngine | None  # the store's engine (identity's), where there is one
    home: Path | None


class Extension(Protocol):
    def routes(self) -> list[BaseRoute]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


ExtensionFactory = Callable[[Host], Extension]
