"""Client-side pacing of Fly Machines API calls, within Fly's documented rate limits.

Every FlyClient of a process shares one ``PACER`` (the provider host runs many resources' calls at once):
a call waits here for its (action, object) bucket rather than being refused with 429
(components/providers/fly/client.py ``_once``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

# The header that carries a machine lease's nonce (a refresh of the lease carries it too).
NONCE_HEADER = "fly-machine-lease-nonce"

# Fly's documented limits (Fly docs machines/api/working-with-machines-api §Rate Limits; superfly/docs PRs
# #1630, #1966): 1 req/s per action and per Machine (or app) id with bursts of 3, for every action; Get
# Machine 5 req/s with bursts of 10; app deletions 100 a minute. (rate per second, burst)
DEFAULT_LIMIT = (1.0, 3)
GET_MACHINE_LIMIT = (5.0, 10)
APP_DELETE_LIMIT = (100 / 60, 100)
_ID_SEGMENT_AFTER = frozenset({"machines", "volumes", "secrets", "ip_assignments", "metadata"})


class Pacer:
    """Token buckets keyed by (action, object), shared by every client of the process (the provider host
    runs many resources' calls at once): a call waits here rather than being refused with 429."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], list[float]] = {}  # key -> [tokens, updated]

    # Refill a little slower than the documented rate: the API's clock starts when a request arrives,
    # ours when it leaves, and requests do not all take equally long to get there.
    MARGIN = 0.85

    def acquire(self, key: tuple[str, str], rate: float, burst: int) -> None:
        rate *= self.MARGIN
        while True:
            with self._lock:
                now = time.monotonic()
                tokens, updated = self._buckets.get(key, [float(burst), now])
                tokens = min(float(burst), tokens + (now - updated) * rate)
                if tokens >= 1.0:
                    self._buckets[key] = [tokens - 1.0, now]
                    return
                self._buckets[key] = [tokens, now]
                delay = (1.0 - tokens) / rate
            time.sleep(delay)

    def throttled(self, key: tuple[str, str]) -> None:
        """The API said 429 anyway (another process shares the budget): empty the bucket. The retry itself
        waits for Retry-After first (client.py ``_WaitRetryAfter``)."""
        with self._lock:
            self._buckets[key] = [0.0, time.monotonic()]


PACER = Pacer()


def rate_key(
    method: str, path: str, headers: Mapping[str, str] | None, body: Any = None
) -> tuple[tuple[str, str], tuple[float, int]]:
    """(action, object) and the limit of a call, from its method and path, e.g. GET /apps/{app}/machines/{id}.
    Creating an app is an action on the app it names (a silo creates its seven apps at once); a stricter
    reading of the limit by the API would answer 429, which is honoured like any other."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    template, subject = [], ""
    for i, part in enumerate(parts):
        if i == 1 and parts[0] == "apps":
            template.append("{app}")
            subject = part
        elif i >= 3 and parts[i - 1] in _ID_SEGMENT_AFTER:
            template.append("{id}")
            subject = part
        else:
            template.append(part)
    action = f"{method} /{'/'.join(template)}"
    if method == "POST" and action.endswith("/lease") and headers and headers.get(NONCE_HEADER):
        action += " (refresh)"  # fly-go counts acquiring and refreshing a lease as two actions
    if action == "GET /apps/{app}/machines/{id}":
        return (action, subject), GET_MACHINE_LIMIT
    if action == "DELETE /apps/{app}":
        return (action, "*"), APP_DELETE_LIMIT
    if action == "POST /apps" and isinstance(body, Mapping):
        subject = str(body.get("name") or "")
    return (action, subject or "*"), DEFAULT_LIMIT
