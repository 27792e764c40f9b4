"""The Python dynamic-provider host the engine starts (engine/bin/pulumi-resource-pulumi-python).

It is the SDK's own host, `python -m pulumi.dynamic`, unchanged except for one number: the SDK serves
gRPC on a pool of 4 threads (sdk/python/lib/pulumi/dynamic/__main__.py, `main()`), so one process runs at
most 4 provider calls at a time whatever `pulumi up --parallel` says. Every dynamic resource of a stack
shares that one process, and each call here is an HTTP round trip to Fly or Cloudflare that mostly
waits: with 100 towns (about 900 creates) the 4 slots, not the engine or the API, set the pace
(bench/run.py: towns100_up_wall_s). The pool is widened to PROVIDER_HOST_THREADS; everything else
(protocol, provider cache, configure) is the SDK's code.

The providers are safe to call concurrently: each call builds its own state from its request, the
HTTP clients are thread-safe (httpx), and client-side pacing is per process (components/fly/client.py).
"""

from __future__ import annotations

import os
import runpy
from concurrent import futures

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


def main() -> None:
    # The SDK's host looks the pool class up on `concurrent.futures` when it starts its server.
    futures.ThreadPoolExecutor = _WiderPool  # type: ignore[misc]
    runpy.run_module("pulumi.dynamic", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
