"""FlyMachinesReady: the gate that waits for many machines at once to be started and healthy, or stopped.

See components/providers/fly/provider.py for the contract every provider here keeps.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
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

from components.providers.base import (
    DynamicResource,
    canonical,
    diff_result,
)
from components.providers.fly.errors import FlyError
from components.providers.fly.machines import MACHINE_STATES, FlyMachine
from components.providers.fly.provider import FlyProviderBase

# One waiting thread per machine, up to this many: each mostly sleeps between polls that the client
# paces within Fly's per-machine rate limits.
MAX_CONCURRENT_WAITS = 128


def entry_line(entry: Mapping[str, Any]) -> str:
    """A machine the gate waits for, as one line: ``DESIRED_STATE APP/MACHINE_ID@INSTANCE_ID``."""
    return f"{entry['desired_state']} {entry['app']}/{entry['machine_id']}@{entry.get('instance_id') or ''}"


def _parse(line: str) -> dict[str, Any]:
    desired_state, _, rest = line.partition(" ")
    app, _, rest = rest.partition("/")
    machine_id, _, instance_id = rest.partition("@")
    return {"app": app, "machine_id": machine_id, "instance_id": instance_id or None, "desired_state": desired_state}


def _as_map(machines: Any) -> dict[str, str]:
    """The gate's ``machines`` input as {resource name: entry line}; a gate recorded as a list of objects
    (before the one-line entries) is keyed by app and machine id."""
    if isinstance(machines, Mapping):
        return {str(k): str(v) for k, v in machines.items()}
    return {f"{m['app']}/{m['machine_id']}": entry_line(m) for m in machines or [] if isinstance(m, Mapping)}


def _keyed(machines: Mapping[str, str]) -> list[tuple[str, dict[str, Any]]]:
    return [(key, _parse(line)) for key, line in machines.items()]


def entries(machines: Any) -> list[dict[str, Any]]:
    """The machines to wait for, as records (app, machine_id, instance_id, desired_state)."""
    return [entry for _, entry in _keyed(_as_map(machines))]


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
        if isinstance(machines, Mapping):
            # An entry is unknown in a preview while its machine is being changed.
            states = [entry.split(" ", 1)[0] for entry in machines.values() if isinstance(entry, str)]
            if any(st not in MACHINE_STATES for st in states):
                failures.append(CheckFailure("machines", f"desired_state must be one of {', '.join(MACHINE_STATES)}"))
        elif not isinstance(machines, Unknown):
            failures.append(CheckFailure("machines", "must be a map of machines"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # A new machine version, id or desired state is something to wait for again; nothing is replaced.
        # A gate recorded before the entries were one line each (a list of objects) compares by content.
        olds = {**olds, "machines": _as_map(olds.get("machines"))}
        return diff_result(olds, news, compare=("machines",), replace_on=(), delete_before_replace=False)

    def _await(self, machine: Mapping[str, Any], timeout_s: float) -> str:
        """Wait for one machine. A machine in Fly's `failed` state fails the wait at once with its last
        events: it stays failed until someone acts (Fly docs machine-states: a persistent state), so the
        timeout would only be spent. The wait asks for `failed` alongside the wanted state (fly-go
        WithWaitStates; `failed` is a state Machines_wait accepts), and the checks' poll looks for it too."""
        app, machine_id = machine["app"], machine["machine_id"]
        version = machine.get("instance_id") or None
        with self.client() as fly:
            if machine["desired_state"] == "started":
                reached = fly.wait(app, machine_id, ("started", "failed"), version=version, timeout_s=timeout_s)
                if reached == "failed":
                    raise fly.failure(app, machine_id)
                return str(fly.wait_for_checks(app, machine_id, timeout_s=timeout_s).get("state") or "started")
            current = fly.get_machine(app, machine_id) or {}
            if current.get("state") not in ("stopped", "created", "suspended"):
                reached = fly.wait(app, machine_id, ("stopped", "failed"), version=version, timeout_s=timeout_s)
                if reached == "failed":
                    raise fly.failure(app, machine_id)
            return "stopped"

    def _await_all(self, props: Mapping[str, Any]) -> dict[str, Any]:
        machines = entries(props.get("machines"))
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
        """Health is a moment, not a setting: a refresh does not turn a later failing check into drift
        (the machine's own read reports a machine stopped or started by hand).

        A machine in Fly's `failed` state is no moment: it stays so until someone acts. Its entry is
        recorded as `failed`, so the refresh shows the gate too and the next `up`, which starts the
        machine again (its own read recorded the same), waits for it again here instead of keeping a
        readiness that no longer holds (the machine's version, all the gate otherwise compares, is the same).
        """
        machines = _as_map(props.get("machines"))
        failed: list[str] = []
        with self.client() as fly:
            for key, entry in _keyed(machines):
                current = fly.get_machine(str(entry["app"]), str(entry["machine_id"]))
                if current is not None and current.get("state") == "failed" and entry["desired_state"] != "failed":
                    machines[key] = entry_line({**entry, "desired_state": "failed"})
                    failed.append(str(entry["machine_id"]))
        if not failed:
            return ReadResult(id_, props)
        states = {**(props.get("states") or {}), **dict.fromkeys(failed, "failed")}
        outs = {**props, "machines": machines, "states": states}
        return ReadResult(id_, outs, inputs={k: v for k, v in outs.items() if k != "states"})

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
        # One line per machine, keyed by its resource name (known at preview): a stop or start then shows
        # one changed line per machine in `preview --diff`, not the whole record of every machine.
        lines = {
            m.resource_name: pulumi.Output.all(m.app, m.machine_id, m.instance_id, m.desired_state).apply(
                lambda v: entry_line({"app": v[0], "machine_id": v[1], "instance_id": v[2], "desired_state": v[3]})
            )
            for m in machines
        }
        props = {"machines": lines, "timeout_s": timeout_s, "states": None}
        super().__init__(FlyMachinesReadyProvider(), resource_name, props, opts)
