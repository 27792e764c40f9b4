"""Dynamic providers for Fly.io: one remote object per resource so every step is recorded in state.

Provider classes live in this importable module (pickled by reference, no import-time side effects).
Each method builds its own FlyClient; credentials come from ``configure()`` (stack config) or env.
Contract (Pulumi docs, Dynamic providers): explicit ``diff`` that ignores ``__provider`` and normalises what
the API echoes back, ``replaces`` for immutable fields with ``delete_before_replace`` for named
objects, ``outs = {**inputs, **computed}``, idempotent create (adopt by name) or rollback, 404 on
delete means done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    ApiProvider,
    DynamicResource,
    canonical,
    changed_keys,
    diff_result,
    has_unknown,
    setting,
    strip_provider,
)
from components.providers.fly import flytoml
from components.providers.fly.client import FlyClient, ip_kind
from components.providers.fly.errors import FlyError, FlyNameTaken
from components.providers.fly.settings import CONFIG_KEYS as FLY_CONFIG_KEYS
from components.providers.fly.settings import FlySettings, resolve_fly_settings
from components.providers.generated import generate_value, length_problem

log = logging.getLogger(__name__)

# Fly network names: letters, digits and dashes, starting with a letter (custom-private-networks docs).
NETWORK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
DEFAULT_NETWORK = "default"  # where an app created without `network` lives (what GET /apps/{app} says)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
IP_TYPES = ("v6", "shared_v4", "private_v6", "v4")
MACHINE_STATES = ("started", "stopped")
RESTART_TIMEOUT_S = 600  # a machine restarted for a grown volume: as long as a first boot may take
# A machine caught between states (stopping, starting) settles within seconds; waited for before the
# opposite request, which Fly refuses meanwhile.
TRANSITION_WAIT_S = 120
# One waiting thread per machine, up to this many: each mostly sleeps between polls that the client
# paces within Fly's per-machine rate limits.
MAX_CONCURRENT_WAITS = 128
# Added to a volume's checked inputs when they change an immutable input of the deployed volume, i.e.
# when the engine will replace it. A policy pack sees a resource's checked inputs but neither its old
# state nor the step the engine plans (Pulumi docs, "Policy as Code": resource validation policies get
# the resource's inputs), so this is how the silo guardrails (policy/) see a data volume's replacement
# at preview. It is never part of the outputs, and `diff` does not compare it.
REPLACEMENT_KEY = "immutable_changes"


class FlyProviderBase(ApiProvider):
    """The Fly Machines API's providers: `fly:apiToken` and `fly:apiUrl` from the stack, else the environment."""

    STACK_CONFIG_KEYS = FLY_CONFIG_KEYS

    def settings(self) -> FlySettings:
        return resolve_fly_settings(self.stack_config())

    def client(self) -> FlyClient:
        return FlyClient(self.settings())


