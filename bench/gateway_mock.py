"""The gateway's own cost per request, against a mock engine that answers at once.

Starts `bench/mock_engine.py`, then `m2a up` serving it as a remote model, creates a team and a team
key with quotas through the admin API (so each request goes through key lookup, the grant check,
schema validation, quota reservation and settlement, the priority gate and a usage-ledger record),
and sends the same requests straight to the mock and through each gateway, rounds alternating
(round 1: every target once, then round 2, ...), at concurrency 1 and 16, non-streamed and
streamed (16 chunks). Progress (which answer, concurrency, round and target) goes to stderr; the
table comes at the end, on stdout.

Targets besides "mock direct" and "through m2a" (this tree's gateway):

- `--baseline-src DIR`: a second m2a gateway from another source tree, "through m2a (baseline
  <short commit>)", with the same team, key and quotas. It runs on this same .venv's Python with
  `PYTHONPATH=DIR/src` first, its own `M2A_HOME` (`--home`/baseline-<commit>) and port; this tree's
  gateway gets `PYTHONPATH=<this repo>/src` and `--home`/current. Each gateway process writes the
  file it imported `m2a` from, printed at start-up; the run stops when it is not `DIR/src/m2a` (or
  this repo's `src/m2a`). Old and new code in one run, e.g. to show a refactor costs nothing:

      git worktree add --detach /tmp/m2a-old <commit>        # once: the old tree (no new .venv)
      .venv/bin/python bench/gateway_mock.py --baseline-src /tmp/m2a-old --no-litellm --no-portkey
      git worktree remove /tmp/m2a-old                        # afterwards

  Only the gateway runs the old code: this script, the mock and the load generator are this
  tree's. A baseline tree with uncommitted changes under src/ shows as "<commit>+dirty".
- LiteLLM's proxy, "through LiteLLM", when installed in its own environment (`bench/litellm_env.sh`;
  `litellm_proxy.py` says how it is started); `--no-litellm` leaves it out.
- Portkey's gateway, "through Portkey", when installed (`bench/portkey_env.sh`: npm
  `@portkey-ai/gateway` 1.15.2 under bench/.portkey; `portkey_proxy.py` says how it is started): a
  plain proxy, no keys, quotas or ledger; `--no-portkey` leaves it out.
- `--guardrails`: instead of one "through m2a", this tree's gateway twice, "through m2a (guardrails
  off)" and "through m2a (default profile)", each its own `m2a up` with `guardrails:
  {default_profile: off}` or `{default_profile: default}` in its config, same team, key and quotas.
  Their difference is what the guardrail stages cost on the request path.

The prompt is "hi" unless `--prompt-bytes N` asks for about N bytes of realistic text (a support
ticket with a code snippet and a traceback, without credentials or personal data, so a guardrail
profile checks it and lets it pass). The mock streams `--stream-chunks` chunks of one character.
For streamed answers the table also gives the time to the first content byte (TTFT) and the time
until the hold-back window's worth of content characters (the default profile's
`stream_hold_chars`) arrived: a stream rail cannot release the first character before the window
after it has been checked, so "TTFT added" through the default profile is to be read against the
"t@window" of the gateway without guardrails.

Every target is warmed up, and checked, with JSON and streamed answers before the rounds; a
streamed answer counts only when it ends with `data: [DONE]`.

    bench/litellm_env.sh && bench/portkey_env.sh     # once, each optional
    .venv/bin/python bench/gateway_mock.py [--seconds 5] [--rounds 3] [--baseline-src DIR]
        [--no-litellm] [--no-portkey] [--guardrails] [--prompt-bytes N] [--stream-chunks N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from litellm_proxy import LITELLM, LiteLLM  # noqa: E402
from portkey_proxy import PORTKEY, Portkey  # noqa: E402
from stack import KEY, Up, free_port  # noqa: E402

from m2a.config import builtin_profiles  # noqa: E402
from m2a.guardrails.policy import Policy  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


Target = tuple[str, str, str | None] | tuple[str, str, str | None, dict[str, str]]

# A support ticket with a code snippet and a traceback: the kind of prompt an internal assistant
# gets. No credentials, e-mail addresses, phone numbers, IP addresses or card numbers, and no
# instructions to the model beyond the request itself, so a guardrail profile checks it and lets it
# pass: the benchmark measures the cost of checking, not of refusing or masking.
TICKET = (
    "Subject: Export to CSV times out for large workspaces\n\n"
    "Hi support team, since the upgrade to release 4.12 last Tuesday, exporting the project board "
    "to CSV fails for our biggest workspace (about 38,000 cards). The spinner runs for a minute and "
    "then the page shows a generic error. Smaller workspaces export fine, and the same export worked "
    "before the upgrade. We need this report for the quarterly planning meeting on Friday, so any "
    "workaround would help. Steps to reproduce: open the board, choose Export, pick CSV with all "
    "columns, and wait. The browser console shows a 504 from the export endpoint. Our admin tried "
    "clearing the cache and a different browser with the same result.\n\n"
    "Here is the part of our script that calls the export API, in case we use it wrong:\n\n"
    "def export_board(client, board_id, columns):\n"
    "    job = client.post(f'/api/boards/{board_id}/exports', json={'format': 'csv', 'columns': columns})\n"
    "    while job['state'] not in ('done', 'failed'):\n"
    "        time.sleep(2)\n"
    "        job = client.get(f'/api/exports/{job[\"id\"]}')\n"
    "    if job['state'] == 'failed':\n"
    "        raise ExportFailed(job.get('reason', 'unknown'))\n"
    "    return client.download(job['result_url'])\n\n"
    "And the traceback we get after about sixty seconds:\n\n"
    "Traceback (most recent call last):\n"
    '  File "export_report.py", line 41, in <module>\n'
    "    rows = export_board(client, board_id, ALL_COLUMNS)\n"
    '  File "export_report.py", line 17, in export_board\n'
    "    job = client.get(f'/api/exports/{job[\"id\"]}')\n"
    "requests.exceptions.ReadTimeout: read timed out after 60 seconds\n\n"
    "Could you tell us whether the export runs in the background now, and if there is a way to split "
    "it by column or by date range? Thanks a lot for your help.\n\n"
)


def ticket_prompt(n: int | None) -> str:
    """About ``n`` bytes (ASCII: as many characters) of ``TICKET``, repeated as needed; "hi" for None."""
    if n is None:
        return "hi"
    return (TICKET * (n // len(TICKET) + 1))[:n]


# A content delta's text in an SSE event (the gateway re-serialises masked events with spaces).
_CONTENT = re.compile(rb'"content":\s*"((?:[^"\\]|\\.)*)"')


class StreamClock:
    """When a streamed answer's first content character came, and when its ``window``-th did."""

    def __init__(self, t0: float, window: int) -> None:
        self.t0 = t0
        self.window = window
        self.chars = 0
        self.ttft: float | None = None
        self.at_window: float | None = None
        self._partial = b""

    def piece(self, data: bytes, now: float) -> None:
        if self.at_window is not None:
            return
        events = (self._partial + data).split(b"\n\n")
        self._partial = events.pop()  # an event not yet complete
        for event in events:
            for m in _CONTENT.finditer(event):
                raw = m.group(1)
                n = len(json.loads(b'"' + raw + b'"')) if b"\\" in raw else len(raw)
                if not n:
                    continue
                self.chars += n
                if self.ttft is None:
                    self.ttft = now - self.t0
                if self.chars >= self.window:
                    self.at_window = now - self.t0
                    return


