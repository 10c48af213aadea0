"""Agents: the top layer, where teams bring their own agents under control.

It owns the agent registry (agents of a team with their sponsors, immutable content-addressed
versions, an alias per stage, the history of promotions, rollbacks and revocations), and, built on
it, the agents' identities (SPIFFE ids, OAuth client credentials, JWT access tokens and their
verifier), and the MCP gateway (tool servers registered centrally, one filtered endpoint per agent,
the Responses API's ``mcp`` tool, approvals, every tool call recorded). The Responses API itself
and its state live in ``gateway/`` (every team uses it, agents or not).

``manifest.py`` is what one version is (a pydantic model, canonical JSON and its sha256);
``registry.py`` the rules over the store's tables; ``admin_api.py`` the admin API at
``/admin/v1/agents``; ``extension.py`` plugs all of it into the gateway through
``gateway/extensions.py``. This package may import ``gateway/``, ``store/``, ``principal.py``,
``config.py`` and ``redteam/`` (as a client, in the CLI's ``m2a agents test``); none of those ever
imports it: the composition root (``serve.py``, a test) passes ``agents_extension(...)`` to
``create_app``.
"""
