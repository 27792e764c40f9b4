"""URL checks shared by the Fly and Cloudflare settings."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


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
