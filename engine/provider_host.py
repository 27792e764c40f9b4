"""The Python dynamic-provider host the engine starts (engine/bin/pulumi-resource-pulumi-python).

It is the SDK's own host, `python -m pulumi.dynamic`, unchanged except for one number: the SDK serves
gRPC on a pool of 4 threads (sdk/python/lib/pulumi/dynamic/__main__.py, `main()`), so one process runs at
most 4 provider calls at a time whatever `pulumi up --parallel` says. Every dynamic resource of a stack
shares that one process, and each call here is an HTTP round trip to Fly or Cloudflare that mostly
waits: with 100 towns (about 900 creates) the 4 slots, not the engine or the API, set the pace
(bench/run.py: towns100_up_wall_s). The pool is widened to PROVIDER_HOST_THREADS; everything else
(protocol, provider cache, configure) is the SDK's code.

A provider call that fails with an error a user can act on (components/errors.py UserError: an API that
answered no, a database that refused) reaches the engine as its message alone: the SDK's host sends
`traceback.format_exc()` as the gRPC error of any failed call (`_abort_with_traceback`), which the CLI
printed as ~25 lines per resource, and an unreachable emulator made over a thousand lines. Other
exceptions (bugs) keep their traceback, as do all with SILO_DEBUG=1.

The providers are safe to call concurrently: each call builds its own state from its request, the
HTTP clients are thread-safe (httpx), and client-side pacing is per process (components/providers/fly/client.py).
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from concurrent import futures

from components.errors import UserError, debugging, one_line
from engine.orphans import exit_with_engine

# Matches the `--parallel` that scripts/pulumi.sh and bench/run.py give the engine: every step the
# engine runs at once can have its provider call served.
DEFAULT_THREADS = 32
THREADS_ENV = "SILO_PROVIDER_HOST_THREADS"


class _WiderPool(futures.ThreadPoolExecutor):
    def __init__(self, max_workers: int | None = None, *args: object, **kwargs: object) -> None:
        super().__init__(max(max_workers or 0, _threads()), *args, **kwargs)  # type: ignore[arg-type]


def _threads() -> int:
    raw = os.environ.get(THREADS_ENV, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_THREADS


_FORMAT_EXC = traceback.format_exc


def _format_exc(*args: object, **kwargs: object) -> str:
    """What the SDK's host sends for a failed call: a user error's message alone, else the traceback."""
    exc = sys.exc_info()[1]
    if isinstance(exc, UserError) and not debugging():
        return one_line(exc)
    return _FORMAT_EXC(*args, **kwargs)  # type: ignore[arg-type]


def main(watch_pid: int | None = None) -> None:
    """Serve. `watch_pid`: the process whose end ends this one, when the engine is not the parent (a host
    forked by engine/provider_zygote.py watches the client the engine started)."""
    # The SDK's host looks the pool class up on `concurrent.futures` when it starts its server, and
    # `traceback.format_exc` up when a call fails.
    futures.ThreadPoolExecutor = _WiderPool  # type: ignore[misc]
    traceback.format_exc = _format_exc
    exit_with_engine(engine_pid=watch_pid)  # a killed engine does not stop its plugins (engine/orphans.py)
    runpy.run_module("pulumi.dynamic", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
