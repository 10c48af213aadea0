"""Embeddings for the data services, through the gateway's own ``POST /v1/embeddings``.

Ingestion and search embed text on a team's behalf: the call goes over loopback HTTP to this very
gateway with the process's internal token and ``x-m2a-on-behalf-of: <team id>`` (see
``gateway.access``), so it passes every stage a team's own request passes: grants (the team must be
granted ``data.embedding_model``), quotas, priority, routing, the ledger, guardrails. The gateway's
URL is given by whoever serves it (``m2a up`` knows its socket) or learned from the first data
request (its ASGI ``server`` address); calls wait until it is known.

Failures become ``EmbedError`` with a message fit for a file's ``last_error``; 502/503 (no replica
yet) are retried a few times.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
from starlette.requests import Request

from m2a.data.ingest import EmbedError
from m2a.gateway.access import ON_BEHALF_HEADER, Access

RETRIES = (0.5, 1.0, 2.0)  # waits before retrying a 502/503


class LoopbackEmbedder:
    def __init__(
        self,
        access: Access,
        model: str,
        base_url: str | None = None,
        timeout_s: float = 600.0,
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.access = access
        self.extra = extra  # more request fields, per call (an engine's own options)
        self.model = model
        self.base_url: str | None = None
        self._known = asyncio.Event()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        if base_url:
            self.set_base_url(base_url)

    def set_base_url(self, url: str) -> None:
        self.base_url = url.rstrip("/")
        self._known.set()

    def learn(self, request: Request) -> None:
        """Take the gateway's address from a request it serves, if not known yet."""
        if self.base_url is not None:
            return
        server = request.scope.get("server")
        if server and server[1]:
            host = str(server[0])
            host = f"[{host}]" if ":" in host else host
            self.set_base_url(f"http://{host}:{int(server[1])}")

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __call__(self, team_id: int, texts: Sequence[str]) -> list[list[float]]:
        await self._known.wait()
        if self._session is None:
            raise EmbedError("the gateway is shutting down")
        headers = {"authorization": f"Bearer {self.access.internal_token}", ON_BEHALF_HEADER: str(team_id)}
        body = {"model": self.model, "input": list(texts), "encoding_format": "float"}
        if self.extra is not None:
            body.update(self.extra())
        for wait in (*RETRIES, None):
            try:
                async with self._session.post(
                    f"{self.base_url}/v1/embeddings", json=body, headers=headers
                ) as resp:
                    status = resp.status
                    payload: Any = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                status, payload = 0, {"error": {"message": f"{type(exc).__name__}: {exc}"}}
            if status == 200:
                return _vectors(payload, len(texts))
            if status not in (0, 502, 503) or wait is None:
                raise EmbedError(self._explain(status, payload), status or None)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    def _explain(self, status: int, payload: Any) -> str:
        err = payload.get("error") if isinstance(payload, dict) else None
        message = str(err.get("message")) if isinstance(err, dict) else str(payload)[:300]
        what = f"embedding with '{self.model}' (data.embedding_model)"
        if status in (403, 404):
            return f"{what} was refused ({status}): {message} The team must be granted that model."
        if status == 429:
            return f"{what} was refused by the team's quota (429): {message}"
        if status == 0:
            return f"{what} failed: the gateway could not be reached ({message})"
        return f"{what} failed ({status}): {message}"


def _vectors(payload: Any, n: int) -> list[list[float]]:
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list) or len(data) != n:
        raise EmbedError(
            f"the embeddings answer held {len(data) if isinstance(data, list) else 0} vectors for {n} texts"
        )
    try:
        ordered = sorted(data, key=lambda d: int(d.get("index", 0)))
        return [[float(x) for x in d["embedding"]] for d in ordered]
    except (KeyError, TypeError, ValueError) as exc:
        raise EmbedError(f"the embeddings answer is malformed: {exc}") from None
