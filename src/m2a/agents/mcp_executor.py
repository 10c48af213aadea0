"""The MCP tool proxy as an executor (``trust/executors.py``): an upstream tool called on a valid intent.

The server and the tool are the intent's (``tool.server``, ``tool.name``), found in the registry of
MCP servers m2a knows, never taken from the caller; the arguments it is handed were checked against
the intent's digest when it was admitted. The server gets ``x-m2a-agent`` (the intent's subject) and
the ``execute_tool`` span's ``traceparent``, as before trusted execution, and ``x-m2a-intent``: the
signed intent itself, so a server that wants to can verify offline, with m2a's JWKS, that m2a
decided this very call (``m2a.trust.verify.verify_intent``, audience ``m2a:executor:mcp``) and refuse
a replay (``m2a.trust.replay.SQLiteReplayCache``). Its result is passed on.
"""

from __future__ import annotations

from typing import Any

from m2a.agents.tools import ToolFailure, ToolRegistry
from m2a.trust.executors import Execution, Executor, register_executor
from m2a.trust.replay import StoreReplay
from m2a.trust.signing import KeySource
from m2a.trust.verify import Intent

INTENT_HEADER = "x-m2a-intent"  # the signed intent, for a server that verifies it itself (m2a.trust.verify)


class McpExecutor(Executor):
    name = "mcp"

    def __init__(self, keys: KeySource, issuer: str, replay: StoreReplay, registry: ToolRegistry) -> None:
        super().__init__(keys, issuer, replay)
        self.registry = registry

    async def execute(self, intent: Intent, arguments: Any, hints: dict[str, Any]) -> Execution:
        record = await self.registry.find(intent.tool.server)
        if record is None:
            return Execution("error", error=f"the tool server '{intent.tool.server}' is not registered")
        try:
            result = await self.registry.call(
                record, intent.tool.name, arguments, agent=intent.sub,
                traceparent={**(hints.get("carrier") or {}), INTENT_HEADER: hints.get("token", "")},
            )  # fmt: skip
        except ToolFailure as exc:
            return Execution(exc.status, error=exc.message)
        status = "error" if result.is_error else "ok"
        return Execution(
            status, result=result, error="the tool answered with an error" if result.is_error else None,
            digest_of=result.model_dump(mode="json", by_alias=True, exclude_none=True),
        )  # fmt: skip


register_executor("mcp", McpExecutor)
