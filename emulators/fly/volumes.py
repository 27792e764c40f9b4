"""Volumes: attach rules, growth (``needs_restart`` under a running machine), the way out after a delete."""

from __future__ import annotations

import secrets
import time
from typing import Any

from werkzeug.wrappers import Request

from emulators.fly.model import RUNNING_STATES, VOLUME_DESTROY_STATES
from emulators.fly.util import (
    VOLUME_NAME_RE,
    ApiError,
    json_body,
    not_found,
    require_bool,
    require_int,
    rfc3339,
    volume_id,
)


class VolumesMixin:
    """The volumes routes of `FlyEmulator` (server.py)."""

    # -- shared lookups (callers hold the lock) -------------------------------------------------------
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
            body = json_body(request)
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
            # fly-go's CreateVolumeRequest sends `size_gb` as a *int without omitempty (volume_types.go): an
            # unset size arrives as null, which the Go server cannot tell from a missing one. Nothing is stored
            # without a size (a stored None broke every later list of the app's volumes).
            size_gb = require_int(body, "size_gb", lo=1, hi=500)
            if size_gb is None:
                raise ApiError(400, "invalid size_gb: the size of the new volume in GB is required")
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
                "size_gb": size_gb,
                "encrypted": require_bool(body, "encrypted", True),
                # null (fly-go's unset *int) is the default too, as for the booleans below.
                "snapshot_retention": require_int(body, "snapshot_retention", lo=1, hi=60) or 5,
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
                # The answer is the volume with state "destroyed" (Fly docs machines/api/volumes-resource); listing
                # it still shows the destroy state it is in.
                return 200, {**self._volume_view(v), "state": "destroyed"}
            # Only these two fields are mutable; other (unknown to this request) fields are ignored.
            body = json_body(request)
            if body.get("snapshot_retention") is not None:
                v["snapshot_retention"] = require_int(body, "snapshot_retention", lo=1, hi=60)
            if body.get("auto_backup_enabled") is not None:
                v["auto_backup_enabled"] = require_bool(body, "auto_backup_enabled", True)
            return 200, self._volume_view(v)

    def _h_volume_extend(self, request: Request, method: str, extra: dict, app: str, volume_id: str) -> tuple[int, Any]:
        body = json_body(request)
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
            # Under a running machine the filesystem can only grow at its next (re)start: `needs_restart` (OpenAPI
            # ExtendVolumeResponse; flyctl internal/command/volumes/extend.go tells the user to restart).
            holder = self._volume_holder(v, now)
            needs_restart = holder is not None and holder["state"] in RUNNING_STATES
            if not needs_restart:
                v["fs_size_gb"] = size
            return 200, {"volume": self._volume_view(v), "needs_restart": needs_restart}
