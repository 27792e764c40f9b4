"""What every HTTP client here (Fly Machines, Cloudflare) shares: which statuses are worth another try,
the error base that says what was called and carries the answer's request id, one TLS context, and the
loopback test that decides whether a token-less run may talk to a URL."""

from __future__ import annotations

import functools
import ipaddress
import ssl
from urllib.parse import urlsplit

import certifi

from components.errors import UserError

# Timeouts, rate limits and server errors: the request may succeed if sent again (whether it is *safe*
# to send again is each call's own question: see the clients).
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class ApiError(UserError):
    """An API error the user can act on: the call, its status and the answer's request id (for support)."""

    REQUEST_ID_LABEL = "request-id"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        method: str = "",
        path: str = "",
        retry_after: float | None = None,
        sent: bool = True,
    ):
        self.status = status
        self.request_id = request_id
        self.method = method
        self.path = path
        self.retry_after = retry_after
        self.sent = sent  # False: the request never reached the API (the connection could not be made)
        self.message = message
        where = f" ({method} {path}" if method else " ("
        where += f", HTTP {status}" if status else ""
        where += f", {self.REQUEST_ID_LABEL} {request_id})" if request_id else ")"
        super().__init__(message + (where if where != " ()" else ""))

    @property
    def transient(self) -> bool:
        return self.status is None or self.status in TRANSIENT_STATUSES

    @property
    def not_executed(self) -> bool:
        """The API did not act on the request: safe to send again whatever it was."""
        return self.status == 429 or (self.status is None and not self.sent)


def is_transient(exc: BaseException) -> bool:
    """The retry predicate of every client here: an API error worth sending again (see ApiError.transient)."""
    return isinstance(exc, ApiError) and exc.transient


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context per process, verifying against certifi's CA bundle (httpx's default).

    httpx builds a fresh one for every Client, which loads the whole CA bundle (~25 ms of CPU); the
    providers make a client per call, so a 100-town `up` spent more time there than anywhere else
    (py-spy over bench/run.py).
    """
    return ssl.create_default_context(cafile=certifi.where())


def is_loopback_url(url: str) -> bool:
    """True only when the URL's host is loopback: an address in 127.0.0.0/8, ::1, or exactly ``localhost``.

    The host is parsed, never searched for: ``http://localhost.evil.tld``, ``http://localhost@evil.tld``
    or ``http://evil.tld/?u=http://127.0.0.1`` name a remote host, and a token-less run must not talk to
    one believing it is the local emulator.
    """
    try:
        host = urlsplit(url).hostname  # lowercased, brackets and userinfo removed
    except ValueError:  # an unbalanced "[" in an IPv6 host
        return False
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost
        return False
