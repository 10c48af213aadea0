"""Who is calling: the bearer key check. One admin key until teams and keys exist."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from m2a.gateway.errors import GatewayError


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return request.headers.get("api-key") or None  # Azure-style clients


class KeyAuth:
    """Accepts exactly one key, compared in constant time."""

    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("the gateway needs a key: it never serves an open endpoint")
        self._key = key.encode()

    def check(self, request: Request) -> None:
        token = bearer_token(request)
        if token is None:
            raise GatewayError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        if not hmac.compare_digest(token.encode(), self._key):
            raise GatewayError(401, "Incorrect API key provided.", code="invalid_api_key")
