"""A local Fly Machines API emulator: real HTTP on 127.0.0.1, faithful to the documented behaviour.

Reference: shared/reference/fly-machines-api.md (§0-§3, §5) and the 2024 OpenAPI spec, plus the newer
REST secrets and ip_assignments endpoints. The base URL has no ``/v1``; every API path is under
``/v1`` as flyctl builds them. What it models, because the providers depend on it:

- Fly's error body ``{"error": ..., "status": ...}`` and a ``fly-request-id`` header on every answer.
- Globally unique app names (422 ``name_taken``), 403 for an app owned by another org.
- Machine states derived from timestamps (no timer threads): ``starting`` → ``started`` after
  ``boot_s``, ``stopping`` → ``stopped`` after ``stop_s``, ``destroying`` → ``destroyed`` after
  ``destroy_s``. ``wait`` blocks on a condition variable (the state lock is released meanwhile).
- Leases (409 without the nonce), whole-config updates with new versions, immutable name/region/mount,
  volume attach rules, secrets as digests only (values are never stored), IP assignments.
- Private networks: an app lives on one 6PN network of its org (``network`` of app creation, else
  ``default``); its machines' 6PN addresses and its Flycast addresses carry that network's id, and
  ``reach(from_app, target)`` says whether a machine of one app could connect to a name or address of
  another (``.flycast`` / ``.internal`` only within a network, public addresses from anywhere).
- Platform: ``GET /platform/regions`` and ``POST /platform/placements`` (fly-go flaps_platform.go), with
  the regions an org may place machines in (every region unless ``set_org_regions`` narrows them).
- Test control: fault injection by templated route, call log, latency, rate limits (429 +
  Retry-After), all also reachable over HTTP under ``/__emulator/*`` (JSON, no auth).

Strict by default, wherever the real API behaves so (each is documented again where it is modelled):

- A freshly started machine reports an empty ``checks`` list at first (flyctl
  internal/machine/leasable_machine.go ``WaitForHealthchecksToPass``: "Machine.Checks (runtime status) is
  empty for freshly-launched machines").
- A successful exec answers without ``exit_code`` (fly-go machine_types.go ``MachineExecResponse``:
  ``exit_code,omitempty``, so Go drops the 0), nor empty ``stdout``/``stderr``.
- A new app answers 404, then 401, before it is visible (fly-go flaps/flaps_apps.go ``WaitForApp``
  retries exactly those two for up to a minute).
- A deleted volume passes through ``scheduling_destroy``/``waiting_for_detach``/``pending_destroy``
  before it disappears (fly-go flaps/flaps_volumes.go ``destroyedVolumeStates``).
- App deletion answers 202 and completes later; it wants stopped machines or ``force=true`` (DOCS
  machines/api/apps-resource "Delete an app"; SPEC ``Apps_delete`` 202 Accepted).
- Secrets are versioned: reads without ``min_version`` come from a replica behind the last write (SPEC
  ``Secrets_list`` ``min_version``: "Minimum secrets version to return. Returned when setting a new secret").
- Leases expire; a mutation carrying the nonce of an expired lease is refused (flyctl PR #4313: a stale
  nonce gave "lease not found").
- Rate limits: 1 req/s with bursts of 3 per action and per object, Get Machine 5 req/s with bursts of 10,
  app deletions 100/min (DOCS machines/api/working-with-machines-api §Rate Limits; superfly/docs PRs
  #1630, #1966), answered with 429 and Retry-After.
- An update of a running machine replaces it a moment later: until then the old version still runs, so
  only a ``wait`` for the new ``version`` tells when the new one is up (SPEC ``Machines_wait`` version).
- Flycast (``private_v6``) allocation names the org, and the network when the app has its own (flyctl
  internal/command/deploy/deploy_first.go sends ``org_slug`` and ``network`` in every ``AssignIP``).
- Growing a volume under a running machine answers ``needs_restart``: the filesystem grows at the next
  (re)start (SPEC ``ExtendVolumeResponse``; flyctl internal/command/volumes/extend.go).

The timing of these is in ``LatencyModel`` (set a field to 0 to switch one off where a test needs it);
``FlyEmulator(rate_limits=False)`` turns the rate limits off.

Control endpoints (no auth, JSON): ``POST /__emulator/reset``, ``POST /__emulator/latency``
(LatencyModel fields), ``POST /__emulator/rate_limits`` ``{"enabled"}``, ``POST /__emulator/fail``
(the ``fail()`` arguments), ``GET``/``DELETE /__emulator/calls``, ``GET /__emulator/snapshot``,
``GET /__emulator/exec_log``, ``POST /__emulator/foreign_apps`` ``{"name", "org"}``,
``POST /__emulator/org_regions`` ``{"org", "regions": [...] | null}``,
``POST /__emulator/check_status`` ``{"app", "machine_id", "status"}``,
``POST /__emulator/reach`` ``{"from", "to"}`` (the ``reach()`` answer; 404 for an unknown app), and
``POST /__emulator/exec_result`` ``{"result": {"exit_code", "stdout", "stderr"} | null}`` (a canned
answer, since a Python exec handler cannot travel over HTTP).

Simplifications: a ``version`` given to ``wait`` is matched only for ``started`` (the version that
runs); ``show_secrets`` is ignored because secret values are never stored; a ``created``
(skip_launch) machine does not satisfy ``wait?state=stopped``.

With ``state_file`` the world is loaded at ``start()`` and saved after every mutating call, so the
CLI's emulator (``silo emulator``) survives restarts between ``pulumi up`` runs.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import shlex
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from emulators._fly_util import (
    APP_NAME_RE,
    LIST_STATES,
    SECRET_NAME_RE,
    SIGNALS,
    TRANSIENT_STATES,
    VOLUME_NAME_RE,
    WAIT_STATES,
    ApiError,
    TokenBuckets,
    app_id,
    lease_nonce,
    machine_id,
    not_found,
    parse_bool,
    request_id,
    require_bool,
    require_int,
    retry_after_header,
    rfc3339,
    rfc3339_ms,
    secret_digest,
    ulid,
    volume_id,
)

log = logging.getLogger(__name__)

ExecHandler = Callable[[str, str, list[str]], dict]

DEFAULT_REGION = "yul"
DEFAULT_LEASE_TTL_S = 30
WAIT_TIMEOUT_MESSAGE = "invalid_argument: invalid WaitMachineRequest.Timeout: value must be inside range [1s, 1m0s]"
# Machines in these states are running (or about to be): destroying one needs force/kill.
RUNNING_STATES = frozenset({"started", "starting", "restarting", "updating", "replacing", "stopping", "suspending"})
CHECK_STATUSES = frozenset({"passing", "warning", "critical"})
IP_TYPES = ("v6", "shared_v4", "private_v6", "v4")
# Fly's region codes (fly.io/docs/reference/regions), as components/config.py knows them.
PLATFORM_REGIONS = (
    "ams", "arn", "atl", "bog", "bom", "bos", "cdg", "den", "dfw", "ewr", "eze", "fra", "gdl",
    "gig", "gru", "hkg", "iad", "jnb", "lax", "lhr", "mad", "mia", "nrt", "ord", "otp", "phx",
    "qro", "scl", "sea", "sfo", "sin", "sjc", "syd", "waw", "yul", "yyz",
)  # fmt: skip
PLACEMENT_LIMIT = 100  # machines an org may place per region, when a placement asks for the limit
# POSTs that change nothing: a placement is a simulation (fly-go flaps_platform.go GetPlacements).
READ_ONLY_ROUTES = frozenset({"/v1/platform/placements"})
STATE_FILE_VERSION = 1
# Custom private networks (fly.io/docs/networking/custom-private-networks): a name is unique within an
# org and bound for good to a 32-bit network id, which follows "fdaa:" in every 6PN and Flycast address
# of the network; names have letters, digits and dashes and start with a letter. An app is created on
# one network ("default" unless `network` is given) and can never move to another.
DEFAULT_NETWORK = "default"
NETWORK_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
FIRST_NETWORK_ID = 0x2_0000  # printed as fdaa:2:<n>:..., the shape of the docs' examples
PUBLIC_IP_TYPES = frozenset({"v6", "v4", "shared_v4"})
# fly-go flaps/flaps_volumes.go destroyedVolumeStates (fork_cleanup follows a fork, which is not modelled).
VOLUME_DESTROY_STATES = frozenset(
    {"scheduling_destroy", "fork_cleanup", "waiting_for_detach", "pending_destroy", "destroying"}
)
NONCE_HEADER = "fly-machine-lease-nonce"


@dataclass
class LatencyModel:
    call_s: float = 0.0  # added to every API call before answering
    boot_s: float = 0.0  # created/stopped -> started (machine "starting" for this long)
    stop_s: float = 0.0  # started -> stopped ("stopping")
    destroy_s: float = 0.0  # -> destroyed ("destroying")
    check_pass_s: float = 0.0  # after "started", checks are "warning" until this has passed, then "passing"
    # Strict defaults: delays of the real API that a client has to wait out (sources in the module docstring).
    replace_lag_s: float = 0.2  # an updated running machine keeps running the old version this long
    app_delete_s: float = 2.0  # DELETE /apps answers 202; the name stays taken until this has passed
    volume_destroy_s: float = 10.0  # a deleted volume stays listed, in its destroy states, this long
    secrets_lag_s: float = 2.0  # reads without min_version see the secrets as they were this long ago
    app_hidden_requests: int = 2  # requests about a new app answered 404, then 401, before it is visible


@dataclass
class _Fault:
    method: str
    route: str
    skip: int  # matching calls still to let through before firing
    times: int  # how many matching calls fire
    status: int
    after_effect: bool
    body: dict | None


# (templated route, methods, handler attribute). The template is what `fail()` and `calls()` use.
_ROUTES: list[tuple[str, tuple[str, ...], str]] = [
    ("/v1/apps", ("GET", "POST"), "apps"),
    ("/v1/apps/{app}", ("GET", "DELETE"), "app"),
    ("/v1/apps/{app}/machines", ("GET", "POST"), "machines"),
    ("/v1/apps/{app}/machines/{machine_id}", ("GET", "POST", "DELETE"), "machine"),
    ("/v1/apps/{app}/machines/{machine_id}/start", ("POST",), "machine_start"),
    ("/v1/apps/{app}/machines/{machine_id}/stop", ("POST",), "machine_stop"),
    ("/v1/apps/{app}/machines/{machine_id}/restart", ("POST",), "machine_restart"),
    ("/v1/apps/{app}/machines/{machine_id}/suspend", ("POST",), "machine_suspend"),
    ("/v1/apps/{app}/machines/{machine_id}/cordon", ("POST",), "machine_cordon"),
    ("/v1/apps/{app}/machines/{machine_id}/uncordon", ("POST",), "machine_uncordon"),
    ("/v1/apps/{app}/machines/{machine_id}/wait", ("GET",), "machine_wait"),
    ("/v1/apps/{app}/machines/{machine_id}/lease", ("GET", "POST", "DELETE"), "machine_lease"),
    ("/v1/apps/{app}/machines/{machine_id}/metadata", ("GET",), "machine_metadata"),
    ("/v1/apps/{app}/machines/{machine_id}/metadata/{key}", ("GET", "POST", "DELETE"), "machine_metadata_key"),
    ("/v1/apps/{app}/machines/{machine_id}/events", ("GET",), "machine_events"),
    ("/v1/apps/{app}/machines/{machine_id}/versions", ("GET",), "machine_versions"),
    ("/v1/apps/{app}/machines/{machine_id}/exec", ("POST",), "machine_exec"),
    ("/v1/apps/{app}/volumes", ("GET", "POST"), "volumes"),
    # PUT in the current API, POST in the 2024 spec: both update.
    ("/v1/apps/{app}/volumes/{volume_id}", ("GET", "PUT", "POST", "DELETE"), "volume"),
    ("/v1/apps/{app}/volumes/{volume_id}/extend", ("PUT",), "volume_extend"),
    ("/v1/apps/{app}/secrets", ("GET", "POST"), "secrets"),
    ("/v1/apps/{app}/secrets/{name}", ("GET", "POST", "DELETE"), "secret"),
    ("/v1/apps/{app}/ip_assignments", ("GET", "POST"), "ips"),
    ("/v1/apps/{app}/ip_assignments/{ip}", ("DELETE",), "ip"),
    ("/v1/platform/regions", ("GET",), "platform_regions"),
    ("/v1/platform/placements", ("POST",), "platform_placements"),
]
ROUTES: frozenset[str] = frozenset(template for template, _, _ in _ROUTES)

_ADJECTIVES = ("aged", "bold", "calm", "damp", "eager", "fancy", "gentle", "hidden", "icy", "jolly", "lively")
_NOUNS = ("wind", "river", "moon", "forest", "meadow", "cloud", "stone", "field", "flower", "frost", "lake")


def _werkzeug_rule(template: str) -> str:
    return template.replace("{", "<").replace("}", ">")


def _empty_state() -> dict[str, Any]:
    return {
        "apps": {},  # name -> app record
        "machines": {},  # id -> machine record (destroyed ones kept for include_deleted)
        "volumes": {},  # id -> volume record
        "ips": {},  # app -> [ip record]
        "secrets": {},  # app -> {name: {digest, created_at, updated_at}}; values are never stored
        "secrets_version": {},  # app -> int
        "secrets_history": {},  # app -> [{version, at, secrets}]: what a lagging replica can answer
        "deleting_apps": {},  # name -> time the asynchronous deletion completes (the name is taken until then)
        "shared_v4": f"66.241.124.{secrets.randbelow(254) + 1}",
        "counters": {"v6": 0, "v4": 0, "private_v6": 0, "network": 0},
        "networks": {},  # "<org>/<network name>" -> network id
        "org_regions": {},  # org -> the regions it may place machines in (absent: every region)
    }


class FlyEmulator:
    def __init__(
        self,
        latency: LatencyModel | None = None,
        rate_limits: bool = True,
        token: str | None = None,
        state_file: Path | None = None,
    ):
        self._initial_latency = copy.copy(latency or LatencyModel())
        self._initial_rate_limits = rate_limits
        self._latency = copy.copy(self._initial_latency)
        self._rate_limits = rate_limits
        self._token = token
        self._state_file = Path(state_file) if state_file is not None else None
        # One lock around the whole state; the condition lets `wait` sleep without holding it.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._state = _empty_state()
        self._faults: list[_Fault] = []
        self._calls: list[dict] = []
        self._exec_log: list[dict] = []
        self._exec_handler: ExecHandler | None = None
        self._forced_checks: dict[tuple[str, str], str] = {}
        self._buckets = TokenBuckets()
        self._stopping = False
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self._url_map = Map([Rule(_werkzeug_rule(t), methods=list(m), endpoint=t) for t, m, _ in _ROUTES])
        self._handlers = {t: getattr(self, f"_h_{name}") for t, _, name in _ROUTES}

    # -- server lifecycle --------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._server is not None:
            raise RuntimeError(f"the Fly emulator is already serving at {self.url}")
        self._load()
        self._stopping = False
        self._server = make_server(host, port, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self.url = f"http://{host}:{self._server.server_port}"
        # A short poll interval keeps stop() quick (shutdown waits for the serve loop to notice).
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fly-emulator", daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()  # blocked `wait` calls answer at once instead of holding threads
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FlyEmulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test control (Python) ----------------------------------------------------------------------
    def reset(self) -> None:
        """Back to an empty world with the constructor's latency and rate-limit settings."""
        with self._cond:
            self._state = _empty_state()
            self._faults.clear()
            self._calls.clear()
            self._exec_log.clear()
            self._forced_checks.clear()
            self._buckets.clear()
            self._exec_handler = None
            self._latency = copy.copy(self._initial_latency)
            self._rate_limits = self._initial_rate_limits
            self._save()
            self._cond.notify_all()

    def set_latency(self, latency: LatencyModel) -> None:
        with self._cond:
            self._latency = copy.copy(latency)

    def set_rate_limits(self, enabled: bool) -> None:
        with self._cond:
            self._rate_limits = enabled
            self._buckets.clear()

    def set_token(self, token: str | None) -> None:
        """Accept only `token` from now on (None: any token), as after revoking the old one."""
        with self._cond:
            self._token = token

    def fail(
        self,
        method: str,
        route: str,
        *,
        nth: int = 1,
        status: int = 500,
        after_effect: bool = False,
        times: int = 1,
        body: dict | None = None,
    ) -> None:
        """Answer `status` to the nth next call of method+route (and the `times - 1` after it)."""
        method = method.upper()
        if route not in ROUTES:
            raise ValueError(f"route {route!r} is not an emulated route; known routes: {sorted(ROUTES)}")
        if not any(t == route and method in m for t, m, _ in _ROUTES):
            raise ValueError(f"method {method} is not served on route {route!r}")
        if nth < 1 or times < 1:
            raise ValueError(f"nth and times must be >= 1 (got nth={nth}, times={times})")
        if not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status code (got {status})")
        with self._cond:
            self._faults.append(_Fault(method, route, nth - 1, times, status, after_effect, body))

    def calls(self) -> list[dict]:
        with self._cond:
            return copy.deepcopy(self._calls)

    def clear_calls(self) -> None:
        with self._cond:
            self._calls.clear()

    def exec_log(self) -> list[dict]:
        """Every command run through ``POST .../exec``: ``[{"app", "machine_id", "cmd": [...]}]``."""
        with self._cond:
            return copy.deepcopy(self._exec_log)

    def snapshot(self) -> dict:
        """The live world as plain dicts; destroyed machines are left out, secrets are digests only."""
        with self._cond:
            now = time.time()
            self._settle_all(now)
            st = self._state
            return copy.deepcopy(
                {
                    "apps": {n: self._app_view(a) for n, a in st["apps"].items()},
                    "machines": {
                        mid: {"app": m["app"], **self._machine_view(m, now)}
                        for mid, m in st["machines"].items()
                        if m["state"] != "destroyed"
                    },
                    "volumes": {
                        vid: {"app": v["app"], **self._volume_view(v), "fs_size_gb": v.get("fs_size_gb", v["size_gb"])}
                        for vid, v in st["volumes"].items()
                        if v["state"] not in VOLUME_DESTROY_STATES
                    },
                    "ips": {app: [dict(ip) for ip in ips] for app, ips in st["ips"].items()},
                    "secrets": {app: {n: s["digest"] for n, s in sec.items()} for app, sec in st["secrets"].items()},
                }
            )

    def add_foreign_app(self, name: str, org: str) -> None:
        """An app owned by another org: its name is taken, and reading it answers 403."""
        if not APP_NAME_RE.match(name):
            raise ValueError(f"invalid app name {name!r}")
        with self._cond:
            if name in self._state["apps"]:
                raise ValueError(f"app {name!r} already exists")
            self._state["apps"][name] = self._new_app(name, org, None, foreign=True)
            self._save()

    def set_org_regions(self, org: str, regions: list[str] | None) -> None:
        """Only `regions` are usable by `org` from now on (None: every region), as for an org whose plan
        or capacity leaves some regions out."""
        unknown = sorted(set(regions or ()) - set(PLATFORM_REGIONS))
        if unknown:
            raise ValueError(f"unknown regions {unknown}")
        with self._cond:
            if regions is None:
                self._state["org_regions"].pop(org, None)
            else:
                self._state["org_regions"][org] = list(regions)
            self._save()

    def set_exec_handler(self, fn: ExecHandler | None) -> None:
        """fn(app, machine_id, cmd) -> {"exit_code": int, "stdout": str, "stderr": str}."""
        with self._cond:
            self._exec_handler = fn

    def set_check_status(self, app: str, machine_id: str, status: str | None) -> None:
        """Force every check of a machine to `status` (None returns to the latency model)."""
        if status is not None and status not in CHECK_STATUSES:
            raise ValueError(f"status must be one of {sorted(CHECK_STATUSES)} or None (got {status!r})")
        with self._cond:
            if status is None:
                self._forced_checks.pop((app, machine_id), None)
            else:
                self._forced_checks[(app, machine_id)] = status

    def reach(self, from_app: str, target: str) -> dict:
        """Could a machine of ``from_app`` open a connection to ``target``?

        ``target`` is ``<app>.flycast``, ``<app>.internal``, ``<app>.fly.dev`` or an IP address. Answers
        ``{"reachable", "addresses", "reason"}``. Fly's DNS and routing are scoped to a network
        (custom-private-networks): ``.flycast`` resolves to the Flycast addresses allocated on the
        asker's network (an address allocated with ``network`` serves that network, not the app's own;
        networking/flycast), ``.internal`` to the started machines of an app on the asker's network;
        public addresses (``v6``, ``v4``, ``shared_v4``) answer everyone. A private address of another
        network is not routed even when known. Raises ValueError for an unknown ``from_app``.
        """
        with self._cond:
            now = time.time()
            self._settle_all(now)
            source = self._state["apps"].get(from_app)
            if source is None or source["foreign"]:
                raise ValueError(f"unknown app {from_app!r}")
            where = (source["org_slug"], source["network"])
            addresses, reason = self._resolve(where, target.strip().lower().rstrip("."))
            return {"reachable": bool(addresses), "addresses": addresses, "reason": "" if addresses else reason}

    def can_reach(self, from_app: str, target: str) -> bool:
        return bool(self.reach(from_app, target)["reachable"])

    def _resolve(self, where: tuple[str, str], target: str) -> tuple[list[str], str]:
        st = self._state
        org, network = where
        here = f"network {network} of org {org}"
        try:
            literal = str(ipaddress.ip_address(target))
        except ValueError:
            literal = None
        if literal is not None:
            for app_name, ips in st["ips"].items():
                for ip in ips:
                    if ip["ip"] != literal:
                        continue
                    if ip["type"] in PUBLIC_IP_TYPES:
                        return [literal], ""
                    if self._ip_network(app_name, ip) == where:
                        return [literal], ""
            for m in st["machines"].values():
                if m["private_ip"] == literal and m["state"] == "started":
                    owner = st["apps"].get(m["app"])
                    if owner is not None and (owner["org_slug"], owner["network"]) == where:
                        return [literal], ""
            return [], f"{literal} is not routed to {here} (another network, another org, or nobody's address)"
        name, _, suffix = target.partition(".")
        app = st["apps"].get(name)
        if app is None or suffix not in ("flycast", "internal", "fly.dev"):
            return [], f"{target} does not resolve on {here}"
        ips = st["ips"].get(name, [])
        if suffix == "fly.dev":
            found = [ip["ip"] for ip in ips if ip["type"] in PUBLIC_IP_TYPES]
            return found, f"{target} does not resolve: the app has no public IP"
        if suffix == "flycast":
            found = [ip["ip"] for ip in ips if ip["type"] == "private_v6" and self._ip_network(name, ip) == where]
            return found, f"{target} does not resolve on {here} (no Flycast address of the app on it)"
        if (app["org_slug"], app["network"]) != where:
            return [], f"{target} does not resolve on {here}"
        found = [m["private_ip"] for m in st["machines"].values() if m["app"] == name and m["state"] == "started"]
        return found, f"{target} does not resolve: .internal lists started machines only, and the app has none"

    def _ip_network(self, app_name: str, ip: dict) -> tuple[str, str]:
        """(org, network) a private IP belongs to (older state files did not record it: the app's own)."""
        app = self._state["apps"].get(app_name) or {}
        return ip.get("org_slug") or app.get("org_slug", ""), ip.get("network") or app.get("network", DEFAULT_NETWORK)

    def _network_prefix(self, org: str, network: str) -> str:
        """``fdaa:<hi>:<lo>``: the first 48 bits of every private address of that network."""
        networks = self._state.setdefault("networks", {})
        key = f"{org}/{network}"
        if key not in networks:
            counters = self._state["counters"]
            counters["network"] = counters.get("network", 0) + 1
            networks[key] = FIRST_NETWORK_ID + counters["network"]
        net = networks[key]
        return f"fdaa:{net >> 16:x}:{net & 0xFFFF:x}"

    # -- persistence --------------------------------------------------------------------------------
    def _load(self) -> None:
        path = self._state_file
        if path is None or not path.exists() or path.stat().st_size == 0:
            return
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the Fly emulator state file {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != STATE_FILE_VERSION:
            raise ValueError(f"{path} is not a Fly emulator state file (version {STATE_FILE_VERSION})")
        state = _empty_state()
        state.update({k: data["state"][k] for k in state if k in data.get("state", {})})
        with self._cond:
            self._state = state

    def _save(self) -> None:
        """Write atomically (callers hold the lock), so a crash never leaves half a file."""
        path = self._state_file
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": STATE_FILE_VERSION, "state": self._state}, indent=1))
        os.replace(tmp, path)

    # -- WSGI entry -----------------------------------------------------------------------------------
    def _wsgi(self, environ: dict, start_response: Callable) -> Any:
        request = Request(environ)
        rid = request_id()
        control = request.path.startswith("/__emulator/")
        response = self._control(request) if control else self._api(request)
        response.headers["fly-request-id"] = rid
        return response(environ, start_response)

    def _api(self, request: Request) -> Response:
        started = time.time()
        method = request.method.upper()
        route: str | None = None
        extra: dict[str, Any] = {}
        try:
            endpoint, args = self._url_map.bind_to_environ(request.environ).match()
            route = str(endpoint)
        except NotFound:
            response = _json_response(404, {"error": "not found"})
        except MethodNotAllowed:
            response = _json_response(405, {"error": f"method {method} not allowed"})
        if route is not None:
            if self._latency.call_s > 0:
                time.sleep(self._latency.call_s)  # never under the lock
            response = self._dispatch(request, method, route, args, extra)
        mutating = method not in ("GET", "HEAD") and route not in READ_ONLY_ROUTES
        with self._cond:
            call = {
                "method": method,
                "route": route,
                "path": request.path,
                "status": response.status_code,
                "mutating": mutating,
                "t": started,
            }
            call.update(extra)
            self._calls.append(call)
            if mutating:
                self._save()
            self._cond.notify_all()
        log.info("%s %s -> %s", method, request.full_path.rstrip("?"), response.status_code)
        return response

    def _dispatch(self, request: Request, method: str, route: str, args: dict, extra: dict) -> Response:
        auth = self._authenticate(request)
        if auth is not None:
            return auth
        fault = self._take_fault(method, route)
        if fault is not None and not fault.after_effect:
            return _fault_response(fault)
        limited = self._rate_limit(request, method, route, args)
        if limited is not None:
            return limited
        try:
            handler_method = "GET" if method == "HEAD" else method  # never let HEAD reach a mutation branch
            status, payload = self._handlers[route](request, handler_method, extra, **args)
            response = _json_response(status, payload)
        except ApiError as exc:
            response = _json_response(exc.http_status, exc.body())
        except Exception as exc:  # an emulator bug must still answer like a server, not hang the client
            log.exception("emulator error on %s %s", method, request.path)
            response = _json_response(500, {"error": f"internal emulator error: {exc}", "status": "unknown"})
        if fault is not None:
            return _fault_response(fault)
        return response

    def _authenticate(self, request: Request) -> Response | None:
        header = request.headers.get("Authorization", "").strip()
        if not header:
            return _json_response(401, {"error": "Authenticate: token validation error"})
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme not in ("Bearer", "FlyV1") or not token:
            return _json_response(401, {"error": "malformed authorization header"})
        if self._token is not None and token != self._token:
            return _json_response(401, {"error": "Authenticate: token validation error"})
        return None

    def _take_fault(self, method: str, route: str) -> _Fault | None:
        with self._cond:
            for fault in self._faults:
                if fault.method != method or fault.route != route:
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    return None
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _rate_limit(self, request: Request, method: str, route: str, args: dict) -> Response | None:
        """Fly's documented limits (DOCS machines/api/working-with-machines-api §Rate Limits; superfly/docs PRs
        #1630 and #1966): 1 req/s per action and per Machine (or app) id with bursts of 3, for every action, GETs
        by id included; Get Machine 5 req/s with bursts of 10; app deletions 100/min."""
        method = "GET" if method == "HEAD" else method
        action = f"{method} {route}"
        if method == "POST" and route.endswith("/lease") and request.headers.get(NONCE_HEADER):
            action += " (refresh)"  # fly-go counts acquiring and refreshing as two actions (flaps/actions.go)
        subject = str(args.get("machine_id") or args.get("volume_id") or args.get("app") or "")
        if not subject and route == "/v1/apps":
            # Creating an app is an action on the app it names; listing is one on the org.
            subject = str(request.args.get("org_slug") or "") if method == "GET" else _body_name(request)
        rate, burst = 1.0, 3
        if method == "GET" and route == "/v1/apps/{app}/machines/{machine_id}":
            rate, burst = 5.0, 10
        elif method == "DELETE" and route == "/v1/apps/{app}":
            rate, burst, subject = 100 / 60, 100, "*"
        with self._cond:
            if not self._rate_limits:
                return None
            wait_s = self._buckets.take((action, subject or "*"), rate, burst, time.monotonic())
        if wait_s is None:
            return None
        response = _json_response(429, {"error": "rate limit exceeded", "status": "unknown"})
        response.headers["Retry-After"] = retry_after_header(wait_s)
        return response

    # -- control over HTTP ----------------------------------------------------------------------------
    def _control(self, request: Request) -> Response:
        action = request.path.removeprefix("/__emulator/").strip("/")
        method = request.method.upper()
        try:
            body = _json_body(request)
            if (method, action) == ("POST", "reset"):
                self.reset()
            elif (method, action) == ("POST", "latency"):
                known = {f.name for f in fields(LatencyModel)}
                unknown = set(body) - known
                if unknown:
                    raise ApiError(400, f"unknown latency keys {sorted(unknown)}; known: {sorted(known)}")
                types = {f.name: f.type for f in fields(LatencyModel)}
                self.set_latency(
                    LatencyModel(**{k: int(v) if types[k] in (int, "int") else float(v) for k, v in body.items()})
                )
            elif (method, action) == ("POST", "rate_limits"):
                self.set_rate_limits(require_bool(body, "enabled", False))
            elif (method, action) == ("POST", "fail"):
                for key in ("method", "route"):
                    if not isinstance(body.get(key), str):
                        raise ApiError(400, f"{key} is required")
                self.fail(
                    body["method"],
                    body["route"],
                    nth=require_int(body, "nth", default=1) or 1,
                    status=require_int(body, "status", default=500) or 500,
                    after_effect=require_bool(body, "after_effect", False),
                    times=require_int(body, "times", default=1) or 1,
                    body=body.get("body"),
                )
            elif (method, action) == ("GET", "calls"):
                return _json_response(200, self.calls())
            elif (method, action) == ("DELETE", "calls"):
                self.clear_calls()
            elif (method, action) == ("GET", "exec_log"):
                return _json_response(200, self.exec_log())
            elif (method, action) == ("GET", "snapshot"):
                return _json_response(200, self.snapshot())
            elif (method, action) == ("POST", "foreign_apps"):
                self.add_foreign_app(str(body.get("name", "")), str(body.get("org", "")))
            elif (method, action) == ("POST", "org_regions"):
                regions = body.get("regions")
                self.set_org_regions(str(body.get("org", "")), None if regions is None else list(regions))
            elif (method, action) == ("POST", "check_status"):
                self.set_check_status(str(body.get("app")), str(body.get("machine_id")), body.get("status"))
            elif (method, action) == ("POST", "reach"):
                source = str(body.get("from", ""))
                if source not in self._state["apps"]:
                    return _json_response(404, {"error": f"unknown app {source!r}"})
                return _json_response(200, self.reach(source, str(body.get("to", ""))))
            elif (method, action) == ("POST", "exec_result"):
                # A canned exec answer for callers that cannot pass a Python callable (null clears it).
                result = body.get("result")
                self.set_exec_handler(None if result is None else (lambda _a, _m, _c, r=dict(result): r))
            else:
                return _json_response(404, {"error": f"unknown emulator control {method} /__emulator/{action}"})
        except ApiError as exc:
            return _json_response(exc.http_status, exc.body())
        except (TypeError, ValueError) as exc:
            return _json_response(400, {"error": str(exc)})
        return _json_response(200, {"ok": True})

    # -- shared lookups (callers hold the lock) -------------------------------------------------------
    def _new_app(self, name: str, org: str, network: str | None, *, foreign: bool = False) -> dict:
        self._network_prefix(org, network or DEFAULT_NETWORK)  # the name is bound to an id on first use
        # Requests about a new app answer 404, then 401, before it is visible (fly-go flaps_apps.go WaitForApp
        # retries both for up to a minute): the answers still owed are kept on the record.
        hidden = [] if foreign else [404 if i % 2 == 0 else 401 for i in range(int(self._latency.app_hidden_requests))]
        return {
            "hidden": hidden,
            "id": app_id(),
            "name": name,
            "org_slug": org,
            "network": network or DEFAULT_NETWORK,
            "foreign": foreign,
            "created_at": time.time(),
            "internal_numeric_id": int(hashlib.sha256(name.encode()).hexdigest()[:8], 16),
        }

    def _app(self, name: str) -> dict:
        app = self._state["apps"].get(name)
        if app is None:
            raise not_found()
        if app["foreign"]:
            raise ApiError(403, "unauthorized")
        if app.get("hidden"):
            if app["hidden"].pop(0) == 401:
                raise ApiError(401, "Authenticate: token validation error")
            raise not_found()
        return app

    def _purge_deleted_apps(self, now: float) -> None:
        deleting = self._state["deleting_apps"]
        for name in [n for n, until in deleting.items() if until <= now]:
            del deleting[name]

    def _machine(self, app: str, mid: str, now: float, *, include_deleted: bool = False) -> dict:
        self._app(app)
        m = self._state["machines"].get(mid)
        if m is None or m["app"] != app:
            raise not_found()
        self._settle(m, now)
        if m["state"] == "destroyed" and not include_deleted:
            raise not_found()
        return m

    def _volume(self, app: str, vid: str) -> dict:
        self._app(app)
        v = self._state["volumes"].get(vid)
        if v is not None:
            self._settle_volume(v, time.time())
            v = self._state["volumes"].get(vid)
        if v is None or v["app"] != app:
            raise not_found()
        return v

    def _settle_volume(self, v: dict, now: float) -> None:
        """A deleted volume's way out (fly-go flaps/flaps_volumes.go destroyedVolumeStates): waiting_for_detach
        while its machine is still being destroyed, then scheduling_destroy and pending_destroy for
        ``volume_destroy_s`` in all, then gone."""
        if v["state"] == "waiting_for_detach":
            if self._volume_holder(v, now) is not None:
                return
            v["state"], v["destroy_at"] = "scheduling_destroy", now
        if v["state"] not in ("scheduling_destroy", "pending_destroy"):
            return
        elapsed = now - v.get("destroy_at", now)
        if elapsed >= self._latency.volume_destroy_s:
            self._state["volumes"].pop(v["id"], None)
        elif elapsed >= self._latency.volume_destroy_s / 2:
            v["state"] = "pending_destroy"

    def _app_view(self, app: dict) -> dict:
        machines = [
            m for m in self._state["machines"].values() if m["app"] == app["name"] and m["state"] != "destroyed"
        ]
        volumes = [v for v in self._state["volumes"].values() if v["app"] == app["name"]]
        org = app["org_slug"]
        return {
            "id": app["id"],
            "name": app["name"],
            "status": "deployed" if any(m["state"] == "started" for m in machines) else "pending",
            "organization": {"name": org, "slug": org, "internal_numeric_id": app["internal_numeric_id"]},
            "network": app["network"],
            "machine_count": len(machines),
            "volume_count": len(volumes),
            "internal_numeric_id": app["internal_numeric_id"],
            "org_slug": org,
            "foreign": app["foreign"],
        }

    # -- machine lifecycle (timestamps, no timers) -----------------------------------------------------
    def _settle_all(self, now: float) -> None:
        for m in self._state["machines"].values():
            self._settle(m, now)
        for v in list(self._state["volumes"].values()):
            self._settle_volume(v, now)
        self._purge_deleted_apps(now)

    def _settle(self, m: dict, now: float) -> None:
        replace_at = m.get("replace_at")
        if replace_at is not None and now >= replace_at:
            # flyd gets to the queued update: the old version stops and the new one boots.
            m["replace_at"] = None
            m["state"], m["settles_to"], m["settles_at"] = "replacing", "started", replace_at + self._latency.boot_s
            m["updated_at"] = replace_at
            self._event(m, "replacing", replace_at)
        at = m.get("settles_at")
        if at is None or now < at:
            return
        final = m["settles_to"]
        m["state"], m["settles_at"], m["settles_to"] = final, None, None
        m["updated_at"] = at
        if final == "started":
            m["started_at"] = at
            m["running_version"] = m["instance_id"]
            # Each start of an instance begins without health-check reports (see _checks).
            m["checks_reported"] = False
            for v in self._state["volumes"].values():
                if v.get("attached_machine_id") == m["id"]:
                    v["fs_size_gb"] = v["size_gb"]  # a grown volume's filesystem grows when the machine (re)starts
        if final == "destroyed":
            m["lease"] = None
            for v in self._state["volumes"].values():
                if v.get("attached_machine_id") == m["id"]:
                    v["attached_machine_id"] = None
        self._event(m, final, at)

    def _transition(self, m: dict, transient: str, final: str, duration: float, now: float) -> None:
        m["replace_at"] = None  # a stop, restart or destroy overtakes a queued replacement
        m["state"], m["settles_to"], m["settles_at"] = transient, final, now + max(duration, 0.0)
        m["updated_at"] = now
        self._settle(m, now)

    def _event(self, m: dict, kind: str, at: float, status: str | None = None) -> None:
        m["events"].append(
            {"id": ulid(at), "type": kind, "status": status or kind, "source": "flyd", "timestamp": int(at * 1000)}
        )
        del m["events"][:-50]

    def _check_lease(self, m: dict, request: Request, now: float) -> None:
        lease = m.get("lease")
        if lease and lease["expires_at"] <= now:
            lease = m["lease"] = None
        nonce = request.headers.get(NONCE_HEADER)
        if not lease:
            # Leases expire: a writer still sending the nonce of an expired (or released) lease is refused,
            # not let through (flyctl PR #4313, "lease not found" from a stale nonce).
            if nonce:
                raise ApiError(
                    409,
                    f"aborted: lease not found for machine {m['id']} (nonce {nonce} expired or was released)",
                    "unknown",
                )
            return
        if nonce != lease["nonce"]:
            raise ApiError(
                409,
                f"aborted: machine ID {m['id']} lease currently held by {lease['owner']}, "
                f"expires at {rfc3339(lease['expires_at'])}",
                "unknown",
            )

    def _checks(self, m: dict, now: float, *, observe: bool = False) -> list[dict]:
        cfg = m["config"]
        names = list((cfg.get("checks") or {}).keys())
        for svc in cfg.get("services") or []:
            for j, check in enumerate(svc.get("checks") or []):
                names.append(f"servicecheck-{j:02d}-{check.get('type', 'tcp')}-{svc.get('internal_port')}")
        if names and m["state"] == "started" and not m.get("checks_reported"):
            # A freshly started instance has no check reports yet: the first read sees an empty list (flyctl
            # internal/machine/leasable_machine.go WaitForHealthchecksToPass counts the configured checks
            # because "Machine.Checks (runtime status) is empty for freshly-launched machines").
            if observe:
                m["checks_reported"] = True
            return []
        forced = self._forced_checks.get((m["app"], m["id"]))
        if forced is not None:
            status, output, updated = forced, f"status forced to {forced} by the emulator", now
        elif m["state"] != "started":
            status, output, updated = "critical", f"machine is {m['state']}", m["updated_at"]
        elif now < m.get("started_at", now) + self._latency.check_pass_s:
            status, output, updated = "warning", "waiting for status update", m["started_at"]
        else:
            status, output = "passing", "Success"
            updated = m.get("started_at", now) + self._latency.check_pass_s
        return [{"name": n, "status": status, "output": output, "updated_at": rfc3339_ms(updated)} for n in names]

    def _machine_view(self, m: dict, now: float, *, summary: bool = False, observe: bool = False) -> dict:
        view: dict[str, Any] = {
            "id": m["id"],
            "name": m["name"],
            "state": m["state"],
            "region": m["region"],
            "instance_id": m["instance_id"],
            "private_ip": m["private_ip"],
            "image_ref": _image_ref(m["config"].get("image", "")),
            "created_at": rfc3339(m["created_at"]),
            "updated_at": rfc3339(m["updated_at"]),
            "host_status": "ok",
            "cordoned": m.get("cordoned", False),
        }
        if not summary:
            view["config"] = copy.deepcopy(m["config"])
            view["events"] = list(reversed(m["events"][-20:]))
            view["checks"] = self._checks(m, now, observe=observe)
        return view

    def _validate_config(self, body: dict) -> dict:
        config = body.get("config")
        if not isinstance(config, dict):
            raise ApiError(400, "invalid config: a machine config object is required")
        config = copy.deepcopy(config)
        image = config.get("image")
        if not isinstance(image, str) or not image.strip():
            raise ApiError(400, "invalid config.image: an image is required")
        for key, kind in (
            ("env", dict),
            ("metadata", dict),
            ("checks", dict),
            ("services", list),
            ("mounts", list),
            ("guest", dict),
        ):
            if config.get(key) is not None and not isinstance(config[key], kind):
                raise ApiError(400, f"invalid config.{key}: must be {'an object' if kind is dict else 'a list'}")
        for section in ("env", "metadata"):
            for k, v in (config.get(section) or {}).items():
                if not isinstance(v, str):
                    raise ApiError(400, f"invalid config.{section}.{k}: values must be strings")
        _check_integer_fields(config)
        memory = (config.get("guest") or {}).get("memory_mb")
        if memory is not None and (memory <= 0 or memory % 256):
            raise ApiError(400, f"invalid config.guest.memory_mb: {memory!r} is not a positive multiple of 256")
        for i, svc in enumerate(config.get("services") or []):
            if not isinstance(svc, dict):
                raise ApiError(400, f"invalid config.services[{i}]: must be an object")
            if "autostop" in svc:
                svc["autostop"] = _normalize_autostop(svc["autostop"], f"config.services[{i}].autostop")
            if "autostart" in svc and not isinstance(svc["autostart"], bool):
                raise ApiError(
                    400, f"invalid config.services[{i}].autostart: must be a boolean, got {svc['autostart']!r}"
                )
        mounts = config.get("mounts") or []
        if len(mounts) > 1:
            raise ApiError(400, "invalid config.mounts: a machine can mount at most one volume")
        for i, mount in enumerate(mounts):
            if (
                not isinstance(mount, dict)
                or not isinstance(mount.get("volume"), str)
                or not isinstance(mount.get("path"), str)
            ):
                raise ApiError(400, f"invalid config.mounts[{i}]: volume and path are required")
        return config

    def _check_secrets_version(self, app: str, body: dict) -> None:
        wanted = require_int(body, "min_secrets_version", lo=0)
        current = self._state["secrets_version"].get(app, 0)
        if wanted is not None and wanted > current:
            raise ApiError(
                422, f"min_secrets_version {wanted} is newer than the app's secrets version {current}", "unknown"
            )

    def _lease_record(self, request: Request, m: dict, ttl: int, description: str, now: float) -> dict:
        token = request.headers.get("Authorization", "").partition(" ")[2].strip()
        owner = hashlib.sha256(token.encode()).hexdigest()[:12] + "@tokens.fly.io"
        return {
            "nonce": lease_nonce(),
            "expires_at": math.ceil(now + ttl),
            "owner": owner,
            "description": description,
            "version": m["instance_id"],
        }

    # -- apps -------------------------------------------------------------------------------------------
    def _h_apps(self, request: Request, method: str, extra: dict) -> tuple[int, Any]:
        with self._cond:
            self._purge_deleted_apps(time.time())
            if method == "GET":
                org = request.args.get("org_slug")
                if not org:
                    raise ApiError(400, "org_slug is required")
                apps = [
                    self._app_view(a) for a in self._state["apps"].values() if a["org_slug"] == org and not a["foreign"]
                ]
                for a in apps:
                    a.pop("foreign")
                    a.pop("org_slug")
                return 200, {"total_apps": len(apps), "apps": apps}
            body = _json_body(request)
            name = body.get("name") or body.get("app_name")
            if not isinstance(name, str) or not name:
                raise ApiError(400, "app_name is required")
            org = body.get("org_slug")
            if not isinstance(org, str) or not org:
                raise ApiError(400, "org_slug is required")
            network = body.get("network")
            if network is not None and not isinstance(network, str):
                raise ApiError(400, "invalid network: must be a string")
            if network and not NETWORK_NAME_RE.match(network):
                raise ApiError(
                    422,
                    f"invalid network name {network!r}: letters, numbers and dashes, starting with a letter",
                    "unknown",
                )
            if not APP_NAME_RE.match(name):
                raise ApiError(
                    422,
                    f"Validation failed: app name {name!r} must consist of only lowercase "
                    "letters, numbers, and dashes, at most 63 characters, not starting or "
                    "ending with a dash",
                    "unknown",
                )
            # App names are global across all of Fly.io, and an app being deleted keeps its name until the
            # (asynchronous) deletion has finished.
            if name in self._state["apps"] or name in self._state["deleting_apps"]:
                raise ApiError(422, "Name has already been taken", "name_taken")
            app = self._state["apps"][name] = self._new_app(name, org, network)
            return 201, {"id": app["id"], "created_at": int(app["created_at"] * 1000)}

    def _h_app(self, request: Request, method: str, extra: dict, app: str) -> tuple[int, Any]:
        with self._cond:
            now = time.time()
            self._purge_deleted_apps(now)
            record = self._app(app)
            if method == "GET":
                view = self._app_view(record)
                view.pop("foreign")
                view.pop("org_slug")
                return 200, view
            st = self._state
            # "force=true stops all Machines and deletes immediately"; without it Machines should be stopped
            # first (DOCS machines/api/apps-resource, Delete an app).
            self._settle_all(now)
            running = [m["id"] for m in st["machines"].values() if m["app"] == app and m["state"] in RUNNING_STATES]
            if running and not parse_bool(request.args.get("force")):
                raise ApiError(
                    412,
                    f"failed_precondition: app {app} has running machines ({', '.join(running)}); "
                    "stop them first or delete with force=true",
                    "unknown",
                )
            for mid in [mid for mid, m in st["machines"].items() if m["app"] == app]:
                del st["machines"][mid]
                self._forced_checks.pop((app, mid), None)
            for vid in [vid for vid, v in st["volumes"].items() if v["app"] == app]:
                del st["volumes"][vid]
            for key in ("ips", "secrets", "secrets_version", "secrets_history"):
                st[key].pop(app, None)
            del st["apps"][app]
            # 202 Accepted (SPEC Apps_delete): the deletion completes later, and the name is taken until then.
            if self._latency.app_delete_s > 0:
                st["deleting_apps"][app] = now + self._latency.app_delete_s
            return 202, None

    # -- platform ---------------------------------------------------------------------------------------
    def _h_platform_regions(self, request: Request, method: str, extra: dict) -> tuple[int, Any]:
        regions = [
            {"code": code, "name": code, "gateway_available": True, "requires_paid_plan": False, "deprecated": False}
            for code in PLATFORM_REGIONS
        ]
        return 200, {"Regions": regions, "Nearest": DEFAULT_REGION}

    def _h_platform_placements(self, request: Request, method: str, extra: dict) -> tuple[int, Any]:
        body = _json_body(request)
        org = body.get("org_slug")
        if not isinstance(org, str) or not org:
            raise ApiError(400, "org_slug is required")
        asked = [r.strip() for r in str(body.get("region") or "any").split(",") if r.strip()]
        unknown = [r for r in asked if r != "any" and r not in PLATFORM_REGIONS]
        if unknown:
            raise ApiError(400, f"unknown region {unknown[0]!r}")
        count = body.get("count") or 0
        with self._cond:
            usable = self._state["org_regions"].get(org, list(PLATFORM_REGIONS))
        wanted = usable if "any" in asked else [r for r in asked if r in usable]
        # Count 0 asks for the org's limit in each region (fly-go GetPlacementsRequest.Count).
        placed = int(count) if isinstance(count, int) and count > 0 else PLACEMENT_LIMIT
        return 200, {"regions": [{"region": r, "count": placed, "concurrency": 0} for r in wanted]}

    # -- machines ---------------------------------------------------------------------------------------
    def _h_machines(self, request: Request, method: str, extra: dict, app: str) -> tuple[int, Any]:
        with self._cond:
            now = time.time()
            self._app(app)
            if method == "GET":
                return 200, self._list_machines(request, app, now)
            body = _json_body(request)
            return 200, self._create_machine(request, app, body, now)

    def _list_machines(self, request: Request, app: str, now: float) -> list[dict]:
        include_deleted = parse_bool(request.args.get("include_deleted"))
        summary = parse_bool(request.args.get("summary"))
        states = [s for v in request.args.getlist("state") for s in v.split(",") if s]
        unknown = set(states) - LIST_STATES
        if unknown:
            raise ApiError(400, f"invalid state filter {sorted(unknown)}; allowed: {sorted(LIST_STATES)}")
        region = request.args.get("region")
        wanted_meta = {k.removeprefix("metadata."): v for k, v in request.args.items() if k.startswith("metadata.")}
        out = []
        for m in self._state["machines"].values():
            if m["app"] != app:
                continue
            self._settle(m, now)
            if m["state"] == "destroyed" and not include_deleted:
                continue
            if states and m["state"] not in states:
                continue
            if region and m["region"] != region:
                continue
            meta = m["config"].get("metadata") or {}
            if any(meta.get(k) != v for k, v in wanted_meta.items()):
                continue
            out.append(self._machine_view(m, now, summary=summary, observe=True))
        return out

    def _create_machine(self, request: Request, app: str, body: dict, now: float) -> dict:
        config = self._validate_config(body)
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise ApiError(400, "invalid name: must be a non-empty string")
        live = [m for m in self._state["machines"].values() if m["app"] == app and m["state"] != "destroyed"]
        taken = next((m for m in live if name and m["name"] == name), None)
        if taken is not None:
            raise ApiError(
                422,
                f'unique machine name violation, machine ID {taken["id"]} already exists with name "{name}"',
                "unknown",
            )
        region = body.get("region")
        if region is not None and (not isinstance(region, str) or not region):
            raise ApiError(400, "invalid region: must be a region code")
        skip_launch = require_bool(body, "skip_launch", False)
        lease_ttl = require_int(body, "lease_ttl", lo=0)
        self._check_secrets_version(app, body)
        mount_volume = None
        for mount in config.get("mounts") or []:
            mount_volume = self._state["volumes"].get(mount["volume"])
            if mount_volume is not None:
                self._settle_volume(mount_volume, now)
                mount_volume = self._state["volumes"].get(mount["volume"])
            if mount_volume is not None and mount_volume["state"] in VOLUME_DESTROY_STATES:
                raise ApiError(
                    400,
                    f"invalid config.mounts[0].volume: volume {mount['volume']} is being destroyed "
                    f"({mount_volume['state']})",
                )
            if mount_volume is None or mount_volume["app"] != app:
                raise ApiError(
                    400, f"invalid config.mounts[0].volume: volume {mount['volume']!r} not found in app {app}"
                )
        app_volumes = [v for v in self._state["volumes"].values() if v["app"] == app]
        region = (
            region
            or (mount_volume or {}).get("region")
            or (app_volumes[0]["region"] if app_volumes else DEFAULT_REGION)
        )
        if mount_volume is not None:
            self._check_attachable(mount_volume, region, None, now)
        mid = machine_id()
        while mid in self._state["machines"]:
            mid = machine_id()
        instance = ulid(now)
        m = {
            "id": mid,
            "app": app,
            "name": name or _machine_name(),
            "region": region,
            "instance_id": instance,
            "private_ip": self._machine_6pn(app),
            "config": config,
            "created_at": now,
            "updated_at": now,
            "state": "created",
            "settles_to": None,
            "settles_at": None,
            "events": [],
            "lease": None,
            "cordoned": False,
            "versions": [{"version": instance, "user_config": copy.deepcopy(config)}],
        }
        self._state["machines"][mid] = m
        if mount_volume is not None:
            mount_volume["attached_machine_id"] = mid
        self._event(m, "launch", now, "created")
        if not skip_launch:
            self._transition(m, "starting", "started", self._latency.boot_s, now)
        view = self._machine_view(m, now)
        if lease_ttl:
            m["lease"] = self._lease_record(request, m, lease_ttl, "created with lease_ttl", now)
            view["nonce"] = m["lease"]["nonce"]
        return view

    def _machine_6pn(self, app: str) -> str:
        """A machine's 6PN address: its network's prefix, then host and machine bits (private-networking)."""
        record = self._state["apps"][app]
        groups = [secrets.token_hex(2).lstrip("0") or "0" for _ in range(3)]
        return f"{self._network_prefix(record['org_slug'], record['network'])}:a7b:{':'.join(groups)}:2"

    def _check_attachable(self, volume: dict, region: str, mid: str | None, now: float) -> None:
        if volume["region"] != region:
            raise ApiError(
                400,
                f"volume {volume['id']} is in region {volume['region']}, not {region}: a machine "
                "must be in its volume's region",
            )
        holder_id = volume.get("attached_machine_id")
        holder = self._state["machines"].get(holder_id) if holder_id else None
        if holder is not None:
            self._settle(holder, now)
        if holder is not None and holder["id"] != mid and holder["state"] != "destroyed":
            raise ApiError(422, f"volume {volume['id']} is already attached to machine {holder['id']}", "unknown")

    def _h_machine(self, request: Request, method: str, extra: dict, app: str, machine_id: str) -> tuple[int, Any]:
        with self._cond:
            now = time.time()
            include_deleted = method == "GET" and parse_bool(request.args.get("include_deleted"))
            m = self._machine(app, machine_id, now, include_deleted=include_deleted)
            if method == "GET":
                view = self._machine_view(m, now, observe=True)
                if parse_bool(request.args.get("include_leases")) and m.get("lease"):
                    view["lease"] = dict(m["lease"])
                return 200, view
            self._check_lease(m, request, now)
            if method == "DELETE":
                return 200, self._destroy_machine(request, m, now)
            return 200, self._update_machine(request, m, _json_body(request), now)

    def _update_machine(self, request: Request, m: dict, body: dict, now: float) -> dict:
        if m["state"] == "destroying":
            raise ApiError(412, f"failed_precondition: machine {m['id']} is being destroyed", "unknown")
        config = self._validate_config(body)
        for key in ("name", "region"):
            value = body.get(key)
            if value not in (None, "") and value != m[key]:
                raise ApiError(
                    400,
                    f"invalid {key}: a machine's {key} cannot be changed "
                    f"(machine {m['id']} has {key} {m[key]!r}); create a new machine instead",
                )
        old_volumes = [x.get("volume") for x in m["config"].get("mounts") or []]
        new_volumes = [x.get("volume") for x in config.get("mounts") or []]
        if old_volumes != new_volumes:
            raise ApiError(
                400,
                "invalid config.mounts: the mounted volume of a machine cannot be changed "
                f"(machine {m['id']} mounts {old_volumes or 'none'}); create a new machine instead",
            )
        current = body.get("current_version")
        if current and current != m["instance_id"]:
            raise ApiError(
                412,
                f"failed_precondition: machine {m['id']} is at version {m['instance_id']}, not {current}",
                "unknown",
            )
        skip_launch = require_bool(body, "skip_launch", False)
        self._check_secrets_version(m["app"], body)
        m["instance_id"] = ulid(now)
        m["config"] = config
        m["versions"].append({"version": m["instance_id"], "user_config": copy.deepcopy(config)})
        m["updated_at"] = now
        self._event(m, "update", now, "replaced")
        was_running = m["state"] in RUNNING_STATES
        if m["state"] == "started" and self._latency.replace_lag_s > 0:
            # The update is queued: the old version keeps running for a moment, then the machine is replaced
            # (see _settle). Only a wait for the new version (SPEC Machines_wait `version`) tells when it runs.
            m["replace_at"] = now + self._latency.replace_lag_s
        elif was_running or not skip_launch:
            # A running machine reboots onto the new config; a stopped one starts unless skip_launch.
            self._transition(m, "starting" if not was_running else "replacing", "started", self._latency.boot_s, now)
        return self._machine_view(m, now)

    def _destroy_machine(self, request: Request, m: dict, now: float) -> dict:
        force = parse_bool(request.args.get("force")) or parse_bool(request.args.get("kill"))
        if m["state"] == "destroying":
            return {"ok": True}
        if m["state"] in RUNNING_STATES and not force:
            raise ApiError(
                412,
                "failed_precondition: unable to destroy machine, not currently stopped, "
                "suspended, or failed (use force=true)",
                "unknown",
            )
        self._transition(m, "destroying", "destroyed", self._latency.destroy_s, now)
        return {"ok": True}

    def _mutable_machine(self, request: Request, app: str, mid: str, now: float) -> dict:
        m = self._machine(app, mid, now)
        self._check_lease(m, request, now)
        if m["state"] == "destroying":
            raise ApiError(412, f"failed_precondition: machine {mid} is being destroyed", "unknown")
        return m

    def _h_machine_start(
        self, request: Request, method: str, extra: dict, app: str, machine_id: str
    ) -> tuple[int, Any]:
        with self._cond:
            now = time.time()
            m = self._mutable_machine(request, app, machine_id, now)
            previous = m["state"]
            if previous not in ("created", "stopped", "suspended", "failed"):
                raise ApiError(
                    412, f"failed_precondition: unable to start machine from current state: '{previous}'", "unknown"
                )
            self._transition(m, "starting", "started", self._latency.boot_s, now)
            return 200, {"previous_state": previous, "migrated": False, "new_host": ""}

    def _h_machine_stop(self, request: Request, method: str, extra: dict, app: str, machine_id: str) -> tuple[int, Any]:
        body = _json_body(request)
        sig = body.get("signal")
        if sig is not None and sig not in SIGNALS:
            raise ApiError(400, f"invalid signal {sig!r}; expected one of {sorted(SIGNALS)}")
        timeout = body.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, str | int)):
            raise ApiError(400, f'invalid timeout {timeout!r}: a duration such as "10s" is expected')
        with self._cond:
            now = time.time()
            m = self._mutable_machine(request, app, machine_id, now)
            if m["state"] in ("started", "starting", "restarting", "replacing", "updating"):
                self._transition(m, "stopping", "stopped", self._latency.stop_s, now)
            return 200, {"ok": True}

    def _h_machine_restart(
        self, request: Request, method: str, extra: dict, app: str, machine_id: str
    ) -> tuple[int, Any]:
        with self._cond:
            now = time.time()
            m = self._mutable_machine(request, app, machine_id, now)
            if m["state"] != "started":
                raise ApiError(
                    412, f"failed_precondition: unable to restart machine from current state: '{m['state']}'", "unknown"
                )
            self._transition(m, "restarting", "started", self._latency.boot_s, now)
            return 200, {"ok": True}

    def _h_machine_suspend(
        self, request: Request, method: str, extra: dict, app: str, machine_id: str
    ) -> tuple[int, Any]:
        with self._cond:
            now = time.time()
            m = self._mutable_machine(request, app, machine_id, now)
            if m["state"] != "started":
                raise ApiError(
                    412, f"failed_precondition: unable to suspend machine from current state: '{m['state']}'", "unknown"
                )
            self._transition(m, "suspending", "suspended", self._latency.stop_s, now)
            return 200, {"ok": True}

    def _h_machine_cordon(
        self, request: Request, method: str, extra: dict, app: str, machine_id: str
    ) -> tuple[int, Any]:
        with self._cond:
            self._mutable_machine(request, app, machine_id, time.time())["cordoned"] = True
            return 200, {"ok": True}

    def _h_machine_uncordon(
        self, request: Request, method: str, extra: dict, app: str, machine_id: str
    ) -> tuple[int, Any]:
        with self._cond:
            self._mutable_machine(request, app, machine_id, time.time())["cordoned"] = False
            return 200, {"ok": True}

    def _h_machine_wait(self, request: Request, method: str, extra: dict, app: str, machine_id: str) -> tuple[int, Any]:
        states = [s for v in request.args.getlist("state") for s in v.split(",") if s] or ["started"]
        bad = [s for s in states if s not in WAIT_STATES]
        if bad:
            raise ApiError(400, f"invalid_argument: invalid state {bad[0]!r}; expected one of {sorted(WAIT_STATES)}")
        raw_timeout = request.args.get("timeout", "60")
        try:
            timeout = int(raw_timeout.removesuffix("s"))
        except ValueError:
            raise ApiError(
                400, f"invalid_argument: invalid timeout {raw_timeout!r}: integer seconds expected"
            ) from None
        if not 1 <= timeout <= 60:
            raise ApiError(400, WAIT_TIMEOUT_MESSAGE)
        version = request.args.get("version") or request.args.get("instance_id")
        if "stopped" in states and not version:
            raise ApiError(
                400,
                "invalid_argument: version (instance_id) is required when waiting for a machine "
                "to be in the stopped state",
            )
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.time()
                try:
                    m = self._machine(app, machine_id, now, include_deleted=True)
                except ApiError as exc:
                    if exc.http_status == 404 and "destroyed" in states:
                        return 200, {"ok": True, "state": "destroyed"}
                    raise
                reached = m["state"] in states or ("settled" in states and m["state"] not in TRANSIENT_STATES)
                if reached and version and m["state"] == "started":
                    # "started" for a version means that version runs: right after an update the old one still
                    # does (the replacement is queued, see _update_machine).
                    reached = m.get("running_version", m["instance_id"]) == version
                if reached:
                    event_id = m["events"][-1]["id"] if m["events"] else None
                    return 200, {"ok": True, "state": m["state"], "version": m["instance_id"], "event_id": event_id}
                if m["state"] == "destroyed":
                    raise not_found()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ApiError(
                        408,
                        f"deadline_exceeded: machine {machine_id} did not reach state "
                        f"{','.join(states)!r} within {timeout}s (state: {m['state']})",
                        "unknown",
                    )
                if self._stopping:
                    raise ApiError(503, "the emulator is shutting down", "unknown")
                changes = [t for t in (m.get("settles_at"), m.get("replace_at")) if t is not None]
                next_change = min(changes) - now if changes else remaining
                # Releases the lock while sleeping; mutating calls notify to wake us early.
                self._cond.wait(timeout=max(0.001, min(remaining, next_change + 0.001)))

    def _h_machine_lease(
        self, request: Request, method: str, extra: dict, app: str, machine_id: str
    ) -> tuple[int, Any]:
        with self._cond:
            now = time.time()
            m = self._machine(app, machine_id, now)
            lease = m.get("lease")
            if lease and lease["expires_at"] <= now:
                lease = m["lease"] = None
            nonce = request.headers.get("fly-machine-lease-nonce")
            if method == "GET":
                if not lease:
                    raise ApiError(404, "lease not found")
                return 200, {"status": "success", "data": dict(lease)}
            if method == "DELETE":
                if not nonce:
                    raise ApiError(400, "fly-machine-lease-nonce header is required to release a lease")
                if not lease:
                    raise ApiError(404, "lease not found")
                if nonce != lease["nonce"]:
                    raise ApiError(
                        409, f"aborted: lease nonce mismatch; the lease is held by {lease['owner']}", "unknown"
                    )
                m["lease"] = None
                return 200, None
            body = _json_body(request)
            if "ttl" not in body and request.args.get("ttl"):
                try:
                    body["ttl"] = int(request.args["ttl"])
                except ValueError:
                    raise ApiError(400, f"invalid ttl {request.args['ttl']!r}") from None
            ttl = require_int(body, "ttl", default=DEFAULT_LEASE_TTL_S, lo=1) or DEFAULT_LEASE_TTL_S
            description = body.get("description") or ""
            if lease and nonce != lease["nonce"]:
                raise ApiError(
                    409,
                    f"aborted: machine ID {m['id']} lease currently held by {lease['owner']}, "
                    f"expires at {rfc3339(lease['expires_at'])}",
                    "unknown",
                )
            if not lease and nonce:
                # Refreshing a lease that already expired: it is gone, the caller must acquire a new one.
                raise ApiError(
                    409, f"aborted: lease not found for machine {m['id']} (nonce {nonce} expired)", "unknown"
                )
            if lease:  # refresh by the holder
                lease["expires_at"] = math.ceil(now + ttl)
                lease["description"] = description or lease["description"]
            else:
                lease = m["lease"] = self._lease_record(request, m, ttl, description, now)
            return 200, {"status": "success", "data": dict(lease)}

    def _h_machine_metadata(
        self, request: Request, method: str, extra: dict, app: str, machine_id: str
    ) -> tuple[int, Any]:
        with self._cond:
            m = self._machine(app, machine_id, time.time())
            return 200, dict(m["config"].get("metadata") or {})

    def _h_machine_metadata_key(
        self, request: Request, method: str, extra: dict, app: str, machine_id: str, key: str
    ) -> tuple[int, Any]:
        with self._cond:
            now = time.time()
            m = self._machine(app, machine_id, now)
            meta = m["config"].setdefault("metadata", {})
            if method == "GET":
                if key not in meta:
                    raise not_found()
                return 200, {"value": meta[key]}
            self._check_lease(m, request, now)
            if method == "DELETE":
                if key not in meta:
                    raise not_found()
                del meta[key]
                return 204, None
            value = _json_body(request).get("value")
            if not isinstance(value, str):
                raise ApiError(400, "invalid value: a string is required")
            meta[key] = value
            return 204, None

    def _h_machine_events(
        self, request: Request, method: str, extra: dict, app: str, machine_id: str
    ) -> tuple[int, Any]:
        try:
            limit = int(request.args.get("limit", "20"))
        except ValueError:
            raise ApiError(400, "invalid limit: integer expected") from None
        with self._cond:
            m = self._machine(app, machine_id, time.time())
            return 200, list(reversed(m["events"]))[: max(1, min(limit, 50))]

    def _h_machine_versions(
        self, request: Request, method: str, extra: dict, app: str, machine_id: str
    ) -> tuple[int, Any]:
        with self._cond:
            m = self._machine(app, machine_id, time.time())
            return 200, [copy.deepcopy(v) for v in reversed(m["versions"])]

    def _h_machine_exec(self, request: Request, method: str, extra: dict, app: str, machine_id: str) -> tuple[int, Any]:
        body = _json_body(request)
        if isinstance(body.get("command"), list) and body["command"]:
            cmd = body["command"]
            if not all(isinstance(part, str) for part in cmd):
                raise ApiError(400, "invalid command: a list of strings is required")
        elif isinstance(body.get("cmd"), str) and body["cmd"].strip():
            cmd = shlex.split(body["cmd"])
        else:
            raise ApiError(400, "invalid request: either command (list of strings) or cmd (string) is required")
        require_int(body, "timeout", lo=0)
        with self._cond:
            m = self._machine(app, machine_id, time.time())
            if m["state"] != "started":
                raise ApiError(
                    412, f"failed_precondition: machine {machine_id} is {m['state']}, not started", "unknown"
                )
            handler = self._exec_handler
            self._exec_log.append({"app": app, "machine_id": machine_id, "cmd": list(cmd)})
        extra["cmd"] = list(cmd)
        result: dict = {"exit_code": 0, "stdout": "", "stderr": ""}
        if handler is not None:  # called without the lock: handlers may take their time
            answer = handler(app, machine_id, list(cmd))
            if not isinstance(answer, dict):
                raise ApiError(500, f"exec handler returned {type(answer).__name__}, not a dict")
            result.update(answer)
        # fly-go machine_types.go MachineExecResponse tags every field omitempty: a successful run answers
        # without exit_code (Go drops the 0), and empty output is left out too.
        answer = {
            "exit_code": int(result["exit_code"]),
            "stdout": str(result["stdout"]),
            "stderr": str(result["stderr"]),
        }
        return 200, {k: v for k, v in answer.items() if v}

    # -- volumes ----------------------------------------------------------------------------------------
    def _volume_view(self, v: dict) -> dict:
        view = {k: val for k, val in v.items() if k not in ("app", "fs_size_gb", "destroy_at")}
        view["created_at"] = rfc3339(v["created_at"])
        view["attached_alloc_id"] = None
        view["bytes_total"] = v["size_gb"] * 1024**3
        view["block_size"] = 4096
        view["blocks"] = view["bytes_total"] // 4096
        view["blocks_free"] = view["blocks_avail"] = view["blocks"]
        view["bytes_used"] = 0
        return view

    def _h_volumes(self, request: Request, method: str, extra: dict, app: str) -> tuple[int, Any]:
        with self._cond:
            self._app(app)
            if method == "GET":
                self._settle_all(time.time())
                return 200, [self._volume_view(v) for v in self._state["volumes"].values() if v["app"] == app]
            body = _json_body(request)
            name = body.get("name")
            if not isinstance(name, str) or not name:
                raise ApiError(400, "invalid name: a volume name is required")
            if not VOLUME_NAME_RE.match(name):
                raise ApiError(
                    400,
                    f"invalid name {name!r}: volume names may only contain lowercase letters, "
                    "numbers, and underscores, and be at most 30 characters",
                )
            region = body.get("region")
            if not isinstance(region, str) or not region:
                raise ApiError(400, "invalid region: a region is required to create a volume")
            fstype = body.get("fstype") or "ext4"
            if fstype not in ("ext4", "raw"):
                raise ApiError(400, f"invalid fstype {fstype!r}: expected ext4 or raw")
            now = time.time()
            vid = volume_id()
            v = {
                "id": vid,
                "app": app,
                "name": name,
                "state": "created",
                "region": region,
                "zone": secrets.token_hex(2),
                "size_gb": require_int(body, "size_gb", default=3, lo=1, hi=500),
                "encrypted": require_bool(body, "encrypted", True),
                "snapshot_retention": require_int(body, "snapshot_retention", default=5, lo=1, hi=60),
                "auto_backup_enabled": require_bool(body, "auto_backup_enabled", True),
                "require_unique_zone": require_bool(body, "require_unique_zone", True),
                "fstype": fstype,
                "attached_machine_id": None,
                "host_status": "ok",
                "type": "local",
                "created_at": now,
            }
            v["fs_size_gb"] = v["size_gb"]  # the filesystem the machine sees (grows on a restart, see extend)
            self._state["volumes"][vid] = v
            return 200, self._volume_view(v)

    def _volume_holder(self, v: dict, now: float) -> dict | None:
        holder = self._state["machines"].get(v.get("attached_machine_id") or "")
        if holder is not None:
            self._settle(holder, now)
            if holder["state"] == "destroyed":
                return None
        return holder

    def _h_volume(self, request: Request, method: str, extra: dict, app: str, volume_id: str) -> tuple[int, Any]:
        with self._cond:
            now = time.time()
            v = self._volume(app, volume_id)
            if method == "GET":
                self._volume_holder(v, now)  # settles a destroyed holder, detaching the volume
                return 200, self._volume_view(v)
            if method == "DELETE":
                holder = self._volume_holder(v, now)
                if v["state"] in VOLUME_DESTROY_STATES:
                    pass  # already on its way out: deleting again changes nothing
                elif holder is not None and holder["state"] == "destroying":
                    v["state"] = "waiting_for_detach"  # gone once its machine is (fly-go destroyedVolumeStates)
                elif holder is not None:
                    raise ApiError(
                        412,
                        f"failed_precondition: volume {volume_id} is attached to machine "
                        f"{holder['id']}; destroy the machine first",
                        "unknown",
                    )
                else:
                    v["state"], v["destroy_at"] = "scheduling_destroy", now
                    self._settle_volume(v, now)
                # The answer is the volume with state "destroyed" (DOCS machines/api/volumes-resource); listing
                # it still shows the destroy state it is in.
                return 200, {**self._volume_view(v), "state": "destroyed"}
            # Only these two fields are mutable; other (unknown to this request) fields are ignored.
            body = _json_body(request)
            if body.get("snapshot_retention") is not None:
                v["snapshot_retention"] = require_int(body, "snapshot_retention", lo=1, hi=60)
            if body.get("auto_backup_enabled") is not None:
                v["auto_backup_enabled"] = require_bool(body, "auto_backup_enabled", True)
            return 200, self._volume_view(v)

    def _h_volume_extend(self, request: Request, method: str, extra: dict, app: str, volume_id: str) -> tuple[int, Any]:
        body = _json_body(request)
        with self._cond:
            now = time.time()
            v = self._volume(app, volume_id)
            size = require_int(body, "size_gb", lo=1, hi=500)
            if size is None:
                raise ApiError(400, "invalid size_gb: the new size is required")
            if size <= v["size_gb"]:
                raise ApiError(
                    400,
                    f"invalid size_gb: {size} GB is not larger than the current {v['size_gb']} GB; "
                    "volumes can only grow",
                )
            v["size_gb"] = size
            # Under a running machine the filesystem can only grow at its next (re)start: `needs_restart` (SPEC
            # ExtendVolumeResponse; flyctl internal/command/volumes/extend.go tells the user to restart).
            holder = self._volume_holder(v, now)
            needs_restart = holder is not None and holder["state"] in RUNNING_STATES
            if not needs_restart:
                v["fs_size_gb"] = size
            return 200, {"volume": self._volume_view(v), "needs_restart": needs_restart}

    # -- secrets ----------------------------------------------------------------------------------------
    def _secret_view(self, name: str, s: dict) -> dict:
        return {
            "name": name,
            "digest": s["digest"],
            "created_at": rfc3339(s["created_at"]),
            "updated_at": rfc3339(s["updated_at"]),
        }

    def _write_secret(self, app: str, name: str, value: str, now: float) -> None:
        table = self._state["secrets"].setdefault(app, {})
        old = table.get(name)
        table[name] = {
            "digest": secret_digest(value),
            "created_at": old["created_at"] if old else now,
            "updated_at": now,
        }

    def _bump_secrets(self, app: str, now: float) -> int:
        version = self._state["secrets_version"].get(app, 0) + 1
        self._state["secrets_version"][app] = version
        history = self._state["secrets_history"].setdefault(app, [])
        history.append({"version": version, "at": now, "secrets": copy.deepcopy(self._state["secrets"].get(app, {}))})
        del history[:-20]
        return version

    def _readable_secrets(self, request: Request, app: str, now: float) -> dict:
        """The secrets table a read sees. Secrets are versioned: a read with ``min_version`` (SPEC
        Secrets_list/Secret_get; fly-go ListAppSecrets sends it as ``version``) sees at least that version,
        one without it is served by a replica that is ``secrets_lag_s`` behind the last write."""
        current = self._state["secrets_version"].get(app, 0)
        raw = request.args.get("min_version") or request.args.get("version")
        if raw:
            try:
                wanted = int(raw)
            except ValueError:
                raise ApiError(400, f"invalid min_version {raw!r}: an integer is required") from None
            if wanted > current:
                raise ApiError(
                    412,
                    f"failed_precondition: min_version {wanted} is newer than the app's secrets version {current}",
                    "unknown",
                )
            return self._state["secrets"].get(app, {})
        history = self._state["secrets_history"].get(app, [])
        seen = [h for h in history if h["at"] <= now - self._latency.secrets_lag_s]
        if seen:
            return seen[-1]["secrets"]
        if history and history[0]["version"] == 1:
            return {}  # not even the first write has reached the replica
        return history[0]["secrets"] if history else self._state["secrets"].get(app, {})

    def _h_secrets(self, request: Request, method: str, extra: dict, app: str) -> tuple[int, Any]:
        with self._cond:
            self._app(app)
            if method == "GET":
                table = self._readable_secrets(request, app, time.time())
                return 200, {"secrets": [self._secret_view(n, s) for n, s in sorted(table.items())]}
            values = _json_body(request).get("values")
            if not isinstance(values, dict):
                raise ApiError(400, "invalid values: an object of secret name -> value (or null to unset) is required")
            for name, value in values.items():
                if not SECRET_NAME_RE.match(name):
                    raise ApiError(
                        400,
                        f"invalid secret name {name!r}: letters, digits and underscores only, "
                        "not starting with a digit",
                    )
                if value is not None and not isinstance(value, str):
                    raise ApiError(400, f"invalid value for secret {name}: a string or null is required")
            now = time.time()
            for name, value in values.items():
                if value is None:
                    self._state["secrets"].get(app, {}).pop(name, None)
                else:
                    self._write_secret(app, name, value, now)
            version = self._bump_secrets(app, now)
            table = self._state["secrets"].get(app, {})
            return 200, {"secrets": [self._secret_view(n, s) for n, s in sorted(table.items())], "version": version}

    def _h_secret(self, request: Request, method: str, extra: dict, app: str, name: str) -> tuple[int, Any]:
        with self._cond:
            self._app(app)
            table = self._state["secrets"].get(app, {})
            if method == "GET":
                readable = self._readable_secrets(request, app, time.time())
                if name not in readable:
                    raise not_found()
                return 200, self._secret_view(name, readable[name])
            if method == "DELETE":
                if name not in table:
                    raise not_found()
                del table[name]
                return 200, {"version": self._bump_secrets(app, time.time())}
            if not SECRET_NAME_RE.match(name):
                raise ApiError(400, f"invalid secret name {name!r}")
            value = _json_body(request).get("value")
            if not isinstance(value, str):
                raise ApiError(400, f"invalid value for secret {name}: a string is required")
            self._write_secret(app, name, value, time.time())
            version = self._bump_secrets(app, time.time())
            return 201, {**self._secret_view(name, self._state["secrets"][app][name]), "version": version}

    # -- IP assignments -----------------------------------------------------------------------------------
    def _h_ips(self, request: Request, method: str, extra: dict, app: str) -> tuple[int, Any]:
        with self._cond:
            record = self._app(app)
            ips = self._state["ips"].setdefault(app, [])
            if method == "GET":
                return 200, {"ips": [_ip_view(ip) for ip in ips]}
            body = _json_body(request)
            kind = body.get("type")
            if kind not in IP_TYPES:
                raise ApiError(400, f"invalid type {kind!r}: expected one of {', '.join(IP_TYPES)}")
            region = body.get("region") or "global"
            if not isinstance(region, str):
                raise ApiError(400, "invalid region: must be a string")
            # A Flycast address serves one network: the app's own, or the one `network` names, which
            # then reaches the app while its own network no longer does (networking/flycast).
            network = body.get("network") or record["network"]
            if not isinstance(network, str) or not NETWORK_NAME_RE.match(network):
                raise ApiError(400, f"invalid network {network!r}")
            # flyctl names the org (and the network) in every assignment (internal/command/deploy/
            # deploy_first.go; fly-go flaps_ip_assignments.go AssignIPRequest): a Flycast address belongs to an
            # org's private network, so one without org_slug is refused here, and one with `network` lands on
            # that network (DOCS networking/flycast: an app is reachable only from the network it was given).
            org = body.get("org_slug")
            if org is not None and org != record["org_slug"]:
                raise ApiError(400, f"invalid org_slug {org!r}: app {app} belongs to organization {record['org_slug']}")
            if kind == "private_v6" and not org:
                raise ApiError(400, "invalid request: org_slug is required to allocate a Flycast (private_v6) address")
            existing_shared = next((ip for ip in ips if ip["type"] == "shared_v4"), None)
            if kind == "shared_v4" and existing_shared is not None:
                return 200, _ip_view(existing_shared)  # an app has one shared IPv4 at most
            counters = self._state["counters"]
            if kind == "shared_v4":
                address = self._state["shared_v4"]
            else:
                counters[kind] += 1
                n = counters[kind]
                address = {
                    "v6": f"2a09:8280:1::{n:x}",
                    "v4": f"137.66.{(n >> 8) & 255}.{n & 255}",
                    "private_v6": f"{self._network_prefix(record['org_slug'], network)}:0:1::{n:x}",
                }[kind]
            ip = {
                "ip": address,
                "type": kind,
                "region": region,
                "service_name": str(body.get("service_name") or ""),
                "shared": kind == "shared_v4",
                "created_at": rfc3339(time.time()),
            }
            if kind == "private_v6":
                ip.update(network=network, org_slug=record["org_slug"])
            ips.append(ip)
            return 200, _ip_view(ip)

    def _h_ip(self, request: Request, method: str, extra: dict, app: str, ip: str) -> tuple[int, Any]:
        with self._cond:
            self._app(app)
            ips = self._state["ips"].get(app, [])
            found = next((x for x in ips if x["ip"] == ip), None)
            if found is None:
                raise not_found()
            ips.remove(found)
            return 204, None


