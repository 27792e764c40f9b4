"""Machine states as Fly has them: the persistent `failed` state, and what a refresh calls drift.

- `failed` ("Machine encountered an error and could not start successfully", Fly docs machine-states)
  stays until someone acts. The emulator puts a machine there with `fail_machine` and treats it as Fly
  does; the machine provider starts a failed machine that is wanted started (stops one wanted stopped),
  a refresh reports it, and the readiness gate fails at once with the machine's last events instead of
  spending its timeout.
- A resting (stopped) machine whose services auto-stop is drift only when it is wanted started and its
  services do not auto-stop; in a stopped silo a stopped machine is simply as wanted, and a started
  one is drift.
"""

from __future__ import annotations

import httpx
import pytest

from components.providers.fly.client import FlyClient
from components.providers.fly.errors import FlyError
from components.providers.fly.machines import FlyMachineProvider
from components.providers.fly.ready import FlyMachinesReadyProvider, entries
from components.providers.fly.settings import FlySettings
from emulators.fly import FlyEmulator, LatencyModel
from tests.fixtures.fly import visible_app
from tests.providers.test_fly_providers import FLY_TOML, configured, gate_props, machine_props

IMAGE = "registry-1.docker.io/library/busybox:1.36"
START = "/v1/apps/{app}/machines/{machine_id}/start"
STOP = "/v1/apps/{app}/machines/{machine_id}/stop"


@pytest.fixture
def meta_app(fly_api: httpx.Client) -> str:
    return visible_app(fly_api, "devenv-acme-erp-meta")


def calls_to(emulator: FlyEmulator, route: str) -> list[int]:
    return [c["status"] for c in emulator.calls() if c["route"] == route]


# -- the emulator ----------------------------------------------------------------------------------------
def test_a_failed_machine_on_the_emulator_behaves_as_on_fly(fly_api: httpx.Client, fly_emulator: FlyEmulator) -> None:
    fly_emulator.set_rate_limits(False)
    app = visible_app(fly_api)
    config = {"image": IMAGE, "checks": {"alive": {"type": "tcp", "port": 8080, "interval": "15s"}}}
    machine = fly_api.post(f"/apps/{app}/machines", json={"config": config}).json()
    url = f"/apps/{app}/machines/{machine['id']}"

    fly_emulator.fail_machine(app, machine["id"], exit_code=3)
    failed = fly_api.get(url).json()
    assert failed["state"] == "failed"
    # The newest event says why, as fly-go's MachineEvent.Request.ExitEvent carries it.
    event = failed["events"][0]
    assert (event["type"], event["status"]) == ("exit", "failed")
    assert event["request"]["exit_event"]["exit_code"] == 3
    assert {c["status"] for c in failed["checks"]} == {"critical"}
    # `failed` is a state to wait for; a wait for `started` runs into its deadline (flyctl issue #1760).
    waited = fly_api.get(f"{url}/wait", params={"state": "failed", "timeout": 5})
    assert waited.status_code == 200 and waited.json()["state"] == "failed"
    assert fly_api.get(f"{url}/wait", params={"state": "started", "timeout": 1}).status_code == 408
    assert fly_api.post(f"{url}/exec", json={"command": ["true"]}).status_code == 412

    # Start, stop and restart each take it out of `failed` (Fly docs machine-states: "may be recoverable").
    start = fly_api.post(f"{url}/start")
    assert start.status_code == 200 and start.json()["previous_state"] == "failed"
    assert fly_api.get(url).json()["state"] == "started"
    fly_emulator.fail_machine(app, machine["id"])
    assert fly_api.post(f"{url}/stop").status_code == 200
    assert fly_api.get(url).json()["state"] == "stopped"
    fly_api.post(f"{url}/start")
    fly_emulator.fail_machine(app, machine["id"])
    assert fly_api.post(f"{url}/restart").status_code == 200
    assert fly_api.get(url).json()["state"] == "started"

    # A machine that fails at every launch (a broken image or init) fails again after a start and after
    # an update, which relaunches it (flyctl deploy never skips the launch of a failed machine).
    fly_emulator.fail_machine(app, machine["id"], exit_code=127, every_start=True)
    fly_api.post(f"{url}/start")
    assert fly_api.get(url).json()["state"] == "failed"
    assert fly_api.post(url, json={"config": {**config, "env": {"A": "1"}}}).status_code == 200
    assert fly_api.get(url).json()["state"] == "failed"
    assert fly_api.get(url).json()["events"][0]["request"]["exit_event"]["exit_code"] == 127
    control = httpx.Client(base_url=f"{fly_emulator.url}/__emulator")
    assert control.post("/heal_machine", json={"app": app, "machine_id": machine["id"]}).status_code == 200
    fly_api.post(f"{url}/start")
    assert fly_api.get(url).json()["state"] == "started"

    # Over HTTP too; a failed machine is destroyed without force, as a stopped one is.
    answer = control.post("/fail_machine", json={"app": app, "machine_id": machine["id"], "exit_code": 2})
    assert answer.status_code == 200 and fly_api.get(url).json()["state"] == "failed"
    assert control.post("/fail_machine", json={"app": app, "machine_id": "nope"}).status_code == 400
    assert fly_api.delete(url).status_code == 200


