"""``POST /otlp/v1/traces``: an OTLP/HTTP trace receiver that writes into the embedded trace store.

Owns the HTTP side only (who may send, size limits, compression, status codes as OTLP/HTTP wants
them); decoding is :mod:`m2a.telemetry.otlp`, storing :mod:`m2a.telemetry.store`. External engines
(vLLM with ``--otlp-traces-endpoint``) and agents send here, so their spans join the gateway's.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import zlib
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from m2a.telemetry.otlp import (
    PROTOBUF,
    OtlpDecodeError,
    UnsupportedContentType,
    decode_request,
    encode_response,
    encode_status,
)
from m2a.telemetry.store import TraceStore

PATH = "/otlp/v1/traces"
MAX_BODY = 16 * 1024 * 1024
# google.rpc.Code values
_INVALID_ARGUMENT, _RESOURCE_EXHAUSTED, _UNAVAILABLE, _UNAUTHENTICATED = 3, 8, 14, 16
log = logging.getLogger(__name__)


class _TooLarge(Exception):
    pass


def otlp_traces_route(
    store: TraceStore,
    allow: Callable[[Request], Awaitable[bool]],
    *,
    path: str = PATH,
    max_body: int = MAX_BODY,
    relay: Callable[[bytes, str, str], None] | None = None,
) -> Route:
    """A route answering OTLP/HTTP trace exports; ``allow`` decides who may send (False → 401).

    ``max_body`` bounds the body both as sent and once decompressed (413 beyond it). ``relay``,
    when given, gets each stored export as sent (body, content type, content encoding), to pass
    it on to an external collector.
    """

    async def receive(request: Request) -> Response:
        content_type = request.headers.get("content-type", PROTOBUF)
        if not await allow(request):
            return _error(content_type, 401, _UNAUTHENTICATED, "no or bad credentials")
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate", ""):
            return _error(content_type, 415, _INVALID_ARGUMENT, f"unsupported content encoding {encoding!r}")
        try:
            body = await _read(request, max_body)
            _stored, rejected, problem = await asyncio.to_thread(
                _ingest, store, body, encoding, content_type, max_body
            )
        except _TooLarge:
            return _error(content_type, 413, _RESOURCE_EXHAUSTED, f"body over {max_body} bytes")
        except UnsupportedContentType as exc:
            return _error(PROTOBUF, 415, _INVALID_ARGUMENT, str(exc))
        except (OtlpDecodeError, zlib.error, EOFError) as exc:
            return _error(content_type, 400, _INVALID_ARGUMENT, str(exc)[:500])
        except sqlite3.Error as exc:
            log.warning("trace store refused %s: %s", path, exc)
            response = _error(content_type, 503, _UNAVAILABLE, "trace store busy")
            response.headers["Retry-After"] = "1"
            return response
        if relay is not None:
            relay(body, content_type, encoding)
        answer, kind = encode_response(content_type, rejected, problem)
        return Response(answer, status_code=200, media_type=kind)

    return Route(path, receive, methods=["POST"], name="otlp_traces")


async def _read(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _ingest(
    store: TraceStore, body: bytes, encoding: str, content_type: str, limit: int
) -> tuple[int, int, str]:
    """Decompress, decode and store (in a worker thread): ``(stored, rejected, problem)``."""
    if encoding in ("gzip", "deflate"):
        body = _inflate(body, limit)
    decoded = decode_request(body, content_type)
    store.add(decoded.rows)
    store.maybe_prune()
    return len(decoded.rows), decoded.rejected, decoded.problem


def _inflate(body: bytes, limit: int) -> bytes:
    """gzip or zlib data (header detected), refusing to grow past ``limit``."""
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)
    out = inflater.decompress(body, limit + 1)
    if len(out) > limit:
        raise _TooLarge
    if not inflater.eof:
        raise EOFError("compressed body ends early")
    return out


def _error(content_type: str, status: int, code: int, message: str) -> Response:
    body, kind = encode_status(content_type, code, message)
    return Response(body, status_code=status, media_type=kind)