# -- FlyApp -----------------------------------------------------------------------------------------
class FlyAppProvider(FlyProviderBase):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        name = news.get("name")
        if not isinstance(name, Unknown) and not (isinstance(name, str) and naming.is_dns_label(name)):
            failures.append(
                CheckFailure(
                    "name",
                    f"Fly app names are DNS labels: lowercase letters, digits and "
                    f"dashes, at most 63 characters (got {name!r})",
                )
            )
        if not news.get("org"):
            failures.append(
                CheckFailure("org", f"the Fly organization slug is required ({setting(news, 'org', 'org')})")
            )
        network = news.get("network")
        if network is not None and not isinstance(network, Unknown) and not NETWORK_NAME.match(str(network)):
            failures.append(
                CheckFailure(
                    "network",
                    f"Fly network names are letters, digits and dashes, starting with a letter (got {network!r})",
                )
            )
        failures += self._network_change_failures(olds, news)
        return CheckResult(news, failures)

    @staticmethod
    def _network_change_failures(olds: dict[str, Any], news: dict[str, Any]) -> list[CheckFailure]:
        """Refuse, at preview, to move an existing app to another network without the explicit override.

        Fly cannot change an app's network (custom-private-networks: "You can't add an existing app to a
        custom 6PN or change an app's 6PN"), so it is a replacement: the app is deleted, its machines and
        volumes with it, and created again under the same name on the new network.
        """
        if not olds or isinstance(news.get("network"), Unknown):
            return []
        old, new = olds.get("network") or DEFAULT_NETWORK, news.get("network") or DEFAULT_NETWORK
        if old == new:
            return []
        move = f"moving Fly app {news.get('name')} from network {old} to {new}"
        if not news.get("allow_network_change"):
            reason = (
                f"{move} replaces it: Fly cannot move an app between networks, so the app is deleted (with its "
                "machines and volumes) and created again. Set "
                f"{setting(news, 'allow_network_change', 'allow_network_change=true')} to do it"
            )
            return [CheckFailure("network", reason)]
        if news.get("keep_volumes", True):
            reason = (
                f"{move} deletes the app and its volumes, which keeping data forbids: back the data up, then set "
                f"{setting(news, 'keep_volumes', 'keep_volumes=false')} for the migration"
            )
            return [CheckFailure("network", reason)]
        return []

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = ("name", "org", "network", "keep_volumes")
        return diff_result(olds, news, compare=keys, replace_on=("name", "org", "network"))

    def create(self, props: dict[str, Any]) -> CreateResult:
        wanted = props.get("network") or DEFAULT_NETWORK
        with self.client() as fly:
            try:
                app = fly.create_app(props["name"], props["org"], props.get("network"))
            except FlyNameTaken as exc:
                where = setting(props, "name", "")
                if not where:
                    raise
                # The same error (status, request id, call), its message saying where the name is set.
                raise FlyNameTaken(
                    f"{exc.message} (the name comes from {where})",
                    status=exc.status,
                    request_id=exc.request_id,
                    method=exc.method,
                    path=exc.path,
                ) from None
        actual = app.get("network") or DEFAULT_NETWORK
        if actual != wanted:
            # create_app adopts an existing app of ours (a retained data app, a half-made one); one on
            # another network cannot be used: its Flycast names would not resolve for the silo's apps.
            raise FlyError(
                f"Fly app {props['name']} already exists on network {actual}, not {wanted}, and Fly cannot move "
                "an app between networks: delete the app (its volumes with it, back them up first) or keep it "
                "out of this stack"
            )
        return CreateResult(props["name"], {**props, "app_id": app.get("id", ""), "status": app.get("status", "")})

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # Only keep_volumes can change in place; it is a local safety switch.
        return UpdateResult({**strip_provider(olds), **news})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.client() as fly:
            app = fly.get_app(id_)
        if app is None:
            return ReadResult("", {})
        outs = {**props, "app_id": app.get("id", ""), "status": app.get("status", "")}
        actual = app.get("network")
        if actual and actual != (props.get("network") or DEFAULT_NETWORK):
            outs["network"] = actual  # a refresh records where the app really is; the next diff replaces
        return ReadResult(
            id_, outs, inputs={k: outs[k] for k in ("name", "org", "network", "keep_volumes") if k in outs}
        )

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        with self.client() as fly:
            if props.get("keep_volumes", True):
                # Deleting an app deletes its volumes: never do that to data silently.
                volumes = fly.list_volumes(id_) if fly.get_app(id_) else []
                if volumes:
                    names = ", ".join(f"{v.get('name')} ({v.get('id')})" for v in volumes)
                    raise FlyError(
                        f"refusing to delete Fly app {id_}: it still holds data volumes {names}. "
                        f"Set {setting(props, 'keep_volumes', 'keep_volumes=false')} to delete the data, "
                        "or keep the app"
                    )
            # The engine deletes an app after every machine of it that this stack manages; force=true stops
            # whatever is left (a machine made by hand), as the API wants machines stopped otherwise. The
            # deletion completes asynchronously; a create of the same name waits for it (FlyClient.create_app).
            fly.delete_app(id_, force=True)


