"""Small helpers for the Fly Machines API emulator: ids, timestamps, errors, rate limiting, validation."""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from werkzeug.wrappers import Request, Response

# Crockford base32, the alphabet of ULIDs (Fly machine versions are 26-char ULIDs).
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

APP_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
VOLUME_NAME_RE = re.compile(r"^[a-z0-9_]{1,30}$")
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SIGNALS = frozenset({"SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM"})
WAIT_STATES = frozenset({"started", "stopped", "suspended", "destroyed", "failed", "settled"})
LIST_STATES = frozenset({"created", "started", "stopped", "suspended", "failed"})
TRANSIENT_STATES = frozenset(
    {"creating", "starting", "stopping", "restarting", "suspending", "destroying", "updating", "replacing"}
)


class ApiError(Exception):
    """An error answered in Fly's body shape ``{"error": ..., "status": ...}``."""

    def __init__(self, status: int, message: str, fly_status: str | None = None):
        super().__init__(message)
        self.http_status = status
        self.message = message
        self.fly_status = fly_status

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.fly_status:
            body["status"] = self.fly_status
        return body


def not_found() -> ApiError:
    return ApiError(404, "not found")


def ulid(now: float | None = None) -> str:
    """26 chars: 48-bit millisecond time then 80 random bits, Crockford base32 (sortable by time)."""
    ms = int((time.time() if now is None else now) * 1000)
    head = "".join(_CROCKFORD[(ms >> (5 * i)) & 31] for i in reversed(range(10)))
    bits = int.from_bytes(secrets.token_bytes(10))  # one system call, not one per character
    tail = "".join(_CROCKFORD[(bits >> (5 * i)) & 31] for i in range(16))
    return head + tail


def machine_id() -> str:
    return secrets.token_hex(7)  # Fly machine ids are 14 hex chars, e.g. "3d8d9016b14389"


def app_id() -> str:
    return "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(16))


def volume_id() -> str:
    return "vol_" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(16))


def lease_nonce() -> str:
    return secrets.token_hex(6)


def request_id() -> str:
    return f"{ulid()}-yul"


def private_ipv6() -> str:
    """A 6PN address: ``fdaa:<org net>:<...>``."""
    groups = [secrets.token_hex(2).lstrip("0") or "0" for _ in range(4)]
    return f"fdaa:0:{groups[0]}:a7b:{groups[1]}:{groups[2]}:{groups[3]}:2"


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_ms(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def secret_digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def parse_bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def require_int(
    body: dict[str, Any], key: str, *, default: int | None = None, lo: int | None = None, hi: int | None = None
) -> int | None:
    """An integer field of a JSON body (JSON floats with no fraction count, booleans do not)."""
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ApiError(400, f"invalid {key}: must be an integer, got {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ApiError(400, f"invalid {key}: {value} is outside the allowed range [{lo}, {hi}]")
    return value


def require_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"invalid {key}: must be a boolean, got {value!r}")
    return value


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class TokenBuckets:
    """Fly's documented limits: token buckets keyed by (action, machine-or-app id)."""

    buckets: dict[tuple[str, str], _Bucket] = field(default_factory=dict)

    def take(self, key: tuple[str, str], rate: float, burst: int, now: float) -> float | None:
        """Take one token; None when allowed, else the seconds until a token is available."""
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = _Bucket(tokens=float(burst), updated=now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / rate

    def clear(self) -> None:
        self.buckets.clear()


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def json_body(request: Request) -> dict:
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid JSON body: an object is expected")
    return body


def json_response(status: int, payload: Any) -> Response:
    if payload is None:
        return Response(status=status)
    return Response(json.dumps(payload), status=status, mimetype="application/json")