def _body_name(request: Request) -> str:
    try:
        body = _json_body(request)
    except ApiError:
        return ""
    return str(body.get("name") or body.get("app_name") or "")


def _ip_view(ip: dict) -> dict:
    return {k: ip[k] for k in ("ip", "region", "service_name", "shared", "created_at")}


def _integer(value: Any, path: str) -> None:
    # Fly decodes into Go ints: 8080.0 is refused ("cannot unmarshal number 8080.0"), as are strings.
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ApiError(400, f"invalid {path}: must be an integer, got {value!r}")


def _check_integer_fields(config: dict) -> None:
    """The integer fields of a machine config a renderer is likely to set (fly-machines-api.md §2)."""
    for section, keys in (("guest", ("cpus", "memory_mb")), ("init", ("swap_size_mb",)), ("restart", ("max_retries",))):
        part = config.get(section)
        if isinstance(part, dict):
            for key in keys:
                _integer(part.get(key), f"config.{section}.{key}")
    for name, check in (config.get("checks") or {}).items():
        if isinstance(check, dict):
            _integer(check.get("port"), f"config.checks.{name}.port")
    for i, file in enumerate(config.get("files") or []):
        # File.Mode is a Go uint32 (chmod(2) bits) in fly-go machine_types.go.
        if isinstance(file, dict):
            _integer(file.get("mode"), f"config.files[{i}].mode")
            if file.get("mode") is not None and not 0 <= file["mode"] <= 0o7777:
                raise ApiError(400, f"invalid config.files[{i}].mode: {file['mode']!r} is not a file mode")
    for i, mount in enumerate(config.get("mounts") or []):
        if isinstance(mount, dict):
            for key in ("size_gb", "extend_threshold_percent", "add_size_gb", "size_gb_limit"):
                _integer(mount.get(key), f"config.mounts[{i}].{key}")
    for i, svc in enumerate(config.get("services") or []):
        if not isinstance(svc, dict):
            continue
        for key in ("internal_port", "min_machines_running"):
            _integer(svc.get(key), f"config.services[{i}].{key}")
        concurrency = svc.get("concurrency")
        if isinstance(concurrency, dict):
            for key in ("soft_limit", "hard_limit"):
                _integer(concurrency.get(key), f"config.services[{i}].concurrency.{key}")
        for j, port in enumerate(svc.get("ports") or []):
            if isinstance(port, dict):
                for key in ("port", "start_port", "end_port"):
                    _integer(port.get(key), f"config.services[{i}].ports[{j}].{key}")
        for j, check in enumerate(svc.get("checks") or []):
            if isinstance(check, dict):
                _integer(check.get("port"), f"config.services[{i}].checks[{j}].port")


