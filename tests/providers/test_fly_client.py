"""FlyClient against the Fly emulator over real HTTP: retries, idempotent creates, waits, leases, errors."""

from __future__ import annotations

import httpx
import pytest

from components.providers.fly.client import FlyClient
from components.providers.fly.errors import FlyAuthError, FlyError, FlyNameTaken, FlyNothingListening
from components.providers.fly.settings import (
    DEFAULT_API_URL,
    EMULATOR_TOKEN,
    LOCAL_EMULATOR_URL,
    FlySettings,
    authorization_header,
    resolve_fly_settings,
)
from emulators.fly import LatencyModel

APPS = "/v1/apps"
MACHINES = "/v1/apps/{app}/machines"
WAIT = "/v1/apps/{app}/machines/{machine_id}/wait"

MACHINE_CONFIG = {
    "image": "registry-1.docker.io/library/busybox:1.36",
    "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 256},
}


@pytest.fixture
def fly(fly_emulator):
    client = FlyClient(
        FlySettings(base_url=fly_emulator.url, token="test", source="config"), backoff_initial=0.01, backoff_max=0.05
    )
    yield client
    client.close()


def test_token_scheme_follows_prefix() -> None:
    assert authorization_header("fm2_abc") == "FlyV1 fm2_abc"
    assert authorization_header("FlyV1 fm1r_x") == "FlyV1 fm1r_x"
    assert authorization_header("Bearer plain") == "Bearer plain"
    assert authorization_header("plain") == "Bearer plain"


def test_settings_resolution_order() -> None:
    cfg = resolve_fly_settings(
        {"fly:apiToken": "t", "fly:apiUrl": "https://flaps.example/v1"},
        env={"FLY_API_TOKEN": "env", "FLY_API_HOSTNAME": "http://x"},
    )
    assert (cfg.base_url, cfg.token, cfg.source) == ("https://flaps.example", "t", "config")
    cfg = resolve_fly_settings({}, env={"FLY_API_TOKEN": "env", "FLY_FLAPS_BASE_URL": "http://127.0.0.1:9"})
    assert (cfg.base_url, cfg.token) == ("http://127.0.0.1:9", "env")
    assert resolve_fly_settings({}, env={"FLY_API_TOKEN": "env"}).base_url == DEFAULT_API_URL
    local = resolve_fly_settings({}, env={})
    assert (local.base_url, local.token, local.uses_emulator) == (LOCAL_EMULATOR_URL, EMULATOR_TOKEN, True)
    with pytest.raises(ValueError, match="fly:apiToken"):
        resolve_fly_settings({"fly:apiUrl": "https://api.machines.dev"}, env={})


def test_create_app_after_lost_response_adopts_instead_of_duplicating(fly, fly_emulator) -> None:
    fly_emulator.fail("POST", APPS, status=502, after_effect=True)
    app = fly.create_app("devenv-acme-erp-kong", "acme")
    assert app["name"] == "devenv-acme-erp-kong"
    assert list(fly_emulator.snapshot()["apps"]) == ["devenv-acme-erp-kong"]
    # Running create again (a second `pulumi up` after a failure) adopts the app too.
    assert fly.create_app("devenv-acme-erp-kong", "acme")["name"] == "devenv-acme-erp-kong"


def test_name_taken_by_another_org_names_the_app(fly, fly_emulator) -> None:
    fly_emulator.add_foreign_app("devenv-acme-erp-pg", "someone-else")
    with pytest.raises(FlyNameTaken, match="devenv-acme-erp-pg"):
        fly.create_app("devenv-acme-erp-pg", "acme")


def test_invalid_token_says_so_with_request_id(fly_emulator) -> None:
    fly_emulator.stop()
    from emulators.fly import FlyEmulator

    guarded = FlyEmulator(token="right")
    guarded.start()
    try:
        with FlyClient(FlySettings(guarded.url, "wrong", "env")) as client, pytest.raises(FlyAuthError) as err:
            client.get_app("anything")
        assert "token" in str(err.value) and "fly-request-id" in str(err.value)
        assert err.value.request_id
    finally:
        guarded.stop()


