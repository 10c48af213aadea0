"""A tiny engine stand-in that runs as a real child process, for tests of the supervisor.

``python tests/fake_proc_engine.py PORT [options]`` serves HTTP on 127.0.0.1:PORT:

* ``GET /health`` and ``GET /v1/models``: 200 once ready, 503 before (``--ready-after S`` seconds
  after start; ready at once by default);
* ``GET /info``: ``{"pid": ..., "grandchild": ...}``.

Options that make it behave like a real engine with workers, or like a stubborn one:

* ``--grandchild``: start a ``sleep 1000`` child (a stand-in for an engine's worker process);
* ``--grandchild-own-session``: start that child in a session (and process group) of its own;
* ``--ignore-sigterm``: ignore SIGTERM, so only SIGKILL stops it;
* ``--info-file PATH``: write the /info JSON to PATH once serving;
* ``--key K``: answer 401 unless the request carries ``Authorization: Bearer K``;
* ``--sick-file PATH``: answer 500 on the health routes while PATH exists (alive but unhealthy);
* ``--log LINE`` (repeatable): print these lines first, one every ``--log-every S`` seconds;
* ``--crash MESSAGE``: then die the way vLLM does when its engine core cannot start: the core's
  ``ValueError: MESSAGE`` traceback (in vLLM's log format), then the API server's own uncaught
  ``RuntimeError: Engine core initialization failed. See root cause above...`` (exit code 1);
* ``--crash-if-exists PATH``: crash that way only when PATH exists at start.

It prints a line or two to stdout (the supervisor's log file), like an engine loading weights.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def crash_like_vllm(message: str) -> None:
    prefix = f"(EngineCore_DP0 pid={os.getpid()}) ERROR 05-02 10:00:40 [core.py:708] "
    try:
        raise ValueError(message)
    except ValueError:
        print(prefix + "EngineCore failed to start.")
        for line in traceback.format_exc().splitlines():
            print(prefix + line)
    print(f"(EngineCore_DP0 pid={os.getpid()}) INFO 05-02 10:00:41 [core.py:900] shutting down", flush=True)
    raise RuntimeError(
        "Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore_DP0': 1}"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--ready-after", type=float, default=0.0)
    p.add_argument("--grandchild", action="store_true")
    p.add_argument("--grandchild-own-session", action="store_true")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--info-file")
    p.add_argument("--key")
    p.add_argument("--sick-file")
    p.add_argument("--log", action="append", default=[])
    p.add_argument("--log-every", type=float, default=0.0)
    p.add_argument("--crash")
    p.add_argument("--crash-if-exists")
    args = p.parse_args()

    started = time.monotonic()
    for i, line in enumerate(args.log):
        if i and args.log_every:
            time.sleep(args.log_every)
        print(line, flush=True)
    if args.crash and (not args.crash_if_exists or os.path.exists(args.crash_if_exists)):
        crash_like_vllm(args.crash)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = None
    if args.grandchild or args.grandchild_own_session:
        grandchild = subprocess.Popen(
            ["sleep", "1000"], start_new_session=args.grandchild_own_session, stdin=subprocess.DEVNULL
        )
    info = {"pid": os.getpid(), "grandchild": grandchild.pid if grandchild else None}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if args.key and self.headers.get("Authorization") != f"Bearer {args.key}":
                return self._send(401, {"error": "bad key"})
            if self.path == "/info":
                return self._send(200, info)
            if self.path in ("/health", "/v1/models"):
                if args.sick_file and os.path.exists(args.sick_file):
                    return self._send(500, {"status": "sick"})
                if time.monotonic() - started < args.ready_after:
                    return self._send(503, {"status": "loading"})
                return self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
            return self._send(404, {"error": "not found"})

        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *a: object) -> None:  # keep the log file quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"fake engine pid {os.getpid()} loading weights on port {args.port}", flush=True)
    if args.info_file:
        tmp = Path(args.info_file + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.rename(args.info_file)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
