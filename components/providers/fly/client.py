"""FlyClient: the Fly Machines REST API over httpx, with the behaviour flyctl and fly-go rely on.

Retries (Fly docs, Working with the Machines API > Rate limits; flyctl internal/flapsutil/retry.go):
- GETs are retried on 408, 429, 5xx and connection errors, with exponential backoff and jitter (tenacity),
  never sooner than a 429's Retry-After.
- Everything else is sent again only when that is safe, and each method says which case it is in:
  a 429 and a connection that could not be made were not executed, so those are always re-sent; after an
  ambiguous failure (408, 5xx, a read timeout: the change may or may not have happened) a call is re-sent
  only when it is idempotent by construction or after checking that the first one did not take effect.
  fly-go itself retries only GETs (flaps/flaps.go ``_sendRequest``: ``safeToRetry := method == GET``).
- Every call is paced by a client-side token bucket per action and object with Fly's documented limits
  (1 req/s, bursts of 3; Get Machine 5 req/s, bursts of 10), shared by every client in the process, so
  polling loops stay within them instead of collecting 429s.
- ``wait`` blocks at most 60 s per call server-side; longer waits loop and treat 408 as "not yet".
- Mutations of an existing machine hold a lease (``fly-machine-lease-nonce``), refreshed in the
  background for as long as it is held (a lease expires after its TTL; flyctl refreshes it the same way).

Every error carries the ``fly-request-id`` of the answer it came from (or of the last answer of a wait).

A client is built inside each provider method (it holds an httpx connection pool, which must not be
pickled into the provider blob) and closed after: ``with FlyClient(settings) as fly: ...``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity.wait import wait_exponential_jitter

from components.providers.fly import flytoml
from components.providers.fly.answers import describe_events, ip_kind
from components.providers.fly.errors import (
    FlyAuthError,
    FlyConflict,
    FlyError,
    FlyNameTaken,
    FlyNotFound,
    FlyNothingListening,
    FlyWaitTimeout,
)
from components.providers.fly.pacing import NONCE_HEADER, PACER, rate_key
from components.providers.fly.settings import FlySettings
from components.providers.http import is_loopback_url, is_transient, tls_context

log = logging.getLogger(__name__)

T = TypeVar("T")

WAIT_CALL_MAX_S = 60  # the API refuses longer waits with 400 (Machines OpenAPI spec, Machines_wait)
COMPAT_CHECK_PREFIX = "bg_deployments_compat"
# Health-check polling backs off from 0.1 s to this. The client's waits sit on the critical path of
# an up (every machine waits for its checks before its dependents start), and the overshoot past the
# moment checks pass averages half this interval; 0.5 s keeps one poller at <= 2 GET/s per machine,
# well inside Get Machine's documented 5 req/s (burst 10) limit (Fly docs, Machines API > Rate limits).
CHECK_POLL_MAX_S = 0.5
# fly-go flaps/flaps_volumes.go destroyedVolumeStates, plus the final state: such a volume is gone for
# every purpose here (adopting one by name, or counting it as data an app still holds).
GONE_VOLUME_STATES = frozenset(
    {"scheduling_destroy", "fork_cleanup", "waiting_for_detach", "pending_destroy", "destroying", "destroyed"}
)
# How long a new app may answer 404/401 before it is visible (fly-go flaps/retry.go Retry: 1 minute).
APP_VISIBLE_WAIT_S = 60.0
# After a lost answer or a "name taken", how long one look for the app waits out its 404/401 before the
# create is tried again (a name held by an app being deleted frees up meanwhile).
NAME_RECHECK_S = 3.0
LEASE_TTL_S = 120  # flyctl's default lease TTL (internal/machine/lease.go)
# How long a lease held by someone else is waited for: past a whole TTL, because a lease whose holder died
# (a killed `up`, whose provider host exits with its engine: engine/orphans.py) is refreshed by nobody and
# lapses within its TTL, so the `up` after `silo recover` gets it instead of failing on it.
LEASE_WAIT_S = LEASE_TTL_S + 15


def _not_executed(exc: BaseException) -> bool:
    return isinstance(exc, FlyError) and exc.not_executed


class _WaitRetryAfter:
    """Exponential backoff with jitter, but never shorter than the server's Retry-After."""

    def __init__(self, initial: float, maximum: float):
        self._backoff = wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)

    def __call__(self, state: RetryCallState) -> float:
        backoff = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, FlyError) and exc.retry_after is not None:
            return max(exc.retry_after, 0.0) + min(backoff, 0.5)
        return backoff