def test_transient_errors_are_retried_and_rate_limits_honoured(fly, fly_emulator) -> None:
    fly.create_app("devenv-acme-erp-rest", "acme")
    fly_emulator.fail("GET", "/v1/apps/{app}", status=503, times=2)
    assert fly.get_app("devenv-acme-erp-rest")["name"] == "devenv-acme-erp-rest"
    fly_emulator.fail("GET", "/v1/apps/{app}", status=429, times=1)
    assert fly.get_app("devenv-acme-erp-rest") is not None
    statuses = [c["status"] for c in fly_emulator.calls() if c["route"] == "/v1/apps/{app}"]
    assert statuses[-5:] == [503, 503, 200, 429, 200]


def test_machine_create_after_ambiguous_failure_makes_no_duplicate(fly, fly_emulator) -> None:
    fly.create_app("devenv-acme-erp-meta", "acme")
    fly_emulator.fail("POST", MACHINES, status=500, after_effect=True)
    machine = fly.create_machine("devenv-acme-erp-meta", {"name": "meta-1", "config": MACHINE_CONFIG})
    machines = fly.list_machines("devenv-acme-erp-meta")
    assert [m["id"] for m in machines] == [machine["id"]]


def test_wait_loops_on_408_and_waits_for_stopped_with_version(fly, fly_emulator) -> None:
    fly_emulator.set_latency(LatencyModel(boot_s=0.3, stop_s=0.2))
    fly.create_app("devenv-acme-erp-auth", "acme")
    machine = fly.create_machine("devenv-acme-erp-auth", {"name": "auth-1", "config": MACHINE_CONFIG})
    fly_emulator.fail("GET", WAIT, status=408, times=2)
    fly.wait("devenv-acme-erp-auth", machine["id"], "started", timeout_s=30)
    assert fly.get_machine("devenv-acme-erp-auth", machine["id"])["state"] == "started"
    with fly.lease("devenv-acme-erp-auth", machine["id"]) as nonce:
        assert nonce
        fly.stop_machine("devenv-acme-erp-auth", machine["id"], nonce)
    fly.wait("devenv-acme-erp-auth", machine["id"], "stopped", version=machine["instance_id"], timeout_s=30)
    waits = [c for c in fly_emulator.calls() if c["route"] == WAIT]
    assert [c["status"] for c in waits][:3] == [408, 408, 200]


def test_wait_gives_up_with_a_clear_error(fly, fly_emulator) -> None:
    fly_emulator.set_latency(LatencyModel(boot_s=30))
    fly.create_app("devenv-acme-erp-studio", "acme")
    machine = fly.create_machine("devenv-acme-erp-studio", {"name": "studio-1", "config": MACHINE_CONFIG})
    with pytest.raises(FlyError, match="did not reach 'started'"):
        fly.wait("devenv-acme-erp-studio", machine["id"], "started", timeout_s=1.5)


def test_mutations_hold_the_lease(fly, fly_emulator) -> None:
    fly.create_app("devenv-acme-erp-kong", "acme")
    machine = fly.create_machine("devenv-acme-erp-kong", {"name": "kong-1", "config": MACHINE_CONFIG})
    fly.wait("devenv-acme-erp-kong", machine["id"], "started", timeout_s=30)
    with fly.lease("devenv-acme-erp-kong", machine["id"]), pytest.raises(FlyError) as err:
        # Another writer without the nonce is refused while we hold the lease.
        fly.stop_machine("devenv-acme-erp-kong", machine["id"], None)
    assert err.value.status == 409
    # Released afterwards: the next mutation goes through.
    fly.stop_machine("devenv-acme-erp-kong", machine["id"], None)


def test_a_lost_lease_answer_is_adopted_not_deadlocked(fly, fly_emulator) -> None:
    fly.create_app("devenv-acme-erp-rest", "acme")
    machine = fly.create_machine("devenv-acme-erp-rest", {"name": "rest-1", "config": MACHINE_CONFIG})
    fly.wait("devenv-acme-erp-rest", machine["id"], "started", timeout_s=30)
    fly_emulator.fail("POST", "/v1/apps/{app}/machines/{machine_id}/lease", status=502, after_effect=True)
    with fly.lease("devenv-acme-erp-rest", machine["id"], wait_s=10) as nonce:
        assert nonce
        fly.stop_machine("devenv-acme-erp-rest", machine["id"], nonce)
    # Released: another writer can mutate right away.
    fly.start_machine("devenv-acme-erp-rest", machine["id"])


# -- what a real account does that the client must cope with -----------------------------------------

