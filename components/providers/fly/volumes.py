"""FlyVolume: a data volume (the API's volumes family); never deleted or replaced silently.

See components/providers/fly/provider.py for the contract every provider here keeps.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    UpdateResult,
)
from pulumi.output import Unknown

from components.domain import naming
from components.providers.base import (
    CONFIG_KEYS,
    REPLACEMENT_KEY,
    DynamicResource,
    canonical,
    changed_keys,
    diff_result,
    setting,
)
from components.providers.fly.client import FlyClient
from components.providers.fly.errors import FlyError
from components.providers.fly.provider import FlyProviderBase

log = logging.getLogger(__name__)


RESTART_TIMEOUT_S = 600  # a machine restarted for a grown volume: as long as a first boot may take


class FlyVolumeProvider(FlyProviderBase):
    IMMUTABLE = ("app", "name", "region", "encrypted")

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        name = news.get("name")
        if not isinstance(name, Unknown) and not (isinstance(name, str) and naming.is_volume_name(name)):
            failures.append(
                CheckFailure(
                    "name",
                    "Fly volume names are lowercase letters, digits and underscores, "
                    f"at most 30 characters (got {name!r})",
                )
            )
        size = canonical(news.get("size_gb"))
        if not isinstance(size, Unknown):
            if not isinstance(size, int) or size < 1:
                failures.append(CheckFailure("size_gb", f"must be a whole number of GB >= 1 (got {size!r})"))
            elif olds.get("size_gb") is not None and size < canonical(olds["size_gb"]):
                failures.append(
                    CheckFailure(
                        "size_gb",
                        f"Fly volumes can only grow: {canonical(olds['size_gb'])} GB cannot shrink to {size} GB",
                    )
                )
        retention = canonical(news.get("snapshot_retention"))
        if retention is not None and not isinstance(retention, Unknown) and not 1 <= retention <= 60:
            failures.append(CheckFailure("snapshot_retention", "must be between 1 and 60 days"))
        if not news.get("region"):
            failures.append(CheckFailure("region", "the Fly region is required"))
        elif olds.get("region") and olds["region"] != news["region"] and not news.get("allow_region_change"):
            # A volume cannot move: a new region means a new, empty volume (Fly docs, Volumes overview).
            failures.append(
                CheckFailure(
                    "region",
                    f"moving volume {news.get('name')} from {olds['region']} to {news['region']} would replace it "
                    "with an empty one; migrate the data first, then set "
                    f"{setting(news, 'allow_region_change', 'allow_region_change=true')}",
                )
            )
        news = {k: v for k, v in news.items() if k != REPLACEMENT_KEY}
        # The same keys `diff` replaces on, unknown values counting as changed as they do there.
        replaced_by = changed_keys(olds, news, self.IMMUTABLE) if olds.get("name") is not None else []
        if replaced_by:
            news[REPLACEMENT_KEY] = replaced_by
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = (*self.IMMUTABLE, "size_gb", "snapshot_retention", "allow_delete")
        result = diff_result(olds, news, compare=keys, replace_on=self.IMMUTABLE, delete_before_replace=False)
        if result.replaces and all(k not in result.replaces for k in ("app", "name", "region")):
            # Same name in the same region: create would adopt the old volume, so it must go first.
            # Otherwise (a new region, a new name) the new volume is made first: the machine that
            # mounts the old one is replaced onto it, and only then is the old volume released.
            result.delete_before_replace = True
        return result

    def _outs(self, props: Mapping[str, Any], volume: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **{k: v for k, v in props.items() if k != REPLACEMENT_KEY},
            "volume_id": volume["id"],
            "zone": volume.get("zone", ""),
            "size_gb": max(canonical(props["size_gb"]), int(volume.get("size_gb") or 0)),
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        app, size = props["app"], canonical(props["size_gb"])
        body = {
            "name": props["name"],
            "region": props["region"],
            "size_gb": size,
            "encrypted": props.get("encrypted", True),
        }
        if props.get("snapshot_retention"):
            body["snapshot_retention"] = canonical(props["snapshot_retention"])
        with self.client() as fly:
            # Adopts a volume of the same name: a retained data volume comes back after destroy + up.
            volume = fly.create_volume(app, body)
            if volume.get("region") and volume["region"] != props["region"]:
                raise FlyError(
                    f"app {app} already has a volume {props['name']} in region {volume['region']}, "
                    f"not {props['region']}; moving data between regions needs a migration"
                )
            if int(volume.get("size_gb") or 0) < size:
                volume = self._extend(fly, app, volume["id"], size)
        return CreateResult(volume["id"], self._outs(props, volume))

    @staticmethod
    def _extend(fly: FlyClient, app: str, volume_id: str, size_gb: int) -> dict[str, Any]:
        """Grow the volume. Under a running machine the API answers ``needs_restart``: its filesystem grows
        only when the machine restarts (flyctl internal/command/volumes/extend.go says so and leaves it to
        the user). Honoured here: the machine is restarted under its lease and waited for until it is
        healthy again, so the size in state is the size the database sees. A stopped machine needs nothing:
        it gets the grown filesystem on its next start."""
        volume = fly.extend_volume(app, volume_id, size_gb)
        machine_id = volume.get("attached_machine_id")
        if not volume.get("needs_restart") or not machine_id:
            return volume
        machine = fly.get_machine(app, machine_id)
        if machine is None or machine.get("state") not in ("started", "starting"):
            return volume
        log.warning(
            "volume %s of %s grew to %s GB; restarting machine %s so its filesystem grows",
            volume_id,
            app,
            size_gb,
            machine_id,
        )
        with fly.lease(app, machine_id) as nonce:
            fly.restart_machine(app, machine_id, nonce)
            fly.wait(app, machine_id, "started", version=machine.get("instance_id"), timeout_s=RESTART_TIMEOUT_S)
            fly.wait_for_checks(app, machine_id, timeout_s=RESTART_TIMEOUT_S)
        return fly.get_volume(app, volume_id) or volume

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        app = news["app"]
        with self.client() as fly:
            volume = fly.get_volume(app, id_) or {"id": id_, "size_gb": olds.get("size_gb")}
            if canonical(news["size_gb"]) > int(volume.get("size_gb") or 0):
                volume = self._extend(fly, app, id_, canonical(news["size_gb"]))
            retention = canonical(news.get("snapshot_retention"))
            if retention and retention != canonical(olds.get("snapshot_retention")):
                volume = fly.update_volume(app, id_, {"snapshot_retention": retention})
        return UpdateResult(self._outs(news, volume))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.client() as fly:
            volume = fly.get_volume(props["app"], id_)
        if volume is None:
            return ReadResult("", {})
        outs = self._outs(props, volume)
        return ReadResult(
            id_,
            outs,
            inputs={
                k: outs[k] for k in (*self.IMMUTABLE, "size_gb", "snapshot_retention", "allow_delete") if k in outs
            },
        )

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        if not props.get("allow_delete"):
            raise FlyError(
                f"refusing to delete data volume {props.get('name')} ({id_}) of app {props.get('app')}: "
                f"set {setting(props, 'allow_delete', 'allow_delete=true')} to allow deleting data, or keep the volume"
            )
        with self.client() as fly:
            fly.delete_volume(props["app"], id_)


class FlyVolume(DynamicResource, module="fly", name="Volume"):
    volume_id: pulumi.Output[str]
    name: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        app: pulumi.Input[str],
        name: str,
        region: str,
        size_gb: int,
        allow_delete: bool = False,
        encrypted: bool = True,
        snapshot_retention: int | None = None,
        allow_region_change: bool = False,
        config_keys: Mapping[str, str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        props = {
            CONFIG_KEYS: dict(config_keys or {}),
            "app": app,
            "name": name,
            "region": region,
            "size_gb": size_gb,
            "allow_delete": allow_delete,
            "encrypted": encrypted,
            "snapshot_retention": snapshot_retention,
            "allow_region_change": allow_region_change,
            "volume_id": None,
            "zone": None,
        }
        super().__init__(FlyVolumeProvider(), resource_name, props, opts)
