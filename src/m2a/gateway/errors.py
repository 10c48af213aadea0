"""Errors in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from starlette.responses import JSONResponse

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "api_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class GatewayError(Exception):
    """An error the gateway answers with, in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}
        self.extra = extra  # more members of the error object (a guardrail's category), after OpenAI's

    def body(self) -> dict[str, object]:
        err: dict[str, object] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if self.extra:
            err.update(self.extra)
        return {"error": err}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_response(status: int, message: str, **kw: object) -> JSONResponse:
    return GatewayError(status, message, **kw).response()  # type: ignore[arg-type]


def normalize_upstream_error(status: int, payload: object) -> dict[str, object]:
    """Make an engine's error body OpenAI-shaped (vLLM and llama.cpp differ between versions)."""
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict) and "message" in err:
            return {"error": {k: err.get(k) for k in ("message", "type", "param", "code")}}
        if "message" in payload:
            return GatewayError(status, str(payload["message"]), param=payload.get("param")).body()  # type: ignore[arg-type]
        if "detail" in payload:
            return GatewayError(status, str(payload["detail"])).body()
    text = str(payload).strip()[:500]
    return GatewayError(status, f"engine error: {text}" if text else f"the engine answered {status}").body()