def _normalize_autostop(value: Any, key: str) -> bool | str:
    """The API's form: booleans for off/stop, the string "suspend" (fly-machines-api.md §2)."""
    mapping: dict[Any, bool | str] = {"off": False, "stop": True, "suspend": "suspend"}
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in mapping:
        return mapping[value]
    raise ApiError(400, f'invalid {key}: {value!r}; expected "off", "stop", "suspend", true or false')


def _image_ref(image: str) -> dict:
    rest, _, digest = image.partition("@")
    head, _, last = rest.rpartition("/")
    repo_last, _, tag = last.partition(":")
    path = f"{head}/{repo_last}" if head else repo_last
    first, _, remainder = path.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, remainder
    else:
        registry, repository = "docker-hub-mirror.fly.io", path if "/" in path else f"library/{path}"
    return {
        "registry": registry,
        "repository": repository,
        "tag": tag or "latest",
        "digest": digest or "sha256:" + hashlib.sha256(image.encode()).hexdigest(),
        "labels": {},
    }


def _machine_name() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(9000) + 1000}"


def _json_body(request: Request) -> dict:
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


def _json_response(status: int, payload: Any) -> Response:
    if payload is None:
        return Response(status=status)
    return Response(json.dumps(payload), status=status, mimetype="application/json")