EXEC = "/v1/apps/{app}/machines/{machine_id}/exec"
START = "/v1/apps/{app}/machines/{machine_id}/start"
RESTART = "/v1/apps/{app}/machines/{machine_id}/restart"
EXTEND = "/v1/apps/{app}/volumes/{volume_id}/extend"
LEASE = "/v1/apps/{app}/machines/{machine_id}/lease"
CHECKED = {
    "image": MACHINE_CONFIG["image"],
    "services": [{"protocol": "tcp", "internal_port": 8080, "checks": [{"type": "tcp"}]}],
}


def started_machine(fly, app: str, name: str = "m1", config: dict | None = None) -> dict:
    fly.create_app(app, "acme")
    machine = fly.create_machine(app, {"name": name, "config": config or MACHINE_CONFIG})
    fly.wait(app, machine["id"], "started", version=machine["instance_id"], timeout_s=30)
    return machine


def test_an_exec_whose_answer_is_lost_is_not_run_twice(fly, fly_emulator) -> None:
    machine = started_machine(fly, "devenv-acme-erp-pg")
    fly_emulator.fail("POST", EXEC, status=502, after_effect=True)
    with pytest.raises(FlyError) as err:
        fly.exec_machine("devenv-acme-erp-pg", machine["id"], ["psql", "-c", "select 1"])
    assert err.value.status == 502 and err.value.request_id
    assert len(fly_emulator.exec_log()) == 1
    # A 429 was not executed: that one is sent again, after Retry-After.
    fly_emulator.fail("POST", EXEC, status=429)
    assert fly.exec_machine("devenv-acme-erp-pg", machine["id"], ["true"])["exit_code"] == 0
    assert len(fly_emulator.exec_log()) == 2


def test_a_start_whose_answer_is_lost_is_checked_not_resent(fly, fly_emulator) -> None:
    app = "devenv-acme-erp-meta"
    fly.create_app(app, "acme")
    machine = fly.create_machine(app, {"name": "m1", "skip_launch": True, "config": MACHINE_CONFIG})
    fly_emulator.fail("POST", START, status=503, after_effect=True)
    fly.start_machine(app, machine["id"])
    fly.wait(app, machine["id"], "started", timeout_s=30)
    starts = [c["status"] for c in fly_emulator.calls() if c["route"] == START]
    assert starts == [503]


def test_a_restart_whose_answer_is_lost_is_reported_not_sent_again(fly, fly_emulator) -> None:
    # A restart leaves no trace to check (same version, same state): a second one would restart the
    # machine twice, so the ambiguous failure is reported and the caller's next run decides.
    app = "devenv-acme-erp-auth"
    machine = started_machine(fly, app)
    fly_emulator.fail("POST", RESTART, status=503, after_effect=True)
    with pytest.raises(FlyError) as err:
        fly.restart_machine(app, machine["id"])
    assert err.value.status == 503
    assert [c["status"] for c in fly_emulator.calls() if c["route"] == RESTART] == [503]


def test_a_volume_extend_whose_answer_is_lost_is_checked_not_resent(fly, fly_emulator) -> None:
    app = "devenv-acme-erp-storage"
    fly.create_app(app, "acme")
    volume = fly.create_volume(app, {"name": "storage_data", "region": "yul", "size_gb": 1})
    fly_emulator.fail("PUT", EXTEND, status=504, after_effect=True)
    grown = fly.extend_volume(app, volume["id"], 3)
    assert grown["size_gb"] == 3 and grown["needs_restart"] is False
    assert [c["status"] for c in fly_emulator.calls() if c["route"] == EXTEND] == [504]


def test_an_ambiguous_create_of_a_not_yet_visible_app_is_adopted_not_reported_taken(fly, fly_emulator) -> None:
    fly_emulator.fail("POST", APPS, status=502, after_effect=True)
    app = fly.create_app("devenv-acme-erp-auth", "acme")
    assert app["name"] == "devenv-acme-erp-auth" and app["organization"]["slug"] == "acme"
    # Right after it becomes visible the app's own routes work (no 401 left for the next caller).
    assert fly.list_machines("devenv-acme-erp-auth") == []


def test_an_app_can_be_created_again_right_after_it_was_deleted(fly, fly_emulator) -> None:
    fly_emulator.set_latency(LatencyModel(app_delete_s=3))
    machine = started_machine(fly, "devenv-acme-erp-kong")
    fly.delete_app("devenv-acme-erp-kong")  # a running machine is no obstacle: force
    assert machine["id"] not in fly_emulator.snapshot()["machines"]
    assert fly.create_app("devenv-acme-erp-kong", "acme")["name"] == "devenv-acme-erp-kong"