# -- the providers ---------------------------------------------------------------------------------------
def test_a_failed_machine_is_reported_by_refresh_and_started_by_the_next_up(fly_emulator, meta_app) -> None:
    provider = configured(FlyMachineProvider(), fly_emulator)
    props = machine_props(meta_app)
    created = provider.create(props)
    fly_emulator.fail_machine(meta_app, created.id, exit_code=3)

    refreshed = provider.read(created.id, created.outs)
    assert refreshed.outs["state"] == "failed"
    assert refreshed.inputs["desired_state"] == refreshed.outs["desired_state"] == "failed"
    # The program still wants it started: the next `up` updates it, and the update starts it.
    assert provider.diff(created.id, refreshed.outs, props).changes
    fly_emulator.clear_calls()
    updated = provider.update(created.id, refreshed.outs, props)
    assert calls_to(fly_emulator, START) == [200]
    assert updated.outs["state"] == "started" and updated.outs["desired_state"] == "started"
    gate = configured(FlyMachinesReadyProvider(), fly_emulator)
    assert gate.create(gate_props((updated, "started"), timeout_s=60)).outs["states"] == {created.id: "started"}


def test_the_readiness_gate_fails_at_once_on_a_failed_machine_naming_its_last_events(fly_emulator, meta_app) -> None:
    provider = configured(FlyMachineProvider(), fly_emulator)
    created = provider.create(machine_props(meta_app))
    fly_emulator.fail_machine(meta_app, created.id, exit_code=3, every_start=True)
    restarted = provider.update(created.id, created.outs, machine_props(meta_app))  # started; fails again
    gate = configured(FlyMachinesReadyProvider(), fly_emulator)
    # The timeout is long: a gate that waited for `started` would fail only after it, with another message.
    with pytest.raises(FlyError, match="`failed` state") as caught:
        gate.create(gate_props((restarted, "started"), timeout_s=30))
    message = str(caught.value)
    assert meta_app in message and created.id in message and "exit code 3" in message
    # The machine stays tracked for the next `up`.
    assert created.id in fly_emulator.snapshot()["machines"]


def test_a_refresh_records_a_failed_machine_on_the_gate_so_the_next_up_waits_again(fly_emulator, meta_app) -> None:
    machines = configured(FlyMachineProvider(), fly_emulator)
    healthy = machines.create(machine_props(meta_app, name="healthy"))
    broken = machines.create(machine_props(meta_app, name="broken"))
    gate = configured(FlyMachinesReadyProvider(), fly_emulator)
    props = gate_props((healthy, "started"), (broken, "started"), timeout_s=30)
    ready = gate.create(props)
    assert gate.read(ready.id, ready.outs).outs == ready.outs  # nothing failed: nothing to report

    fly_emulator.fail_machine(meta_app, broken.id, exit_code=3, every_start=True)
    refreshed = gate.read(ready.id, ready.outs)
    assert [m["desired_state"] for m in entries(refreshed.inputs["machines"])] == ["started", "failed"]
    assert refreshed.outs["states"] == {healthy.id: "started", broken.id: "failed"}
    # The machine's version is unchanged, so only the recorded failure makes the next `up` wait again, and
    # that wait fails at once: the restarted machine failed again.
    assert gate.diff(ready.id, refreshed.outs, props).changes
    with pytest.raises(FlyError, match="exit code 3"):
        gate.update(ready.id, refreshed.outs, props)


