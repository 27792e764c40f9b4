"""The Cloudflare API client for the R2 control plane (buckets, lifecycle rules, temporary credentials).

Account-scoped: every path is relative to ``/accounts/{account_id}``. Each call is retried on the
transient statuses of the shared HTTP layer and on connection errors; the calls made here are all
safe to repeat: PUT replaces, GET and DELETE are idempotent, a bucket create that already took effect
is answered by adoption in the bucket provider, and a second set of temporary credentials is only
unused (they cannot be revoked; they lapse).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from components.providers.cloudflare.errors import (
    CloudflareAuthError,
    CloudflareConflict,
    CloudflareError,
    CloudflareNotFound,
)
from components.providers.cloudflare.settings import CloudflareSettings
from components.providers.http import is_transient, tls_context

# The header Cloudflare puts on every answer, naming the request for its support.
REQUEST_ID_HEADER = "cf-ray"


class CloudflareClient:
    """The R2 control plane, account-scoped; use as a context manager."""

    def __init__(
        self,
        settings: CloudflareSettings,
        *,
        timeout: float = 30.0,
        attempts: int = 6,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.settings = settings
        self._attempts = attempts
        self._wait = wait_exponential_jitter(multiplier=backoff_initial, max=backoff_max, jitter=backoff_initial)
        self._http = httpx.Client(
            base_url=f"{settings.api_url}/accounts/{settings.account_id}",
            headers={"Authorization": f"Bearer {settings.token}", "User-Agent": "silo-infra/pulumi"},
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
            verify=tls_context(),
        )

    def __enter__(self) -> CloudflareClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        jurisdiction: str | None = None,
    ) -> httpx.Response:
        """One API call, retried on 429, 5xx and connection errors."""
        headers = {"cf-r2-jurisdiction": jurisdiction} if jurisdiction and jurisdiction != "default" else {}
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return self._once(method, path, json=json, params=params, headers=headers)
        raise AssertionError("unreachable: tenacity reraises")

    def _once(
        self, method: str, path: str, *, json: Any, params: Mapping[str, Any] | None, headers: dict
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise CloudflareError(
                f"cannot reach the Cloudflare API at {self.settings.api_url}: {exc}", method=method, path=path
            ) from exc
        if response.status_code < 400:
            return response
        try:
            errors = response.json().get("errors") or []
        except ValueError:
            errors = []
        codes = tuple(int(e.get("code", 0)) for e in errors if isinstance(e, dict))
        detail = "; ".join(f"{e.get('message')} (code {e.get('code')})" for e in errors if isinstance(e, dict))
        message = detail or response.text[:200] or response.reason_phrase
        status = response.status_code
        kind: type[CloudflareError] = CloudflareError
        if status == 404:
            kind = CloudflareNotFound
        elif status in (401, 403):
            kind = CloudflareAuthError
            message += f" — check cloudflare:apiToken (token from {self.settings.source})"
        elif status == 409:
            kind = CloudflareConflict
        raise kind(
            message,
            status=status,
            codes=codes,
            method=method,
            path=path,
            request_id=response.headers.get(REQUEST_ID_HEADER),
        )

    @staticmethod
    def _result(response: httpx.Response) -> Any:
        return response.json().get("result")

    # -- buckets ----------------------------------------------------------------------------------
    def create_bucket(
        self, name: str, *, location_hint: str | None = None, jurisdiction: str = "default"
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name}
        if location_hint:
            body["locationHint"] = location_hint.lower()
        return self._result(self.request("POST", "/r2/buckets", json=body, jurisdiction=jurisdiction))

    def get_bucket(self, name: str, jurisdiction: str = "default") -> dict[str, Any] | None:
        try:
            return self._result(self.request("GET", f"/r2/buckets/{name}", jurisdiction=jurisdiction))
        except CloudflareNotFound:
            return None

    def delete_bucket(self, name: str, jurisdiction: str = "default") -> bool:
        """False when the bucket was already gone."""
        try:
            self.request("DELETE", f"/r2/buckets/{name}", jurisdiction=jurisdiction)
        except CloudflareNotFound:
            return False
        return True

    def get_lifecycle(self, bucket: str, jurisdiction: str = "default") -> list[dict[str, Any]] | None:
        try:
            result = self._result(self.request("GET", f"/r2/buckets/{bucket}/lifecycle", jurisdiction=jurisdiction))
        except CloudflareNotFound:
            return None
        return list((result or {}).get("rules") or [])

    def put_lifecycle(self, bucket: str, rules: list[dict[str, Any]], jurisdiction: str = "default") -> None:
        """Replaces the bucket's whole rule set (R2's PUT semantics)."""
        self.request("PUT", f"/r2/buckets/{bucket}/lifecycle", json={"rules": rules}, jurisdiction=jurisdiction)

    def temp_credentials(
        self,
        bucket: str,
        *,
        parent_access_key_id: str,
        permission: str,
        ttl_seconds: int,
        prefixes: Iterable[str] | None = None,
        objects: Iterable[str] | None = None,
    ) -> dict[str, str]:
        """``{accessKeyId, secretAccessKey, sessionToken}`` scoped to the bucket (and prefixes).

        Sent without a jurisdiction header, as Cloudflare's SDKs do: the call defines none."""
        body: dict[str, Any] = {
            "bucket": bucket,
            "parentAccessKeyId": parent_access_key_id,
            "permission": permission,
            "ttlSeconds": int(ttl_seconds),
        }
        if prefixes is not None:
            body["prefixes"] = list(prefixes)
        if objects is not None:
            body["objects"] = list(objects)
        return self._result(self.request("POST", "/r2/temp-access-credentials", json=body))
