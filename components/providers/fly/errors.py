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