def test_the_checks_poll_stops_when_the_machine_fails(fly_emulator, meta_app) -> None:
    # A machine that started and then failed (its checks still unreported) will pass no check.
    fly_emulator.set_latency(LatencyModel(check_pass_s=120))
    created = configured(FlyMachineProvider(), fly_emulator).create(machine_props(meta_app))
    fly_emulator.fail_machine(meta_app, created.id, exit_code=137)
    with (
        FlyClient(FlySettings(fly_emulator.url, "test", "config")) as fly,
        pytest.raises(FlyError, match=r"`failed` state.*exit code 137"),
    ):
        fly.wait_for_checks(meta_app, created.id, timeout_s=30)


def test_a_failed_machine_wanted_stopped_is_stopped(fly_emulator, meta_app) -> None:
    provider = configured(FlyMachineProvider(), fly_emulator)
    props = machine_props(meta_app, desired_state="stopped")
    created = provider.create(props)
    fly_emulator.fail_machine(meta_app, created.id)
    refreshed = provider.read(created.id, created.outs)
    assert refreshed.inputs["desired_state"] == "failed"
    fly_emulator.clear_calls()
    stopped = provider.update(created.id, refreshed.outs, props)
    assert calls_to(fly_emulator, STOP) == [200] and calls_to(fly_emulator, START) == []
    gate = configured(FlyMachinesReadyProvider(), fly_emulator)
    assert gate.create(gate_props((stopped, "stopped"), timeout_s=30)).outs["states"] == {created.id: "stopped"}
    assert provider.read(created.id, stopped.outs).inputs["desired_state"] == "stopped"


NO_AUTOSTOP = FLY_TOML.replace('auto_stop_machines = "stop"', 'auto_stop_machines = "off"')


@pytest.mark.parametrize(
    ("fly_toml", "desired", "actual", "recorded"),
    [
        # A stopped silo: its resting machines are as wanted, autostop or not.
        (FLY_TOML, "stopped", "stopped", "stopped"),
        (NO_AUTOSTOP, "stopped", "stopped", "stopped"),
        # A running silo: Fly's proxy rests an idle auto-stopping machine; without autostop it is drift.
        (FLY_TOML, "started", "stopped", "started"),
        (NO_AUTOSTOP, "started", "stopped", "stopped"),
        # Started in a stopped silo, by hand or by a request through the proxy: drift, autostop or not.
        (FLY_TOML, "stopped", "started", "started"),
        (NO_AUTOSTOP, "stopped", "started", "started"),
    ],
)
def test_refresh_calls_a_resting_machine_drift_only_against_what_is_wanted(
    fly_emulator, meta_app, fly_toml: str, desired: str, actual: str, recorded: str
) -> None:
    provider = configured(FlyMachineProvider(), fly_emulator)
    created = provider.create(machine_props(meta_app, fly_toml=fly_toml, desired_state=desired))
    with FlyClient(FlySettings(fly_emulator.url, "by-hand", "env")) as fly:
        # A machine created to stay stopped was never launched ("created"); one that rests has run before.
        if fly.get_machine(meta_app, created.id)["state"] == "created":
            fly.start_machine(meta_app, created.id)
        if actual == "stopped":
            fly.wait(meta_app, created.id, "started", timeout_s=30)
            fly.stop_machine(meta_app, created.id)
        fly.wait(meta_app, created.id, actual, timeout_s=30)
    refreshed = provider.read(created.id, created.outs)
    assert refreshed.inputs["desired_state"] == recorded
    news = machine_props(meta_app, fly_toml=fly_toml, desired_state=desired)
    assert provider.diff(created.id, refreshed.outs, news).changes is (recorded != desired)
