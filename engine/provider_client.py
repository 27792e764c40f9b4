"""The dynamic-provider plugin as the engine sees it when a warm host is on offer (engine/provider_zygote.py).

Asks the zygote at `$SILO_PROVIDER_ZYGOTE` for a host serving this process's stdin, stdout and stderr,
then stands in for it: the engine's signals are passed on, and this process exits with the host's code.
It imports nothing heavy, so it costs a few milliseconds. Without a zygote it becomes a cold host
(`python -m engine.provider_host`), as the launcher would have started.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import sys

POLL_S = 0.5


def _cold(args: list[str]) -> None:
    os.execv(sys.executable, [sys.executable, "-u", "-m", "engine.provider_host", *args])


class _Lines:
    """Lines from the zygote, read without a buffer that `select` cannot see (the pid and the exit code can
    arrive together when a host ends at once)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""

    def ready(self) -> bool:
        return b"\n" in self.pending

    def next(self) -> bytes | None:
        """The next line; None once the zygote has closed the connection."""
        while b"\n" not in self.pending:
            chunk = self.sock.recv(64)
            if not chunk:
                return None
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line


def main() -> None:
    args = sys.argv[1:]
    path = os.environ.get("SILO_PROVIDER_ZYGOTE", "")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = {"args": args, "env": dict(os.environ), "cwd": os.getcwd(), "client_pid": os.getpid()}
        socket.send_fds(sock, [json.dumps(request).encode()], [0, 1, 2])
        sock.shutdown(socket.SHUT_WR)  # the request is whole; the answers still come back
        lines = _Lines(sock)
        host = int(lines.next() or b"")
    except (OSError, ValueError):
        sock.close()
        _cold(args)
        return
    engine = os.getppid()

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(host, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    while True:
        if lines.ready() or selector.select(timeout=POLL_S):
            code = lines.next()
            if code is not None:
                status = int(code)  # negative: the host was killed by that signal, told as a shell would
                sys.exit(status if status >= 0 else 128 - status)
            _wait_without_zygote(host, engine)  # the zygote ended before its host: watch the host itself
            sys.exit(0)
        if os.getppid() != engine:  # the engine died: the host has nobody to serve
            forward(signal.SIGKILL, None)
            sys.exit(3)


def _wait_without_zygote(host: int, engine: int) -> None:
    import time

    from engine.orphans import alive

    while alive(host):
        if os.getppid() != engine:
            os.kill(host, signal.SIGKILL)
            return
        time.sleep(POLL_S)


if __name__ == "__main__":
    main()
