"""Router: pick the replica that serves a request. Knows nothing of teams, keys or quotas.

This first cut keeps the pool of replicas per model and picks the healthy replica with the fewest
requests in flight; the llm-d-style filter/scorer/picker pipeline builds on the same pool.
"""
