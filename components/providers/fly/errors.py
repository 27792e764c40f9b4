"""The Fly Machines API's errors, one class per case a caller handles differently."""

from __future__ import annotations

from typing import Any

from components.providers.http import ApiError


class FlyError(ApiError):
    """A Fly Machines API error; carries the answer's fly-request-id for Fly support and, when the API
    gave one, the machine state it reported (``fly_status``)."""

    REQUEST_ID_LABEL = "fly-request-id"

    def __init__(self, message: str, *, fly_status: str | None = None, **kwargs: Any):
        self.fly_status = fly_status
        super().__init__(message, **kwargs)


class FlyNotFound(FlyError):
    pass


class FlyAuthError(FlyError):
    pass


class FlyNameTaken(FlyError):
    pass


class FlyConflict(FlyError):
    pass


class FlyWaitTimeout(FlyError):
    pass


class FlyNothingListening(FlyError):
    """A loopback Fly API (the local emulator) refused the connection: nothing listens there. Unlike a
    remote API's network trouble, waiting will not change it, so it is said at once instead of after
    every retry of every call (an `up` used to take three minutes to report it)."""

    @property
    def transient(self) -> bool:
        return False

    @property
    def not_executed(self) -> bool:
        return False  # sent nowhere, but no use sending again
