"""Streamed TTFT through m2a on a real engine: a team with guardrails off against one with the
default profile (128-character hold-back), requests alternating.

Needs a running `m2a up` serving smollm2-135m-instruct on port 18999 and a JSON file of team keys,
``{"open": "<key of a team with profile off>", "guarded": "<key of a team with the default>"}``:

    .venv/bin/python bench/guardrails_ttft.py [N] [--keys FILE]

It prints, per team, the median time to the first content byte and to the 128th character.
"""

import json
import statistics
import sys
import time

import httpx

U = "http://127.0.0.1:18999/v1/chat/completions"
KEYS = sys.argv[sys.argv.index("--keys") + 1] if "--keys" in sys.argv else "keys.json"
with open(KEYS) as f:
    keys = json.load(f)
body = {
    "model": "smollm2-135m-instruct",
    "stream": True,
    "max_tokens": 96,
    "temperature": 0,
    "messages": [{"role": "user", "content": "Write a short paragraph about the history of bread."}],
}
res = {k: {"ttft": [], "window": []} for k in keys}
with httpx.Client(timeout=120) as c:
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 8
    for _ in range(n):
        for name, key in keys.items():
            t0 = time.perf_counter()
            first = None
            chars = 0
            win = None
            with c.stream("POST", U, json=body, headers={"authorization": f"Bearer {key}"}) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    d = json.loads(line[6:])
                    for ch in d.get("choices") or []:
                        txt = (ch.get("delta") or {}).get("content") or ""
                        if txt and first is None:
                            first = time.perf_counter() - t0
                        chars += len(txt)
                        if win is None and chars >= 128:
                            win = time.perf_counter() - t0
            res[name]["ttft"].append(first)
            res[name]["window"].append(win)
for name, r in res.items():
    t = [x for x in r["ttft"] if x is not None]
    w = [x for x in r["window"] if x is not None]
    print(
        name,
        f"TTFT p50 {statistics.median(t):.3f} s",
        f"| 128 chars at p50 {statistics.median(w):.3f} s",
        f"(n={len(t)})",
    )
