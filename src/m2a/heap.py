"""The serving process's garbage collector, set for a long-running server.

CPython's cyclic collector runs its youngest generation every 700 net container allocations and,
now and then, a full collection that walks every object the process holds: modules, schemas,
configuration, caches. Under load in the gateway that was about 120 µs of CPU per request, and a
full collection stopped the event loop for some 200 ms at a time (bench/README.md, "The garbage
collector and the engine client"). Requests make few reference cycles (a handful of objects each), so:

* ``gc.freeze()`` once the server is up: what start-up allocated is never walked again;
* the youngest generation is collected every ``gen0`` net allocations (default 50,000: every few
  thousand requests) instead of every 700. What cycles requests leave meanwhile stay bounded by
  that count.

``gateway.gc_gen0_threshold: 0`` in the configuration keeps Python's own settings.
"""

from __future__ import annotations

import gc


def tune_for_serving(gen0: int) -> tuple[int, int, int]:
    """Freeze the heap built so far and collect the young generation every ``gen0`` allocations
    (0: leave the collector as it is); the thresholds now in force."""
    if gen0 > 0:
        gc.collect()
        gc.freeze()
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0, gen1, gen2)
    return gc.get_threshold()
