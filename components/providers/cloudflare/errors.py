"""The Cloudflare API's errors, one class per case a caller handles differently."""

from __future__ import annotations

from typing import Any

from components.providers.http import ApiError


class CloudflareError(ApiError):
    """A Cloudflare API error; the message carries Cloudflare's error codes and never the token.

    ``codes`` are the ``errors[].code`` of the answer's envelope: R2 reports some cases (a bucket that
    already exists, one that is not empty) by code, with a status that varies. The request id is the
    answer's ``cf-ray`` header, the id Cloudflare support asks for.
    """

    REQUEST_ID_LABEL = "cf-ray"

    def __init__(self, message: str, *, codes: tuple[int, ...] = (), **kwargs: Any):
        self.codes = codes
        super().__init__(message, **kwargs)


class CloudflareNotFound(CloudflareError):
    pass


class CloudflareAuthError(CloudflareError):
    pass


class CloudflareConflict(CloudflareError):
    pass