def test_secrets_are_read_back_at_the_version_just_written(fly, fly_emulator) -> None:
    fly_emulator.set_latency(LatencyModel(secrets_lag_s=60))
    fly.create_app("devenv-acme-erp-rest", "acme")
    version = fly.set_secrets("devenv-acme-erp-rest", {"PGRST_JWT_SECRET": "s1"})
    assert set(fly.list_secrets("devenv-acme-erp-rest", min_version=version)) == {"PGRST_JWT_SECRET"}


def test_a_lease_held_through_a_long_wait_is_still_ours(fly, fly_emulator) -> None:
    app = "devenv-acme-erp-studio"
    machine = started_machine(fly, app)
    fly_emulator.set_latency(LatencyModel(stop_s=5))
    with fly.lease(app, machine["id"], ttl_s=2) as nonce:
        fly.stop_machine(app, machine["id"], nonce)
        fly.wait(app, machine["id"], "stopped", version=machine["instance_id"], timeout_s=30)  # > the TTL
        fly.start_machine(app, machine["id"], nonce)  # refused with a stale nonce
    assert fly.get_machine(app, machine["id"])["state"] in ("starting", "started")


def test_polling_for_a_held_lease_stays_within_the_rate_limit(fly, fly_emulator) -> None:
    app = "devenv-acme-erp-storage"
    machine = started_machine(fly, app)
    # Someone else holds the lease for a few seconds and does not refresh it.
    held = httpx.post(
        f"{fly_emulator.url}/v1/apps/{app}/machines/{machine['id']}/lease",
        json={"ttl": 4},
        headers={"Authorization": "Bearer someone-else"},
    )
    assert held.status_code == 200
    with fly.lease(app, machine["id"], wait_s=30) as nonce:  # ours once the other's TTL has run out
        assert nonce and nonce != held.json()["data"]["nonce"]
    assert [c for c in fly_emulator.calls() if c["status"] == 429] == []


def test_checks_count_only_once_every_configured_check_has_reported(fly, fly_emulator) -> None:
    fly_emulator.set_latency(LatencyModel(check_pass_s=60))
    machine = started_machine(fly, "devenv-acme-erp-pg", config=CHECKED)
    with pytest.raises(FlyError, match="health checks") as err:
        fly.wait_for_checks("devenv-acme-erp-pg", machine["id"], timeout_s=2)
    assert "fly-request-id" in str(err.value)


def test_flycast_allocation_sends_the_org_and_the_apps_network(fly, fly_emulator) -> None:
    fly.create_app("devenv-acme-erp-meta", "acme", network="acme-net")
    ip = fly.allocate_ip("devenv-acme-erp-meta", "private_v6")
    assert ip["ip"].startswith("fdaa:")
    [recorded] = fly_emulator.snapshot()["ips"]["devenv-acme-erp-meta"]
    assert (recorded["org_slug"], recorded["network"]) == ("acme", "acme-net")


def test_quick_successive_calls_on_one_object_are_paced_not_refused(fly, fly_emulator) -> None:
    app = "devenv-acme-erp-pg"
    fly.create_app(app, "acme")
    fly_emulator.clear_calls()
    for _ in range(6):  # 1 req/s with bursts of 3 per action and object: the client waits, the API never refuses
        assert fly.list_volumes(app) == []
    assert [c["status"] for c in fly_emulator.calls()] == [200] * 6


@pytest.mark.parametrize(
    ("base_url", "calls"),
    [("http://127.0.0.1:9", 1), ("https://api.machines.dev", 3)],
    ids=["local-emulator-down", "remote-api-blip"],
)
def test_a_refused_connection_is_retried_only_where_waiting_can_help(base_url: str, calls: int) -> None:
    """Nothing listening on loopback (the emulator is not running) is said at once, naming how to start it;
    a remote API's refused connection may be a blip, and is sent again (nothing reached the API)."""
    tried: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        tried.append(str(request.url))
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    settings = FlySettings(base_url, "token", "env")
    fly = FlyClient(settings, attempts=3, backoff_initial=0.01, transport=httpx.MockTransport(refuse))
    with fly, pytest.raises(FlyError, match="cannot reach the Fly Machines API") as caught:
        fly.get_app("devenv-acme-erp-pg")
    assert len(tried) == calls
    assert (type(caught.value) is FlyNothingListening) is (calls == 1)
