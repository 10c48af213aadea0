"""Reading a request body: a size limit (413) and JSON parsing with a clear 400."""

from __future__ import annotations

import json

from starlette.requests import Request

from m2a.gateway.errors import GatewayError


async def read_body(request: Request, limit: int) -> bytes:
    too_big = GatewayError(
        413, f"Request body is larger than the limit of {limit} bytes.", code="body_too_large"
    )
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> object:
    if not body.strip():
        raise GatewayError(400, "The request body is empty; send a JSON object.", code="invalid_json")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError(
            400, f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
        ) from exc
