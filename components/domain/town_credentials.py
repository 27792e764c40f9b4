"""When a town's temporary R2 credentials lapse, as its machine is told (pure: no I/O).

The town stack puts the expiry of the town's credentials (`R2TownCredentials.expires_at`) into the town
machine's env; `silo status` and `silo doctor` read it back from the machine's config through this one
reading, and the machine itself warns in the same window (town-status.js, r2-sync.sh).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# The town machine's name in its app (components/stacks/town.py) and the env key that carries the expiry.
TOWN_MACHINE = "town"
EXPIRY_ENV = "R2_CREDENTIALS_EXPIRE_AT"
# As the machine warns, and as a `pulumi up` re-mints them (R2TownCredentials' refresh margin: 2 days).
EXPIRY_WARNING = dt.timedelta(days=2)

State = Literal["ok", "expiring", "expired", "unknown"]


@dataclass(frozen=True)
class Expiry:
    state: State
    value: str  # the machine's EXPIRY_ENV as written ("" when it has none)
    said: str  # one sentence for a person


def _left(delta: dt.timedelta) -> str:
    days, seconds = delta.days, delta.seconds
    if days:
        return f"{days} day{'s' if days != 1 else ''} {seconds // 3600} h"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def machine_expiry(machine: Mapping[str, Any], now: dt.datetime) -> Expiry:
    """The expiry of a town machine's R2 credentials, from its config's env: ok, expiring (within
    EXPIRY_WARNING), expired, or unknown (never told, or not a time)."""
    value = str(((machine.get("config") or {}).get("env") or {}).get(EXPIRY_ENV) or "")
    if not value:
        said = "its machine was not told when its R2 credentials expire (the next `pulumi up` does)"
        return Expiry("unknown", value, said)
    try:
        expires = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if expires.tzinfo is None:
            raise ValueError("no time zone")
    except ValueError:
        return Expiry("unknown", value, f"{EXPIRY_ENV} is not an ISO 8601 time ({value!r})")
    if expires <= now:
        return Expiry(
            "expired", value, f"R2 credentials expired at {value}: its backups have stopped; `pulumi up` renews them"
        )
    if expires - now <= EXPIRY_WARNING:
        left = _left(expires - now)
        return Expiry("expiring", value, f"R2 credentials expire in {left} ({value}); the next `pulumi up` renews them")
    return Expiry("ok", value, f"R2 credentials valid until {value}")
