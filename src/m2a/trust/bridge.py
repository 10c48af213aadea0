"""The in-sandbox side of the egress bridge: the sandbox's only way out.

A sandboxed command with network access lives in a network namespace that has nothing but ``lo``.
This program runs first inside it: it listens on ``127.0.0.1:PORT`` there and forwards every
connection, byte for byte, to m2a's egress proxy through the proxy's Unix socket (bound into the
sandbox); then it runs the command as its child (which has ``HTTP(S)_PROXY`` pointing at the port)
and exits with the command's status (128 + n when signal n ended it). Whatever it leaves behind
ends with the sandbox's pid namespace. It speaks no HTTP itself: the proxy decides what passes.

    python -I -S bridge.py --socket /run/m2a-egress.sock --listen 3128 -- <argv...>

Standard library only, started with ``-I -S`` (no site-packages inside the sandbox).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _serve(conn: socket.socket, target: str) -> None:
    try:
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        up.connect(target)
    except OSError as e:
        sys.stderr.write(f"m2a bridge: the egress proxy is unreachable: {e.strerror}\n")
        conn.close()
        return
    back = threading.Thread(target=_pump, args=(up, conn), daemon=True)
    back.start()
    _pump(conn, up)
    back.join()
    conn.close()
    up.close()


def _accept(listener: socket.socket, target: str) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_serve, args=(conn, target), daemon=True).start()


def listen(port: int) -> socket.socket:
    """The bridge's listening socket on the sandbox's loopback."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bridge", description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", required=True, help="the egress proxy's Unix socket")
    p.add_argument("--listen", type=int, default=3128, help="the port on 127.0.0.1 inside the sandbox")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("no command given after --")
    try:
        listener = listen(args.listen)
    except OSError as e:
        sys.stderr.write(f"m2a bridge: cannot listen on 127.0.0.1:{args.listen}: {e.strerror}\n")
        return 125
    threading.Thread(target=_accept, args=(listener, args.socket), daemon=True).start()
    try:
        child = subprocess.Popen(command, close_fds=True)
    except OSError as e:
        sys.stderr.write(f"m2a sandbox: cannot execute {command[0]}: {e.strerror}\n")
        return 127
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: child.send_signal(s))
    code = child.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.stdout.flush()
    os._exit(main())
