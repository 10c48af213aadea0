"""Trusted execution of agents' actions: signed intents, policy, approvals, executors, receipts,
the audit log, the sandbox and egress control.

Every side-effecting action an agent takes through m2a (an MCP tool call, an HTTP action, a local
command) passes one path (``actions.py``): a Cedar policy decision (``policy.py``), a person's
approval for destructive actions, an intent signed by m2a (``intents.py``, a JWS that lives at most
60 s), an executor that acts only on a valid intent meant for it, consumed once (``executors.py``;
``verify.py`` is the small library a third-party executor verifies intents with, offline, from the
JWKS), a signed receipt of what ran (``receipts.py``) appended to a hash-chained audit log with
signed Merkle checkpoints (``audit.py``). Local commands run in a sandbox (``sandbox.py``) whose only
way out is m2a's egress proxy (``egress.py``), which enforces each agent's and tool's allow-list;
``netpol.py`` writes the Kubernetes NetworkPolicies for clusters.

This room sits in the agents layer, below ``agents/`` (which calls it from the MCP gateway): it
imports ``config``, ``principal``, ``store/`` and ``telemetry/`` — and its two admin APIs
(``policies_api.py``, ``audit_api.py``) the gateway's ``keyed_api``, access and errors — never
``agents/``.
It signs with whatever ``signing.KeySource`` it is given (the agents layer passes its signing keys,
so intents, receipts and checkpoints verify against the same JWKS as agent tokens).
"""
