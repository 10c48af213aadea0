"""Red teaming: attacks on a served model through the gateway, as a client of it, and what they found.

The gateway never imports this package; this package talks to the gateway over HTTP only and uses
the guardrails' detectors (``m2a.guardrails``) to judge answers. Modules:

- ``probes``: the probe packs (``packs/*.yaml``, one per category, tagged with OWASP Top 10 for LLM
  applications 2025 ids) and how they are rendered into requests;
- ``canaries``: the unique tokens and fake personal data / credentials planted in probes, and
  finding them again in answers (exactly or normalised);
- ``score``: judging one attempt (success, resisted, blocked, error), the refusal heuristic, attack
  success rates with Wilson 95% intervals;
- ``runner``: sending the probes (async, bounded concurrency, a timeout per attempt, no retries);
- ``results``: the SQLite results file (``$M2A_HOME/redteam.db``);
- ``report``: JSON, Markdown and HTML reports;
- ``gate``: thresholds per category, pass or fail, and the diff of two runs;
- ``garak``: running garak against the gateway and importing its report JSONL.

The command is ``m2a redteam`` (``cli/redteam_cmd.py``).
"""
