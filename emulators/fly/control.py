"""Test control: the Python methods (faults, call log, latency, rate limits, snapshot, reach) and the same
over HTTP under ``/__emulator/*`` (JSON, no auth).
"""

from __future__ import annotations

import copy
import time
from dataclasses import fields

from werkzeug.wrappers import Request, Response

from emulators.fly.model import (
    PLATFORM_REGIONS,
    ROUTE_TABLE,
    ROUTES,
    VOLUME_DESTROY_STATES,
    ExecHandler,
    Fault,
    LatencyModel,
    empty_state,
)
from emulators.fly.util import APP_NAME_RE, ApiError, json_body, json_response, require_bool, require_int

CHECK_STATUSES = frozenset({"passing", "warning", "critical"})


class ControlMixin:
    """The test controls of `FlyEmulator` (server.py)."""

    # -- test control (Python) ----------------------------------------------------------------------
    def reset(self) -> None:
        """Back to an empty world with the constructor's latency and rate-limit settings."""
        with self._cond:
            self._state = empty_state()
            self._faults.clear()
            self._holds.clear()
            self._release.set()
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
        if not any(t == route and method in m for t, m, _ in ROUTE_TABLE):
            raise ValueError(f"method {method} is not served on route {route!r}")
        if nth < 1 or times < 1:
            raise ValueError(f"nth and times must be >= 1 (got nth={nth}, times={times})")
        if not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status code (got {status})")
        with self._cond:
            self._faults.append(Fault(method, route, nth - 1, times, status, after_effect, body))

    def hold(self, method: str, route: str, *, nth: int = 1) -> None:
        """Let the nth next call of method+route take effect, then keep its answer back until `release()`
        (or ten minutes): a client killed meanwhile dies in the middle of that call, its effect made and
        its answer never seen, the moment a crash test wants (tests/program/test_crash_recovery.py)."""
        method = method.upper()
        if route not in ROUTES:
            raise ValueError(f"route {route!r} is not an emulated route; known routes: {sorted(ROUTES)}")
        with self._cond:
            self._holds.append({"method": method, "route": route, "skip": nth - 1})

    def held(self) -> list[dict]:
        """The calls being held now: ``[{"method", "route", "path"}]``."""
        with self._cond:
            return [dict(h) for h in self._held]

    def release(self) -> None:
        """Answer every held call, and hold no more."""
        with self._cond:
            self._holds.clear()
            self._release.set()
            self._cond.notify_all()

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
        """fn(app, machine_id, cmd) -> {"exit_code": int, "exit_signal": int, "stdout": str, "stderr": str}
        (each optional); ``"deadline_exceeded": True``, or a handler that takes longer than the request's
        ``timeout``, gets the answer Fly gives when the exec timeout passes (processes.py)."""
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

    def fail_machine(self, app: str, machine_id: str, *, exit_code: int = 1, every_start: bool = False) -> None:
        """Put a machine in Fly's ``failed`` state now, with an ``exit`` event carrying ``exit_code``, as when
        its process could not start (Fly docs machine-states). With ``every_start`` each later launch (start,
        restart, update) fails the same way, like a broken image or init, until ``heal_machine``."""
        if isinstance(exit_code, bool) or not isinstance(exit_code, int):
            raise ValueError(f"exit_code must be an integer (got {exit_code!r})")
        with self._cond:
            now = time.time()
            m = self._state["machines"].get(machine_id)
            if m is None or m["app"] != app:
                raise ValueError(f"unknown machine {machine_id!r} of app {app!r}")
            self._settle(m, now)
            if m["state"] in ("destroying", "destroyed"):
                raise ValueError(f"machine {machine_id} is {m['state']}")
            m["fail_on_start"] = exit_code if every_start else None
            self._fail(m, now, exit_code)
            self._save()
            self._cond.notify_all()  # a blocked `wait?state=failed` answers now

    def heal_machine(self, app: str, machine_id: str) -> None:
        """Later launches of the machine succeed again (it stays in the state it is in)."""
        with self._cond:
            m = self._state["machines"].get(machine_id)
            if m is None or m["app"] != app:
                raise ValueError(f"unknown machine {machine_id!r} of app {app!r}")
            m["fail_on_start"] = None
            self._save()

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

    # -- control over HTTP ----------------------------------------------------------------------------
    def _control(self, request: Request) -> Response:
        action = request.path.removeprefix("/__emulator/").strip("/")
        method = request.method.upper()
        try:
            body = json_body(request)
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
            elif (method, action) == ("POST", "hold"):
                self.hold(
                    str(body.get("method", "")),
                    str(body.get("route", "")),
                    nth=require_int(body, "nth", default=1) or 1,
                )
            elif (method, action) == ("GET", "held"):
                return json_response(200, self.held())
            elif (method, action) == ("POST", "release"):
                self.release()
            elif (method, action) == ("GET", "calls"):
                return json_response(200, self.calls())
            elif (method, action) == ("DELETE", "calls"):
                self.clear_calls()
            elif (method, action) == ("GET", "exec_log"):
                return json_response(200, self.exec_log())
            elif (method, action) == ("GET", "snapshot"):
                return json_response(200, self.snapshot())
            elif (method, action) == ("POST", "foreign_apps"):
                self.add_foreign_app(str(body.get("name", "")), str(body.get("org", "")))
            elif (method, action) == ("POST", "org_regions"):
                regions = body.get("regions")
                self.set_org_regions(str(body.get("org", "")), None if regions is None else list(regions))
            elif (method, action) == ("POST", "check_status"):
                self.set_check_status(str(body.get("app")), str(body.get("machine_id")), body.get("status"))
            elif (method, action) == ("POST", "fail_machine"):
                self.fail_machine(
                    str(body.get("app")),
                    str(body.get("machine_id")),
                    exit_code=require_int(body, "exit_code", default=1),
                    every_start=require_bool(body, "every_start", False),
                )
            elif (method, action) == ("POST", "heal_machine"):
                self.heal_machine(str(body.get("app")), str(body.get("machine_id")))
            elif (method, action) == ("POST", "reach"):
                source = str(body.get("from", ""))
                if source not in self._state["apps"]:
                    return json_response(404, {"error": f"unknown app {source!r}"})
                return json_response(200, self.reach(source, str(body.get("to", ""))))
            elif (method, action) == ("POST", "exec_result"):
                # A canned exec answer for callers that cannot pass a Python callable (null clears it).
                result = body.get("result")
                self.set_exec_handler(None if result is None else (lambda _a, _m, _c, r=dict(result): r))
            else:
                return json_response(404, {"error": f"unknown emulator control {method} /__emulator/{action}"})
        except ApiError as exc:
            return json_response(exc.http_status, exc.body())
        except (TypeError, ValueError) as exc:
            return json_response(400, {"error": str(exc)})
        return json_response(200, {"ok": True})
