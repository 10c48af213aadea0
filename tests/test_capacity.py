"""Capacity planning on simulated replicas (`m2a sim --plan`): the search and its answer."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import pytest

from m2a.cli.sim_cmd import _fit_csv
from m2a.router.capacity import Trial, Workload, plan_replicas
from m2a.sim import SimParams

# Each uncached prompt costs 0.3 s of prefill and there is no shared prefix: one replica can take
# about 3 requests/s, so 5 requests/s overload it and its queue grows.
PARAMS = SimParams(prefill_s_per_token=0.001, decode_s_per_token=0.005, time_scale=0.1)
WORK = Workload(rate=5.0, duration_s=12.0, groups=50, shared_tokens=0, unique_tokens=300, output_tokens=8)


async def test_the_answer_is_the_fewest_replicas_that_meet_the_target() -> None:
    seen = []
    best, trials = await plan_replicas(WORK, PARAMS, target_p90_s=1.5, max_replicas=8, progress=seen.append)
    assert seen == trials or sorted(seen, key=lambda t: t.replicas) == trials
    by_n = {t.replicas: t for t in trials}
    assert not by_n[1].meets and by_n[1].p90_s > 1.5  # overloaded: the queue grew
    assert best is not None and best >= 2 and by_n[best].meets
    assert not by_n[best - 1].meets  # the bisection tried one fewer
    assert all(t.requests == trials[0].requests and t.errors == 0 for t in trials)


async def test_an_unreachable_target_has_no_answer() -> None:
    best, trials = await plan_replicas(WORK, PARAMS, target_p90_s=0.001, max_replicas=2)
    assert best is None and [t.replicas for t in trials] == [1, 2]


def test_cli_plan() -> None:
    cmd = [sys.executable, "-m", "m2a", "sim", "--plan", "--rate", "2", "--duration", "6", "--groups", "2",
           "--shared-tokens", "200", "--unique-tokens", "20", "--output-tokens", "4", "--time-scale", "0.1",
           "--target-p90", "5", "--max-replicas", "2"]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "120"}
    )
    assert out.returncode == 0, out.stderr
    assert "1 replica meets the target" in out.stdout
    bad = subprocess.run([*cmd[:6], "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "rate" in (bad.stdout + bad.stderr)


def rounded(t: Trial) -> Trial:
    return dataclasses.replace(t, **{f: round(getattr(t, f), 9) for f in ("p50_s", "p90_s", "hit_rate")})


async def test_the_same_seed_gives_the_same_answer() -> None:
    # Trials run on a simulated clock: neither this machine's speed nor its load changes a number.
    work = Workload(
        rate=4.0, duration_s=6.0, groups=3, shared_tokens=200, unique_tokens=40, output_tokens=8, seed=7
    )
    params = SimParams(prefill_s_per_token=0.002, decode_s_per_token=0.01)
    first = await plan_replicas(work, params, target_p90_s=0.6, max_replicas=4)
    again = await plan_replicas(work, params, target_p90_s=0.6, max_replicas=4)
    # The answer and every trial's counts exactly, its times to a nanosecond (the simulated clock
    # starts from the loop's real time, so float rounding differs in the 16th digit between runs).
    assert first[0] == again[0]
    assert [rounded(t) for t in first[1]] == [rounded(t) for t in again[1]]
    best, trials = first
    assert best is not None and len(trials) >= 2 and not trials[0].meets
    assert all(not math.isnan(t.p90_s) and not math.isnan(t.hit_rate) for t in trials)
    assert work.requests() == work.requests() != dataclasses.replace(work, seed=8).requests()


# -- the latency model a plan runs on: `m2a sim --fit FILE` (its CSV, as the README shows it) ----------

README_CSV = """prompt_tokens,cached_tokens,output_tokens,ttft,e2e
200,0,32,0.10,0.94
1000,0,32,0.42,1.26
1500,1024,32,0.21,1.05
2000,0,64,0.82,2.52
"""


def test_fit_reads_the_readme_csv(tmp_path) -> None:
    path = tmp_path / "measurements.csv"
    # a blank line and an empty optional `running` cell are fine too
    path.write_text(README_CSV.replace("\n1000", "\n\n1000").replace("0.94\n", "0.94,\n"))
    p = _fit_csv(path, SimParams(capacity_blocks=512))
    assert round(p.base_ttft_s, 3) == 0.020 and round(p.prefill_s_per_token, 5) == 0.0004
    assert round(p.decode_s_per_token, 3) == 0.027 and p.capacity_blocks == 512
    path.write_text(README_CSV.replace("1500,1024,", "1500,,"))  # a gap would shift the columns
    with pytest.raises(ValueError, match="line 4"):
        _fit_csv(path, SimParams())
