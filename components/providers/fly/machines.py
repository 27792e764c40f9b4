"""FlyMachine: one machine whose config is converted from a rendered fly.toml (the API's machines family).

See components/providers/fly/provider.py for the contract every provider here keeps.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
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
    DynamicResource,
    canonical,
    changed_keys,
    diff_result,
    has_unknown,
)
from components.providers.fly import flytoml
from components.providers.fly.answers import exec_failure
from components.providers.fly.client import FlyClient
from components.providers.fly.errors import FlyError
from components.providers.fly.provider import FlyProviderBase

MACHINE_STATES = ("started", "stopped")
# Persistent states in which nothing runs and a start is what gets the machine going (Fly docs
# machine-states). `failed` ("could not start successfully") is one: Fly's docs say a failed machine
# "may be recoverable" by restarting, stopping or destroying it, flyctl's `machine start` sends a start
# whatever the state, and flyctl's deploy relaunches a failed machine rather than recreating it
# (internal/command/deploy/machines_launchinput.go shouldSkipLaunch). A new machine would not help
# either: one with a volume lands on the volume's host anyway, and the cause (image, config, a crash
# at boot) would come along; the readiness gate reports the machine's events when it fails again.
RESTING_STATES = ("stopped", "created", "suspended", "failed")
# A machine caught between states (stopping, starting) settles within seconds; waited for before the
# opposite request, which Fly refuses meanwhile.
TRANSITION_WAIT_S = 120


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
            if state not in RESTING_STATES:
                return dict(current)  # already started or on its way: nothing asked, nothing to read again
            fly.start_machine(app, machine_id, nonce)
        elif state in ("started", "starting", "replacing", "updating"):
            if state != "started":
                fly.wait(app, machine_id, "started", timeout_s=TRANSITION_WAIT_S)
            stop = self._machine_config(props).get("stop_config") or {}
            fly.stop_machine(app, machine_id, nonce, signal=stop.get("signal"), timeout=stop.get("timeout"))
        elif state == "failed":
            # Nothing runs, but it is not at rest either: a stop takes a failed machine to `stopped` (Fly
            # docs machine-states), where a later start begins cleanly and the refresh shows no drift.
            fly.stop_machine(app, machine_id, nonce)
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
        actual = _effective_state(machine.get("state"), self._machine_config(props), props.get("desired_state"))
        if actual is not None and actual != props.get("desired_state"):
            # Started or stopped by hand, or failed: record what it is, so the refresh shows it and the next
            # `up` (whose program still wants `desired_state`) puts it back, starting a failed machine.
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
                # The last flush of the data before it goes (a town's backup): anything but a clean exit,
                # a kill by a signal or the exec timeout included, keeps the machine.
                try:
                    result = fly.exec_machine(
                        app, id_, list(command), timeout_s=int(canonical(props.get("pre_stop_timeout_s") or 300))
                    )
                except FlyError as exc:
                    raise FlyError(
                        f"{' '.join(command)} on machine {id_} of app {app}: {exc.message}; "
                        "the machine was not deleted",
                        status=exc.status,
                        request_id=exc.request_id,
                    ) from exc
                failure = exec_failure(result)
                if failure:
                    raise FlyError(
                        f"{' '.join(command)} failed on machine {id_} of app {app} ({failure}): "
                        f"{result.get('stderr', '').strip()[:500]}; the machine was not deleted"
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


def _effective_state(state: str | None, config: Mapping[str, Any], desired: str | None) -> str | None:
    """What the machine is as far as `desired` goes: `started`, `stopped`, `failed`, or None in transition.

    A machine that is wanted started and whose services auto-stop is stopped by Fly's proxy when idle and
    started again by the next request (fly.toml `auto_stop_machines`/`auto_start_machines`): stopped is
    its normal resting state, not drift. That holds only when it is wanted started: in a stopped silo
    the same resting machine is simply stopped, as wanted.

    A started machine is started whatever the desired state. In a stopped silo that is drift even when
    its services auto-start, and whether a person or a request through Kong started it: the silo is
    declared stopped (nothing of it runs or bills), a request reaching it is news the operator wants,
    Fly's proxy stops it again only after minutes of idleness (never, with autostop off), and the next
    `up` stops it at once.

    `failed` (Fly could not start it) is reported as it is, whatever is wanted.
    """
    if state == "started":
        return "started"
    if state in ("stopped", "suspended", "created"):
        autostops = any(s.get("autostop") in (True, "stop", "suspend") for s in config.get("services") or [])
        return "started" if desired == "started" and autostops else "stopped"
    if state == "failed":
        return "failed"
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
        self.resource_name = resource_name  # how a readiness gate names it (ready.py)
        super().__init__(FlyMachineProvider(), resource_name, props, opts)
