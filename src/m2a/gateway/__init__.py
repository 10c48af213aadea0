"""Gateway: the OpenAI-compatible HTTP surface of m2a.

A request to an OpenAI route passes the ordered stages declared in ``gateway/stages/__init__.py``
(trace, authenticate, validate, authorize, admit, ledger, route, forward), each a small module
with the hooks it needs, run by ``gateway/pipeline.py`` over one ``RequestContext``
(``gateway/context.py``). ``app.py`` wires the routes, probes, metrics and the admin API.

The gateway never spawns processes; it forwards to endpoints the router's pool hands it.
Imports ``m2a.config``, ``m2a.router``, ``m2a.store`` and ``m2a.telemetry``.
"""
