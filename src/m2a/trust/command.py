"""The command runner: one configured command action, run in the sandbox for one admitted intent.

The action's ``argv`` runs exactly as configured (no shell, nothing templated from the arguments);
the arguments arrive as JSON on stdin; the action's limits (wall clock, CPU seconds, memory,
processes, output) become the sandbox's; each run gets a fresh scratch folder under
``scratch_root``, removed afterwards. The result carries the exit code, stdout and stderr decoded as
UTF-8 (invalid bytes replaced; each capped at the action's ``max_output_bytes``) and timings. It is
what the ``command`` executor (``command_executor.py``) calls once an intent is verified.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2a.config import ActionConfig
from m2a.trust.sandbox import Backend, Limits, Network, SandboxResult


@dataclass(frozen=True)
class CommandResult:
    """What one command run did (``SandboxResult`` with text output and when it started)."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    killed: str | None
    truncated: bool
    started_at: float  # Unix time
    duration_ms: float
    backend: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed is None

    @classmethod
    def of(cls, res: SandboxResult, started_at: float) -> CommandResult:
        return cls(
            exit_code=res.exit_code,
            stdout=res.stdout.decode("utf-8", errors="replace"),
            stderr=res.stderr.decode("utf-8", errors="replace"),
            timed_out=res.timed_out,
            killed=res.killed,
            truncated=res.truncated,
            started_at=started_at,
            duration_ms=res.duration_ms,
            backend=res.backend,
        )


def limits_of(action: ActionConfig) -> Limits:
    """The sandbox limits an action configures."""
    return Limits(
        timeout_s=action.timeout_s,
        cpu_s=action.cpu_s,
        memory_mb=action.memory_mb,
        max_procs=action.max_procs,
        max_output_bytes=action.max_output_bytes,
    )


class CommandRunner:
    """Runs command actions in one sandbox backend, each in its own scratch folder."""

    def __init__(self, sandbox_backend: Backend, scratch_root: Path) -> None:
        self.backend = sandbox_backend
        self.scratch_root = Path(scratch_root)
        self.backend.scratch_root = self.scratch_root

    async def run(
        self, action: ActionConfig, arguments: dict[str, Any], *, network: Network | None
    ) -> CommandResult:
        """Run ``action`` with ``arguments`` (JSON on stdin). ``network``: the egress proxy's socket
        for this run, or None for no network at all. Raises ValueError for an action that is not a
        command or arguments that are not JSON; ``SandboxUnavailable`` / ``SandboxError`` when the
        sandbox cannot run it (nothing ran)."""
        if action.kind != "command" or not action.argv:
            raise ValueError(f"action {action.name!r} is not a command")
        if not isinstance(arguments, dict):
            raise ValueError("a command's arguments are a JSON object")
        try:
            stdin = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as e:
            raise ValueError(f"the arguments are not JSON: {e}") from e
        started_at = time.time()
        res = await self.backend.run(
            list(action.argv), stdin=stdin, limits=limits_of(action), network=network
        )
        return CommandResult.of(res, started_at)