class FlyApp(DynamicResource, module="fly", name="App"):
    name: pulumi.Output[str]
    org: pulumi.Output[str]
    app_id: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        name: pulumi.Input[str],
        org: pulumi.Input[str],
        keep_volumes: bool = True,
        network: str | None = None,
        allow_network_change: bool = False,
        config_keys: Mapping[str, str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        props = {
            CONFIG_KEYS: dict(config_keys or {}),
            "name": name,
            "org": org,
            "keep_volumes": keep_volumes,
            "network": network,
            # A local switch, read by check(); not compared by diff.
            "allow_network_change": allow_network_change,
            "app_id": None,
            "status": None,
        }
        super().__init__(FlyAppProvider(), resource_name, props, opts)


# -- FlyIpAssignment --------------------------------------------------------------------------------
class FlyIpAssignmentProvider(FlyProviderBase):
    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        if news.get("type") not in IP_TYPES:
            failures.append(CheckFailure("type", f"must be one of {', '.join(IP_TYPES)} (got {news.get('type')!r})"))
        if not news.get("app"):
            failures.append(CheckFailure("app", "the Fly app name is required"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = ("app", "type", "region")
        # An IP assignment has no name to collide on, so create the new one before releasing the old.
        return diff_result(olds, news, compare=keys, replace_on=keys, delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        app, kind = props["app"], props["type"]
        with self.client() as fly:
            ip = fly.allocate_ip(app, kind, props.get("region"))
            address = ip.get("ip") or ip.get("address")
            if not address:
                # The address is the id, and an empty id fails the whole `up` ("plugin returned empty
                # resource.ID"): an answer without it is looked up in the app's list.
                ip = next((i for i in fly.list_ips(app) if ip_kind(i) == kind and i.get("ip")), ip)
                address = ip.get("ip")
        if not address:
            raise FlyError(f"Fly allocated a {kind} IP for app {app} but reported no address; run `up` again")
        return CreateResult(address, {**props, "address": address, "shared": bool(ip.get("shared"))})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.client() as fly:
            ips = fly.list_ips(props["app"])
        match = next((ip for ip in ips if ip.get("ip") == id_), None)
        if match is None:
            return ReadResult("", {})
        outs = {**props, "address": id_, "type": ip_kind(match)}
        return ReadResult(id_, outs, inputs={k: outs[k] for k in ("app", "type", "region") if k in outs})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        with self.client() as fly:
            fly.release_ip(props["app"], id_)


class FlyIpAssignment(DynamicResource, module="fly", name="IpAssignment"):
    address: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        app: pulumi.Input[str],
        type: str,
        region: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__(
            FlyIpAssignmentProvider(),
            resource_name,
            {"app": app, "type": type, "region": region, "address": None, "shared": None},
            opts,
        )


# -- FlySecrets -------------------------------------------------------------------------------------
class FlySecretsProvider(FlyProviderBase):
    """The app's secrets that this stack manages. Values live only in (encrypted) state; the API never
    returns them, so drift is detected by comparing digests on refresh.

    ``generate`` names secrets whose value is made here at first (random, ``length`` characters, as
    GeneratedSecret makes them) and kept in the ``generated`` output from then on. A town's internal API
    key was a GeneratedSecret resource of its own: one resource per town more in every preview and up
    (bench/run.py). A value already set under that name (by such a resource, before) is kept.
    """

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        generate = news.get("generate") or {}
        if isinstance(generate, Mapping):
            for key, length in generate.items():
                failures += _secret_name_failures("generate", key)
                problem = length_problem(length)
                if problem:
                    failures.append(CheckFailure("generate", f"secret {key}: length {problem}"))
        else:
            failures.append(CheckFailure("generate", "must be a map of secret name to length"))
            generate = {}
        values = news.get("values")
        if isinstance(values, Mapping):
            for key, value in values.items():
                failures += _secret_name_failures("values", key)
                if not isinstance(value, str | Unknown):
                    failures.append(CheckFailure("values", f"secret {key} must be a string"))
                if key in generate:
                    failures.append(CheckFailure("values", f"secret {key} is both given and generated"))
        elif not isinstance(values, Unknown):
            failures.append(CheckFailure("values", "must be a map of secret name to value"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        result = diff_result(olds, news, compare=("app", "values"), replace_on=("app",), delete_before_replace=False)
        if not result.changes and _generated(olds, news) != (olds.get("generated") or {}):
            # A name to generate is new or its length changed, or its value changed outside (refresh forgot it).
            return DiffResult(changes=True, replaces=[], delete_before_replace=False)
        return result

    def create(self, props: dict[str, Any]) -> CreateResult:
        app = props["app"]
        generated = _generated({}, props)
        values = {**props["values"], **generated}
        with self.client() as fly:
            version = fly.set_secrets(app, values)
            # Read back at the version just written: a lagging replica would give the previous digests, and
            # the next refresh would take the secrets for changed outside Pulumi and set them (and restart
            # the machines) again.
            digests = fly.list_secrets(app, min_version=version)
        names = sorted(values)
        return CreateResult(
            app,
            {
                **props,
                "generated": generated,
                "names": names,
                "version": version,
                "digests": {k: digests.get(k, "") for k in names},
            },
        )

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        app = news["app"]
        old_values: Mapping[str, str] = {**(olds.get("values") or {}), **(olds.get("generated") or {})}
        generated = _generated(olds, news)
        new_values: Mapping[str, str] = {**news["values"], **generated}
        changes: dict[str, str | None] = {k: v for k, v in new_values.items() if old_values.get(k) != v}
        changes.update({k: None for k in old_values if k not in new_values})
        with self.client() as fly:
            version = fly.set_secrets(app, changes) if changes else int(canonical(olds.get("version")) or 0)
            digests = fly.list_secrets(app, min_version=version)
        names = sorted(new_values)
        return UpdateResult(
            {
                **news,
                "generated": generated,
                "names": names,
                "version": version,
                "digests": {k: digests.get(k, "") for k in names},
            }
        )

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.client() as fly:
            if fly.get_app(props["app"]) is None:
                return ReadResult("", {})
            try:
                live = fly.list_secrets(props["app"], min_version=canonical(props.get("version")))
            except FlyError as exc:
                if exc.status != 412:
                    raise
                live = fly.list_secrets(props["app"])  # the recorded version is ahead: the app was recreated
        recorded: Mapping[str, str] = props.get("digests") or {}

        def unchanged(given: Mapping[str, str] | None) -> dict[str, str]:
            return {k: v for k, v in (given or {}).items() if live.get(k) and live.get(k) == recorded.get(k)}

        # A secret changed or removed outside Pulumi: forget its value so the next up sets it again (a
        # generated one is then generated anew: its old value is gone from the state too).
        values, generated = unchanged(props.get("values")), unchanged(props.get("generated"))
        outs = {
            **props,
            "values": values,
            "generated": generated,
            "digests": {k: live.get(k, "") for k in (*values, *generated)},
        }
        inputs = {"app": props["app"], "values": values}
        if props.get("generate"):
            inputs["generate"] = props["generate"]
        return ReadResult(id_, outs, inputs=inputs)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        with self.client() as fly:
            if fly.get_app(props["app"]) is None:
                return
            names = props.get("names") or list((props.get("values") or {}).keys())
            if names:
                try:
                    fly.set_secrets(props["app"], dict.fromkeys(names))
                except FlyError as exc:
                    if exc.status != 404:
                        raise


def _secret_name_failures(prop: str, key: str) -> list[CheckFailure]:
    if ENV_NAME.match(key) and not key.upper().startswith("FLY_"):
        return []
    return [CheckFailure(prop, f"secret name {key!r} is not a valid environment variable name (or starts with FLY_)")]


def _generated(olds: Mapping[str, Any], news: Mapping[str, Any]) -> dict[str, str]:
    """The values of the secrets ``news`` generates: kept from ``olds`` (its ``generated``, or a value it
    set under that name) when their length still matches, else made now."""
    kept = {**(olds.get("values") or {}), **(olds.get("generated") or {})}
    out = {}
    for key, length in sorted((news.get("generate") or {}).items()):
        old = kept.get(key)
        out[key] = old if isinstance(old, str) and len(old) == int(length) else generate_value(length)
    return out


class FlySecrets(DynamicResource, module="fly", name="Secrets"):
    version: pulumi.Output[int]
    digests: pulumi.Output[dict]
    generated: pulumi.Output[dict]

    def __init__(
        self,
        resource_name: str,
        *,
        app: pulumi.Input[str],
        values: pulumi.Input[Mapping[str, str]],
        generate: Mapping[str, int] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        props = {
            "app": app,
            "values": pulumi.Output.secret(values),
            "generate": dict(generate or {}),
            "generated": None,
            "version": None,
            "digests": None,
            "names": None,
        }
        secret = pulumi.ResourceOptions(additional_secret_outputs=["generated"])
        super().__init__(FlySecretsProvider(), resource_name, props, pulumi.ResourceOptions.merge(opts, secret))


# -- FlyVolume --------------------------------------------------------------------------------------
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


# -- FlyMachine -------------------------------------------------------------------------------------
class FlyMachineProvider(FlyProviderBase):
    """A machine whose config is derived from a rendered fly.toml (the single source of truth)."""

    IMMUTABLE = ("app", "name", "region", "volume_id")

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        if news.get("desired_state") not in MACHINE_STATES:
            failures.append(
                CheckFailure(
                    "desired_state",
                    f"must be one of {', '.join(MACHINE_STATES)} (got {news.get('desired_state')!r})",
                )
            )
        name = news.get("name")
        if not isinstance(name, Unknown) and not (isinstance(name, str) and naming.is_dns_label(name)):
            failures.append(CheckFailure("name", f"machine names are DNS labels (got {name!r})"))
        image = news.get("image")
        if not isinstance(image, Unknown) and (not image or str(image).endswith(":latest")):
            failures.append(CheckFailure("image", f"a pinned image is required, never latest (got {image!r})"))
        text = news.get("fly_toml")
        if isinstance(text, str):
            try:
                doc = flytoml.parse(text)
            except ValueError as exc:
                failures.append(CheckFailure("fly_toml", f"not valid TOML: {exc}"))
            else:
                failures += [CheckFailure("fly_toml", problem) for problem in flytoml.validate(doc)]
                if not failures and not has_unknown([image, news.get("volume_id"), news.get("metadata")]):
                    try:
                        config = self._config_for(doc, news, read_local=flytoml.read_local_file)
                    except flytoml.FlyTomlError as exc:
                        failures.append(CheckFailure("fly_toml", str(exc)))
                    else:
                        news = {**news, CONFIG_DIGEST: _config_digest(config)}
        elif not isinstance(text, Unknown):
            failures.append(CheckFailure("fly_toml", "the rendered fly.toml text is required"))
        return CheckResult(news, failures)

    @staticmethod
    def _config_for(
        doc: Mapping[str, Any], props: Mapping[str, Any], read_local: Callable[[str], bytes] | None = None
    ) -> dict[str, Any]:
        config = flytoml.to_machine_config(
            doc, image=props["image"], volume_id=props.get("volume_id"), read_local=read_local
        )
        if props.get("metadata"):
            config["metadata"] = {**config.get("metadata", {}), **props["metadata"]}
        return config

    @classmethod
    def _machine_config(cls, props: Mapping[str, Any]) -> dict[str, Any]:
        """The machine config converted from the fly.toml, for its settings (stop signal, auto-stop):
        ``local_path`` files are not read, so a `destroy` or `refresh`, which run no program to write
        them, never needs them.

        State keeps only the config's digest: a copy of the config in the inputs and the outputs of
        every machine doubled the state (49 MB for 100 towns), which the engine reads, diffs and sends
        on every preview (bench/run.py).
        """
        return cls._config_for(flytoml.parse(props["fly_toml"]), props)

    @classmethod
    def _config_to_send(cls, props: Mapping[str, Any]) -> dict[str, Any]:
        """The machine config the API gets, ``local_path`` files read, and exactly the one Check
        digested: a file changed since then would deploy something nobody previewed."""
        config = cls._config_for(flytoml.parse(props["fly_toml"]), props, read_local=flytoml.read_local_file)
        expected = props.get(CONFIG_DIGEST)
        if isinstance(expected, str) and _config_digest(config) != expected:
            raise FlyError(
                f"machine {props.get('name')} of app {props.get('app')}: the files its fly.toml names changed "
                "after this run checked them; run `pulumi up` again"
            )
        return config

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # The fly.toml is compared by what it converts to (`_config_differs`), not as text.
        compare = (*self.IMMUTABLE, "image", "metadata", "desired_state", "min_secrets_version", "pre_stop_exec")
        result = diff_result(olds, news, compare=compare, replace_on=self.IMMUTABLE)
        if "volume_id" in result.replaces and self._same_volume(olds, news):
            # In a preview the volume's id is unknown whenever the volume itself has any update (a
            # dynamic provider's outputs are its inputs until it runs). The same volume name in the same
            # region is the same volume: an update of it, not a new machine. A volume that is really
            # replaced changes its region or name, which replaces the machine anyway; and the engine
            # diffs again with the real id before it updates.
            news = {**news, "volume_id": olds.get("volume_id")}
            result = diff_result(olds, news, compare=compare, replace_on=self.IMMUTABLE)
        if not result.changes and _config_differs(olds, news):
            return DiffResult(changes=True, replaces=[])
        return result

    @staticmethod
    def _same_volume(olds: Mapping[str, Any], news: Mapping[str, Any]) -> bool:
        """An unknown new volume id, with the old machine's mount, region and name unchanged."""
        if not isinstance(news.get("volume_id"), Unknown) or not olds.get("volume_id"):
            return False
        if any(
            has_unknown(news.get(k)) or canonical(olds.get(k)) != canonical(news.get(k))
            for k in ("app", "name", "region")
        ):
            return False
        texts = (olds.get("fly_toml"), news.get("fly_toml"))
        if not all(isinstance(t, str) for t in texts):
            return False
        old_mounts, new_mounts = (flytoml.parse(t).get("mounts") for t in texts)
        return bool(new_mounts) and canonical(old_mounts) == canonical(new_mounts)

    def _body(self, props: Mapping[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {
            # Numbers arrive from the engine as doubles; the API wants Go ints.
            "config": canonical(self._config_to_send(props)),
            "region": props["region"],
            "skip_launch": props["desired_state"] == "stopped",
        }
        if props.get("min_secrets_version") is not None:
            body["min_secrets_version"] = canonical(props["min_secrets_version"])
        return body

    def _converge(
        self,
        fly: FlyClient,
        app: str,
        machine: Mapping[str, Any],
        props: Mapping[str, Any],
        nonce: str | None = None,
    ) -> dict[str, Any]:
        """Ask for the desired state (start or stop) and return without waiting for it.

        Booting and passing health checks is FlyMachinesReady's job, for many machines at once: a
        provider call that waited here would hold one of the provider host's four slots for a whole
        boot (bench/run.py). Only a machine caught between states is waited for, briefly, since Fly
        refuses to start a stopping machine or to stop a starting one.
        """
        machine_id = machine["id"]
        current = fly.get_machine(app, machine_id) or machine
        state = current.get("state")
        if props["desired_state"] == "started":
            if state == "stopping":
                fly.wait(app, machine_id, "stopped", version=current.get("instance_id"), timeout_s=TRANSITION_WAIT_S)
                state = "stopped"
            if state not in ("stopped", "created", "suspended"):
                return dict(current)  # already started or on its way: nothing asked, nothing to read again
            fly.start_machine(app, machine_id, nonce)
        elif state in ("started", "starting", "replacing", "updating"):
            if state != "started":
                fly.wait(app, machine_id, "started", timeout_s=TRANSITION_WAIT_S)
            stop = self._machine_config(props).get("stop_config") or {}
            fly.stop_machine(app, machine_id, nonce, signal=stop.get("signal"), timeout=stop.get("timeout"))
        else:
            return dict(current)  # stopped already
        return dict(fly.get_machine(app, machine_id) or current)

    def _outs(self, props: Mapping[str, Any], machine: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **props,
            "machine_id": machine["id"],
            "instance_id": machine.get("instance_id", ""),
            "state": machine.get("state", ""),
            "private_ip": machine.get("private_ip", ""),
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        app = props["app"]
        with self.client() as fly:
            existing = fly.find_machine(app, props["name"])
            if existing is not None:
                # A machine left by an interrupted run (or a lost create response): converge it.
                with fly.lease(app, existing["id"]) as nonce:
                    machine = fly.update_machine(app, existing["id"], self._body(props), nonce)
                    machine = self._converge(fly, app, machine, props, nonce)
                return CreateResult(machine["id"], self._outs(props, machine))
            # Created and launched (or not, when it is to stay stopped); whether it boots and passes its
            # checks is waited for by FlyMachinesReady, which fails the `up` naming it if it does not.
            machine = fly.create_machine(app, {"name": props["name"], **self._body(props)})
        return CreateResult(machine["id"], self._outs(props, machine))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        app = news["app"]
        reconfigure = bool(changed_keys(olds, news, ("image", "metadata", "min_secrets_version"))) or (
            _config_differs(olds, news)
        )
        with self.client() as fly, fly.lease(app, id_) as nonce:
            machine = fly.get_machine(app, id_)
            if machine is None:
                raise FlyError(f"machine {id_} of app {app} no longer exists; run `pulumi refresh` then `pulumi up`")
            if reconfigure:
                machine = fly.update_machine(app, id_, self._body(news), nonce)
            machine = self._converge(fly, app, machine, news, nonce)
        return UpdateResult(self._outs(news, machine))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.client() as fly:
            machine = fly.get_machine(props["app"], id_)
        if machine is None:
            return ReadResult("", {})
        outs = self._outs(props, machine)
        inputs = {k: v for k, v in props.items() if k not in ("machine_id", "instance_id", "state", "private_ip")}
        actual = _effective_state(machine.get("state"), self._machine_config(props))
        if actual is not None and actual != props.get("desired_state"):
            # Started or stopped by hand: record what it is, so the refresh shows it and the next `up`
            # (whose program still wants `desired_state`) puts it back.
            inputs["desired_state"] = outs["desired_state"] = actual
        return ReadResult(id_, outs, inputs=inputs)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        app = props["app"]
        with self.client() as fly:
            machine = fly.get_machine(app, id_)
            if machine is None:
                return
            command = props.get("pre_stop_exec")
            if command and machine.get("state") == "started":
                result = fly.exec_machine(
                    app, id_, list(command), timeout_s=int(canonical(props.get("pre_stop_timeout_s") or 300))
                )
                if int(canonical(result.get("exit_code")) or 0) != 0:  # a missing exit_code means 0
                    raise FlyError(
                        f"{' '.join(command)} failed on machine {id_} of app {app} (exit "
                        f"{result.get('exit_code')}): {result.get('stderr', '').strip()[:500]}; "
                        "the machine was not deleted"
                    )
            if machine.get("state") in ("started", "starting"):
                stop = self._machine_config(props).get("stop_config") or {}
                fly.stop_machine(app, id_, signal=stop.get("signal"), timeout=stop.get("timeout"))
                fly.wait(app, id_, "stopped", version=machine.get("instance_id"), timeout_s=600)
            fly.delete_machine(app, id_, force=True)
            # The volume stays attached until the machine is really gone.
            fly.wait(app, id_, "destroyed", timeout_s=300)


# Check's digest of the machine config converted from the fly.toml (the config itself is not kept).
CONFIG_DIGEST = "config_sha256"


def _config_digest(config: Mapping[str, Any]) -> str:
    normalized = flytoml.normalize(canonical(config))
    return hashlib.sha256(json.dumps(normalized, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _config_differs(olds: Mapping[str, Any], news: Mapping[str, Any]) -> bool:
    """Whether the machine's config changes: by the digest of the config converted from the fly.toml when
    both sides have one, else by the fly.toml's text.

    The digest covers what Fly gets, so a template edit that changes nothing there (a string written
    another way, a comment) updates no machine, which on Fly means a restart; and a changed conversion
    of the same text (a code upgrade) is an update. The new digest is unknown in a preview until the
    machine's volume or image is; the engine diffs again with them. State written before the digest
    kept the whole config under ``config``: its digest is computed here.
    """
    new = news.get(CONFIG_DIGEST)
    old = olds.get(CONFIG_DIGEST)
    if not isinstance(old, str) and isinstance(olds.get("config"), Mapping):
        old = _config_digest(olds["config"])
    if isinstance(new, str) and isinstance(old, str):
        return old != new
    return bool(changed_keys(olds, news, ["fly_toml"]))


def _effective_state(state: str | None, config: Mapping[str, Any]) -> str | None:
    """`started`/`stopped` as far as the desired state goes, or None while in transition.

    A machine whose services auto-stop is stopped by Fly's proxy when idle and started again by the
    next request (fly.toml `auto_stop_machines`/`auto_start_machines`): stopped is its normal resting
    state, not drift.
    """
    if state == "started":
        return "started"
    if state in ("stopped", "suspended"):
        autostops = any(s.get("autostop") in (True, "stop", "suspend") for s in config.get("services") or [])
        return "started" if autostops else "stopped"
    return None


class FlyMachine(DynamicResource, module="fly", name="Machine"):
    app: pulumi.Output[str]
    desired_state: pulumi.Output[str]
    machine_id: pulumi.Output[str]
    instance_id: pulumi.Output[str]
    state: pulumi.Output[str]
    private_ip: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        app: pulumi.Input[str],
        name: str,
        region: str,
        fly_toml: pulumi.Input[str],
        image: str,
        desired_state: str = "started",
        volume_id: pulumi.Input[str] | None = None,
        min_secrets_version: pulumi.Input[int] | None = None,
        metadata: Mapping[str, str] | None = None,
        pre_stop_exec: list[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        props = {
            "app": app,
            "name": name,
            "region": region,
            "fly_toml": fly_toml,
            "image": image,
            "desired_state": desired_state,
            "volume_id": volume_id,
            "min_secrets_version": min_secrets_version,
            "metadata": dict(metadata or {}),
            "pre_stop_exec": pre_stop_exec,
            CONFIG_DIGEST: None,
            "machine_id": None,
            "instance_id": None,
            "state": None,
            "private_ip": None,
        }
        super().__init__(FlyMachineProvider(), resource_name, props, opts)


# -- FlyMachinesReady ---------------------------------------------------------------------------------
class FlyMachinesReadyProvider(FlyProviderBase):
    """Waits until every listed machine is in its desired state, and a started one passes every health
    check it has configured, all at once in one provider call.

    The machines themselves return as soon as the API has their create, update, start or stop: a call
    waiting for a boot would hold one of the provider host's four slots the whole time (pulumi.dynamic
    serves four calls at once; with 100 towns that is 25 boots in a row, and every Check queued behind
    them). A silo has two of these (Postgres alone, which GoTrue, Storage and PostgREST wait for; then
    every machine), and the towns of a silo one together. Nothing remote is created: the resource is
    the record that the machines, at these versions, were found healthy.
    """

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        machines = news.get("machines")
        if isinstance(machines, list):
            # An entry, or its state, is unknown in a preview while the machine is being changed.
            states = [m.get("desired_state") for m in machines if isinstance(m, Mapping)]
            if any(not isinstance(st, Unknown) and st not in MACHINE_STATES for st in states):
                failures.append(CheckFailure("machines", f"desired_state must be one of {', '.join(MACHINE_STATES)}"))
        elif not isinstance(machines, Unknown):
            failures.append(CheckFailure("machines", "must be a list of machines"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # A new machine version, id or desired state is something to wait for again; nothing is replaced.
        return diff_result(olds, news, compare=("machines",), replace_on=(), delete_before_replace=False)

    def _await(self, machine: Mapping[str, Any], timeout_s: float) -> str:
        app, machine_id = machine["app"], machine["machine_id"]
        version = machine.get("instance_id") or None
        with self.client() as fly:
            if machine["desired_state"] == "started":
                fly.wait(app, machine_id, "started", version=version, timeout_s=timeout_s)
                return str(fly.wait_for_checks(app, machine_id, timeout_s=timeout_s).get("state") or "started")
            current = fly.get_machine(app, machine_id) or {}
            if current.get("state") not in ("stopped", "created", "suspended"):
                fly.wait(app, machine_id, "stopped", version=version, timeout_s=timeout_s)
            return "stopped"

    def _await_all(self, props: Mapping[str, Any]) -> dict[str, Any]:
        machines = [dict(m) for m in props.get("machines") or []]
        timeout_s = float(canonical(props.get("timeout_s") or 600))
        states: dict[str, str] = {}
        failures: list[str] = []
        if machines:
            with ThreadPoolExecutor(max_workers=min(len(machines), MAX_CONCURRENT_WAITS)) as pool:
                futures = {pool.submit(self._await, m, timeout_s): m for m in machines}
                for future, machine in futures.items():
                    try:
                        states[machine["machine_id"]] = future.result()
                    except FlyError as exc:
                        failures.append(f"{machine['app']} (machine {machine['machine_id']}): {exc}")
        if failures:
            shown = "\n  ".join(failures[:20])
            more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
            raise FlyError(
                f"{len(failures)} of {len(machines)} machines did not become ready "
                f"(started with every health check passing, or stopped):\n  {shown}{more}"
            )
        return {**props, "states": states}

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(f"ready-{uuid.uuid4().hex[:12]}", self._await_all(props))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._await_all(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        # Health is a moment, not a setting: a refresh does not turn a later failing check into drift
        # (the machine's own read reports a machine stopped or started by hand).
        return ReadResult(id_, props)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None


class FlyMachinesReady(DynamicResource, module="fly", name="MachinesReady"):
    """Gate: done once the given machines are all ready; see FlyMachinesReadyProvider."""

    states: pulumi.Output[dict]

    def __init__(
        self,
        resource_name: str,
        *,
        machines: Sequence[FlyMachine],
        timeout_s: int = 600,
        opts: pulumi.ResourceOptions | None = None,
    ):
        entries = [
            pulumi.Output.all(m.app, m.machine_id, m.instance_id, m.desired_state).apply(
                lambda v: {"app": v[0], "machine_id": v[1], "instance_id": v[2], "desired_state": v[3]}
            )
            for m in machines
        ]
        props = {"machines": entries, "timeout_s": timeout_s, "states": None}
        super().__init__(FlyMachinesReadyProvider(), resource_name, props, opts)


# -- FlyExec ----------------------------------------------------------------------------------------
class FlyExecProvider(FlyProviderBase):
    """Runs a command on a machine through the Machines API `exec` endpoint once per new command.

    Used for SQL on the private database (RLS modes): `pulumi up` needs no network path into it. Its
    effect lives in the database on the volume, so the resource stays through stops and starts and a new
    command is an update: `applied_command` records what last ran, and while `run` is false (the machine
    is meant to be stopped) a new command is recorded and runs at the next up that starts the machine.
    """

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        command = news.get("command")
        if not isinstance(command, Unknown) and not (
            isinstance(command, list) and command and all(isinstance(c, str | Unknown) for c in command)
        ):
            failures.append(CheckFailure("command", "must be a non-empty list of strings"))
        return CheckResult(news, failures)

    @staticmethod
    def _pending(olds: Mapping[str, Any], news: Mapping[str, Any]) -> bool:
        return has_unknown(news.get("command")) or canonical(olds.get("applied_command")) != canonical(news["command"])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # A new machine id (unknown during a preview whenever the machine changes) is no reason to run the
        # command again, nor is a stop or a start: only a command not yet applied, or a new one to record.
        changed = bool(changed_keys(olds, news, ("app", "command"))) or (
            news.get("run", True) is not False and self._pending(olds, news)
        )
        return DiffResult(changes=changed, replaces=[], delete_before_replace=None)

    def _run(self, props: Mapping[str, Any]) -> dict[str, Any]:
        app, machine_id = props["app"], props["machine_id"]
        with self.client() as fly:
            machine = fly.get_machine(app, machine_id)
            if machine is None or machine.get("state") != "started":
                state = machine.get("state") if machine else "missing"
                raise FlyError(
                    f"cannot run {props.get('description') or 'the command'} on machine {machine_id} of app "
                    f"{app}: it is {state}; start it ({setting(props, 'machine_id', 'the machine')}) "
                    "and run `pulumi up` again"
                )
            result = fly.exec_machine(
                app,
                machine_id,
                list(props["command"]),
                timeout_s=int(canonical(props.get("timeout_s") or 120)),
            )
        # A successful exec answers without exit_code (fly-go MachineExecResponse: omitempty): missing means 0.
        exit_code = int(canonical(result.get("exit_code")) or 0)
        if exit_code != 0:
            # stderr of psql may echo statements but never the password (it is read from the env).
            raise FlyError(
                f"{props.get('description') or 'command'} failed on {app} (exit {exit_code}): "
                f"{str(result.get('stderr', '')).strip()[:1000]}"
            )
        return {
            **props,
            "applied_command": list(props["command"]),
            "exit_code": exit_code,
            "stdout": str(result.get("stdout", ""))[:4000],
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._run(props) if props.get("run", True) is not False else {**props, "applied_command": None}
        return CreateResult(f"{props['app']}/{props['machine_id']}/exec", outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if news.get("run", True) is not False and self._pending(olds, news):
            return UpdateResult(self._run(news))
        last = {k: olds.get(k) for k in ("applied_command", "exit_code", "stdout")}
        return UpdateResult({**strip_provider(news), **last})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # Nothing remote to remove: the effect lives in the database, which outlives this resource.
        return None


class FlyExec(DynamicResource, module="fly", name="Exec"):
    stdout: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        app: pulumi.Input[str],
        machine_id: pulumi.Input[str],
        command: pulumi.Input[list[str]],
        description: str = "",
        run: bool = True,
        timeout_s: int = 120,
        config_keys: Mapping[str, str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        props = {
            CONFIG_KEYS: dict(config_keys or {}),
            "app": app,
            "machine_id": machine_id,
            "command": command,
            "description": description,
            "run": run,
            "timeout_s": timeout_s,
            "applied_command": None,
            "exit_code": None,
            "stdout": None,
        }
        super().__init__(FlyExecProvider(), resource_name, props, opts)
