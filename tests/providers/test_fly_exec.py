"""Exec as Fly answers it: `exit_signal` next to `exit_code` (the API's flydv1.ExecResponse), and the
`deadline_exceeded` error when the exec timeout passes (flyctl issue #4194). A command killed by a signal,
or cut off by the timeout, has failed: the pre-destroy backup flush keeps the machine, and FlyExec (the RLS
SQL) fails naming its command.
"""

from __future__ import annotations

import time

import httpx
import pytest

from components.providers.fly.answers import exec_failure
from components.providers.fly.client import FlyClient
from components.providers.fly.errors import FlyError
from components.providers.fly.exec import FlyExecProvider
from components.providers.fly.machines import FlyMachineProvider
from components.providers.fly.settings import FlySettings
from emulators.fly import FlyEmulator
from tests.fixtures.fly import visible_app
from tests.providers.test_fly_providers import configured, machine_props

IMAGE = "registry-1.docker.io/library/busybox:1.36"
FLUSH = ["/usr/local/bin/r2-sync.sh", "--immediate"]


@pytest.fixture
def meta_app(fly_api: httpx.Client) -> str:
    return visible_app(fly_api, "devenv-acme-erp-meta")


def test_the_emulator_answers_exit_signal_and_the_deadline(fly_api: httpx.Client, fly_emulator: FlyEmulator) -> None:
    app = visible_app(fly_api)
    machine = fly_api.post(f"/apps/{app}/machines", json={"config": {"image": IMAGE}}).json()
    url = f"/apps/{app}/machines/{machine['id']}/exec"

    fly_emulator.set_exec_handler(lambda *_: {"exit_signal": 9, "stderr": "Killed"})
    assert fly_api.post(url, json={"command": ["sleep", "1"]}).json() == {"exit_signal": 9, "stderr": "Killed"}

    fly_emulator.set_exec_handler(lambda *_: {"deadline_exceeded": True})
    late = fly_api.post(url, json={"command": ["sleep", "inf"], "timeout": 5})
    assert late.status_code == 408 and late.json()["error"].startswith("deadline_exceeded")

    # A handler that takes longer than the request's timeout gets the same answer.
    fly_emulator.set_exec_handler(lambda *_: time.sleep(1.2) or {})
    slow = fly_api.post(url, json={"command": ["sleep", "2"], "timeout": 1})
    assert slow.status_code == 408 and slow.json()["error"].startswith("deadline_exceeded")

    # A canned answer over HTTP carries the signal too.
    canned = httpx.post(f"{fly_emulator.url}/__emulator/exec_result", json={"result": {"exit_signal": 15}})
    assert canned.status_code == 200
    assert fly_api.post(url, json={"command": ["true"]}).json() == {"exit_signal": 15}


def test_the_client_reports_a_signal_and_names_the_exec_timeout(fly_emulator, meta_app) -> None:
    machine = configured(FlyMachineProvider(), fly_emulator).create(machine_props(meta_app))
    with FlyClient(FlySettings(fly_emulator.url, "test", "config")) as fly:
        fly_emulator.set_exec_handler(lambda *_: {"exit_signal": 9})
        killed = fly.exec_machine(meta_app, machine.id, ["sleep", "1"])
        assert (killed["exit_code"], killed["exit_signal"]) == (0, 9)
        assert exec_failure(killed) == "killed by signal 9 (SIGKILL)"

        fly_emulator.set_exec_handler(lambda *_: {})
        assert exec_failure(fly.exec_machine(meta_app, machine.id, ["true"])) is None

        fly_emulator.set_exec_handler(lambda *_: {"deadline_exceeded": True})
        before = len(fly_emulator.exec_log())
        with pytest.raises(FlyError, match="exec timeout of 7s") as caught:
            fly.exec_machine(meta_app, machine.id, ["sleep", "inf"], timeout_s=7)
        assert machine.id in str(caught.value) and "deadline_exceeded" in str(caught.value)
        assert len(fly_emulator.exec_log()) == before + 1  # run once, never sent again


def test_rls_sql_killed_by_a_signal_or_cut_off_by_the_timeout_fails(fly_emulator, meta_app) -> None:
    machine = configured(FlyMachineProvider(), fly_emulator).create(machine_props(meta_app))
    provider = configured(FlyExecProvider(), fly_emulator)
    props = {"app": meta_app, "machine_id": machine.id, "command": ["psql", "-c", "select 1"], "description": "RLS"}

    fly_emulator.set_exec_handler(lambda *_: {"exit_signal": 9, "stderr": "Killed"})
    with pytest.raises(FlyError, match=r"RLS failed on devenv-acme-erp-meta \(killed by signal 9 \(SIGKILL\)\)"):
        provider.create(props)

    fly_emulator.set_exec_handler(lambda *_: {"deadline_exceeded": True})
    with pytest.raises(
        FlyError, match="RLS on devenv-acme-erp-meta: the command did not finish within its exec timeout"
    ):
        provider.create({**props, "timeout_s": 30})


def test_a_backup_flush_killed_by_a_signal_or_the_timeout_keeps_the_machine(fly_emulator, meta_app) -> None:
    provider = configured(FlyMachineProvider(), fly_emulator)
    created = provider.create(machine_props(meta_app, pre_stop_exec=FLUSH))

    fly_emulator.set_exec_handler(lambda *_: {"exit_signal": 9})
    with pytest.raises(FlyError, match=r"killed by signal 9 .*the machine was not deleted"):
        provider.delete(created.id, created.outs)
    assert created.id in fly_emulator.snapshot()["machines"]

    fly_emulator.set_exec_handler(lambda *_: {"deadline_exceeded": True})
    with pytest.raises(FlyError, match=r"exec timeout of 300s.*the machine was not deleted"):
        provider.delete(created.id, created.outs)
    assert created.id in fly_emulator.snapshot()["machines"]

    fly_emulator.set_exec_handler(None)
    provider.delete(created.id, created.outs)
    assert created.id not in fly_emulator.snapshot()["machines"]
    assert [e["cmd"] for e in fly_emulator.exec_log()] == [FLUSH, FLUSH, FLUSH]
