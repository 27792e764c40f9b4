"""The plugins this project runs for the engine exit when the engine is gone.

The CLI starts every plugin in a process group of its own (pgid == pid: seen with `ps -o pid,pgid`), so
a killed `pulumi up` (SIGKILL, the OOM killer, `kill -9` of its group after a hang) takes none of them
along: each language host, provider host and policy pack kept serving an engine that no longer existed,
forever. A CI run of the suite left 13 of them; a day's work left about a hundred.

So each plugin here watches its parent, the engine that started it (the launchers `exec` the
interpreter: engine/bin/*, policy/run-policy-pack), and leaves once the parent has changed, i.e. it was
re-parented because the engine died. A normal end is unchanged: the engine stops its plugins itself.
Polling the parent is used rather than Linux's PR_SET_PDEATHSIG, which fires when the parent *thread*
that started the process exits: the Go runtime starts processes from threads that come and go.
"""

from __future__ import annotations

import os
import threading
import time

POLL_S = 1.0
EXIT_ORPHANED = 3


def exit_with_engine(poll_s: float = POLL_S, engine_pid: int | None = None) -> None:
    """Start the watch: a daemon thread that ends this process once its parent is no longer the engine,
    or, given `engine_pid` (a process that is not its parent: engine/provider_zygote.py), once that
    process has ended."""
    engine = os.getppid() if engine_pid is None else engine_pid

    def gone() -> bool:
        if engine_pid is None:
            return os.getppid() != engine
        return not alive(engine_pid)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if gone():
                # Nothing to report to, nobody to serve: no cleanup that could block (a gRPC server's stop
                # waits for calls that will never be answered).
                os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="exit-with-engine", daemon=True).start()


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not os.path.isdir("/proc")  # no /proc entry, on a system that has /proc: gone
