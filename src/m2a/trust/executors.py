"""Executors: what runs an agent's action, and only on a valid intent meant for it.

One tiny interface, registered by name like the router's plugins: an ``Executor`` has an
``audience`` (``m2a:executor:<name>``, the ``aud`` its intents must name) and one method,
``execute(intent, arguments, hints)``. Nobody calls ``execute`` directly: ``Executor.run(token,
arguments, hints)`` admits the intent first — ES256 signature against the JWKS, ``typ``, issuer,
expiry (at most 60 s), audience exactly this executor's, the arguments' RFC 8785 digest equal to the
signed one — and consumes its ``jti`` once (``StoreReplay``: a primary-key insert in
``intent_uses``, so a replay fails in every process sharing the store). A refused intent raises
``IntentError`` and runs nothing. ``hints`` carry how to reach things (a ``traceparent``), never
authority: what runs is named by the intent (its ``tool``), not by the caller.

Built in (``EXECUTORS``): ``mcp`` — registered by the agents layer (``agents/mcp_executor.py``: it
needs the MCP client), ``http`` (``http_action.py``: one allow-listed endpoint per action) and
``command`` (``command_executor.py``: a sandboxed local command whose only way out is the egress
proxy). A third-party executor outside m2a does the same with ``verify.py`` and a ``ReplayCache``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from m2a.trust.replay import StoreReplay
from m2a.trust.signing import KeySource
from m2a.trust.verify import Intent, IntentError, verify_intent

AUDIENCE_PREFIX = "m2a:executor:"
ACTIONS_SERVER = "actions"  # the built-in tool server whose tools are the configured actions (trust.actions)


def audience_of(name: str) -> str:
    return AUDIENCE_PREFIX + name


@dataclass
class Execution:
    """What an executor did: ``status`` ok / error / timeout; ``result`` for the caller (executor
    specific: an MCP ``CallToolResult``, an HTTP answer as JSON, a command's exit code and output);
    ``digest_of`` what the receipt's ``result_sha256`` is computed from (JSON or bytes)."""

    status: str
    result: Any = None
    error: str | None = None
    digest_of: Any = None
    detail: dict[str, Any] = field(
        default_factory=dict
    )  # small facts for the receipt (exit code, HTTP status)


class Executor:
    """Runs one kind of action. Subclasses set ``name`` and implement ``execute``."""

    name: str = ""

    def __init__(self, keys: KeySource, issuer: str, replay: StoreReplay) -> None:
        self.keys = keys
        self.issuer = issuer
        self.replay = replay

    @property
    def audience(self) -> str:
        return audience_of(self.name)

    async def admit(self, token: str, arguments: Any) -> Intent:
        """The intent, verified and consumed; ``IntentError`` (nothing consumed unless it was valid)."""
        jwks = await self.keys.jwks()
        intent = verify_intent(token, jwks, audience=self.audience, issuer=self.issuer, arguments=arguments)
        if not await self.replay.consume(intent.jti, self.audience, intent.exp):
            raise IntentError("replayed", f"the intent {intent.jti} was used already: an intent runs once")
        return intent

    async def run(self, token: str, arguments: Any, hints: dict[str, Any] | None = None) -> Execution:
        intent = await self.admit(token, arguments)
        if intent.exp < time.time():  # admitted just now; a slow consume must not stretch its life
            raise IntentError("expired", "the intent expired while it was being admitted")
        return await self.execute(intent, arguments, hints or {})

    async def execute(self, intent: Intent, arguments: Any, hints: dict[str, Any]) -> Execution:
        raise NotImplementedError

    async def close(self) -> None:
        """Release what the executor holds (clients, listeners)."""


ExecutorFactory = Callable[..., Executor]
EXECUTORS: dict[str, ExecutorFactory] = {}


def register_executor(name: str, factory: ExecutorFactory) -> None:
    """Make an executor kind available by name (a later registration of the same name replaces it)."""
    EXECUTORS[name] = factory
