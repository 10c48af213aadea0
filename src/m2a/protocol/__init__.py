"""Protocol code shared by engines, the simulator and the router: prompts as token blocks (the
chat template applied, block hashes) and vLLM's KV-cache event wire format.

A neutral module: it imports nothing else of m2a, so the request path never climbs back up from
``engines/`` into the router.
"""
