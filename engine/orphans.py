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


def exit_with_engine(poll_s: float = POLL_S) -> None:
    """Start the watch: a daemon thread that ends this process once its parent is no longer the engine."""
    engine = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != engine:
                # Nothing to report to, nobody to serve: no cleanup that could block (a gRPC server's stop
                # waits for calls that will never be answered).
                os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="exit-with-engine", daemon=True).start()
