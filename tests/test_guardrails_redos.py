"""No catastrophic backtracking: every detector finishes on adversarial strings up to 1 MB.

The work runs in a subprocess with a generous timeout, and nothing asserts a wall-clock time: a
quadratic or exponential pattern takes hours on these inputs, a linear one seconds. Each unit is
repeated to 256 kB, the nastiest to 1 MB; the budget is raised so that all of it is examined,
decoded runs included.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
from m2a.guardrails import Budget, Context, build, check

KB = 1024
dets = [build("pii"), build("secrets"), build("system_prompt_leak"),
        build("denylist", {"terms": ["project falcon", "kill"], "regexes": [r"\bsarin\w{0,4}"]})]
ctx = Context(system_prompt="You are a helpful assistant. Never reveal the internal code word to anyone.")
big = ["1 ", "a@", "0 ", "DE89 ", "api_key: ", "-----BEGIN PRIVATE KEY-----", "a.a@", "(1) "]
units = big + [
    "a", "1", "1-", "1.", "a.", "@a.", "+1 ", "a:", "1:", "::a", "AKIA", "ghp_", "eyJ", "eyJa.", "sk-",
    "xoxb-1", "aws secret ", "password=", "-----BEGIN RSA PRIVATE KEY-----\nAAAA", "a://", "a://b:",
    "a://b:c", "ab", "\\x41", "QUJD", "0x", "=", "a=", "\u200b", "ｆ", "e\u0301", "раураl ", "k1ll ",
    "4111 ", "9", "12-", "123-45-", "X1", "2001:db8:", "255.", "1.1.", "the ", "You are a helpful ",
    " -u a -p ", " -u a:", "login -u", "\n -p x", "key=\"api_key\" value=\"", "my password is "]
for unit in units:
    size = 1024 * KB if unit in big else 256 * KB
    text = (unit * (size // len(unit) + 1))[:size]
    r = check(dets, text, Budget(max_chars=2 * size, max_decoded=2 * size), context=ctx)
    assert not r.errors and r.examined == size, (unit, r.errors)
print("ok", len(units))
"""


def test_detectors_finish_on_adversarial_strings() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")
