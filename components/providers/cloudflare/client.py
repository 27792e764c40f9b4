"""The R2 control plane (buckets, lifecycle rules, temporary credentials) through Cloudflare's own Python
library (``cloudflare`` on PyPI, cloudflare/cloudflare-python): its paths, request bodies and types are
generated from Cloudflare's OpenAPI spec, so they cannot drift from the API the way a hand-written
client did (issue 26 item 19: ``Date`` accepted for ``abortMultipartUploadsTransition``, a lifecycle
rule sent without a prefix).

What this wrapper adds to the library:
- **Retries that are ours.** The library retries every call by default (2 retries, on 408, 409, 429,
  5xx and connection errors: ``_base_client._should_retry``), 409 included, which is how R2 answers
  "bucket exists" and "bucket not empty". It runs with ``max_retries=0``; each call here is retried on
  the shared transient statuses (``providers/http.is_transient``) and on connection errors, and every
  call made here is safe to repeat: PUT replaces, GET and DELETE are idempotent, a bucket create that
  already took effect is answered by adoption in the bucket provider (code 10004), and a second set of
  temporary credentials is only unused (they cannot be revoked; they lapse).
- **Errors a user can act on**: ``CloudflareError`` with Cloudflare's error codes, the call (method and
  path under the account) and the ``cf-ray`` request id; never the token.
- **Only our settings.** The library reads ``CLOUDFLARE_API_KEY``, ``CLOUDFLARE_EMAIL`` and
  ``CLOUDFLARE_API_USER_SERVICE_KEY`` from the environment and sends them with the token (and prefers
  them to it: ``Cloudflare.auth_headers``): a developer's global key would go to whatever URL the stack
  names. They are cleared; the token, account and URL come from settings.py.
- One TLS context per process (``providers/http.tls_context``) and no redirects followed.

The library is imported when a client is made, not when this module is: ``import cloudflare`` costs
0.1-0.2 s of CPU, which every Pulumi program run and policy-pack load would otherwise pay for modules
that only name the R2 resources.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

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

if TYPE_CHECKING:
    from cloudflare import Cloudflare
    from cloudflare.types.r2.buckets import lifecycle_update_params

# The header Cloudflare puts on every answer, naming the request for its support.
REQUEST_ID_HEADER = "cf-ray"
T = TypeVar("T")


@dataclass(frozen=True)
class TemporaryCredentials:
    """A set of temporary R2 credentials. Not the library's response model, whose repr prints the secret
    and the session token (a traceback or an assertion message would show them)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)


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
        import cloudflare

        self.settings = settings
        self._attempts = attempts
        self._wait = wait_exponential_jitter(multiplier=backoff_initial, max=backoff_max, jitter=backoff_initial)
        # Error paths are shown relative to the account, as Cloudflare's API reference writes them.
        self._account_path = f"{urlsplit(settings.api_url).path}/accounts/{settings.account_id}"
        http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
            verify=tls_context(),
            follow_redirects=False,
        )
        self._sdk: Cloudflare = cloudflare.Cloudflare(
            api_token=settings.token,
            base_url=settings.api_url,
            max_retries=0,
            http_client=http,
            # Named here too so that no CLOUDFLARE_CUSTOM_HEADERS (read by the library) can replace the token.
            default_headers={
                "Authorization": f"Bearer {settings.token}",
                "User-Agent": f"silo-infra/pulumi cloudflare-python/{cloudflare.__version__}",
            },
        )
        # The library falls back to these environment variables and sends what it finds with the token.
        self._sdk.api_key = self._sdk.api_email = self._sdk.user_service_key = None

    def __enter__(self) -> CloudflareClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sdk.close()

    # -- calls --------------------------------------------------------------------------------------
    def _call(self, call: Callable[[], T]) -> T:
        """One library call, retried on 408, 429, 5xx and connection errors (every call here is safe to repeat)."""
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return self._once(call)
        raise AssertionError("unreachable: tenacity reraises")

    def _once(self, call: Callable[[], T]) -> T:
        import cloudflare

        try:
            return call()
        except cloudflare.APIStatusError as exc:
            raise self._status_error(exc) from None
        except cloudflare.APIConnectionError as exc:  # APITimeoutError too
            method, path = self._where(exc.request)
            cause = exc.__cause__ or exc
            raise CloudflareError(
                f"cannot reach the Cloudflare API at {self.settings.api_url}: {cause}",
                method=method,
                path=path,
                sent=not isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout),
            ) from exc

    def _where(self, request: httpx.Request) -> tuple[str, str]:
        path = request.url.path
        return request.method, path.removeprefix(self._account_path) or path

    def _status_error(self, exc: Any) -> CloudflareError:
        body = exc.body if isinstance(exc.body, dict) else {}
        errors = [e for e in (body.get("errors") or []) if isinstance(e, dict)]
        codes = tuple(int(e["code"]) for e in errors if str(e.get("code", "")).isdigit())
        detail = "; ".join(f"{e.get('message')} (code {e.get('code')})" for e in errors)
        response: httpx.Response = exc.response
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
        method, path = self._where(response.request)
        return kind(
            message,
            status=status,
            codes=codes,
            method=method,
            path=path,
            request_id=response.headers.get(REQUEST_ID_HEADER),
        )

    @staticmethod
    def _jurisdiction(jurisdiction: str) -> Any:
        """The ``cf-r2-jurisdiction`` header's value, or none at all for the default jurisdiction."""
        from cloudflare import omit

        return omit if jurisdiction in ("", "default") else jurisdiction

    # -- buckets ----------------------------------------------------------------------------------
    def create_bucket(
        self, name: str, *, location_hint: str | None = None, jurisdiction: str = "default"
    ) -> dict[str, Any]:
        from cloudflare import omit

        bucket = self._call(
            lambda: self._sdk.r2.buckets.create(
                account_id=self.settings.account_id,
                name=name,
                location_hint=location_hint.lower() if location_hint else omit,  # type: ignore[arg-type]
                cf_r2_jurisdiction=self._jurisdiction(jurisdiction),
            )
        )
        return bucket.to_dict(mode="json")

    def get_bucket(self, name: str, jurisdiction: str = "default") -> dict[str, Any] | None:
        try:
            bucket = self._call(
                lambda: self._sdk.r2.buckets.get(
                    name, account_id=self.settings.account_id, cf_r2_jurisdiction=self._jurisdiction(jurisdiction)
                )
            )
        except CloudflareNotFound:
            return None
        return bucket.to_dict(mode="json")

    def delete_bucket(self, name: str, jurisdiction: str = "default") -> bool:
        """False when the bucket was already gone."""
        try:
            self._call(
                lambda: self._sdk.r2.buckets.delete(
                    name, account_id=self.settings.account_id, cf_r2_jurisdiction=self._jurisdiction(jurisdiction)
                )
            )
        except CloudflareNotFound:
            return False
        return True

    def get_lifecycle(self, bucket: str, jurisdiction: str = "default") -> list[dict[str, Any]] | None:
        """The rules in the API's (camelCase) shape, as R2 answered them; None when the bucket is gone."""
        try:
            answer = self._call(
                lambda: self._sdk.r2.buckets.lifecycle.get(
                    bucket, account_id=self.settings.account_id, cf_r2_jurisdiction=self._jurisdiction(jurisdiction)
                )
            )
        except CloudflareNotFound:
            return None
        return list(answer.to_dict(mode="json").get("rules") or [])

    def put_lifecycle(self, bucket: str, rules: list[dict[str, Any]], jurisdiction: str = "default") -> None:
        """Replaces the bucket's whole rule set (R2's PUT semantics)."""
        typed = [sdk_rule(rule) for rule in rules]
        self._call(
            lambda: self._sdk.r2.buckets.lifecycle.update(
                bucket,
                account_id=self.settings.account_id,
                rules=typed,
                cf_r2_jurisdiction=self._jurisdiction(jurisdiction),
            )
        )

    def temp_credentials(
        self,
        bucket: str,
        *,
        parent_access_key_id: str,
        permission: str,
        ttl_seconds: int,
        prefixes: Iterable[str] | None = None,
        objects: Iterable[str] | None = None,
    ) -> TemporaryCredentials:
        """Credentials scoped to the bucket (and prefixes); all three parts are present.

        Sent without a jurisdiction header, as Cloudflare's API defines none for this call."""
        from cloudflare import omit

        creds = self._call(
            lambda: self._sdk.r2.temporary_credentials.create(
                account_id=self.settings.account_id,
                bucket=bucket,
                parent_access_key_id=parent_access_key_id,
                permission=permission,  # type: ignore[arg-type]
                ttl_seconds=int(ttl_seconds),
                prefixes=list(prefixes) if prefixes is not None else omit,
                objects=list(objects) if objects is not None else omit,
            )
        )
        if not (creds.access_key_id and creds.secret_access_key and creds.session_token):
            # The response type makes all three optional; a town cannot use a partial set.
            raise CloudflareError(
                f"the temporary credentials for bucket {bucket!r} came back incomplete",
                method="POST",
                path="/r2/temp-access-credentials",
            )
        return TemporaryCredentials(creds.access_key_id, creds.secret_access_key, creds.session_token)