def _fault_response(fault: _Fault) -> Response:
    body = (
        fault.body
        if fault.body is not None
        else {"error": f"injected failure: HTTP {fault.status} from the Fly emulator", "status": "unknown"}
    )
    response = _json_response(fault.status, body)
    if fault.status == 429:
        response.headers["Retry-After"] = "1"
    return response


class _QuietHandler(WSGIRequestHandler):
    """Requests are logged by the emulator itself (at INFO, without headers), not on stderr."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def serve(host: str, port: int, state_file: Path | None, token: str | None) -> None:
    """Blocking: run the emulator until SIGINT/SIGTERM (used by `silo emulator --port N`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fly-emulator %(message)s")
    emulator = FlyEmulator(token=token, state_file=state_file)
    try:
        url = emulator.start(host, port)
    except OSError as exc:
        raise SystemExit(f"error: the Fly emulator cannot listen on {host}:{port}: {exc}") from exc
    except ValueError as exc:  # an unreadable state file
        raise SystemExit(f"error: {exc}") from exc
    done = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        done.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    where = f", state in {state_file}" if state_file else ""
    print(f"Fly Machines API emulator at {url} (use fly:apiUrl / FLY_API_HOSTNAME={url}){where}", flush=True)
    try:
        while not done.wait(timeout=1.0):
            pass
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)


__all__ = ["ROUTES", "FlyEmulator", "LatencyModel", "serve"]
