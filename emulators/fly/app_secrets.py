"""An app's secrets: digests only (values are never stored), versioned, read from a lagging replica.

Not named ``secrets.py``, so that it can never stand in for the standard library's ``secrets``.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from werkzeug.wrappers import Request

from emulators.fly.util import SECRET_NAME_RE, ApiError, json_body, not_found, require_int, rfc3339, secret_digest


class SecretsMixin:
    """The secrets routes of `FlyEmulator` (server.py)."""

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
        """The secrets table a read sees. Secrets are versioned: a read with ``min_version`` (OpenAPI
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
            values = json_body(request).get("values")
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
            value = json_body(request).get("value")
            if not isinstance(value, str):
                raise ApiError(400, f"invalid value for secret {name}: a string is required")
            self._write_secret(app, name, value, time.time())
            version = self._bump_secrets(app, time.time())
            return 201, {**self._secret_view(name, self._state["secrets"][app][name]), "version": version}

    def _check_secrets_version(self, app: str, body: dict) -> None:
        wanted = require_int(body, "min_secrets_version", lo=0)
        current = self._state["secrets_version"].get(app, 0)
        if wanted is not None and wanted > current:
            raise ApiError(
                422, f"min_secrets_version {wanted} is newer than the app's secrets version {current}", "unknown"
            )
