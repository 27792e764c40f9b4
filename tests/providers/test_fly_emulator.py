"""The Fly Machines API emulator over real HTTP: the rules the Fly client and providers rely on.

Each test talks to a real server on 127.0.0.1 through httpx, the way FlyClient does.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest

from emulators.fly import FlyEmulator, LatencyModel
from tests.fixtures.fly import await_visible, visible_app

IMAGE = "registry-1.docker.io/library/busybox:1.36"
WAIT_RANGE_ERROR = "invalid_argument: invalid WaitMachineRequest.Timeout: value must be inside range [1s, 1m0s]"


@pytest.fixture(autouse=True)
def _rate_limits_only_where_tested(request: pytest.FixtureRequest) -> None:
    """These tests call the raw API far faster than any client, to check one rule at a time; the rate
    limits (on by default) get tests of their own, which switch them back on."""
    if "fly_emulator" in request.fixturenames:
        request.getfixturevalue("fly_emulator").set_rate_limits(False)


def make_app(api: httpx.Client, name: str = "devenv-acme-erp-pg", org: str = "acme") -> str:
    """Create an app and read it until it is visible (a new app answers 404, then 401, at first)."""
    return visible_app(api, name, org)


def make_machine(api: httpx.Client, app: str, **body: object) -> dict:
    config = body.pop("config", None) or {"image": IMAGE}
    response = api.post(f"/apps/{app}/machines", json={"config": config, **body})
    assert response.status_code == 200, response.text
    return response.json()


def make_volume(api: httpx.Client, app: str, name: str = "pg_data", region: str = "yul", **body: object) -> dict:
    response = api.post(f"/apps/{app}/volumes", json={"name": name, "region": region, "size_gb": 3, **body})
    assert response.status_code == 200, response.text
    return response.json()


# -- auth, request ids ------------------------------------------------------------------------------


def test_auth_schemes_and_request_ids(fly_emulator) -> None:
    url = fly_emulator.url + "/v1/apps?org_slug=acme"
    missing = httpx.get(url)
    assert missing.status_code == 401
    assert missing.json() == {"error": "Authenticate: token validation error"}
    assert missing.headers["fly-request-id"]
    for header in ("Bearer anything", "FlyV1 fm2_macaroon"):
        ok = httpx.get(url, headers={"Authorization": header})
        assert ok.status_code == 200 and ok.json() == {"total_apps": 0, "apps": []}
        assert ok.headers["fly-request-id"]
    assert httpx.get(url, headers={"Authorization": "Basic x"}).status_code == 401
    # Each answer gets its own request id.
    ids = {httpx.get(url, headers={"Authorization": "Bearer t"}).headers["fly-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_configured_token_is_required() -> None:
    with FlyEmulator(token="right") as emulator:
        url = emulator.url + "/v1/apps?org_slug=acme"
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer right"}).status_code == 200
        assert httpx.get(url, headers={"Authorization": "FlyV1 right"}).status_code == 200


# -- apps -------------------------------------------------------------------------------------------


def test_app_create_get_list_delete(fly_api, fly_emulator) -> None:
    created = fly_api.post("/apps", json={"name": "devenv-acme-erp-kong", "org_slug": "acme", "network": "n1"})
    assert created.status_code == 201 and created.json()["id"]
    await_visible(fly_api, "devenv-acme-erp-kong")
    make_app(fly_api, "devenv-acme-erp-rest")  # the docs' `app_name` spelling works too
    make_app(fly_api, "other-org-app", org="other")
    app = fly_api.get("/apps/devenv-acme-erp-kong").json()
    assert app["organization"]["slug"] == "acme" and app["network"] == "n1" and app["machine_count"] == 0
    listed = fly_api.get("/apps", params={"org_slug": "acme"}).json()
    assert listed["total_apps"] == 2
    assert sorted(a["name"] for a in listed["apps"]) == ["devenv-acme-erp-kong", "devenv-acme-erp-rest"]
    assert fly_api.get("/apps").status_code == 400  # org_slug is required

    # Deleting an app takes its machines, volumes, IPs and secrets with it.
    volume = make_volume(fly_api, "devenv-acme-erp-kong")
    make_machine(
        fly_api, "devenv-acme-erp-kong", config={"image": IMAGE, "mounts": [{"volume": volume["id"], "path": "/data"}]}
    )
    fly_api.post("/apps/devenv-acme-erp-kong/secrets", json={"values": {"K": "v"}})
    fly_api.post("/apps/devenv-acme-erp-kong/ip_assignments", json={"type": "v6"})
    assert fly_api.delete("/apps/devenv-acme-erp-kong", params={"force": "true"}).status_code == 202
    gone = fly_api.get("/apps/devenv-acme-erp-kong")
    assert gone.status_code == 404 and gone.json() == {"error": "not found"}
    snap = fly_emulator.snapshot()
    assert "devenv-acme-erp-kong" not in snap["apps"]
    assert not snap["machines"] and not snap["volumes"]
    assert not snap["ips"].get("devenv-acme-erp-kong") and not snap["secrets"].get("devenv-acme-erp-kong")
    assert fly_api.delete("/apps/devenv-acme-erp-kong").status_code == 404


@pytest.mark.parametrize("name", ["Bad_Name", "-leading", "trailing-", "a" * 64, "dots.not.allowed"])
def test_app_name_rules(fly_api, name: str) -> None:
    response = fly_api.post("/apps", json={"name": name, "org_slug": "acme"})
    assert response.status_code == 422
    assert name in response.json()["error"]


def test_app_create_requires_name_and_org(fly_api) -> None:
    assert "app_name" in fly_api.post("/apps", json={"org_slug": "acme"}).json()["error"]
    assert "org_slug" in fly_api.post("/apps", json={"name": "ok-name"}).json()["error"]
    assert fly_api.post("/apps", content=b"{not json").status_code == 400


def test_app_names_are_global_and_foreign_apps_are_forbidden(fly_api, fly_emulator) -> None:
    fly_emulator.add_foreign_app("devenv-acme-erp-auth", "someone-else")
    taken = fly_api.post("/apps", json={"name": "devenv-acme-erp-auth", "org_slug": "acme"})
    assert taken.status_code == 422
    assert taken.json() == {"error": "Name has already been taken", "status": "name_taken"}
    # 403, not 404: the name exists but belongs to another org.
    assert fly_api.get("/apps/devenv-acme-erp-auth").status_code == 403
    assert fly_api.get("/apps/devenv-acme-erp-auth/machines").status_code == 403
    assert fly_api.get("/apps", params={"org_slug": "someone-else"}).json()["total_apps"] == 0
    # Our own existing app collides the same way.
    make_app(fly_api, "devenv-acme-erp-meta")
    again = fly_api.post("/apps", json={"name": "devenv-acme-erp-meta", "org_slug": "acme"})
    assert (again.status_code, again.json()["status"]) == (422, "name_taken")


# -- machines ---------------------------------------------------------------------------------------


def test_machine_lifecycle_with_waits(fly_api, fly_emulator) -> None:
    app = make_app(fly_api)
    fly_emulator.set_latency(LatencyModel(boot_s=5))
    machine = make_machine(fly_api, app, name="pg-1", region="ams")
    mid, version = machine["id"], machine["instance_id"]
    assert machine["state"] == "starting" and machine["region"] == "ams"
    assert len(version) == 26 and machine["private_ip"].startswith("fdaa:")
    wait = f"/apps/{app}/machines/{mid}/wait"

    booting = fly_api.get(wait, params={"state": "started", "timeout": 1})
    assert booting.status_code == 408 and booting.json()["error"].startswith("deadline_exceeded")
    too_long = fly_api.get(wait, params={"state": "started", "timeout": 61})
    assert too_long.status_code == 400 and too_long.json()["error"] == WAIT_RANGE_ERROR
    assert fly_api.get(wait, params={"timeout": 0}).json()["error"] == WAIT_RANGE_ERROR
    # A stopped wait needs no version (flyctl's WaitForStartOrStop sends none): this one just times out.
    no_version = fly_api.get(wait, params={"state": "stopped", "timeout": 1})
    assert no_version.status_code == 408, no_version.text

    started = fly_api.get(wait, params={"state": "started", "timeout": 60})
    assert started.status_code == 200
    assert started.json()["ok"] is True and started.json()["state"] == "started"
    assert fly_api.get(f"/apps/{app}/machines/{mid}").json()["state"] == "started"

    fly_emulator.set_latency(LatencyModel())
    assert (
        fly_api.post(f"/apps/{app}/machines/{mid}/stop", json={"signal": "SIGTERM", "timeout": "5s"}).status_code == 200
    )
    stopped = fly_api.get(wait, params={"state": "stopped", "version": version, "timeout": 10})
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
    assert fly_api.get(wait, params={"state": "stopped", "timeout": 10}).json()["state"] == "stopped"
    assert fly_api.post(f"/apps/{app}/machines/{mid}/stop", json={"signal": "SIGFOO"}).status_code == 400
    start = fly_api.post(f"/apps/{app}/machines/{mid}/start")
    assert start.status_code == 200 and start.json()["previous_state"] == "stopped"
    again = fly_api.post(f"/apps/{app}/machines/{mid}/start")
    assert again.status_code == 412 and "'started'" in again.json()["error"]

    # A started machine is only destroyed with force (or kill).
    refused = fly_api.delete(f"/apps/{app}/machines/{mid}")
    assert refused.status_code == 412 and "failed_precondition" in refused.json()["error"]
    assert fly_api.delete(f"/apps/{app}/machines/{mid}", params={"force": "true"}).status_code == 200
    assert fly_api.get(wait, params={"state": "destroyed", "timeout": 5}).status_code == 200
    assert fly_api.get(f"/apps/{app}/machines/{mid}").status_code == 404
    deleted = fly_api.get(f"/apps/{app}/machines/{mid}", params={"include_deleted": "true"})
    assert deleted.json()["state"] == "destroyed"
    assert fly_api.get(f"/apps/{app}/machines").json() == []
    assert [m["id"] for m in fly_api.get(f"/apps/{app}/machines", params={"include_deleted": "true"}).json()] == [mid]
    assert fly_api.get(f"/apps/{app}/machines/nope/wait", params={"state": "destroyed"}).status_code == 200
    assert fly_api.get(f"/apps/{app}/machines/nope/wait").status_code == 404
    assert mid not in fly_emulator.snapshot()["machines"]


def test_machine_create_validation(fly_api, fly_emulator) -> None:
    app = make_app(fly_api)
    no_image = fly_api.post(f"/apps/{app}/machines", json={"config": {"env": {"A": "1"}}})
    assert no_image.status_code == 400 and "config.image" in no_image.json()["error"]
    assert fly_api.post(f"/apps/{app}/machines", json={}).status_code == 400
    bad_autostart = {"image": IMAGE, "services": [{"internal_port": 80, "protocol": "tcp", "autostart": "true"}]}
    response = fly_api.post(f"/apps/{app}/machines", json={"config": bad_autostart})
    assert response.status_code == 400 and "autostart" in response.json()["error"]
    assert (
        fly_api.post(
            f"/apps/{app}/machines", json={"config": {"image": IMAGE, "guest": {"memory_mb": 300}}}
        ).status_code
        == 400
    )
    # Unknown fields are ignored, as Fly does.
    assert (
        fly_api.post(f"/apps/{app}/machines", json={"config": {"image": IMAGE}, "future_field": 1}).status_code == 200
    )
    assert fly_api.post("/apps/missing-app/machines", json={"config": {"image": IMAGE}}).status_code == 404

    # Names are unique per app among live machines (including one still being destroyed).
    fly_emulator.set_latency(LatencyModel(destroy_s=60))
    first = make_machine(fly_api, app, name="kong-1")
    dup = fly_api.post(f"/apps/{app}/machines", json={"name": "kong-1", "config": {"image": IMAGE}})
    assert dup.status_code == 422 and first["id"] in dup.json()["error"]
    fly_api.delete(f"/apps/{app}/machines/{first['id']}", params={"kill": "true"})
    assert fly_api.get(f"/apps/{app}/machines/{first['id']}").json()["state"] == "destroying"
    assert fly_api.post(f"/apps/{app}/machines", json={"name": "kong-1", "config": {"image": IMAGE}}).status_code == 422
    # Another app may use the same machine name.
    other = make_app(fly_api, "devenv-acme-erp-rest")
    assert make_machine(fly_api, other, name="kong-1")["name"] == "kong-1"


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"services": [{"internal_port": 8080.0, "protocol": "tcp"}]}, "config.services[0].internal_port"),
        (
            {"services": [{"internal_port": 80, "protocol": "tcp", "ports": [{"port": "443"}]}]},
            "config.services[0].ports[0].port",
        ),
        ({"guest": {"cpu_kind": "shared", "cpus": 1.0, "memory_mb": 256}}, "config.guest.cpus"),
        ({"checks": {"status": {"type": "http", "port": 5500.0}}}, "config.checks.status.port"),
    ],
)
def test_float_and_string_integers_are_refused_like_go_json(fly_api, config: dict, path: str) -> None:
    # Numbers from the Pulumi engine arrive as floats; Fly (Go) refuses 8080.0 for an int field.
    app = make_app(fly_api)
    response = fly_api.post(f"/apps/{app}/machines", json={"config": {"image": IMAGE, **config}})
    assert response.status_code == 400 and path in response.json()["error"]


def test_head_is_a_read(fly_api) -> None:
    app = make_app(fly_api)
    assert fly_api.head(f"/apps/{app}").status_code == 200
    assert fly_api.get(f"/apps/{app}").status_code == 200


def test_skip_launch_and_autostop_forms(fly_api) -> None:
    app = make_app(fly_api)
    services = [
        {"internal_port": 80, "protocol": "tcp", "autostop": "stop", "autostart": True},
        {"internal_port": 81, "protocol": "tcp", "autostop": "off"},
        {"internal_port": 82, "protocol": "tcp", "autostop": "suspend"},
        {"internal_port": 83, "protocol": "tcp", "autostop": True},
    ]
    machine = make_machine(fly_api, app, skip_launch=True, config={"image": IMAGE, "services": services})
    assert machine["state"] == "created"
    assert [s["autostop"] for s in machine["config"]["services"]] == [True, False, "suspend", True]
    bad = fly_api.post(
        f"/apps/{app}/machines",
        json={
            "config": {"image": IMAGE, "services": [{"internal_port": 80, "protocol": "tcp", "autostop": "sometimes"}]}
        },
    )
    assert bad.status_code == 400 and "services[0].autostop" in bad.json()["error"]


def test_update_replaces_config_and_keeps_versions(fly_api, fly_emulator) -> None:
    app = make_app(fly_api)
    volume = make_volume(fly_api, app)
    config = {"image": IMAGE, "env": {"A": "1"}, "mounts": [{"volume": volume["id"], "path": "/data"}]}
    machine = make_machine(fly_api, app, name="pg-1", config=config)
    url = f"/apps/{app}/machines/{machine['id']}"
    new_config = {**config, "env": {"B": "2"}}
    updated = fly_api.post(url, json={"config": new_config})
    assert updated.status_code == 200
    body = updated.json()
    assert body["config"]["env"] == {"B": "2"}  # whole-config replace, no merge
    assert len(body["instance_id"]) == 26 and body["instance_id"] != machine["instance_id"]
    versions = fly_api.get(f"{url}/versions").json()
    assert [v["version"] for v in versions] == [body["instance_id"], machine["instance_id"]]
    assert versions[1]["user_config"]["env"] == {"A": "1"}

    for change, key in (({"region": "ams"}, "region"), ({"name": "pg-2"}, "name")):
        refused = fly_api.post(url, json={"config": new_config, **change})
        assert refused.status_code == 400 and key in refused.json()["error"]
    other = make_volume(fly_api, app, "pg_data2")
    moved = fly_api.post(url, json={"config": {**config, "mounts": [{"volume": other["id"], "path": "/data"}]}})
    assert moved.status_code == 400 and "mount" in moved.json()["error"]
    unmounted = fly_api.post(url, json={"config": {"image": IMAGE}})
    assert unmounted.status_code == 400
    assert fly_api.post(url, json={"config": {"env": {}}}).status_code == 400

    # A stopped machine stays stopped with skip_launch, and starts without it.
    fly_api.post(f"{url}/stop")
    kept = fly_api.post(url, json={"config": new_config, "skip_launch": True})
    assert kept.json()["state"] == "stopped"
    fly_emulator.set_latency(LatencyModel(boot_s=60))
    restarted = fly_api.post(url, json={"config": new_config})
    assert restarted.json()["state"] == "starting"


def test_list_filters_and_summary(fly_api) -> None:
    app = make_app(fly_api)
    tagged = make_machine(fly_api, app, config={"image": IMAGE, "metadata": {"urn": "x1", "fly_process_group": "app"}})
    make_machine(fly_api, app, config={"image": IMAGE, "metadata": {"urn": "x2"}})
    stopped = make_machine(fly_api, app, skip_launch=True)
    machines = f"/apps/{app}/machines"
    assert [m["id"] for m in fly_api.get(machines, params={"metadata.urn": "x1"}).json()] == [tagged["id"]]
    assert fly_api.get(machines, params={"metadata.urn": "nope"}).json() == []
    assert [m["id"] for m in fly_api.get(machines, params={"state": "created"}).json()] == [stopped["id"]]
    assert len(fly_api.get(machines, params={"state": "started,created"}).json()) == 3
    summary = fly_api.get(machines, params={"summary": "true"}).json()
    assert all("config" not in m and "checks" not in m for m in summary)
    assert fly_api.get(f"{machines}/{tagged['id']}/metadata").json() == {"urn": "x1", "fly_process_group": "app"}


def test_checks_follow_the_latency_model(fly_api, fly_emulator) -> None:
    app = make_app(fly_api)
    config = {
        "image": IMAGE,
        "checks": {"status": {"type": "http", "port": 5500, "path": "/status"}},
        "services": [
            {"internal_port": 8080, "protocol": "tcp", "checks": [{"type": "http", "path": "/"}, {"type": "tcp"}]}
        ],
    }
    fly_emulator.set_latency(LatencyModel(check_pass_s=120))
    machine = make_machine(fly_api, app, config=config)
    url = f"/apps/{app}/machines/{machine['id']}"
    assert fly_api.get(url).json()["checks"] == []  # no reports yet for a fresh machine
    checks = {c["name"]: c["status"] for c in fly_api.get(url).json()["checks"]}
    assert checks == {
        "status": "warning",
        "servicecheck-00-http-8080": "warning",
        "servicecheck-01-tcp-8080": "warning",
    }
    fly_emulator.set_check_status(app, machine["id"], "critical")
    assert {c["status"] for c in fly_api.get(url).json()["checks"]} == {"critical"}
    fly_emulator.set_latency(LatencyModel(check_pass_s=0))
    fly_emulator.set_check_status(app, machine["id"], None)
    assert {c["status"] for c in fly_api.get(url).json()["checks"]} == {"passing"}


# -- leases -----------------------------------------------------------------------------------------


def test_leases_guard_mutations(fly_api) -> None:
    app = make_app(fly_api)
    machine = make_machine(fly_api, app)
    url = f"/apps/{app}/machines/{machine['id']}"
    acquired = fly_api.post(f"{url}/lease", json={"ttl": 60, "description": "pulumi"})
    assert acquired.status_code == 200
    envelope = acquired.json()
    assert envelope["status"] == "success"
    lease = envelope["data"]
    assert {"nonce", "expires_at", "owner", "description", "version"} <= set(lease)
    assert lease["version"] == machine["instance_id"]
    nonce = {"fly-machine-lease-nonce": lease["nonce"]}

    assert fly_api.post(f"{url}/lease", json={"ttl": 60}).status_code == 409
    blocked = fly_api.post(f"{url}/stop")
    assert blocked.status_code == 409 and "lease currently held" in blocked.json()["error"]
    wrong = fly_api.post(f"{url}/stop", headers={"fly-machine-lease-nonce": "not-it"})
    assert wrong.status_code == 409
    assert fly_api.delete(url, params={"force": "true"}).status_code == 409
    assert fly_api.post(f"{url}/stop", headers=nonce).status_code == 200
    assert fly_api.post(f"{url}/lease", json={"ttl": 60}, headers=nonce).status_code == 200  # refresh
    assert fly_api.delete(f"{url}/lease").status_code == 400  # the nonce is required to release
    assert fly_api.delete(f"{url}/lease", headers=nonce).status_code == 200
    assert fly_api.get(f"{url}/lease").status_code == 404
    assert fly_api.post(f"{url}/start").status_code == 200


def test_create_with_lease_ttl_returns_a_nonce_and_leases_expire(fly_api) -> None:
    app = make_app(fly_api)
    machine = make_machine(fly_api, app, lease_ttl=1)
    assert machine["nonce"]
    url = f"/apps/{app}/machines/{machine['id']}"
    assert fly_api.post(f"{url}/stop").status_code == 409
    assert fly_api.get(url).json().get("nonce") is None  # only the create answer carries it
    for _ in range(100):  # bounded poll until the 1 s lease has expired
        if fly_api.get(f"{url}/lease").status_code == 404:
            break
        time.sleep(0.1)
    assert fly_api.post(f"{url}/stop").status_code == 200


# -- volumes ----------------------------------------------------------------------------------------


def test_volume_create_rules_and_defaults(fly_api) -> None:
    app = make_app(fly_api)
    for body, key in (
        ({"region": "yul"}, "name"),
        ({"name": "PG-data", "region": "yul"}, "name"),
        ({"name": "a" * 31, "region": "yul"}, "name"),
        ({"name": "pg_data"}, "region"),
        ({"name": "pg_data", "region": "yul", "size_gb": 1, "snapshot_retention": 61}, "snapshot_retention"),
        ({"name": "pg_data", "region": "yul", "size_gb": 0}, "size_gb"),
        # fly-go sends an unset size as null (CreateVolumeRequest.SizeGb *int, no omitempty).
        ({"name": "pg_data", "region": "yul", "size_gb": None}, "size_gb"),
        ({"name": "pg_data", "region": "yul"}, "size_gb"),
    ):
        response = fly_api.post(f"/apps/{app}/volumes", json=body)
        assert response.status_code == 400 and key in response.json()["error"], body
    # Refused creates stored nothing: the app's volumes still list (a stored null size made this a 500).
    assert fly_api.get(f"/apps/{app}/volumes").json() == []
    # fly-go's other unset fields are nulls too: the defaults.
    unset = {"encrypted": None, "snapshot_retention": None, "fstype": None, "snapshot_id": None, "compute": None}
    volume = make_volume(fly_api, app, **unset)
    assert volume["id"].startswith("vol_")
    assert (volume["size_gb"], volume["encrypted"], volume["state"], volume["region"]) == (3, True, "created", "yul")
    assert (volume["snapshot_retention"], volume["fstype"]) == (5, "ext4")
    assert [v["id"] for v in fly_api.get(f"/apps/{app}/volumes").json()] == [volume["id"]]
    # Only snapshot_retention and auto_backup_enabled change in place; other fields are ignored.
    url = f"/apps/{app}/volumes/{volume['id']}"
    updated = fly_api.put(url, json={"snapshot_retention": 10, "auto_backup_enabled": False, "size_gb": 50}).json()
    assert (updated["snapshot_retention"], updated["auto_backup_enabled"], updated["size_gb"]) == (10, False, 3)
    assert fly_api.put(url, json={"snapshot_retention": 0}).status_code == 400


def test_volume_attach_extend_and_delete(fly_api, fly_emulator) -> None:
    app = make_app(fly_api)
    volume = make_volume(fly_api, app, region="ams", size_gb=1)
    vurl = f"/apps/{app}/volumes/{volume['id']}"
    mount = {"image": IMAGE, "mounts": [{"volume": volume["id"], "path": "/data"}]}

    wrong_region = fly_api.post(f"/apps/{app}/machines", json={"region": "yul", "config": mount})
    assert wrong_region.status_code == 400 and "region" in wrong_region.json()["error"]
    missing = fly_api.post(
        f"/apps/{app}/machines", json={"config": {**mount, "mounts": [{"volume": "vol_missing", "path": "/data"}]}}
    )
    assert missing.status_code == 400 and "vol_missing" in missing.json()["error"]
    machine = make_machine(fly_api, app, config=mount)  # region follows the volume
    assert machine["region"] == "ams"
    assert fly_api.get(vurl).json()["attached_machine_id"] == machine["id"]
    second = fly_api.post(f"/apps/{app}/machines", json={"config": mount})
    assert second.status_code == 422 and machine["id"] in second.json()["error"]

    refused = fly_api.delete(vurl)
    assert refused.status_code == 412 and machine["id"] in refused.json()["error"]
    assert fly_api.put(f"{vurl}/extend", json={"size_gb": 1}).status_code == 400
    assert fly_api.put(f"{vurl}/extend", json={"size_gb": 0}).status_code == 400
    grown = fly_api.put(f"{vurl}/extend", json={"size_gb": 5})
    assert grown.status_code == 200
    assert grown.json()["volume"]["size_gb"] == 5 and grown.json()["needs_restart"] is True

    # Destroying the machine detaches the volume only once it is destroyed.
    fly_emulator.set_latency(LatencyModel(volume_destroy_s=0))
    fly_api.delete(f"/apps/{app}/machines/{machine['id']}", params={"force": "true"})
    wait = fly_api.get(f"/apps/{app}/machines/{machine['id']}/wait", params={"state": "destroyed", "timeout": 30})
    assert wait.status_code == 200
    assert fly_api.get(vurl).json()["attached_machine_id"] is None
    deleted = fly_api.delete(vurl)
    assert deleted.status_code == 200 and deleted.json()["state"] == "destroyed"
    assert fly_api.get(vurl).status_code == 404  # volume_destroy_s=0: gone at once
    assert volume["id"] not in fly_emulator.snapshot()["volumes"]


# -- secrets ----------------------------------------------------------------------------------------


def test_secrets_digests_and_versions(fly_api, fly_emulator) -> None:
    app = make_app(fly_api)
    secrets_url = f"/apps/{app}/secrets"
    first = fly_api.post(secrets_url, json={"values": {"POSTGRES_PASSWORD": "p1", "JWT_SECRET": "j1"}})
    assert first.status_code == 200 and first.json()["version"] == 1
    listed = fly_api.get(secrets_url, params={"min_version": 1})
    digests = {s["name"]: s["digest"] for s in listed.json()["secrets"]}
    assert digests == {
        "JWT_SECRET": hashlib.sha256(b"j1").hexdigest()[:16],
        "POSTGRES_PASSWORD": hashlib.sha256(b"p1").hexdigest()[:16],
    }
    assert "p1" not in listed.text and "j1" not in listed.text
    assert all({"created_at", "updated_at"} <= set(s) for s in listed.json()["secrets"])

    second = fly_api.post(secrets_url, json={"values": {"POSTGRES_PASSWORD": "p2", "JWT_SECRET": None}})
    assert second.json()["version"] == 2
    assert [s["name"] for s in second.json()["secrets"]] == ["POSTGRES_PASSWORD"]
    assert fly_emulator.snapshot()["secrets"][app] == {"POSTGRES_PASSWORD": hashlib.sha256(b"p2").hexdigest()[:16]}
    deleted = fly_api.delete(f"{secrets_url}/POSTGRES_PASSWORD")
    assert deleted.status_code == 200 and deleted.json() == {"version": 3}
    assert fly_api.delete(f"{secrets_url}/POSTGRES_PASSWORD").status_code == 404
    assert fly_api.get(secrets_url, params={"min_version": 3}).json() == {"secrets": []}
    bad = fly_api.post(secrets_url, json={"values": {"bad-name": "x"}})
    assert bad.status_code == 400 and "bad-name" in bad.json()["error"]
    assert fly_api.post(secrets_url, json={"values": {"N": 5}}).status_code == 400
    assert fly_api.post(secrets_url, json={}).status_code == 400

    # A machine create can demand at least a secrets version.
    too_new = fly_api.post(f"/apps/{app}/machines", json={"config": {"image": IMAGE}, "min_secrets_version": 4})
    assert too_new.status_code == 422 and "min_secrets_version" in too_new.json()["error"]
    assert (
        fly_api.post(f"/apps/{app}/machines", json={"config": {"image": IMAGE}, "min_secrets_version": 3}).status_code
        == 200
    )


# -- IP assignments ---------------------------------------------------------------------------------


def test_ip_assignments(fly_api, fly_emulator) -> None:
    app = make_app(fly_api)
    other = make_app(fly_api, "devenv-acme-erp-kong")
    ips_url = f"/apps/{app}/ip_assignments"
    v6 = fly_api.post(ips_url, json={"type": "v6"}).json()
    assert v6["ip"].startswith("2a09:8280:1::") and v6["shared"] is False
    shared = fly_api.post(ips_url, json={"type": "shared_v4"}).json()
    assert shared["ip"].startswith("66.241.124.") and shared["shared"] is True
    assert fly_api.post(f"/apps/{other}/ip_assignments", json={"type": "shared_v4"}).json()["ip"] == shared["ip"]
    flycast = fly_api.post(ips_url, json={"type": "private_v6", "region": "yul", "org_slug": "acme"}).json()
    assert flycast["ip"].startswith("fdaa:") and flycast["region"] == "yul"
    assert set(flycast) == {"ip", "region", "service_name", "shared", "created_at"}
    bad = fly_api.post(ips_url, json={"type": "v5"})
    assert bad.status_code == 400 and "v5" in bad.json()["error"]
    listed = [ip["ip"] for ip in fly_api.get(ips_url).json()["ips"]]
    assert listed == [v6["ip"], shared["ip"], flycast["ip"]]
    assert fly_api.delete(f"{ips_url}/{flycast['ip']}").status_code == 204
    assert fly_api.delete(f"{ips_url}/{flycast['ip']}").status_code == 404
    assert [ip["ip"] for ip in fly_emulator.snapshot()["ips"][app]] == [v6["ip"], shared["ip"]]


# -- test control: faults, calls, rate limits --------------------------------------------------------


def test_fault_injection_plain_nth_and_times(fly_api, fly_emulator) -> None:
    fly_emulator.fail("POST", "/v1/apps", status=500)
    failed = fly_api.post("/apps", json={"name": "app-one", "org_slug": "acme"})
    assert failed.status_code == 500 and failed.json()["error"] and failed.headers["fly-request-id"]
    assert "app-one" not in fly_emulator.snapshot()["apps"]  # no side effect
    make_app(fly_api, "app-one")

    fly_emulator.fail("GET", "/v1/apps/{app}", nth=2, times=2, status=503, body={"error": "flaps down"})
    statuses = [fly_api.get("/apps/app-one") for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 503, 503, 200]
    assert statuses[1].json() == {"error": "flaps down"}

    fly_emulator.fail("POST", "/v1/apps/{app}/machines/{machine_id}/start", status=429)
    machine = make_machine(fly_api, "app-one", skip_launch=True)
    limited = fly_api.post(f"/apps/app-one/machines/{machine['id']}/start")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    assert fly_emulator.snapshot()["machines"][machine["id"]]["state"] == "created"

    with pytest.raises(ValueError, match="not an emulated route"):
        fly_emulator.fail("GET", "/v1/apps/{name}")
    with pytest.raises(ValueError, match="not served"):
        fly_emulator.fail("PUT", "/v1/apps")


def test_fault_after_effect_performs_the_change(fly_api, fly_emulator) -> None:
    fly_emulator.fail("POST", "/v1/apps", status=502, after_effect=True)
    lost = fly_api.post("/apps", json={"name": "app-two", "org_slug": "acme"})
    assert lost.status_code == 502
    assert "app-two" in fly_emulator.snapshot()["apps"]  # the response was lost, the app exists
    await_visible(fly_api, "app-two")
    fly_emulator.fail("POST", "/v1/apps/{app}/machines", status=500, after_effect=True)
    assert fly_api.post("/apps/app-two/machines", json={"name": "m1", "config": {"image": IMAGE}}).status_code == 500
    assert [m["name"] for m in fly_api.get("/apps/app-two/machines").json()] == ["m1"]


def test_calls_are_recorded_with_routes(fly_api, fly_emulator) -> None:
    make_app(fly_api, "app-three")
    fly_emulator.clear_calls()
    machine = make_machine(fly_api, "app-three")
    fly_api.get(f"/apps/app-three/machines/{machine['id']}/wait")
    fly_api.get("/no/such/path")
    calls = fly_emulator.calls()
    assert [(c["method"], c["route"], c["status"], c["mutating"]) for c in calls] == [
        ("POST", "/v1/apps/{app}/machines", 200, True),
        ("GET", "/v1/apps/{app}/machines/{machine_id}/wait", 200, False),
        ("GET", None, 404, False),
    ]
    assert calls[1]["path"] == f"/v1/apps/app-three/machines/{machine['id']}/wait"
    assert calls[0]["t"] <= calls[1]["t"] <= calls[2]["t"]
    fly_emulator.clear_calls()
    assert fly_emulator.calls() == []


def test_rate_limits_answer_429_with_retry_after(fly_api, fly_emulator) -> None:
    app = make_app(fly_api)
    first, second = make_machine(fly_api, app), make_machine(fly_api, app)
    fly_emulator.set_rate_limits(True)
    cordon = f"/apps/{app}/machines/{first['id']}/cordon"
    # 1 req/s with bursts of 3: ten quick calls cannot all pass unless they took over 7 s.
    answers = [fly_api.post(cordon) for _ in range(10)]
    limited = [r for r in answers if r.status_code == 429]
    assert limited and answers[0].status_code == 200
    assert int(limited[0].headers["Retry-After"]) >= 1 and limited[0].json()["error"]
    # Buckets are per machine: the other machine is not throttled.
    assert fly_api.post(f"/apps/{app}/machines/{second['id']}/cordon").status_code == 200
    gets = [fly_api.get(f"/apps/{app}/machines/{first['id']}").status_code for _ in range(40)]
    assert gets[0] == 200 and 429 in gets
    fly_emulator.set_rate_limits(False)
    assert all(fly_api.post(cordon).status_code == 200 for _ in range(5))


def test_control_over_http(fly_emulator) -> None:
    control = httpx.Client(base_url=fly_emulator.url + "/__emulator")
    api = httpx.Client(base_url=fly_emulator.url + "/v1", headers={"Authorization": "Bearer t"})
    with control, api:
        assert control.post("/foreign_apps", json={"name": "theirs", "org": "other"}).status_code == 200
        assert api.get("/apps/theirs").status_code == 403
        assert (
            control.post("/fail", json={"method": "GET", "route": "/v1/apps/{app}", "status": 500}).status_code == 200
        )
        assert api.get("/apps/theirs").status_code == 500
        assert control.post("/fail", json={"method": "GET", "route": "/bad"}).status_code == 400
        calls = control.get("/calls").json()
        assert [c["status"] for c in calls] == [403, 500]
        assert control.post("/reset").status_code == 200
        assert control.get("/snapshot").json()["apps"] == {}
        assert control.get("/calls").json() == []
        assert control.post("/latency", json={"bogus": 1}).status_code == 400


# -- exec -------------------------------------------------------------------------------------------


def test_exec_runs_the_handler_on_started_machines(fly_api, fly_emulator) -> None:
    app = make_app(fly_api)
    stopped = make_machine(fly_api, app, skip_launch=True)
    refused = fly_api.post(f"/apps/{app}/machines/{stopped['id']}/exec", json={"command": ["true"]})
    assert refused.status_code == 412
    machine = make_machine(fly_api, app)
    url = f"/apps/{app}/machines/{machine['id']}/exec"
    default = fly_api.post(url, json={"command": ["psql", "-c", "select 1"], "timeout": 30})
    assert default.status_code == 200
    assert default.json() == {}  # success: no exit_code (Go's omitempty), no output

    seen: list[tuple[str, str, list[str]]] = []

    def handler(app_name: str, machine_id: str, cmd: list[str]) -> dict:
        seen.append((app_name, machine_id, cmd))
        return {"exit_code": 3, "stdout": "out", "stderr": "boom"}

    fly_emulator.set_exec_handler(handler)
    answer = fly_api.post(url, json={"cmd": "sh -c 'echo hi there'"}).json()
    assert answer["exit_code"] == 3 and answer["stdout"] == "out" and answer["stderr"] == "boom"
    assert seen == [(app, machine["id"], ["sh", "-c", "echo hi there"])]
    assert fly_api.post(url, json={}).status_code == 400
    assert [e["cmd"] for e in fly_emulator.exec_log()] == [["psql", "-c", "select 1"], ["sh", "-c", "echo hi there"]]
    exec_calls = [c for c in fly_emulator.calls() if (c["route"] or "").endswith("/exec") and c["status"] == 200]
    assert exec_calls[-1]["cmd"] == ["sh", "-c", "echo hi there"]


# -- persistence ------------------------------------------------------------------------------------


def test_state_file_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "fly-state.json"
    headers = {"Authorization": "Bearer t"}
    with FlyEmulator(state_file=state) as first, httpx.Client(base_url=first.url + "/v1", headers=headers) as api:
        app = make_app(api)
        volume = make_volume(api, app)
        machine = make_machine(
            api, app, name="pg-1", config={"image": IMAGE, "mounts": [{"volume": volume["id"], "path": "/data"}]}
        )
        api.post(f"/apps/{app}/secrets", json={"values": {"POSTGRES_PASSWORD": "hunter2-secret"}})
        api.post(f"/apps/{app}/machines/{machine['id']}/stop")
        ip = api.post(f"/apps/{app}/ip_assignments", json={"type": "private_v6", "org_slug": "acme"}).json()["ip"]
    saved = state.read_text()
    assert "hunter2-secret" not in saved  # only digests are kept
    json.loads(saved)

    with FlyEmulator(state_file=state) as second, httpx.Client(base_url=second.url + "/v1", headers=headers) as api:
        assert api.get(f"/apps/{app}").status_code == 200
        again = api.get(f"/apps/{app}/machines/{machine['id']}").json()
        assert (again["name"], again["state"], again["instance_id"]) == ("pg-1", "stopped", machine["instance_id"])
        assert api.get(f"/apps/{app}/volumes/{volume['id']}").json()["attached_machine_id"] == machine["id"]
        assert (
            api.get(f"/apps/{app}/secrets", params={"min_version": 1}).json()["secrets"][0]["digest"]
            == hashlib.sha256(b"hunter2-secret").hexdigest()[:16]
        )
        assert [i["ip"] for i in api.get(f"/apps/{app}/ip_assignments").json()["ips"]] == [ip]
        # The name stays taken after the restart, and writes keep persisting.
        assert api.post("/apps", json={"name": app, "org_slug": "acme"}).json()["status"] == "name_taken"
        assert api.post(f"/apps/{app}/secrets", json={"values": {"X": "y"}}).json()["version"] == 2
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(ValueError, match="not a Fly emulator state file"):
        FlyEmulator(state_file=bad).start()


def test_session_fixture_starts_clean(fly_emulator_session) -> None:
    api = httpx.Client(base_url=fly_emulator_session.url + "/v1", headers={"Authorization": "Bearer t"})
    with api:
        assert api.get("/apps", params={"org_slug": "acme"}).json()["total_apps"] == 0
        make_app(api, "session-app")
        assert "session-app" in fly_emulator_session.snapshot()["apps"]


# -- strict by default: what the real API does that a client must cope with -------------------------------


def test_a_new_app_answers_404_then_401_before_it_is_visible(fly_api) -> None:
    assert fly_api.post("/apps", json={"app_name": "devenv-acme-erp-rest", "org_slug": "acme"}).status_code == 201
    assert fly_api.get("/apps/devenv-acme-erp-rest").status_code == 404
    assert fly_api.get("/apps/devenv-acme-erp-rest/machines").status_code == 401
    assert fly_api.get("/apps/devenv-acme-erp-rest").status_code == 200
    # The name is taken all along.
    again = fly_api.post("/apps", json={"app_name": "devenv-acme-erp-rest", "org_slug": "acme"})
    assert again.json()["status"] == "name_taken"


def test_a_fresh_machine_reports_no_checks_at_first(fly_api) -> None:
    app = visible_app(fly_api)
    config = {"image": IMAGE, "services": [{"internal_port": 8080, "protocol": "tcp", "checks": [{"type": "tcp"}]}]}
    machine = make_machine(fly_api, app, config=config)
    url = f"/apps/{app}/machines/{machine['id']}"
    assert fly_api.get(f"{url}/wait", params={"state": "started", "timeout": 10}).status_code == 200
    assert fly_api.get(url).json()["checks"] == []
    assert [c["status"] for c in fly_api.get(url).json()["checks"]] == ["passing"]
    # Every start of the machine begins again without reports.
    fly_api.post(f"{url}/stop")
    assert fly_api.get(f"{url}/wait", params={"state": "stopped", "version": machine["instance_id"]}).status_code == 200
    fly_api.post(f"{url}/start")
    assert fly_api.get(f"{url}/wait", params={"state": "started", "timeout": 10}).status_code == 200
    assert fly_api.get(url).json()["checks"] == []


def test_a_successful_exec_omits_exit_code(fly_api, fly_emulator) -> None:
    app = visible_app(fly_api)
    machine = make_machine(fly_api, app)
    url = f"/apps/{app}/machines/{machine['id']}/exec"
    assert fly_api.post(url, json={"command": ["true"]}).json() == {}
    fly_emulator.set_exec_handler(lambda *_: {"exit_code": 2, "stderr": "boom"})
    assert fly_api.post(url, json={"command": ["false"]}).json() == {"exit_code": 2, "stderr": "boom"}


def test_an_updated_machine_runs_the_new_version_only_after_a_while(fly_api, fly_emulator) -> None:
    app = visible_app(fly_api)
    machine = make_machine(fly_api, app)
    url = f"/apps/{app}/machines/{machine['id']}"
    fly_api.get(f"{url}/wait", params={"state": "started", "timeout": 10})
    fly_emulator.set_latency(LatencyModel(replace_lag_s=30))
    updated = fly_api.post(url, json={"config": {"image": IMAGE, "env": {"V": "2"}}}).json()
    assert updated["instance_id"] != machine["instance_id"]
    # The old version still runs: a wait without the version returns at once, one for the new version does not.
    assert fly_api.get(f"{url}/wait", params={"state": "started", "timeout": 1}).status_code == 200
    waiting = fly_api.get(f"{url}/wait", params={"state": "started", "version": updated["instance_id"], "timeout": 1})
    assert waiting.status_code == 408


def test_a_destroyed_volume_passes_through_the_destroy_states(fly_api, fly_emulator) -> None:
    app = visible_app(fly_api)
    fly_emulator.set_latency(LatencyModel(volume_destroy_s=60, destroy_s=60))
    loose = make_volume(fly_api, app, "loose")
    assert fly_api.delete(f"/apps/{app}/volumes/{loose['id']}").status_code == 200
    states = {v["id"]: v["state"] for v in fly_api.get(f"/apps/{app}/volumes").json()}
    assert states[loose["id"]] == "scheduling_destroy"
    held = make_volume(fly_api, app, "held")
    machine = make_machine(fly_api, app, config={"image": IMAGE, "mounts": [{"volume": held["id"], "path": "/d"}]})
    fly_api.delete(f"/apps/{app}/machines/{machine['id']}", params={"force": "true"})
    assert fly_api.delete(f"/apps/{app}/volumes/{held['id']}").status_code == 200
    assert fly_api.get(f"/apps/{app}/volumes/{held['id']}").json()["state"] == "waiting_for_detach"
    # A volume on its way out cannot be mounted again.
    mount = {"image": IMAGE, "mounts": [{"volume": loose["id"], "path": "/d"}]}
    assert fly_api.post(f"/apps/{app}/machines", json={"config": mount}).status_code == 400


def test_app_delete_is_asynchronous_and_wants_stopped_machines_or_force(fly_api, fly_emulator) -> None:
    app = visible_app(fly_api)
    make_machine(fly_api, app)
    refused = fly_api.delete(f"/apps/{app}")
    assert refused.status_code == 412 and "force" in refused.json()["error"]
    fly_emulator.set_latency(LatencyModel(app_delete_s=60))
    assert fly_api.delete(f"/apps/{app}", params={"force": "true"}).status_code == 202
    assert fly_api.get(f"/apps/{app}").status_code == 404
    # The name stays taken until the deletion has finished.
    again = fly_api.post("/apps", json={"app_name": app, "org_slug": "acme"})
    assert again.status_code == 422 and again.json()["status"] == "name_taken"


def test_secrets_reads_lag_unless_they_ask_for_the_version_just_written(fly_api, fly_emulator) -> None:
    app = visible_app(fly_api)
    fly_emulator.set_latency(LatencyModel(secrets_lag_s=60))
    url = f"/apps/{app}/secrets"
    assert fly_api.post(url, json={"values": {"A": "1"}}).json()["version"] == 1
    assert fly_api.get(url).json() == {"secrets": []}  # a replica that has not seen version 1 yet
    names = [s["name"] for s in fly_api.get(url, params={"min_version": 1}).json()["secrets"]]
    assert names == ["A"]
    assert fly_api.get(url, params={"min_version": 5}).status_code == 412


def test_an_expired_lease_nonce_is_refused_and_the_holder_can_refresh(fly_api) -> None:
    app = visible_app(fly_api)
    machine = make_machine(fly_api, app)
    url = f"/apps/{app}/machines/{machine['id']}"
    lease = fly_api.post(f"{url}/lease", json={"ttl": 1}).json()["data"]
    nonce = {"fly-machine-lease-nonce": lease["nonce"]}
    refreshed = fly_api.post(f"{url}/lease", json={"ttl": 120}, headers=nonce).json()["data"]
    assert refreshed["nonce"] == lease["nonce"] and refreshed["expires_at"] > lease["expires_at"]
    fly_api.post(f"{url}/lease", json={"ttl": 1}, headers=nonce)
    for _ in range(100):  # bounded poll until the 1 s lease has expired
        if fly_api.get(f"{url}/lease").status_code == 404:
            break
        time.sleep(0.1)
    stale = fly_api.post(f"{url}/stop", headers=nonce)
    assert stale.status_code == 409 and "lease not found" in stale.json()["error"]


def test_flycast_allocation_takes_fly_gos_empty_fields_and_lands_on_the_network_it_names(fly_api, fly_emulator) -> None:
    app = visible_app(fly_api, network="acme-net")
    peer = visible_app(fly_api, "devenv-acme-erp-peer", network="acme-net")
    legacy = visible_app(fly_api, "devenv-acme-erp-legacy")  # on the org's default network
    url = f"/apps/{app}/ip_assignments"
    # fly-go's AssignIPRequest has no omitempty: every field the caller leaves unset arrives as "".
    unset = {"region": "", "org_slug": "", "network": "", "service_name": ""}
    default = fly_api.post(url, json={"type": "private_v6", **unset})
    assert default.status_code == 200, default.text
    wrong = fly_api.post(url, json={"type": "private_v6", "org_slug": "other"})
    assert wrong.status_code == 400 and "org_slug" in wrong.json()["error"]
    own = fly_api.post(url, json={**unset, "type": "private_v6", "org_slug": "acme", "network": "acme-net"}).json()
    by_ip = {ip["ip"]: ip for ip in fly_emulator.snapshot()["ips"][app]}
    # No network named: the org's default network, not the app's own (flyctl deploy_first.go sends "").
    assert (by_ip[default.json()["ip"]]["org_slug"], by_ip[default.json()["ip"]]["network"]) == ("acme", "default")
    assert (by_ip[own["ip"]]["org_slug"], by_ip[own["ip"]]["network"]) == ("acme", "acme-net")
    assert fly_emulator.reach(legacy, f"{app}.flycast")["addresses"] == [default.json()["ip"]]
    assert fly_emulator.reach(peer, f"{app}.flycast")["addresses"] == [own["ip"]]


def test_an_extended_volume_grows_the_filesystem_after_a_restart(fly_api, fly_emulator) -> None:
    app = visible_app(fly_api)
    volume = make_volume(fly_api, app, size_gb=1)
    machine = make_machine(fly_api, app, config={"image": IMAGE, "mounts": [{"volume": volume["id"], "path": "/d"}]})
    url = f"/apps/{app}/machines/{machine['id']}"
    fly_api.get(f"{url}/wait", params={"state": "started", "timeout": 10})
    grown = fly_api.put(f"/apps/{app}/volumes/{volume['id']}/extend", json={"size_gb": 4}).json()
    assert grown["needs_restart"] is True
    assert fly_emulator.snapshot()["volumes"][volume["id"]]["fs_size_gb"] == 1
    fly_api.post(f"{url}/restart")
    fly_api.get(f"{url}/wait", params={"state": "started", "timeout": 10})
    assert fly_emulator.snapshot()["volumes"][volume["id"]]["fs_size_gb"] == 4


def test_rate_limits_are_on_by_default() -> None:
    with (
        FlyEmulator() as emulator,
        httpx.Client(base_url=emulator.url + "/v1", headers={"Authorization": "Bearer t"}) as api,
    ):
        assert 429 in [api.get("/apps", params={"org_slug": "acme"}).status_code for _ in range(10)]


def test_every_action_is_rate_limited_per_object_except_get_machine(fly_api, fly_emulator) -> None:
    app = visible_app(fly_api)
    other = visible_app(fly_api, "devenv-acme-erp-kong")
    machine = make_machine(fly_api, app)
    fly_emulator.set_rate_limits(True)
    # GETs by id too: 1 req/s with bursts of 3, per action and per object (ten quick calls cannot all pass).
    answers = [fly_api.get(f"/apps/{app}") for _ in range(10)]
    limited = [r for r in answers if r.status_code == 429]
    assert limited and int(limited[0].headers["Retry-After"]) >= 1
    assert fly_api.get(f"/apps/{other}").status_code == 200  # another object has its own budget
    assert fly_api.get(f"/apps/{app}/volumes").status_code == 200  # and so has another action
    # Get Machine has a larger budget (5 req/s, bursts of 10).
    gets = [fly_api.get(f"/apps/{app}/machines/{machine['id']}").status_code for _ in range(10)]
    assert gets == [200] * 10
