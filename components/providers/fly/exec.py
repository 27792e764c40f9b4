"""FlyExec: a command run once per new command on a machine through the API's exec endpoint.

See components/providers/fly/provider.py for the contract every provider here keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    UpdateResult,
)
from pulumi.output import Unknown

from components.providers.base import (
    CONFIG_KEYS,
    DynamicResource,
    canonical,
    changed_keys,
    has_unknown,
    setting,
    strip_provider,
)
from components.providers.fly.answers import exec_failure
from components.providers.fly.errors import FlyError
from components.providers.fly.provider import FlyProviderBase


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
            try:
                result = fly.exec_machine(
                    app,
                    machine_id,
                    list(props["command"]),
                    timeout_s=int(canonical(props.get("timeout_s") or 120)),
                )
            except FlyError as exc:  # the exec timeout passing, above all: say which command it was
                raise FlyError(
                    f"{props.get('description') or 'command'} on {app}: {exc.message}",
                    status=exc.status,
                    request_id=exc.request_id,
                ) from exc
        # A successful exec answers without exit_code (fly-go MachineExecResponse: omitempty): missing means 0.
        # A command killed by a signal (exit_signal, the API's flydv1.ExecResponse) failed whatever its code.
        exit_code = int(canonical(result.get("exit_code")) or 0)
        failure = exec_failure(result)
        if failure:
            # stderr of psql may echo statements but never the password (it is read from the env).
            raise FlyError(
                f"{props.get('description') or 'command'} failed on {app} ({failure}): "
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
