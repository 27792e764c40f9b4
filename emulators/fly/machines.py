"""Machines: states derived from timestamps, leases, config validation, versions, wait, exec."""

from __future__ import annotations

import copy
import hashlib
import math
import secrets
import time
from typing import Any

from werkzeug.wrappers import Request

from emulators.fly.model import DEFAULT_REGION, NONCE_HEADER, RUNNING_STATES, VOLUME_DESTROY_STATES
from emulators.fly.util import (
    LIST_STATES,
    SIGNALS,
    TRANSIENT_STATES,
    WAIT_STATES,
    ApiError,
    json_body,
    lease_nonce,
    machine_id,
    not_found,
    parse_bool,
    require_bool,
    require_int,
    rfc3339,
    rfc3339_ms,
    ulid,
)

DEFAULT_LEASE_TTL_S = 30
WAIT_TIMEOUT_MESSAGE = "invalid_argument: invalid WaitMachineRequest.Timeout: value must be inside range [1s, 1m0s]"

_ADJECTIVES = ("aged", "bold", "calm", "damp", "eager", "fancy", "gentle", "hidden", "icy", "jolly", "lively")
_NOUNS = ("wind", "river", "moon", "forest", "meadow", "cloud", "stone", "field", "flower", "frost", "lake")


class MachinesMixin:
    """The machines routes of `FlyEmulator` (server.py) and the machine lifecycle."""

    # -- shared lookups (callers hold the lock) -------------------------------------------------------
    def _machine(self, app: str, mid: str, now: float, *, include_deleted: bool = False) -> dict:
        self._app(app)
        m = self._state["machines"].get(mid)
        if m is None or m["app"] != app:
            raise not_found()
        self._settle(m, now)
        if m["state"] == "destroyed" and not include_deleted:
            raise not_found()
        return m

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
        if final == "started" and m.get("fail_on_start") is not None:
            # `fail_machine(..., every_start=True)`: this launch dies too, as one with a broken image or
            # init does (Fly docs machine-states: failed, "could not start successfully").
            self._fail(m, at, int(m["fail_on_start"]))
            return
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

    def _event(self, m: dict, kind: str, at: float, status: str | None = None, request: dict | None = None) -> None:
        event = {"id": ulid(at), "type": kind, "status": status or kind, "source": "flyd", "timestamp": int(at * 1000)}
        if request is not None:
            event["request"] = request
        m["events"].append(event)
        del m["events"][:-50]

    def _fail(self, m: dict, at: float, exit_code: int) -> None:
        """The machine's process could not start or died for good: Fly's persistent ``failed`` state (Fly
        docs machine-states: "Machine encountered an error and could not start successfully"). The event
        carries the exit the way fly-go's MachineEvent.Request.ExitEvent does (machine_types.go)."""
        m["state"], m["settles_at"], m["settles_to"], m["replace_at"] = "failed", None, None, None
        m["updated_at"] = at
        exit_event = {
            "exit_code": exit_code,
            "guest_exit_code": exit_code,
            "oom_killed": False,
            "requested_stop": False,
            "restarting": False,
            "exited_at": rfc3339_ms(at),
        }
        self._event(m, "exit", at, "failed", {"exit_event": exit_event})

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

    # -- machines ---------------------------------------------------------------------------------------
    def _h_machines(self, request: Request, method: str, extra: dict, app: str) -> tuple[int, Any]:
        with self._cond:
            now = time.time()
            self._app(app)
            if method == "GET":
                return 200, self._list_machines(request, app, now)
            body = json_body(request)
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
            return 200, self._update_machine(request, m, json_body(request), now)

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
            # (see _settle). Only a wait for the new version (OpenAPI Machines_wait `version`) tells when it runs.
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
            # A failed machine is started like a stopped one (flyctl `machine start` sends it whatever the
            # state; Fly docs machine-states: failed "may be recoverable").
            if previous not in ("created", "stopped", "suspended", "failed"):
                raise ApiError(
                    412, f"failed_precondition: unable to start machine from current state: '{previous}'", "unknown"
                )
            self._transition(m, "starting", "started", self._latency.boot_s, now)
            return 200, {"previous_state": previous, "migrated": False, "new_host": ""}

    def _h_machine_stop(self, request: Request, method: str, extra: dict, app: str, machine_id: str) -> tuple[int, Any]:
        body = json_body(request)
        sig = body.get("signal")
        if sig is not None and sig not in SIGNALS:
            raise ApiError(400, f"invalid signal {sig!r}; expected one of {sorted(SIGNALS)}")
        timeout = body.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, str | int)):
            raise ApiError(400, f'invalid timeout {timeout!r}: a duration such as "10s" is expected')
        with self._cond:
            now = time.time()
            m = self._mutable_machine(request, app, machine_id, now)
            # A failed machine can be stopped (Fly docs machine-states: "Machines in `failed` may be
            # recoverable. You can try restarting, stopping, or destroying them."): it rests stopped after.
            if m["state"] in ("started", "starting", "restarting", "replacing", "updating", "failed"):
                self._transition(m, "stopping", "stopped", self._latency.stop_s, now)
            return 200, {"ok": True}

    def _h_machine_restart(
        self, request: Request, method: str, extra: dict, app: str, machine_id: str
    ) -> tuple[int, Any]:
        with self._cond:
            now = time.time()
            m = self._mutable_machine(request, app, machine_id, now)
            # A failed machine may be restarted too (Fly docs machine-states, as for stop above).
            if m["state"] not in ("started", "failed"):
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
        # A stopped wait needs no version: fly-go's Wait sends one only when WithWaitVersion is given, and
        # flyctl's WaitForStartOrStop (internal/machine/wait.go) waits for "stopped" without one. (In 2023 the
        # API wanted one, flyctl issue #1751; it no longer does.)
        version = request.args.get("version") or request.args.get("instance_id")
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
            body = json_body(request)
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
            value = json_body(request).get("value")
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


def _integer(value: Any, path: str) -> None:
    # Fly decodes into Go ints: 8080.0 is refused ("cannot unmarshal number 8080.0"), as are strings.
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ApiError(400, f"invalid {path}: must be an integer, got {value!r}")


def _check_integer_fields(config: dict) -> None:
    """The integer fields of a machine config a renderer is likely to set (OpenAPI fly.MachineConfig)."""
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
    """The API's form: booleans for off/stop, the string "suspend" (OpenAPI fly.MachineService.autostop)."""
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
