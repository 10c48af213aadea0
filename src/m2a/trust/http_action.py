"""The HTTP action runner: an agent's action sent to one allow-listed endpoint, on a valid intent.

Each ``http`` action of ``trust.actions`` (config) names exactly one method and URL: nothing else is
reachable through it — the URL is not built from the arguments, redirects are not followed, and the
intent's ``tool`` (not the caller) says which action runs. The arguments go as the JSON body (as
query parameters for ``GET`` and ``DELETE``, scalars only), with the action's own headers, plus
``x-m2a-agent`` (the agent's SPIFFE id), ``x-m2a-intent`` (the signed intent itself, so the endpoint
can verify it offline with ``m2a.trust.verify`` and the JWKS, and refuse a replay) and the
``traceparent`` of the ``execute_tool`` span. The answer: ``ok`` for a 2xx, else ``error``; its body
(JSON when it parses, else text) is capped at the action's ``max_output_bytes``.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from m2a.config import ActionConfig
from m2a.trust.executors import ACTIONS_SERVER, Execution, Executor, register_executor
from m2a.trust.replay import StoreReplay
from m2a.trust.signing import KeySource
from m2a.trust.verify import Intent, IntentError


class HttpActionExecutor(Executor):
    name = "http"

    def __init__(
        self, keys: KeySource, issuer: str, replay: StoreReplay, actions: list[ActionConfig]
    ) -> None:
        super().__init__(keys, issuer, replay)
        self.actions = {a.name: a for a in actions if a.kind == "http"}
        self.client = httpx.AsyncClient(follow_redirects=False, trust_env=False)

    async def execute(self, intent: Intent, arguments: Any, hints: dict[str, Any]) -> Execution:
        action = self.actions.get(intent.tool.name) if intent.tool.server == ACTIONS_SERVER else None
        if action is None or action.url is None:
            raise IntentError("wrong_audience", f"no http action '{intent.tool.name}' here")
        headers = {**action.headers, "x-m2a-agent": intent.sub, "x-m2a-intent": hints.get("token", "")}
        if "traceparent" in hints:
            headers["traceparent"] = hints["traceparent"]
        args = arguments if isinstance(arguments, dict) else {}
        query = action.method in ("GET", "DELETE")
        params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in args.items()} if query else None
        try:
            async with self.client.stream(
                action.method, action.url, headers=headers, params=params,
                json=None if query else args, timeout=action.timeout_s,
            ) as response:  # fmt: skip
                body, truncated = await _read_capped(response, action.max_output_bytes)
        except httpx.TimeoutException:
            return Execution("timeout", error=f"{action.url} did not answer within {action.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return Execution("error", error=f"{action.url} failed: {type(exc).__name__}: {exc}"[:500])
        text = body.decode("utf-8", "replace")
        try:
            value: Any = json.loads(text) if not truncated else text
        except ValueError:
            value = text
        result = {"status": response.status_code, "body": value, "truncated": truncated}
        ok = 200 <= response.status_code < 300
        return Execution(
            "ok" if ok else "error", result=result, digest_of=body,
            error=None if ok else f"{action.url} answered {response.status_code}",
            detail={"http_status": response.status_code},
        )  # fmt: skip

    async def close(self) -> None:
        await self.client.aclose()


async def _read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    out = bytearray()
    async for chunk in response.aiter_bytes():
        out += chunk
        if len(out) > cap:
            return bytes(out[:cap]), True
    return bytes(out), False


register_executor("http", HttpActionExecutor)
