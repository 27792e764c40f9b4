"""FlyClient: the Fly Machines REST API over httpx, with the behaviour flyctl relies on.

- Transient failures (408, 429 honouring Retry-After, 5xx, connection errors) are retried with
  exponential backoff and jitter (tenacity), as flyctl's ``IsTransientFlapsError`` does.
- Creates are not idempotent on Fly (no idempotency key): after an ambiguous failure the object is
  looked up by the name it was given before trying again, so a retry never makes a duplicate
  (fly-machines-api.md §3.4).
- ``wait`` blocks at most 60 s per call server-side; longer waits loop and treat 408 as "not yet".
- Mutations of an existing machine hold a lease (``fly-machine-lease-nonce``).

A client is built inside each provider method (it holds an httpx connection pool, which must not be
pickled into the provider blob) and closed after: ``with FlyClient(settings) as fly: ...``.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity.wait import wait_exponential_jitter

from components.fly.settings import FlySettings

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
WAIT_CALL_MAX_S = 60  # the API refuses longer waits with 400 (fly-machines-api.md §2.4)
COMPAT_CHECK_PREFIX = "bg_deployments_compat"
# Health-check polling backs off from 0.1 s to this. The client's waits sit on the critical path of
# an up (every machine waits for its checks before its dependents start), and the overshoot past the
# moment checks pass averages half this interval; 0.5 s keeps one poller at <= 2 GET/s per machine,
# well inside Get Machine's documented 5 req/s (burst 10) limit (fly-machines-api.md §3.2).
CHECK_POLL_MAX_S = 0.5


class FlyError(Exception):
    """An API error the user can act on; always carries the request id for Fly support."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        method: str = "",
        path: str = "",
        fly_status: str | None = None,
        retry_after: float | None = None,
    ):
        self.status = status
        self.request_id = request_id
        self.method = method
        self.path = path
        self.fly_status = fly_status
        self.retry_after = retry_after
        self.message = message
        where = f" ({method} {path}" if method else " ("
        where += f", HTTP {status}" if status else ""
        where += f", fly-request-id {request_id})" if request_id else ")"
        super().__init__(message + (where if where != " ()" else ""))

    @property
    def transient(self) -> bool:
        return self.status is None or self.status in TRANSIENT_STATUSES


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


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, FlyError) and exc.transient


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
        self._http = httpx.Client(
            base_url=settings.base_url.rstrip("/") + "/v1",
            headers={"Authorization": settings.authorization, "User-Agent": "silo-infra/pulumi"},
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
        )

    # -- plumbing ---------------------------------------------------------------------------------
    def __enter__(self) -> FlyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _retrying(self, attempts: int | None = None, deadline_s: float | None = None) -> Retrying:
        stop = stop_after_attempt(attempts or self._attempts)
        if deadline_s is not None:
            stop = stop | stop_after_delay(deadline_s)
        return Retrying(
            retry=retry_if_exception(_is_transient),
            stop=stop,
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
            # Connection refused/reset before or during the request: transient, maybe ambiguous.
            hint = ""
            if self.settings.uses_emulator:
                hint = (
                    " — no Fly token is configured, so the local Fly emulator is used; start it with "
                    "`silo emulator --port 4280` or set fly:apiToken / FLY_API_TOKEN"
                )
            raise FlyError(
                f"cannot reach the Fly Machines API at {self.settings.base_url}: {exc}{hint}",
                method=method,
                path=path,
            ) from exc
        if response.status_code >= 400:
            raise self._error(response, method, path)
        return response

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = True,
        timeout: float | None = None,
    ) -> httpx.Response:
        if not retry:
            return self._once(method, path, json=json, params=params, headers=headers, timeout=timeout)
        for attempt in self._retrying():
            with attempt:
                return self._once(method, path, json=json, params=params, headers=headers, timeout=timeout)
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if not response.content:
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

    def _create_idempotently(self, create: Callable[[], T], lookup: Callable[[], T | None]) -> T:
        """POST once per attempt; after an ambiguous failure adopt what the lost response created."""
        for attempt in self._retrying():
            with attempt:
                try:
                    return create()
                except FlyError as exc:
                    if not exc.transient:
                        raise
                    found = lookup()
                    if found is not None:
                        log.info("adopting object created by an ambiguous request: %s", exc)
                        return found
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
                    f"the Fly app name {name!r} is taken by another organization; choose another "
                    "silo:client / silo:app",
                    status=403,
                    request_id=exc.request_id,
                    method="GET",
                    path=f"/apps/{name}",
                ) from exc
            raise

    def create_app(self, name: str, org: str, network: str | None = None) -> dict:
        """Create the app, or adopt it when it already exists in our org (a retained or half-made app)."""
        body: dict[str, Any] = {"name": name, "app_name": name, "org_slug": org}
        if network:
            body["network"] = network
        try:
            self._create_idempotently(
                lambda: self._json("POST", "/apps", json=body, retry=False), lambda: self.get_app(name)
            )
        except FlyNameTaken as exc:
            existing = self.get_app(name)  # raises FlyNameTaken (403) when another org owns it
            if existing is None:
                raise FlyNameTaken(
                    f"the Fly app name {name!r} is already taken on Fly.io (app names are "
                    "global); choose another silo:client / silo:app",
                    status=exc.status,
                    request_id=exc.request_id,
                    method="POST",
                    path="/apps",
                ) from exc
            org_slug = (existing.get("organization") or {}).get("slug")
            if org_slug and org_slug != org:
                raise FlyNameTaken(
                    f"the Fly app {name!r} belongs to organization {org_slug!r}, not {org!r}",
                    status=exc.status,
                    request_id=exc.request_id,
                    method="POST",
                    path="/apps",
                ) from exc
        # A new app may not be visible at once (fly-go WaitForApp): poll briefly.
        for attempt in Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, FlyNotFound)),
            stop=stop_after_delay(60),
            wait=wait_exponential_jitter(multiplier=0.1, max=2),
            reraise=True,
        ):
            with attempt:
                app = self.get_app(name)
                if app is None:
                    raise FlyNotFound(f"app {name} not visible yet", status=404)
                return app
        raise AssertionError("unreachable")  # pragma: no cover

    def delete_app(self, name: str) -> None:
        with contextlib.suppress(FlyNotFound):
            self.request("DELETE", f"/apps/{name}")

    def list_apps(self, org: str) -> list[dict]:
        """The apps of organization `org` (fly-machines-api.md §1.1, `GET /apps?org_slug=`)."""
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
        def lookup() -> dict | None:
            return next((ip for ip in self.list_ips(app) if ip_kind(ip) == ip_type), None)

        existing = lookup()
        if existing is not None:
            return existing
        body: dict[str, Any] = {"type": ip_type}
        if region:
            body["region"] = region
        return self._create_idempotently(
            lambda: self._json("POST", f"/apps/{app}/ip_assignments", json=body, retry=False), lookup
        )

    def release_ip(self, app: str, address: str) -> None:
        with contextlib.suppress(FlyNotFound):
            self.request("DELETE", f"/apps/{app}/ip_assignments/{address}")

    # -- secrets ----------------------------------------------------------------------------------
    def list_secrets(self, app: str) -> dict[str, str]:
        """name → digest (values are never returned)."""
        body = self._json("GET", f"/apps/{app}/secrets") or {}
        return {s["name"]: s.get("digest", "") for s in body.get("secrets") or []}

    def set_secrets(self, app: str, values: Mapping[str, str | None]) -> int:
        """Set (str) or unset (None) secrets in one write; returns the secrets version."""
        body = self._json("POST", f"/apps/{app}/secrets", json={"values": dict(values)}) or {}
        return int(body.get("version") or body.get("Version") or 0)

    # -- volumes ----------------------------------------------------------------------------------
    def list_volumes(self, app: str) -> list[dict]:
        return [
            v
            for v in self._json("GET", f"/apps/{app}/volumes") or []
            if v.get("state") not in ("destroyed", "destroying", "pending_destroy")
        ]

    def get_volume(self, app: str, volume_id: str) -> dict | None:
        try:
            volume = self._json("GET", f"/apps/{app}/volumes/{volume_id}")
        except FlyNotFound:
            return None
        return None if volume.get("state") in ("destroyed", "destroying") else volume

    def find_volume(self, app: str, name: str, region: str | None = None) -> dict | None:
        """The live volume of that name (in that region: a migrated app keeps its old one elsewhere)."""
        matches = [v for v in self.list_volumes(app) if v.get("name") == name and region in (None, v.get("region"))]
        if len(matches) > 1:
            ids = ", ".join(v["id"] for v in matches)
            raise FlyError(f"app {app} has several volumes named {name!r} ({ids}); remove the extra ones")
        return matches[0] if matches else None

    def create_volume(self, app: str, body: Mapping[str, Any]) -> dict:
        name, region = str(body["name"]), body.get("region")
        existing = self.find_volume(app, name, region)
        if existing is not None:
            return existing
        return self._create_idempotently(
            lambda: self._json("POST", f"/apps/{app}/volumes", json=dict(body), retry=False),
            lambda: self.find_volume(app, name, region),
        )

    def extend_volume(self, app: str, volume_id: str, size_gb: int) -> dict:
        body = self._json("PUT", f"/apps/{app}/volumes/{volume_id}/extend", json={"size_gb": size_gb}) or {}
        return body.get("volume") or body

    def update_volume(self, app: str, volume_id: str, changes: Mapping[str, Any]) -> dict:
        return self._json("PUT", f"/apps/{app}/volumes/{volume_id}", json=dict(changes))

    def delete_volume(self, app: str, volume_id: str) -> None:
        with contextlib.suppress(FlyNotFound):
            self.request("DELETE", f"/apps/{app}/volumes/{volume_id}")

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
        """Machines are always named here, so the name is the tag an ambiguous create is resolved by."""
        name = str(body["name"])
        return self._create_idempotently(
            lambda: self._json("POST", f"/apps/{app}/machines", json=dict(body), retry=False),
            lambda: self.find_machine(app, name),
        )

    def update_machine(self, app: str, machine_id: str, body: Mapping[str, Any], nonce: str | None) -> dict:
        return self._json("POST", f"/apps/{app}/machines/{machine_id}", json=dict(body), headers=_nonce_header(nonce))

    def start_machine(self, app: str, machine_id: str, nonce: str | None = None) -> None:
        self.request("POST", f"/apps/{app}/machines/{machine_id}/start", headers=_nonce_header(nonce))

    def stop_machine(
        self,
        app: str,
        machine_id: str,
        nonce: str | None = None,
        *,
        signal: str | None = None,
        timeout: str | None = None,
    ) -> None:
        body = {k: v for k, v in (("signal", signal), ("timeout", timeout)) if v}
        self.request("POST", f"/apps/{app}/machines/{machine_id}/stop", json=body or None, headers=_nonce_header(nonce))

    def delete_machine(self, app: str, machine_id: str, nonce: str | None = None, *, force: bool = True) -> None:
        with contextlib.suppress(FlyNotFound):
            self.request(
                "DELETE",
                f"/apps/{app}/machines/{machine_id}",
                params={"force": "true" if force else "false"},
                headers=_nonce_header(nonce),
            )

    def exec_machine(self, app: str, machine_id: str, command: list[str], timeout_s: int = 60) -> dict:
        return self._json(
            "POST",
            f"/apps/{app}/machines/{machine_id}/exec",
            json={"command": command, "timeout": timeout_s},
            timeout=timeout_s + 15,
        )

    def wait(
        self, app: str, machine_id: str, state: str, *, version: str | None = None, timeout_s: float = 300
    ) -> None:
        """Block until the machine reaches `state`; 60 s per call, looping on 408 (flyctl WaitForState)."""
        deadline = time.monotonic() + timeout_s
        params: dict[str, Any] = {"state": state}
        if version:
            params["version"] = version
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FlyWaitTimeout(
                    f"machine {machine_id} of app {app} did not reach {state!r} within {timeout_s:.0f}s",
                    method="GET",
                    path=f"/apps/{app}/machines/{machine_id}/wait",
                )
            params["timeout"] = max(1, min(WAIT_CALL_MAX_S, int(remaining)))
            try:
                self._once(
                    "GET",
                    f"/apps/{app}/machines/{machine_id}/wait",
                    params=params,
                    timeout=params["timeout"] + 15,
                )
                return
            except FlyNotFound:
                if state == "destroyed":
                    return
                time.sleep(0.2)  # right after a create the machine can 404 briefly (eventual consistency)
            except FlyError as exc:
                if exc.status == 408:
                    continue
                if not exc.transient:
                    raise
                time.sleep(exc.retry_after or 0.5)

    def wait_for_checks(self, app: str, machine_id: str, *, timeout_s: float = 300) -> dict:
        """Poll until every health check passes (`wait` does not cover checks; fly-machines-api.md §2.4)."""
        deadline = time.monotonic() + timeout_s
        delay = 0.1
        while True:
            machine = self.get_machine(app, machine_id)
            if machine is None:
                raise FlyError(f"machine {machine_id} of app {app} disappeared while waiting for checks")
            checks = [
                c for c in machine.get("checks") or [] if not str(c.get("name", "")).startswith(COMPAT_CHECK_PREFIX)
            ]
            failing = [c for c in checks if c.get("status") != "passing"]
            if not failing:
                return machine
            if time.monotonic() >= deadline:
                detail = "; ".join(f"{c.get('name')}={c.get('status')} {c.get('output', '')}".strip() for c in failing)
                raise FlyWaitTimeout(
                    f"health checks of machine {machine_id} (app {app}) not passing after {timeout_s:.0f}s: {detail}"
                )
            time.sleep(delay)
            delay = min(delay * 2, CHECK_POLL_MAX_S)

    # -- leases -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lease(self, app: str, machine_id: str, ttl_s: int = 120, *, wait_s: float = 60) -> Iterator[str | None]:
        """Hold the machine's lease for the block; 409 (held by someone else) is retried up to `wait_s`.

        Acquiring is not idempotent either: if the answer to a granted lease is lost, the retry sees our
        own lease as "held by someone". Each acquisition carries a unique description, so after an
        ambiguous failure the lease is read back and adopted when it is ours (fly-machines-api.md §3.4).
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
            retry=retry_if_exception(lambda e: isinstance(e, FlyConflict) or _is_transient(e)),
            stop=stop_after_delay(wait_s),
            wait=wait_exponential_jitter(multiplier=0.2, max=3),
            reraise=True,
        ):
            with attempt:
                body = acquire()
        data = body.get("data", body) if isinstance(body, dict) else {}
        nonce = data.get("nonce")
        try:
            yield nonce
        finally:
            if nonce:
                try:
                    self.request("DELETE", path, headers=_nonce_header(nonce))
                except FlyError as exc:  # expired or machine gone: nothing left to release
                    if exc.status not in (404, 409) and "lease not found" not in exc.message:
                        log.warning("could not release lease on %s: %s", machine_id, exc)


def _nonce_header(nonce: str | None) -> dict[str, str] | None:
    return {"fly-machine-lease-nonce": nonce} if nonce else None


def ip_kind(ip: Mapping[str, Any]) -> str:
    """The assignment type of a listed IP (the list answer has no `type`; infer it as fly-go does)."""
    if ip.get("type"):
        return str(ip["type"])
    address = str(ip.get("ip", ""))
    if address.startswith("fdaa:"):
        return "private_v6"
    if ":" in address:
        return "v6"
    return "shared_v4" if ip.get("shared") else "v4"