class FlyClient:
    def __init__(
        self,
        settings: FlySettings,
        *,
        timeout: float = 75.0,
        attempts: int = 8,
        backoff_initial: float = 0.2,
        backoff_max: float = 8.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.settings = settings
        self._attempts = attempts
        self._backoff = (backoff_initial, backoff_max)
        self.last_request_id: str | None = None
        self._http = httpx.Client(
            base_url=settings.base_url.rstrip("/") + "/v1",
            headers={"Authorization": settings.authorization, "User-Agent": "silo-infra/pulumi"},
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
            verify=tls_context(),
        )

    # -- plumbing ---------------------------------------------------------------------------------
    def __enter__(self) -> FlyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _retrying(self, retry_on: Callable[[BaseException], bool] = is_transient) -> Retrying:
        return Retrying(
            retry=retry_if_exception(retry_on),
            stop=stop_after_attempt(self._attempts),
            wait=_WaitRetryAfter(*self._backoff),
            reraise=True,
        )

    def _once(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        key, (rate, burst) = rate_key(method, path, headers, json)
        PACER.acquire(key, rate, burst)
        try:
            response = self._http.request(
                method,
                path,
                json=json,
                params=params,
                headers=headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as exc:
            hint = ""
            if self.settings.uses_emulator:
                hint = (
                    " — no Fly token is configured, so the local Fly emulator is used; `make up` (or "
                    "scripts/emulator.sh) starts it, or set fly:apiToken / FLY_API_TOKEN"
                )
            # A connection that could not be made sent nothing; a read that timed out or broke off may have
            # been acted on (ambiguous).
            sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
            nothing_listening = isinstance(exc, httpx.ConnectError) and is_loopback_url(self.settings.base_url)
            raise (FlyNothingListening if nothing_listening else FlyError)(
                f"cannot reach the Fly Machines API at {self.settings.base_url}: {exc}{hint}",
                method=method,
                path=path,
                sent=sent,
            ) from exc
        self.last_request_id = response.headers.get("fly-request-id") or self.last_request_id
        if response.status_code >= 400:
            error = self._error(response, method, path)
            if error.status == 429:
                PACER.throttled(key)
            raise error
        return response

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        idempotent: bool = False,
        took_effect: Callable[[], Any] | None = None,
    ) -> httpx.Response | None:
        """One API call with the retry policy of the module docstring.

        GET (and ``idempotent=True``: the same call twice leaves the same result) is retried on every
        transient error. Anything else is re-sent only when it was not executed (429, no connection), or
        after an ambiguous failure when ``took_effect()`` says it did not happen; when it says it did, the
        call returns None (the caller reads the result itself).
        """
        safe = method in ("GET", "HEAD") or idempotent
        for attempt in self._retrying(is_transient if safe or took_effect else _not_executed):
            with attempt:
                try:
                    return self._once(method, path, json=json, params=params, headers=headers, timeout=timeout)
                except FlyError as exc:
                    if safe or not exc.transient or exc.not_executed or took_effect is None:
                        raise
                    if took_effect():
                        log.info("%s %s took effect although its answer was lost: %s", method, path, exc)
                        return None
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response is None or not response.content:
            return None
        return response.json()

    def _error(self, response: httpx.Response, method: str, path: str) -> FlyError:
        request_id = response.headers.get("fly-request-id")
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        message = str(body.get("error") or body.get("message") or response.text or response.reason_phrase)
        fly_status = body.get("status") if isinstance(body.get("status"), str) else None
        retry_after = None
        if response.status_code == 429:
            with contextlib.suppress(ValueError):
                retry_after = float(response.headers.get("retry-after", "1"))
        kwargs: dict[str, Any] = dict(
            status=response.status_code,
            request_id=request_id,
            method=method,
            path=path,
            fly_status=fly_status,
            retry_after=retry_after,
        )
        if response.status_code == 401:
            return FlyAuthError(
                f"the Fly API token was rejected ({message}); check fly:apiToken or FLY_API_TOKEN "
                f"(token source: {self.settings.source})",
                **kwargs,
            )
        if response.status_code == 404:
            return FlyNotFound(message, **kwargs)
        if response.status_code == 409:
            return FlyConflict(message, **kwargs)
        if fly_status == "name_taken" or "already been taken" in message:
            return FlyNameTaken(message, **kwargs)
        return FlyError(message, **kwargs)

    def _create_checked(self, send: Callable[[], T], lookup: Callable[[], T | None]) -> T:
        """POST a create; after an ambiguous failure adopt what the lost answer created (checked before
        re-sending: the API has no idempotency key; flyctl deploy/strategy_bluegreen.go does the same)."""
        found: list[T] = []

        def took_effect() -> bool:
            hit = lookup()
            if hit is not None:
                found.append(hit)
            return hit is not None

        for attempt in self._retrying():
            with attempt:
                try:
                    return send()
                except FlyError as exc:
                    if not exc.transient or exc.not_executed:
                        raise
                    if took_effect():
                        log.info("adopting object created by an ambiguous request: %s", exc)
                        return found[-1]
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- apps -------------------------------------------------------------------------------------
    def get_app(self, name: str) -> dict | None:
        try:
            return self._json("GET", f"/apps/{name}")
        except FlyNotFound:
            return None
        except FlyError as exc:
            if exc.status == 403:
                raise FlyNameTaken(
                    f"the Fly app name {name!r} is taken by another organization; choose another name",
                    status=403,
                    request_id=exc.request_id,
                    method="GET",
                    path=f"/apps/{name}",
                ) from exc
            raise

    def _wait_for_app(self, name: str, timeout_s: float = APP_VISIBLE_WAIT_S) -> dict | None:
        """The app once it is visible: a new one answers 404 or 401 for up to a minute (fly-go
        flaps/flaps_apps.go WaitForApp retries both). None when it never becomes visible."""
        deadline = time.monotonic() + timeout_s
        delay = 0.1
        while True:
            try:
                app = self.get_app(name)
            except FlyAuthError:
                app = None
            if app is not None or time.monotonic() >= deadline:
                return app
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def create_app(self, name: str, org: str, network: str | None = None) -> dict:
        """The app, created or found in our org: ``create_or_find_app`` without saying which."""
        return self.create_or_find_app(name, org, network)[0]

    def create_or_find_app(self, name: str, org: str, network: str | None = None) -> tuple[dict, bool]:
        """Create the app, or find it when it already exists in our org (a retained or half-made app, or
        another stack's: the caller decides whether it may be used, providers/fly/ownership.py), and
        say whether this call created it.

        POST /apps is checked before it is re-sent: after an ambiguous answer, or a "name taken", the app is
        read (waiting out the 404/401 of a new app) and adopted when it is ours. A name that stays taken
        while no app is visible may belong to an app still being deleted (deletion is asynchronous): the
        create is tried again until that has finished, for a minute at most.
        """
        body: dict[str, Any] = {"name": name, "app_name": name, "org_slug": org}
        if network:
            body["network"] = network
        deadline = time.monotonic() + APP_VISIBLE_WAIT_S
        last: FlyError | None = None
        created = False

        def send() -> Any:
            nonlocal created
            answer = self._json("POST", "/apps", json=body)
            created = True  # the API answered the create itself: nothing of that name existed
            return answer

        while True:
            try:
                self._create_checked(send, lambda: self._wait_for_app(name, timeout_s=NAME_RECHECK_S))
                break
            except FlyNameTaken as exc:
                last = exc
                left = max(0.0, deadline - time.monotonic())
                existing = self._wait_for_app(name, timeout_s=min(NAME_RECHECK_S, left))
                if existing is not None:
                    self._check_org(existing, name, org, exc)
                    return existing, False
                if time.monotonic() >= deadline:
                    raise FlyNameTaken(
                        f"the Fly app name {name!r} is already taken on Fly.io (app names are global), or an app "
                        "of that name is still being deleted; choose another name, or retry",
                        status=exc.status,
                        request_id=exc.request_id,
                        method="POST",
                        path="/apps",
                    ) from last
        app = self._wait_for_app(name)
        if app is None:
            raise FlyError(
                f"app {name} was created but never became visible within {APP_VISIBLE_WAIT_S:.0f}s",
                request_id=self.last_request_id,
                method="GET",
                path=f"/apps/{name}",
            )
        self._check_org(app, name, org, None)
        return app, created

    @staticmethod
    def _check_org(app: Mapping[str, Any], name: str, org: str, cause: FlyError | None) -> None:
        org_slug = (app.get("organization") or {}).get("slug")
        if org_slug and org_slug != org:
            raise FlyNameTaken(
                f"the Fly app {name!r} belongs to organization {org_slug!r}, not {org!r}",
                status=cause.status if cause else None,
                request_id=cause.request_id if cause else None,
                method="POST",
                path="/apps",
            )

    def delete_app(self, name: str, *, force: bool = True) -> None:
        """Delete an app (asynchronous: 202, the name stays taken for a while; ``create_app`` copes).

        ``force=true`` stops machines left in the app first, as the API wants them stopped otherwise (Fly docs
        machines/api/apps-resource). Idempotent by construction: 404 means it is gone already.
        """
        with contextlib.suppress(FlyNotFound):
            self.request("DELETE", f"/apps/{name}", params={"force": "true"} if force else None, idempotent=True)

    def list_apps(self, org: str) -> list[dict]:
        """The apps of organization `org` (Fly docs, Machines API > Apps resource, `GET /apps?org_slug=`)."""
        return list((self._json("GET", "/apps", params={"org_slug": org}) or {}).get("apps") or [])

    # -- platform ---------------------------------------------------------------------------------
    def placeable_regions(self, org: str, regions: str) -> list[str]:
        """Which of `regions` (a code or a comma-separated list) `org` can place machines in now.

        A placement simulation that creates nothing: `POST /platform/placements` with count 0 answers
        the org's limit per region (fly-go flaps_platform.go GetPlacements); a region left out, or with
        a limit of 0, is not usable by the org. Fly's Go server may spell the keys either way.
        """
        answer = self._json("POST", "/platform/placements", json={"org_slug": org, "region": regions, "count": 0})
        placements = (answer or {}).get("regions") or (answer or {}).get("Regions") or []
        return [
            str(p.get("region") or p.get("Region"))
            for p in placements
            if isinstance(p, Mapping) and int(p.get("count") or p.get("Count") or 0) > 0
        ]

    # -- IP assignments ---------------------------------------------------------------------------
    def list_ips(self, app: str) -> list[dict]:
        return list((self._json("GET", f"/apps/{app}/ip_assignments") or {}).get("ips") or [])

    def allocate_ip(self, app: str, ip_type: str, region: str | None = None) -> dict:
        """Allocate an IP of that type, or return the app's existing one (checked before re-sending: a lost
        answer is found in the list). The request names the app's org, and its network when it has its own,
        as flyctl does (internal/command/deploy/deploy_first.go; fly-go AssignIPRequest): a Flycast address
        belongs to an org network, and one allocated elsewhere would not be reachable from the app's own."""

        def lookup() -> dict | None:
            return next((ip for ip in self.list_ips(app) if ip_kind(ip) == ip_type), None)

        existing = lookup()
        if existing is not None:
            return existing
        body: dict[str, Any] = {"type": ip_type}
        if region:
            body["region"] = region
        record = self.get_app(app) or {}
        org = (record.get("organization") or {}).get("slug")
        if org:
            body["org_slug"] = org
        if record.get("network") and record["network"] != "default":
            body["network"] = record["network"]
        return self._create_checked(lambda: self._json("POST", f"/apps/{app}/ip_assignments", json=body), lookup)

    def release_ip(self, app: str, address: str) -> None:
        with contextlib.suppress(FlyNotFound):  # idempotent by construction: 404 = released already
            self.request("DELETE", f"/apps/{app}/ip_assignments/{address}", idempotent=True)

    # -- secrets ----------------------------------------------------------------------------------
    def list_secrets(self, app: str, min_version: int | None = None) -> dict[str, str]:
        """name → digest (values are never returned). Secrets are versioned: pass the version a write
        returned, or a replica that has not seen it yet may answer (OpenAPI Secrets_list ``min_version``)."""
        # The spec names the parameter min_version; fly-go's ListAppSecrets sends the same number as `version`
        # (flyctl internal/appsecrets/secrets.go passes its min version there). Both are sent.
        params = {"min_version": str(int(min_version)), "version": str(int(min_version))} if min_version else None
        body = self._json("GET", f"/apps/{app}/secrets", params=params) or {}
        return {s["name"]: s.get("digest", "") for s in body.get("secrets") or []}

    def set_secrets(self, app: str, values: Mapping[str, str | None]) -> int:
        """Set (str) or unset (None) secrets in one write; returns the secrets version. Idempotent by
        construction: the same values written twice leave the same secrets (only the version moves on)."""
        body = self._json("POST", f"/apps/{app}/secrets", json={"values": dict(values)}, idempotent=True) or {}
        return int(body.get("version") or body.get("Version") or 0)

    # -- volumes ----------------------------------------------------------------------------------
    def list_volumes(self, app: str) -> list[dict]:
        return [v for v in self._json("GET", f"/apps/{app}/volumes") or [] if v.get("state") not in GONE_VOLUME_STATES]

    def get_volume(self, app: str, volume_id: str) -> dict | None:
        try:
            volume = self._json("GET", f"/apps/{app}/volumes/{volume_id}")
        except FlyNotFound:
            return None
        return None if volume.get("state") in GONE_VOLUME_STATES else volume

    def find_volume(self, app: str, name: str, region: str | None = None) -> dict | None:
        """The live volume of that name (in that region: a migrated app keeps its old one elsewhere)."""
        matches = [v for v in self.list_volumes(app) if v.get("name") == name and region in (None, v.get("region"))]
        if len(matches) > 1:
            ids = ", ".join(v["id"] for v in matches)
            raise FlyError(f"app {app} has several volumes named {name!r} ({ids}); remove the extra ones")
        return matches[0] if matches else None

    def create_volume(self, app: str, body: Mapping[str, Any]) -> dict:
        """Checked before re-sending: a lost answer is found by the volume's name (in its region)."""
        name, region = str(body["name"]), body.get("region")
        existing = self.find_volume(app, name, region)
        if existing is not None:
            return existing
        return self._create_checked(
            lambda: self._json("POST", f"/apps/{app}/volumes", json=dict(body)),
            lambda: self.find_volume(app, name, region),
        )

    def extend_volume(self, app: str, volume_id: str, size_gb: int) -> dict:
        """Grow a volume; the answer's ``needs_restart`` (the filesystem of a running machine grows only at
        its next start) is returned on the volume dict. Not idempotent (a second extend to the same size is
        refused), so it is checked before re-sending: a volume already that large was extended."""
        path = f"/apps/{app}/volumes/{volume_id}/extend"

        def took_effect() -> bool:
            volume = self.get_volume(app, volume_id)
            return volume is not None and int(volume.get("size_gb") or 0) >= size_gb

        body = self._json("PUT", path, json={"size_gb": size_gb}, took_effect=took_effect)
        if body is None:  # the lost answer had extended it: read it back
            volume = self.get_volume(app, volume_id) or {"id": volume_id, "size_gb": size_gb}
            holder = self.get_machine(app, volume["attached_machine_id"]) if volume.get("attached_machine_id") else None
            return {**volume, "needs_restart": bool(holder and holder.get("state") in ("started", "starting"))}
        volume = body.get("volume") or body
        return {**volume, "needs_restart": bool(body.get("needs_restart"))}

    def update_volume(self, app: str, volume_id: str, changes: Mapping[str, Any]) -> dict:
        # Idempotent by construction: it sets absolute values (snapshot_retention, auto_backup_enabled).
        return self._json("PUT", f"/apps/{app}/volumes/{volume_id}", json=dict(changes), idempotent=True)

    def delete_volume(self, app: str, volume_id: str) -> None:
        with contextlib.suppress(FlyNotFound):  # idempotent by construction: 404 = gone already
            self.request("DELETE", f"/apps/{app}/volumes/{volume_id}", idempotent=True)

    # -- machines ---------------------------------------------------------------------------------
    def list_machines(self, app: str, metadata: Mapping[str, str] | None = None, summary: bool = False) -> list[dict]:
        params: dict[str, str] = {f"metadata.{k}": v for k, v in (metadata or {}).items()}
        if summary:
            params["summary"] = "true"
        machines = self._json("GET", f"/apps/{app}/machines", params=params) or []
        return [m for m in machines if m.get("state") not in ("destroyed", "destroying")]

    def get_machine(self, app: str, machine_id: str) -> dict | None:
        try:
            machine = self._json("GET", f"/apps/{app}/machines/{machine_id}")
        except FlyNotFound:
            return None
        return None if machine.get("state") in ("destroyed",) else machine

    def find_machine(self, app: str, name: str) -> dict | None:
        return next((m for m in self.list_machines(app) if m.get("name") == name), None)

    def create_machine(self, app: str, body: Mapping[str, Any]) -> dict:
        """Machines are always named here, so the name is the tag an ambiguous create is resolved by
        (checked before re-sending)."""
        name = str(body["name"])
        return self._create_checked(
            lambda: self._json("POST", f"/apps/{app}/machines", json=dict(body)),
            lambda: self.find_machine(app, name),
        )

    def update_machine(self, app: str, machine_id: str, body: Mapping[str, Any], nonce: str | None) -> dict:
        """Replace the machine's config. Not idempotent (each call makes a new version and reboots the
        machine), so it is checked before re-sending: when the machine already runs the desired config,
        the lost answer had updated it."""
        path = f"/apps/{app}/machines/{machine_id}"
        wanted = flytoml.normalize(body.get("config") or {})
        seen: list[dict] = []

        def took_effect() -> bool:
            machine = self.get_machine(app, machine_id)
            if machine is not None and flytoml.normalize(machine.get("config") or {}) == wanted:
                seen.append(machine)
                return True
            return False

        answer = self._json("POST", path, json=dict(body), headers=_nonce_header(nonce), took_effect=took_effect)
        return answer if answer is not None else seen[-1]

    def start_machine(self, app: str, machine_id: str, nonce: str | None = None) -> None:
        """Not idempotent (a second start of a started machine is refused), so checked before re-sending:
        a machine that is starting or started was started by the lost call."""

        def took_effect() -> bool:
            machine = self.get_machine(app, machine_id)
            return machine is not None and machine.get("state") in ("starting", "started")

        self.request(
            "POST", f"/apps/{app}/machines/{machine_id}/start", headers=_nonce_header(nonce), took_effect=took_effect
        )

    def stop_machine(
        self,
        app: str,
        machine_id: str,
        nonce: str | None = None,
        *,
        signal: str | None = None,
        timeout: str | None = None,
    ) -> None:
        """Checked before re-sending: a machine that is stopping or stopped was stopped by the lost call."""
        body = {k: v for k, v in (("signal", signal), ("timeout", timeout)) if v}

        def took_effect() -> bool:
            machine = self.get_machine(app, machine_id)
            return machine is None or machine.get("state") in ("stopping", "stopped", "suspended")

        self.request(
            "POST",
            f"/apps/{app}/machines/{machine_id}/stop",
            json=body or None,
            headers=_nonce_header(nonce),
            took_effect=took_effect,
        )

    def restart_machine(self, app: str, machine_id: str, nonce: str | None = None) -> None:
        """Not re-sent after an ambiguous failure: a restart leaves no trace to check (same version, same
        state), and restarting twice is worse than reporting the error (the caller's next run restarts)."""
        self.request("POST", f"/apps/{app}/machines/{machine_id}/restart", headers=_nonce_header(nonce))

    def delete_machine(self, app: str, machine_id: str, nonce: str | None = None, *, force: bool = True) -> None:
        with contextlib.suppress(FlyNotFound):  # idempotent by construction: 404 = gone already
            self.request(
                "DELETE",
                f"/apps/{app}/machines/{machine_id}",
                params={"force": "true" if force else "false"},
                headers=_nonce_header(nonce),
                idempotent=True,
            )

    def exec_machine(self, app: str, machine_id: str, command: list[str], timeout_s: int = 60) -> dict:
        """Run a command on the machine. Never re-sent after an ambiguous failure: it cannot be checked,
        and the command (SQL, a backup flush) is not ours to run twice; the error is reported instead.

        The answer (the API's ``flydv1.ExecResponse``) has ``exit_code``, ``exit_signal``, ``stdout`` and
        ``stderr``, each left out when empty (fly-go's MachineExecResponse tags them ``omitempty``, so Go
        drops a 0): missing means 0. ``exec_failure`` says whether the command failed. When the timeout
        passes first, the API answers an error starting ``deadline_exceeded`` (flyctl issue #4194, "failed
        to exec on VM …: deadline_exceeded: …"); that is raised as a FlyError naming the timeout."""
        path = f"/apps/{app}/machines/{machine_id}/exec"
        try:
            body = self._json("POST", path, json={"command": command, "timeout": timeout_s}, timeout=timeout_s + 15)
        except FlyError as exc:
            if exc.status == 408 or exc.message.startswith("deadline_exceeded"):
                raise FlyError(
                    f"the command did not finish within its exec timeout of {timeout_s}s on machine {machine_id} "
                    f"of app {app} (Fly: {exc.message}); it may still be running there",
                    status=exc.status,
                    request_id=exc.request_id,
                    method="POST",
                    path=path,
                ) from exc
            raise
        body = body if isinstance(body, dict) else {}
        return {
            **body,
            "exit_code": int(body.get("exit_code") or 0),
            "exit_signal": int(body.get("exit_signal") or 0),
            "stdout": str(body.get("stdout") or ""),
            "stderr": str(body.get("stderr") or ""),
        }

    def wait(
        self,
        app: str,
        machine_id: str,
        state: str | Sequence[str],
        *,
        version: str | None = None,
        timeout_s: float = 300,
    ) -> str:
        """Block until the machine reaches `state`, or one of several (fly-go WithWaitStates sends each as a
        ``state`` parameter), for `version` when given: after an update only the new version counts (OpenAPI
        Machines_wait). 60 s per call, looping on 408 (flyctl WaitForState). Returns the state reached: the
        answer's ``state`` (newer servers, WaitMachineResponse), else read back when several were asked."""
        states = [state] if isinstance(state, str) else list(state)
        deadline = time.monotonic() + timeout_s
        params: dict[str, Any] = {"state": states}
        if version:
            params["version"] = version
        last: FlyError | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FlyWaitTimeout(
                    f"machine {machine_id} of app {app} did not reach {' or '.join(map(repr, states))}"
                    f"{f' (version {version})' if version else ''} within {timeout_s:.0f}s",
                    method="GET",
                    path=f"/apps/{app}/machines/{machine_id}/wait",
                    status=last.status if last else None,
                    request_id=self.last_request_id,
                )
            params["timeout"] = max(1, min(WAIT_CALL_MAX_S, int(remaining)))
            try:
                response = self._once(
                    "GET",
                    f"/apps/{app}/machines/{machine_id}/wait",
                    params=params,
                    timeout=params["timeout"] + 15,
                )
            except FlyNotFound:
                if "destroyed" in states:
                    return "destroyed"
                # Right after a create the machine can 404 briefly (eventual consistency); the pacer keeps
                # these retries within the wait action's rate limit.
                time.sleep(0.2)
                continue
            except FlyError as exc:
                last = exc
                if exc.status == 408:
                    continue
                if not exc.transient:
                    raise
                time.sleep(exc.retry_after or 0.5)
                continue
            reached = _answer_state(response)
            if reached in states:
                return reached
            if len(states) == 1:
                return states[0]
            machine = self.get_machine(app, machine_id) or {"state": "destroyed"}
            return str(machine.get("state"))

    def failure(self, app: str, machine_id: str, machine: Mapping[str, Any] | None = None) -> FlyError:
        """The error for a machine in Fly's ``failed`` state, with its last events (GET machine has them)."""
        machine = machine if machine is not None else self.get_machine(app, machine_id) or {}
        return FlyError(
            f"machine {machine_id} of app {app} is in Fly's `failed` state (it could not start); "
            f"its last events: {describe_events(machine.get('events') or [])}. Once the cause is fixed, "
            "`pulumi refresh` then `pulumi up` start it again",
            fly_status="failed",
            request_id=self.last_request_id,
            method="GET",
            path=f"/apps/{app}/machines/{machine_id}",
        )

    def wait_for_checks(self, app: str, machine_id: str, *, timeout_s: float = 300) -> dict:
        """Poll until every configured health check has reported and passes (``wait`` does not cover
        checks; fly-go polls ``checks[].status`` after it).

        A freshly started machine answers an empty ``checks`` list until its checks have run, so "nothing
        failing" would count it healthy at once: the configured checks (top-level and per service) are
        counted from its config, and that many must be reported, as flyctl's WaitForHealthchecksToPass
        does (internal/machine/leasable_machine.go)."""
        deadline = time.monotonic() + timeout_s
        delay = 0.1
        while True:
            machine = self.get_machine(app, machine_id)
            if machine is None:
                raise FlyError(
                    f"machine {machine_id} of app {app} disappeared while waiting for checks",
                    request_id=self.last_request_id,
                )
            if machine.get("state") == "failed":  # no check will ever pass: say so now, not at the timeout
                raise self.failure(app, machine_id, machine)
            config = machine.get("config") or {}
            expected = len(config.get("checks") or {}) + sum(
                len(svc.get("checks") or []) for svc in config.get("services") or []
            )
            checks = [
                c for c in machine.get("checks") or [] if not str(c.get("name", "")).startswith(COMPAT_CHECK_PREFIX)
            ]
            failing = [c for c in checks if c.get("status") != "passing"]
            if len(checks) >= expected and not failing:
                return machine
            if time.monotonic() >= deadline:
                detail = "; ".join(f"{c.get('name')}={c.get('status')} {c.get('output', '')}".strip() for c in failing)
                if len(checks) < expected:
                    detail = "; ".join(
                        filter(None, [detail, f"{expected - len(checks)} of {expected} checks have not reported"])
                    )
                raise FlyWaitTimeout(
                    f"health checks of machine {machine_id} (app {app}) not passing after {timeout_s:.0f}s: {detail}",
                    method="GET",
                    path=f"/apps/{app}/machines/{machine_id}",
                    request_id=self.last_request_id,
                )
            time.sleep(delay)
            delay = min(delay * 2, CHECK_POLL_MAX_S)

    # -- leases -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lease(
        self, app: str, machine_id: str, ttl_s: int = LEASE_TTL_S, *, wait_s: float = LEASE_WAIT_S
    ) -> Iterator[str | None]:
        """Hold the machine's lease for the block; 409 (held by someone else) is retried up to `wait_s`.

        Acquiring is not idempotent either: if the answer to a granted lease is lost, the retry sees our
        own lease as "held by someone". Each acquisition carries a unique description, so after an
        ambiguous failure the lease is read back and adopted when it is ours (checked before re-sending).

        A lease expires after ``ttl_s``, and a block may wait far longer (a machine's start and health
        checks, up to the caller's timeout): a background thread refreshes it every third of the TTL,
        as flyctl's StartBackgroundLeaseRefresh does (internal/machine/leasable_machine.go).
        """
        path = f"/apps/{app}/machines/{machine_id}/lease"
        description = f"pulumi silo {uuid.uuid4().hex[:12]}"

        def ours() -> dict | None:
            try:
                held = self._once("GET", path).json()
            except FlyError:
                return None
            held = held.get("data", held) if isinstance(held, dict) else {}
            return held if held.get("description") == description and held.get("nonce") else None

        def acquire() -> dict:
            try:
                return self._once("POST", path, json={"ttl": ttl_s, "description": description}).json()
            except FlyError as exc:
                if exc.transient or isinstance(exc, FlyConflict):
                    held = ours()
                    if held is not None:
                        return {"data": held}
                raise

        for attempt in Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, FlyConflict) or is_transient(e)),
            stop=stop_after_delay(wait_s),
            wait=_WaitRetryAfter(0.5, 3),
            reraise=True,
        ):
            with attempt:
                body = acquire()
        data = body.get("data", body) if isinstance(body, dict) else {}
        nonce = data.get("nonce")
        stop = threading.Event()
        keeper = None
        if nonce:
            keeper = threading.Thread(
                target=self._keep_lease,
                args=(path, nonce, ttl_s, stop),
                name=f"fly-lease-{machine_id}",
                daemon=True,
            )
            keeper.start()
        try:
            yield nonce
        finally:
            stop.set()
            if keeper is not None:
                keeper.join(timeout=30)
            if nonce:
                try:
                    self.request("DELETE", path, headers=_nonce_header(nonce), idempotent=True)
                except FlyError as exc:  # expired or machine gone: nothing left to release
                    if exc.status not in (404, 409) and "lease not found" not in exc.message:
                        log.warning("could not release lease on %s: %s", machine_id, exc)

    def _keep_lease(self, path: str, nonce: str, ttl_s: int, stop: threading.Event) -> None:
        """Refresh a held lease (POST with its nonce) every third of its TTL until told to stop. Idempotent
        by construction: a refresh only moves the expiry."""
        while not stop.wait(max(ttl_s / 3, 0.2)):
            try:
                self._once("POST", path, json={"ttl": ttl_s}, headers={NONCE_HEADER: nonce})
            except FlyError as exc:
                if exc.status in (404, 409):  # the machine is gone, or the lease was lost: nothing to keep
                    log.warning("lease %s on %s could not be refreshed: %s", nonce, path, exc)
                    return
                log.info("lease refresh failed, trying again: %s", exc)


def _nonce_header(nonce: str | None) -> dict[str, str] | None:
    return {NONCE_HEADER: nonce} if nonce else None


def _answer_state(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return str(body["state"]) if isinstance(body, dict) and body.get("state") else None
