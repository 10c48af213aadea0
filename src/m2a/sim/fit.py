"""Fit the latency model to a real engine's measurements by least squares.

Each measurement is ``(prompt_tokens, cached_tokens, output_tokens, ttft, e2e)`` in seconds, with an
optional sixth value ``running``: the sequences the engine ran meanwhile (1 when measured alone).

- ``ttft = base_ttft_s + prefill_s_per_token × (prompt_tokens − cached_tokens)``
- ``e2e − ttft = decode_s_per_token × (output_tokens − 1) × (1 + decode_slowdown_per_seq × (running − 1))``

The second is linear in ``decode_s_per_token`` and ``decode_s_per_token × decode_slowdown_per_seq``;
the slowdown is fitted only where ``running`` varies. Measure at low concurrency (no queueing) for
a clean prefill and decode fit; negative estimates are clamped to zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from m2a.sim.params import SimParams


class Measurement(NamedTuple):
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    ttft: float
    e2e: float
    running: float = 1.0


def fit(measurements: Iterable[Sequence[float]], base: SimParams | None = None) -> SimParams:
    """``base`` (default ``SimParams()``) with ``base_ttft_s``, ``prefill_s_per_token``,
    ``decode_s_per_token`` and, where the data allows, ``decode_slowdown_per_seq`` fitted."""
    import numpy as np

    rows = [Measurement(*m) for m in measurements]
    if len(rows) < 2:
        raise ValueError("fit needs at least two measurements")
    uncached = np.array([r.prompt_tokens - r.cached_tokens for r in rows], dtype=float)
    ttft = np.array([r.ttft for r in rows], dtype=float)
    a = np.column_stack([np.ones_like(uncached), uncached])
    (b0, b1), *_ = np.linalg.lstsq(a, ttft, rcond=None)

    steps = np.array([max(r.output_tokens - 1, 0) for r in rows], dtype=float)
    extra = np.array([r.running - 1.0 for r in rows], dtype=float)
    decode_time = np.array([r.e2e - r.ttft for r in rows], dtype=float)
    if not steps.any():
        raise ValueError("fit needs measurements with more than one output token")
    if np.ptp(extra) > 0:
        d = np.column_stack([steps, steps * extra])
        (d0, d1), *_ = np.linalg.lstsq(d, decode_time, rcond=None)
        d0 = max(float(d0), 0.0)
        slowdown = max(float(d1) / d0, 0.0) if d0 > 0 else 0.0
    else:
        (d0,), *_ = np.linalg.lstsq(steps[:, None], decode_time, rcond=None)
        d0 = max(float(d0), 0.0)
        mean_extra = float(extra.mean()) if len(extra) else 0.0
        slowdown = (base or SimParams()).decode_slowdown_per_seq
        d0 /= 1.0 + slowdown * mean_extra  # the data's one concurrency level, with the base's slowdown
    return (base or SimParams()).with_(
        base_ttft_s=max(float(b0), 0.0),
        prefill_s_per_token=max(float(b1), 0.0),
        decode_s_per_token=d0,
        decode_slowdown_per_seq=slowdown,
    )
