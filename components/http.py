"""What every HTTP client here shares."""

from __future__ import annotations

import functools
import ssl

import certifi


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process, verifying against certifi's CA bundle (httpx's default).

    httpx builds a fresh one for every Client, which loads the whole CA bundle (~25 ms of CPU); the
    providers make a client per call, so a 100-town `up` spent more time there than anywhere else
    (py-spy over bench/run.py).
    """
    return ssl.create_default_context(cafile=certifi.where())
