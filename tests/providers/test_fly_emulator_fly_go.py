"""The emulator takes what the official Go client (fly-go's `flaps`, as flyctl uses it) sends, and answers in
shapes it decodes: unset fields arrive as "" or null, numbers fit its Go types, and the machine
endpoints it calls exist.
"""

from __future__ import annotations

import httpx
import pytest

from emulators.fly import FlyEmulator, LatencyModel
from tests.fixtures.fly import await_visible, visible_app

IMAGE = "registry-1.docker.io/library/busybox:1.36"
INT32_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1


@pytest.fixture(autouse=True)
def _no_rate_limits(fly_emulator: FlyEmulator) -> None:
    """These tests call the raw API faster than any client would; the limits have tests of their own."""
    fly_emulator.set_rate_limits(False)


def started(api: httpx.Client, app: str, config: dict | None = None) -> dict:
    machine = api.post(f"/apps/{app}/machines", json={"config": config or {"image": IMAGE}}).json()
    assert api.get(f"/apps/{app}/machines/{machine['id']}/wait", params={"state": "started"}).status_code == 200
    return machine


def test_an_app_create_answers_the_app_fly_go_decodes(fly_api: httpx.Client) -> None:
    # flaps.CreateAppRequest has no omitempty: network and app_role_id arrive as "".
    body = {"name": "devenv-acme-erp-kong", "org_slug": "acme", "network": "", "app_role_id": ""}
    created = fly_api.post("/apps", params={"wait": "true"}, json=body)
    assert created.status_code == 201, created.text
    app = created.json()
    # flaps.App: id, name, status, network, organization {name, slug, internal_numeric_id}.
    assert app["id"] and app["name"] == "devenv-acme-erp-kong" and app["status"] == "pending"
    assert app["network"] == "default"
    assert (app["organization"]["slug"], app["organization"]["name"]) == ("acme", "acme")
    # InternalNumericID is an int32 on both (flaps_apps.go): a larger number fails the whole decode.
    # (This name's and this org's ids were above 2**31 when they were 32 bits of a hash.)
    assert 0 <= app["internal_numeric_id"] <= INT32_MAX
    assert 0 <= app["organization"]["internal_numeric_id"] <= INT32_MAX
    await_visible(fly_api, "devenv-acme-erp-kong")
    read = fly_api.get("/apps/devenv-acme-erp-kong").json()
    assert read["internal_numeric_id"] == app["internal_numeric_id"] and read["organization"] == app["organization"]
    listed = fly_api.get("/apps", params={"org_slug": "acme"}).json()["apps"]
    assert all(0 <= a["internal_numeric_id"] <= INT32_MAX for a in listed)


def test_a_stopped_wait_needs_no_version(fly_api: httpx.Client) -> None:
    # flyctl's WaitForStartOrStop (internal/machine/wait.go) waits for "stopped" without a version.
    app = visible_app(fly_api)
    machine = started(fly_api, app)
    assert fly_api.post(f"/apps/{app}/machines/{machine['id']}/stop").status_code == 200
    waited = fly_api.get(f"/apps/{app}/machines/{machine['id']}/wait", params={"state": "stopped", "timeout": 10})
    assert waited.status_code == 200, waited.text
    assert waited.json()["state"] == "stopped"


def test_a_volume_create_without_a_size_is_refused_and_leaves_the_app_readable(fly_api: httpx.Client) -> None:
    # flaps: CreateVolumeRequest.SizeGb is a *int without omitempty, so an unset size arrives as null.
    app = visible_app(fly_api)
    unset = {"encrypted": None, "require_unique_zone": None, "snapshot_retention": None, "fstype": None}
    refused = fly_api.post(f"/apps/{app}/volumes", json={"name": "pg_data", "region": "yul", "size_gb": None, **unset})
    assert refused.status_code == 400 and "size_gb" in refused.json()["error"]
    assert fly_api.get(f"/apps/{app}/volumes").status_code == 200
    assert fly_api.get(f"/apps/{app}/volumes").json() == []


def test_ps_lists_the_processes_of_a_started_machine_in_fly_go_types(fly_api: httpx.Client) -> None:
    app = visible_app(fly_api)
    config = {
        "image": IMAGE,
        "init": {"cmd": ["sleep", "inf"]},
        "services": [{"protocol": "tcp", "internal_port": 8080, "ports": [{"port": 80}]}],
    }
    machine = started(fly_api, app, config)
    listed = fly_api.get(f"/apps/{app}/machines/{machine['id']}/ps")
    assert listed.status_code == 200, listed.text
    processes = listed.json()
    # fly-go MachinePsResponse: []ProcessStat {pid int32; stime, rtime, cpu, rss uint64; command, directory,
    # listen_sockets [{proto, address}]}.
    for process in processes:
        assert 0 < process["pid"] <= INT32_MAX
        assert all(0 <= process[k] <= UINT64_MAX for k in ("stime", "rtime", "cpu", "rss"))
        assert isinstance(process["command"], str) and isinstance(process["directory"], str)
    command = next(p for p in processes if p["command"] == "sleep inf")
    assert command["listen_sockets"] == [{"proto": "tcp", "address": "0.0.0.0:8080"}]

    fly_api.post(f"/apps/{app}/machines/{machine['id']}/stop")
    assert fly_api.get(f"/apps/{app}/machines/{machine['id']}/ps").status_code == 412


def test_signal_takes_the_specs_names_and_fly_gos_kill(fly_api: httpx.Client, fly_emulator: FlyEmulator) -> None:
    app = visible_app(fly_api)
    machine = started(fly_api, app)
    url = f"/apps/{app}/machines/{machine['id']}"
    # The spec's SignalRequest names the signal.
    assert fly_api.post(f"{url}/signal", json={"signal": "SIGUSR1"}).status_code == 200
    assert fly_api.get(url).json()["events"][0]["type"] == "signal"
    assert fly_api.post(f"{url}/signal", json={"signal": "SIGNOPE"}).status_code == 400
    # fly-go's Kill sends {"signal": 9}: the process dies, and the default restart policy starts it again.
    fly_emulator.set_latency(LatencyModel(boot_s=60))
    assert fly_api.post(f"{url}/signal", json={"signal": 9}).status_code == 200
    assert fly_api.get(url).json()["state"] == "restarting"
    fly_emulator.set_latency(LatencyModel())

    # With restart policy "no" a killed machine stays stopped.
    once = started(fly_api, app, {"image": IMAGE, "restart": {"policy": "no"}})
    assert fly_api.post(f"/apps/{app}/machines/{once['id']}/signal", json={"signal": 9}).status_code == 200
    assert fly_api.get(f"/apps/{app}/machines/{once['id']}").json()["state"] == "stopped"
    # Nothing runs in a stopped machine to signal.
    refused = fly_api.post(f"/apps/{app}/machines/{once['id']}/signal", json={"signal": "SIGTERM"})
    assert refused.status_code == 412
