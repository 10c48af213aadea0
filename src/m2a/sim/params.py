"""Simulator parameters: the latency model, the KV cache's shape, and injected faults.

Times in ``SimParams`` are *simulated* seconds. ``time_scale`` maps them to wall-clock time: a replica
sleeps ``simulated × time_scale`` seconds, so ``time_scale=0.1`` runs ten times faster than real time
(a benchmark divides the wall times it measures by ``time_scale``). The engine's own histograms
(``vllm:time_to_first_token_seconds``) report simulated seconds.

Latency model, per request:

- time to first token = queueing (for a running slot, then for the prefill unit)
  + ``base_ttft_s`` + ``prefill_s_per_token`` × uncached prompt tokens;
- each further output token: one decode step of
  ``decode_s_per_token`` × (1 + ``decode_slowdown_per_seq`` × (running sequences − 1)).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal


@dataclass
class SimParams:
    """One simulated vLLM replica: latency model, scheduler and KV cache."""

    model: str = "sim-model"
    base_ttft_s: float = 0.01
    prefill_s_per_token: float = 0.0002
    decode_s_per_token: float = 0.02
    decode_slowdown_per_seq: float = 0.02
    max_num_seqs: int = 16  # running sequences at once; the rest wait in the queue
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"  # priority: lower value first
    serial_prefill: bool = True  # prefills take turns on the replica's one compute unit
    block_size: int = 16
    capacity_blocks: int = 2048
    hash_seed: int = 0  # seeds the block-hash chain, like vLLM's PYTHONHASHSEED (0: the router's own)
    max_model_len: int = 32768
    default_max_tokens: int = 64  # output length when a request sets no max_tokens
    time_scale: float = 1.0  # wall seconds per simulated second
    min_emit_interval_s: float = 0.002  # wall: tokens due closer together than this go out in one chunk

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.capacity_blocks < 1 or self.max_num_seqs < 1:
            raise ValueError("block_size, capacity_blocks and max_num_seqs must be at least 1")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        for f in ("base_ttft_s", "prefill_s_per_token", "decode_s_per_token", "decode_slowdown_per_seq"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f} must not be negative")
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise ValueError("scheduling_policy must be 'fcfs' or 'priority'")

    def with_(self, **changes: Any) -> SimParams:
        return replace(self, **changes)


@dataclass
class Faults:
    """Faults injected into one replica, settable at runtime.

    ``slow`` multiplies every latency; ``error_rate`` is the chance that a request gets a 500 in
    OpenAI's error shape; ``die_after`` makes the replica die once that many more requests have
    started: it dies while the last of them is streaming (after its first token), drops every open
    connection and stops listening (0: at once). ``None`` leaves it alive.
    """

    slow: float = 1.0
    error_rate: float = 0.0
    die_after: int | None = None
    _started: int = field(default=0, repr=False)

    def update(self, **changes: Any) -> None:
        names = {f.name for f in fields(self) if not f.name.startswith("_")}
        unknown = set(changes) - names
        if unknown:
            known = ", ".join(sorted(names))
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}; known: {known}")
        slow = float(changes.get("slow", self.slow))
        rate = float(changes.get("error_rate", self.error_rate))
        die = changes.get("die_after", self.die_after)
        if slow <= 0 or not 0.0 <= rate <= 1.0 or (die is not None and (int(die) != die or die < 0)):
            raise ValueError("slow must be > 0, error_rate in [0, 1], die_after a count ≥ 0 or null")
        self.slow, self.error_rate = slow, rate
        if "die_after" in changes:
            self.die_after = None if die is None else int(die)
            self._started = 0

    def as_dict(self) -> dict[str, Any]:
        return {"slow": self.slow, "error_rate": self.error_rate, "die_after": self.die_after}
