"""Reading a request body: a size limit (413) and JSON parsing with a clear 400.

Nesting is bounded (``MAX_DEPTH``): no OpenAI request needs more than a few levels, and a body
nested thousands deep would otherwise exhaust the parser's recursion (a 500) or every later step
that walks it.
"""

from __future__ import annotations

import json

from starlette.requests import Request

from m2a.gateway.errors import GatewayError

MAX_DEPTH = 64  # arrays and objects inside each other; tool schemas stay far below this


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


async def buffer_body(request: Request, limit: int) -> None:
    """Read a body within ``limit`` (413 past it, chunked bodies included) and keep it on the
    request, so a middleware can bound it before FastAPI reads it: ``request.body()`` and the app
    behind a ``BaseHTTPMiddleware`` get the bytes read here."""
    headers = request.headers
    if request.method in ("GET", "HEAD", "OPTIONS", "DELETE") and not (
        "content-length" in headers or "transfer-encoding" in headers
    ):
        return
    request._body = await read_body(request, limit)  # Starlette's own cache of the body


def _too_deep() -> GatewayError:
    return GatewayError(
        400, f"The JSON body is nested more than {MAX_DEPTH} levels deep.", code="invalid_json"
    )


def depth_exceeds(value: object, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest deeper than ``limit`` in a parsed value (no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_json(body: bytes) -> object:
    if not body.strip():
        raise GatewayError(400, "The request body is empty; send a JSON object.", code="invalid_json")
    try:
        value = json.loads(body)
    except RecursionError:  # deeper than the interpreter's stack: far past MAX_DEPTH
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError(
            400, f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
        ) from exc
    # Each level needs an opening bracket: a body with few of them cannot be deep (a C-speed count).
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and depth_exceeds(value):
        raise _too_deep()
    return value
