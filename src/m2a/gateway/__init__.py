"""Gateway: the OpenAI-compatible HTTP surface of m2a (authn, validation, forwarding, metrics).

The gateway never spawns processes; it forwards to endpoints the router's pool hands it.
Imports ``m2a.config`` and ``m2a.router`` only.
"""
