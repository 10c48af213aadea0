"""OpenAI's objects for the data services, made from the store's rows, and the checks of their
request fields (``metadata``, ``expires_after``, paging parameters); ``live`` refuses an expired store.

Objects as the ``openai`` package's types: ``FileObject``, ``VectorStore``, ``VectorStoreFile``,
``VectorStoreFileBatch``, and list pages ``{"object": "list", "data", "first_id", "last_id",
"has_more"}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from starlette.requests import Request

from m2a.gateway.errors import GatewayError
from m2a.store.data import Page, Paging, aware, is_expired
from m2a.store.data import expires_at as expires_at_of
from m2a.store.schema import DataFile, VectorStoreFileBatchRow, VectorStoreFileRow, VectorStoreRow

PURPOSES = (
    "assistants",
    "assistants_output",
    "batch",
    "batch_output",
    "fine-tune",
    "fine-tune-results",
    "vision",
    "user_data",
)
DAY_S = 86400


def bad(message: str, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def ts(t: datetime) -> int:
    return int(aware(t).timestamp())


def file_obj(row: DataFile) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": ts(row.created_at),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": row.status,
        "expires_at": None,
        "status_details": None,
    }


def store_obj(row: VectorStoreRow, counts: Mapping[str, int]) -> dict[str, Any]:
    expires_after = json.loads(row.expires_after) if row.expires_after else None
    end = expires_at_of(row)
    expires_at = ts(end) if end is not None else None
    status = "in_progress" if counts.get("in_progress") else "completed"
    if is_expired(row):
        status = "expired"
    return {
        "id": row.id,
        "object": "vector_store",
        "created_at": ts(row.created_at),
        "name": row.name,
        "usage_bytes": row.usage_bytes,
        "file_counts": dict(counts),
        "status": status,
        "expires_after": expires_after,
        "expires_at": expires_at,
        "last_active_at": ts(row.last_active_at),
        "metadata": json.loads(row.meta or "{}"),
    }


def live(row: VectorStoreRow) -> VectorStoreRow:
    """The store, unless it expired (400: searching or adding files to it is refused)."""
    if is_expired(row):
        end = expires_at_of(row)
        when = f" on {end:%Y-%m-%d %H:%M} UTC" if end is not None else ""
        raise GatewayError(
            400,
            f"Vector store '{row.id}' expired{when} (its expires_after policy): it cannot be searched "
            "or given files any more, and its chunks are dropped. Create a new vector store with its files.",
            param="vector_store_id",
            code="vector_store_expired",
        )
    return row


def vs_file_obj(row: VectorStoreFileRow) -> dict[str, Any]:
    return {
        "id": row.file_id,
        "object": "vector_store.file",
        "usage_bytes": row.usage_bytes,
        "created_at": ts(row.created_at),
        "vector_store_id": row.vector_store_id,
        "status": row.status,
        "last_error": json.loads(row.last_error) if row.last_error else None,
        "chunking_strategy": json.loads(row.chunking_strategy),
        "attributes": json.loads(row.attributes or "{}"),
    }


def batch_obj(row: VectorStoreFileBatchRow, counts: Mapping[str, int]) -> dict[str, Any]:
    if row.status == "cancelled":
        status = "cancelled"
    elif counts.get("in_progress"):
        status = "in_progress"
    elif counts.get("total") and counts.get("failed") == counts.get("total"):
        status = "failed"
    else:
        status = "completed"
    return {
        "id": row.id,
        "object": "vector_store.files_batch",
        "created_at": ts(row.created_at),
        "vector_store_id": row.vector_store_id,
        "status": status,
        "file_counts": dict(counts),
    }


def page_obj(page: Page, render: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    data = [render(r) for r in page.rows]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.has_more,
    }


def paging(request: Request, default_limit: int = 20, max_limit: int = 100) -> Paging:
    q = request.query_params
    raw = q.get("limit")
    limit = default_limit
    if raw is not None:
        if not raw.isdigit() or not 1 <= int(raw) <= max_limit:
            raise bad(
                f"Invalid 'limit': expected an integer between 1 and {max_limit}, got {raw!r}.", "limit"
            )
        limit = int(raw)
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad(f"Invalid 'order': expected 'asc' or 'desc', got {order!r}.", "order")
    return Paging(limit, order, q.get("after") or None, q.get("before") or None)


def metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    """OpenAI's metadata: at most 16 string keys of up to 64 characters, string values up to 512."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(f"Invalid type for '{param}': expected an object.", param)
    if len(value) > 16:
        raise bad(f"Invalid '{param}': at most 16 keys are allowed.", param)
    for k, v in value.items():
        if not isinstance(k, str) or not 1 <= len(k) <= 64:
            raise bad(f"Invalid '{param}': keys are strings of 1 to 64 characters.", param)
        if not isinstance(v, str) or len(v) > 512:
            raise bad(f"Invalid '{param}.{k}': values are strings of at most 512 characters.", f"{param}.{k}")
    return dict(value)


def expires_after(value: Any, param: str = "expires_after") -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"anchor", "days"}:
        raise bad(f"Invalid '{param}': expected {{'anchor': 'last_active_at', 'days': 1..365}}.", param)
    if value.get("anchor") != "last_active_at":
        raise bad(f"Invalid '{param}.anchor': only 'last_active_at' is supported.", f"{param}.anchor")
    days = value.get("days")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 365:
        raise bad(f"Invalid '{param}.days': expected an integer between 1 and 365.", f"{param}.days")
    return {"anchor": "last_active_at", "days": days}


def string(body: Mapping[str, Any], key: str, default: str | None = None, max_len: int = 256) -> str | None:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > max_len:
        raise bad(f"Invalid '{key}': expected a string of at most {max_len} characters.", key)
    return value
