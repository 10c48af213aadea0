"""Pickers: the one replica to use, from the candidates' combined scores.

- ``max_score``: the highest score; ties (within ``1e-9``) broken at random, so equal replicas share
  the load instead of the first one taking it all;
- ``weighted_random``: a replica with probability proportional to its score (uniform when every
  score is 0);
- ``power_of_two``: two distinct replicas at random, the better of them (ties at random);
- ``round_robin``: ignores the scores and takes the candidates in turn (a baseline for benchmarks:
  what a plain load balancer does). The turn is per picker, i.e. per model's pipeline.

Every picker is given at least one candidate and uses only the ``rng`` it is handed (``round_robin``
none), so a seeded router makes the same choices.
"""

from __future__ import annotations

import itertools
import random

from m2a.router.plugins import register_picker
from m2a.router.pool import Endpoint

TIE = 1e-9


@register_picker("max_score")
class MaxScore:
    def pick(self, scored: list[tuple[Endpoint, float]], rng: random.Random) -> Endpoint:
        best = max(s for _, s in scored)
        top = [e for e, s in scored if s >= best - TIE]
        return top[0] if len(top) == 1 else top[rng.randrange(len(top))]


@register_picker("weighted_random")
class WeightedRandom:
    def pick(self, scored: list[tuple[Endpoint, float]], rng: random.Random) -> Endpoint:
        total = sum(max(0.0, s) for _, s in scored)
        if total <= 0:
            return scored[rng.randrange(len(scored))][0]
        x = rng.random() * total
        for e, s in scored:
            x -= max(0.0, s)
            if x < 0:
                return e
        return next(e for e, s in reversed(scored) if s > 0)  # rounding at the very end


@register_picker("power_of_two")
class PowerOfTwo:
    def pick(self, scored: list[tuple[Endpoint, float]], rng: random.Random) -> Endpoint:
        if len(scored) == 1:
            return scored[0][0]
        (a, sa), (b, sb) = rng.sample(scored, 2)
        if abs(sa - sb) <= TIE:
            return a if rng.random() < 0.5 else b
        return a if sa > sb else b


@register_picker("round_robin")
class RoundRobin:
    def __init__(self) -> None:
        self._turn = itertools.count()

    def pick(self, scored: list[tuple[Endpoint, float]], rng: random.Random) -> Endpoint:
        return scored[next(self._turn) % len(scored)][0]
