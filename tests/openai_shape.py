"""The assertion every gateway test shares: an error answer is in OpenAI's error shape."""

from __future__ import annotations

from typing import Any

import httpx

ERROR_KEYS = {"message", "type", "param", "code"}


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """``resp`` is an error in OpenAI's shape with ``status``; returns its ``error`` object."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == ERROR_KEYS, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if code is not None:
        assert err["code"] == code, err
    return err
