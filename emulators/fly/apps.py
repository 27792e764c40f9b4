"""Apps: creation with globally unique names, visibility after creation, asynchronous deletion."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from werkzeug.wrappers import Request

from emulators.fly.model import DEFAULT_NETWORK, NETWORK_NAME_RE, RUNNING_STATES
from emulators.fly.util import APP_NAME_RE, ApiError, app_id, json_body, not_found, parse_bool


class AppsMixin:
    """The apps routes of `FlyEmulator` (server.py), and the app lookups the other sections use."""

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
            "internal_numeric_id": _int32_id(name),
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
            "organization": {"name": org, "slug": org, "internal_numeric_id": _int32_id(f"org/{org}")},
            "network": app["network"],
            "machine_count": len(machines),
            "volume_count": len(volumes),
            # Masked again for state files written before the ids were int32.
            "internal_numeric_id": app["internal_numeric_id"] & 0x7FFF_FFFF,
            "org_slug": org,
            "foreign": app["foreign"],
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
            body = json_body(request)
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
            # fly-go's CreateApp decodes the answer into its App (flaps/flaps_apps.go): name, status and
            # organization are there, as a GET answers them.
            view = self._app_view(app)
            view.pop("foreign")
            view.pop("org_slug")
            return 201, {**view, "created_at": int(app["created_at"] * 1000)}

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
            # first (Fly docs machines/api/apps-resource, Delete an app).
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
            # 202 Accepted (OpenAPI Apps_delete): the deletion completes later, and the name is taken until then.
            if self._latency.app_delete_s > 0:
                st["deleting_apps"][app] = now + self._latency.app_delete_s
            return 202, None


def _int32_id(key: str) -> int:
    """A stable id that fits the Go type fly-go decodes it into: ``InternalNumericID int32`` on App and
    AppOrganizationInfo (flaps/flaps_apps.go). A larger number fails the whole decode of the answer."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) & 0x7FFF_FFFF