class Sample:
    """What one load run measured: latencies to the first body byte, and for streams the clocks."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ttft: list[float] = []
        self.at_window: list[float] = []


def target_headers(target: Target) -> dict[str, str] | None:
    return target[3] if len(target) > 3 else None  # type: ignore[misc]


async def load(
    url: str,
    key: str | None,
    concurrency: int,
    seconds: float,
    stream: bool,
    headers: dict[str, str] | None = None,
    prompt: str = "hi",
    max_tokens: int = 16,
    window: int = 0,
) -> Sample:
    """Requests done in ``seconds``: their latencies (to the first byte of the answer body) and,
    streamed, the time to the first content character and to the ``window``-th (0: not timed).
    ``headers``: more request headers (Portkey's upstream headers)."""
    body = {
        "model": "mock",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    headers = {**({"authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    sample = Sample()
    errors = 0
    first_error = ""
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors, first_error
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with session.post(url, json=body, headers=headers) as resp:
                first = await resp.content.readany()
                latency = time.perf_counter() - t0
                clock: StreamClock | None = None
                if stream and window and resp.status == 200:
                    clock = StreamClock(t0, window)
                    clock.piece(first, t0 + latency)
                    pieces = []
                    while piece := await resp.content.readany():
                        clock.piece(piece, time.perf_counter())
                        pieces.append(piece)
                    rest = b"".join(pieces)
                else:
                    rest = await resp.read()
                # A streamed answer must be whole: OpenAI's stream ends with `data: [DONE]`.
                whole = not stream or (first + rest).rstrip().endswith(b"data: [DONE]")
                if resp.status != 200 or not first or not whole:
                    errors += 1
                    if not first_error:
                        ok = resp.status == 200 and first
                        kind = "an incomplete stream" if ok else f"HTTP {resp.status}"
                        first_error = f"{kind}: {(first + rest)[-300:].decode(errors='replace')!r}"
                    continue
            sample.latencies.append(latency)
            if clock is not None and clock.ttft is not None:
                sample.ttft.append(clock.ttft)
                if clock.at_window is not None:
                    sample.at_window.append(clock.at_window)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    if errors:
        what = "streamed" if stream else "JSON"
        raise SystemExit(f"{errors} {what} requests failed against {url}; the first: {first_error}")
    return sample


def stream_shape(url: str, prompt: str, max_tokens: int) -> tuple[int, int]:
    """How many content chunks a streamed answer of the mock has, and how many characters in all."""
    body = {"model": "mock", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    r = httpx.post(url, json={**body, "stream": True})
    chunks = chars = 0
    for line in r.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    chunks += 1
                    chars += len(text)
    return chunks, chars


def pct(values: list[float], q: float) -> str:
    """The ``q`` quantile of ``values`` in milliseconds ("-" for none)."""
    if not values:
        return "-"
    values = sorted(values)
    return f"{1000 * (statistics.median(values) if q == 0.5 else values[int(q * (len(values) - 1))]):.2f}"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process (and its children) used so far."""
    proc = psutil.Process(pid)
    t = proc.cpu_times()
    total = t.user + t.system
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            c = child.cpu_times()
            total += c.user + c.system
    return total


def rounds(
    targets: list[Target],
    n_rounds: int,
    seconds: float,
    pids: dict[str, int] | None = None,
    prompt: str = "hi",
    chunks: int = 16,
    window: int = 128,
    cpu_per_request: dict[tuple[bool, int], dict[str, float]] | None = None,
) -> dict[tuple[bool, int], dict[str, float]]:
    """Alternate the targets round by round at concurrency 1 and 16, JSON then streamed; print
    progress to stderr, then the table (one row per target and case), and return req/s by
    (stream, concurrency) and target. ``pids`` (target → process) adds each proxy's own CPU time
    per request, which other load on the machine disturbs far less than throughput. Streamed rows
    add the median time to the first content character and to the ``window``-th. ``cpu_per_request``,
    if given, receives each measured proxy's CPU µs per request by the same keys as the rates."""
    pids = pids or {}
    rates: dict[tuple[bool, int], dict[str, float]] = {}
    rows: list[str] = []
    cases = [(stream, c) for stream in (False, True) for c in (1, 16)]
    total = len(cases) * n_rounds * len(targets)
    step = 0
    started = time.monotonic()
    for stream, c in cases:
        kind = f"stream ({chunks} chunks)" if stream else "JSON"
        results: dict[str, tuple[Sample, float]] = {}
        cpu: dict[str, float] = {}
        for r in range(n_rounds):
            for target in targets:
                label, url, key = target[:3]
                step += 1
                pid = pids.get(label)
                before = cpu_seconds(pid) if pid else 0.0
                got = asyncio.run(
                    load(url, key, c, seconds, stream, target_headers(target), prompt, chunks, window)
                )
                if pid:
                    cpu[label] = cpu.get(label, 0.0) + cpu_seconds(pid) - before
                n = len(got.latencies)
                so_far, secs = results.get(label, (Sample(), 0.0))
                so_far.latencies += got.latencies
                so_far.ttft += got.ttft
                so_far.at_window += got.at_window
                results[label] = (so_far, secs + seconds)
                print(
                    f"[{step}/{total} {time.monotonic() - started:.0f}s] {kind}, concurrency {c},"
                    f" round {r + 1}/{n_rounds}: {label}: {n / seconds:.0f} req/s",
                    file=sys.stderr,
                    flush=True,
                )
        for label, (got, secs) in results.items():
            done, lats = len(got.latencies), got.latencies
            rates.setdefault((stream, c), {})[label] = done / secs
            per = f"{1e6 * cpu[label] / done:.0f}" if label in cpu and done else "-"
            if cpu_per_request is not None and label in cpu and done:
                cpu_per_request.setdefault((stream, c), {})[label] = 1e6 * cpu[label] / done
            rows.append(
                f"| {kind} | {c} | {label} | {done / secs:.0f} | {pct(lats, 0.5)} | {pct(lats, 0.99)} | {per}"
                f" | {pct(got.ttft, 0.5)} | {pct(got.at_window, 0.5)} |"
            )
    print(
        "| answer | concurrency | target | req/s | p50 ms | p99 ms | proxy CPU µs/req | TTFT p50 ms"
        f" | t@{window} chars p50 ms |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    print("\n".join(rows), flush=True)
    return rates


def tree_commit(root: Path) -> str:
    """The short commit of the git tree at ``root``, "+dirty" when src/ has uncommitted changes."""
    git = ["git", "-C", str(root)]
    r = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"{root.name} (not a git tree)"
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True)
    return r.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def team_key(root: str, label: str) -> str:
    """A team "bench" granted "mock", a key of its own, and four quotas; the key."""
    admin = {"authorization": f"Bearer {KEY}"}

    def check(r: httpx.Response, what: str) -> httpx.Response:
        if r.is_error:
            raise SystemExit(f"[{label}] {what}: HTTP {r.status_code} {r.text[:300]}")
        return r

    r = httpx.post(f"{root}/admin/v1/teams", json={"name": "bench"}, headers=admin)
    if r.status_code != 409:  # 409: there from an earlier run in the same M2A_HOME
        check(r, "creating team bench")
    check(httpx.put(f"{root}/admin/v1/teams/bench/grants/mock", headers=admin), "granting mock")
    r = httpx.post(f"{root}/admin/v1/keys", json={"team": "bench", "name": "bench"}, headers=admin)
    check(r, "creating a key")
    key = r.json()["key"]
    # Every governance feature on: limits the run never reaches, so each request is
    # reserved and settled against four counters (and recorded in the usage ledger).
    limits = [
        {"metric": "tokens", "window": "minute", "limit": 10**12},
        {"metric": "tokens", "window": "day", "limit": 10**12},
        {"metric": "requests", "window": "minute", "limit": 10**12},
        {"metric": "concurrency", "window": "-", "limit": 1000},
    ]
    q = httpx.put(f"{root}/admin/v1/teams/bench/quotas", json={"limits": limits}, headers=admin)
    check(q, "setting quotas")
    return key


def wanted(flag: bool | None, installed: bool, name: str, how: str) -> bool:
    """Whether to run an optional target: ``flag`` is --X (True), --no-X (False) or neither (None)."""
    if flag is False:
        return False
    if not installed:
        if flag:
            raise SystemExit(f"--{name.lower()}: {name} is not installed; run {how} first")
        print(f"[{name.lower()}] not installed, left out (run {how} to add it)", flush=True)
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="per round and target")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--home", type=Path, default=Path("/tmp/m2a-bench-mock"), help="M2A_HOMEs under it")
    ap.add_argument(
        "--baseline-src",
        type=Path,
        metavar="DIR",
        help="also measure the m2a gateway of this source tree (e.g. a git worktree of an older commit)",
    )
    ap.add_argument(
        "--litellm",
        action=argparse.BooleanOptionalAction,
        help="also measure LiteLLM's proxy (default: when bench/.venv-litellm has it)",
    )
    ap.add_argument(
        "--portkey",
        action=argparse.BooleanOptionalAction,
        help="also measure Portkey's gateway (default: when bench/.portkey has it)",
    )
    ap.add_argument(
        "--guardrails",
        action="store_true",
        help="this tree's gateway twice: guardrails off, and the default profile (instead of one)",
    )
    ap.add_argument(
        "--prompt-bytes",
        type=int,
        metavar="N",
        help='a prompt of about N bytes of support-ticket text (default: "hi")',
    )
    ap.add_argument(
        "--stream-chunks", type=int, default=16, metavar="N", help="chunks per streamed answer of the mock"
    )
    args = ap.parse_args()
    if args.prompt_bytes is not None and args.prompt_bytes < 1:
        raise SystemExit("--prompt-bytes must be at least 1")
    prompt = ticket_prompt(args.prompt_bytes)
    window = builtin_profiles()["default"].stream_hold_chars
    if args.guardrails:  # the run measures checking: the prompt must pass the profile untouched
        v = Policy("default", builtin_profiles()["default"]).check("input", prompt)
        if v.findings or v.errors:
            found = sorted({f"{f.detector}/{f.kind}" for f in v.findings} | set(v.errors))
            raise SystemExit(f"the prompt is not clean for the default profile ({v.decision}: {found})")
    baseline: tuple[Path, str] | None = None
    if args.baseline_src is not None:
        tree = args.baseline_src.resolve()
        if not (tree / "src" / "m2a" / "__init__.py").is_file():
            raise SystemExit(f"--baseline-src {args.baseline_src}: no src/m2a/__init__.py there")
        if tree == REPO.resolve():
            print("[baseline] note: --baseline-src is this tree itself (an A/A run)", flush=True)
        baseline = (tree, tree_commit(tree))
    use_litellm = wanted(args.litellm, LITELLM.exists(), "LiteLLM", "bench/litellm_env.sh")
    use_portkey = wanted(args.portkey, PORTKEY.exists(), "Portkey", "bench/portkey_env.sh")
    # Ctrl-C and kill both stop the run the way asyncio.run handles Ctrl-C, so the children are ended.
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    port = free_port()
    mock = subprocess.Popen(
        [sys.executable, str(HERE / "mock_engine.py"), str(port), "--chunks", str(args.stream_chunks)]
    )
    try:
        api_base = f"http://127.0.0.1:{port}/v1"
        models = [{"name": "mock", "engine": "remote", "url": api_base}]
        with contextlib.ExitStack() as stack:
            current = REPO / "src"
            # One gateway of this tree, or (--guardrails) one per guardrail profile.
            ours = (
                [("through m2a (guardrails off)", "off"), ("through m2a (default profile)", "default")]
                if args.guardrails
                else [("through m2a", None)]
            )
            targets: list[Target] = [("mock direct", f"{api_base}/chat/completions", None)]
            pids: dict[str, int] = {}
            for label, profile in ours:
                print(f"[{label}] this tree: {REPO} at {tree_commit(REPO)}", flush=True)
                home = args.home / ("current" if profile is None else f"guardrails-{profile}")
                extra = {} if profile is None else {"guardrails": {"default_profile": profile}}
                up = stack.enter_context(Up(models, home, label=label, src=current, extra=extra))
                targets.append((label, f"{up.base_url}/chat/completions", team_key(up.root, label)))
                pids[label] = up.pid
            if baseline is not None:
                tree, commit = baseline
                label = f"through m2a (baseline {commit})"
                print(f"[{label}] baseline tree: {tree}", flush=True)
                home = args.home / f"baseline-{commit.replace('+', '-').replace(' ', '_')}"
                old = stack.enter_context(Up(models, home, label=label, src=tree / "src"))
                if old.m2a_file == up.m2a_file:
                    raise SystemExit(f"[{label}] runs the same m2a as the current gateway: {old.m2a_file}")
                targets.append((label, f"{old.base_url}/chat/completions", team_key(old.root, label)))
                pids[label] = old.pid
            if use_litellm:
                ll = stack.enter_context(LiteLLM(api_base))
                targets.append(("through LiteLLM", f"{ll.base_url}/chat/completions", ll.key))
            if use_portkey:
                pk = stack.enter_context(Portkey(api_base))
                targets.append(("through Portkey", f"{pk.base_url}/chat/completions", None, pk.headers))
                if pk.proc is not None:
                    pids["through Portkey"] = pk.proc.pid
            print("targets: " + ", ".join(t[0] for t in targets), flush=True)
            mt = args.stream_chunks
            for target in targets:  # warm every path, and check it answers both ways
                for stream in (False, True):
                    try:
                        h = target_headers(target)
                        asyncio.run(load(target[1], target[2], 4, 1, stream, h, prompt, mt, window))
                    except SystemExit as e:
                        more = f"\n{pk.tail()}" if target[0] == "through Portkey" else ""
                        raise SystemExit(f"[{target[0]}] warm-up failed: {e}{more}") from None
            n_chunks, n_chars = stream_shape(f"{api_base}/chat/completions", prompt, mt)
            per = n_chars / max(1, n_chunks)
            whole = " (a whole answer or more: it is held to its end)" if n_chars <= window else ""
            print(
                f"prompt: {len(prompt.encode())} bytes; the mock streams {n_chunks} content chunks of"
                f" {per:g} character(s) ({n_chars} in all) per answer; the default profile's stream"
                f" hold-back: {window} characters = {window / per:g} chunks of the mock{whole}",
                flush=True,
            )
            rounds(targets, args.rounds, args.seconds, pids, prompt, args.stream_chunks, window)
    finally:
        mock.terminate()
        mock.wait()


if __name__ == "__main__":
    main()