def sdk_rule(rule: Mapping[str, Any]) -> lifecycle_update_params.Rule:
    """One lifecycle rule in the API's (camelCase) shape, as the library's ``lifecycle_update_params.Rule``.

    The library then writes the wire keys itself. ``conditions.prefix`` is required by that type
    ("an empty prefix can be provided to scope rule to all objects/uploads"), so a whole-bucket rule is
    sent with ``prefix: ""`` even when it was read back from R2 as ``conditions: {}``."""
    typed: dict[str, Any] = {
        "id": rule["id"],
        "enabled": rule["enabled"],
        "conditions": {"prefix": (rule.get("conditions") or {}).get("prefix") or ""},
    }
    if rule.get("abortMultipartUploadsTransition") is not None:
        typed["abort_multipart_uploads_transition"] = {
            "condition": _sdk_condition(rule["abortMultipartUploadsTransition"]["condition"])
        }
    if rule.get("deleteObjectsTransition") is not None:
        typed["delete_objects_transition"] = {"condition": _sdk_condition(rule["deleteObjectsTransition"]["condition"])}
    if rule.get("storageClassTransitions"):
        typed["storage_class_transitions"] = [
            {"condition": _sdk_condition(t["condition"]), "storage_class": t["storageClass"]}
            for t in rule["storageClassTransitions"]
        ]
    return typed  # type: ignore[return-value]


def _sdk_condition(condition: Mapping[str, Any]) -> dict[str, Any]:
    if condition["type"] == "Age":
        return {"type": "Age", "max_age": int(condition["maxAge"])}
    return {"type": condition["type"], "date": condition["date"]}
