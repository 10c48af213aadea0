"""Engine simulator: N simulated vLLM-compatible replicas for routing tests, benchmarks and capacity
planning.

Each replica serves vLLM's OpenAI routes (streamed and not, ``usage`` with cached prompt tokens),
vLLM's Prometheus metric names, a paged KV cache with prefix reuse and LRU eviction, KV-cache events
over ZMQ in vLLM's wire format, a latency model with a bounded running set and a waiting queue, and
injected faults (slow, erroring, dying). ``fit`` fits the latency model to a real engine's
measurements. Prompts are tokenized by the router's ``simple`` tokenizer, so router and simulator
agree on prefixes and block hashes.
"""

from __future__ import annotations

from m2a.sim.fit import Measurement, fit
from m2a.sim.params import Faults, SimParams
from m2a.sim.replica import Replica
from m2a.sim.simulator import Simulator

__all__ = ["Faults", "Measurement", "Replica", "SimParams", "Simulator", "fit"]
