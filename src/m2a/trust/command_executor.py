"""The local command runner as an executor: a configured command, sandboxed, on a valid intent.

The intent's ``tool`` names the action (``trust.actions``, ``kind: command``); its ``argv`` runs as
configured (no shell, nothing templated from the arguments), the arguments arrive as JSON on stdin,
inside the sandbox (``sandbox.py``: read-only filesystem but a scratch folder, CPU, memory, process
and time limits, its own network namespace). An action with an ``egress`` list gets one way out:
a Unix socket of m2a's egress proxy, opened for this run only, bound to the agent's identity and the
action's allow-list (the intersection with the agent's own manifest ``egress``: a command reaches
only what both its action and its agent may), bridged into the sandbox (``bridge.py``) as
``HTTPS_PROXY``. Without ``egress`` it has no network at all.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from m2a.config import ActionConfig
from m2a.trust.allowlist import AllowList
from m2a.trust.command import CommandRunner
from m2a.trust.egress import EgressIdentity, EgressProxy
from m2a.trust.executors import ACTIONS_SERVER, Execution, Executor, register_executor
from m2a.trust.replay import StoreReplay
from m2a.trust.sandbox import Network
from m2a.trust.signing import KeySource
from m2a.trust.verify import Intent, IntentError


class CommandExecutor(Executor):
    name = "command"

    def __init__(
        self,
        keys: KeySource,
        issuer: str,
        replay: StoreReplay,
        actions: list[ActionConfig],
        runner: CommandRunner,
        proxy: EgressProxy | None,
        agent_egress: Any = None,  # async (intent) -> list[str] | None: the agent's manifest egress
    ) -> None:
        super().__init__(keys, issuer, replay)
        self.actions = {a.name: a for a in actions if a.kind == "command"}
        self.runner = runner
        self.proxy = proxy
        self.agent_egress = agent_egress
        self.sockets = Path(tempfile.mkdtemp(prefix="m2a-egress-"))

    async def execute(self, intent: Intent, arguments: Any, hints: dict[str, Any]) -> Execution:
        action = self.actions.get(intent.tool.name) if intent.tool.server == ACTIONS_SERVER else None
        if action is None:
            raise IntentError("wrong_audience", f"no command action '{intent.tool.name}' here")
        network: Network | None = None
        sock: Path | None = None
        if action.egress:
            if self.proxy is None:
                return Execution(
                    "error", error="this action needs egress, and the egress proxy is not running"
                )
            allow = list(action.egress)
            if self.agent_egress is not None:
                theirs = await self.agent_egress(intent)
                allow = [e for e in allow if e in set(theirs or ())]
            sock = self.sockets / f"{secrets.token_hex(8)}.sock"
            identity = EgressIdentity(
                subject=intent.sub, team=intent.agent.team, allow=AllowList(allow),
                tool=f"{ACTIONS_SERVER}/{action.name}",
            )  # fmt: skip
            await self.proxy.open_unix(sock, identity)
            network = Network(proxy_socket=sock)
        try:
            done = await self.runner.run(
                action, arguments if isinstance(arguments, dict) else {}, network=network
            )
        finally:
            if sock is not None and self.proxy is not None:
                await self.proxy.close_unix(sock)
        result = {
            "exit_code": done.exit_code,
            "stdout": done.stdout,
            "stderr": done.stderr,
            "timed_out": done.timed_out,
            "killed": done.killed,
        }
        if done.timed_out:
            status, error = "timeout", f"the command ran past {action.timeout_s:g} s and was killed"
        elif done.exit_code == 0 and not done.killed:
            status, error = "ok", None
        else:
            why = f"killed ({done.killed})" if done.killed else f"exited with {done.exit_code}"
            status, error = "error", f"the command {why}"
        return Execution(status, result=result, error=error, digest_of=result,
                         detail={"exit_code": done.exit_code})  # fmt: skip


    async def close(self) -> None:
        shutil.rmtree(self.sockets, ignore_errors=True)  # the per-run sockets' folder


register_executor("command", CommandExecutor)
