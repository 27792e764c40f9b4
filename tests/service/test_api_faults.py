"""The provisioning API when things go wrong (issue 24): the service killed in the middle of an update, and
Fly failing in the middle of a create. Each test has a service of its own (tests/fixtures/service.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from components.domain.naming import sandbox_id
from emulators.cloudflare import CloudflareEmulator
from emulators.fly import FlyEmulator
from service.auth import Role
from tests.fixtures.cloudflare import CF_TOKEN
from tests.fixtures.service import ServiceWorld

pytestmark = [pytest.mark.db, pytest.mark.engine]


@pytest.fixture
def world(tmp_path: Path, postgres_server: Any) -> Iterator[ServiceWorld]:
    fly = FlyEmulator()
    fly.start()
    cf = CloudflareEmulator(token=CF_TOKEN)
    cf.start()
    database = postgres_server.create_database()
    world = ServiceWorld(tmp_path, postgres_server.dsn(database), fly, cf)
    try:
        world.prepare()
        world.start()
        yield world
    finally:
        fly.release()
        world.kill()
        fly.stop()
        cf.stop()
        postgres_server.drop_database(database)


def town_objects(fly: FlyEmulator, sid: str) -> dict[str, Any]:
    snap = fly.snapshot()
    return {
        "app": sid in snap["apps"],
        "machines": sorted(m["name"] for m in snap["machines"].values() if m["app"] == sid),
        "volumes": sorted(v["name"] for v in snap["volumes"].values() if v["app"] == sid),
    }


def test_an_accepted_create_survives_kill_9_of_the_service_mid_update(world: ServiceWorld) -> None:
    # The town's machine is created on Fly; its answer is held back, and the service is killed then.
    world.fly.hold("POST", "/v1/apps/{app}/machines")
    with world.client(Role.BACKEND) as backend:
        accepted = backend.post("/v1/towns", json={"user_id": "u-crash", "name": "alpha", "rigs": []})
    assert accepted.status_code == 202, accepted.text
    deadline = time.monotonic() + 300
    while not world.fly.held():
        assert time.monotonic() < deadline, "the create never reached Fly"
        time.sleep(0.05)
    world.kill()
    world.fly.release()

    world.start()  # a new process: it finds the dead worker's job and runs it again
    with world.client(Role.BACKEND, **{"X-User-Id": "u-crash"}) as backend:
        operation = world.wait(backend, accepted.json()["operation_id"])
        assert operation["status"] == "succeeded", (operation["resource"], operation["error"])
        town = backend.get(f"/v1/towns/{accepted.json()['id']}").json()
    assert town["status"] == "running"
    sid = sandbox_id("u-crash", "alpha")
    # One machine, one volume: the interrupted create was adopted, not made twice.
    objects = town_objects(world.fly, sid)
    assert objects["app"] and objects["machines"] == ["town"] and len(objects["volumes"]) == 1
    with psycopg.connect(world.dsn) as conn:
        attempts = conn.execute(
            "SELECT attempts FROM silo_operations WHERE id = %s", (accepted.json()["operation_id"],)
        ).fetchone()
    assert attempts == (2,)  # run once, killed, run again
    # The state holds exactly what Fly holds, and a preview of the town's stack is clean.
    stack = world.town_stack(sid)
    state = stack.state()
    assert [r.id for r in state.resources.values() if r.type.endswith("fly:Machine")] == [town["fly_machine_id"]]
    assert not state.pending_operations
    config = yaml.safe_load(stack.config_file.read_text())["config"]
    preview = stack.run_config("preview", config)
    assert preview.ok and preview.changed() == {}, preview.steps


def test_a_fly_failure_mid_create_leaves_the_town_failed_with_nothing_orphaned_and_a_retry_works(
    world: ServiceWorld,
) -> None:
    # Fly refuses the machine twice: the create, and the rollback's own `up` (which records that data may go).
    world.fly.fail("POST", "/v1/apps/{app}/machines", status=422, times=2, body={"error": "no capacity in yul"})
    sid = sandbox_id("u-fail", "alpha")
    with world.client(Role.BACKEND, **{"X-User-Id": "u-fail"}) as backend:
        body = {"user_id": "u-fail", "name": "alpha", "rigs": []}
        failed = backend.post("/v1/towns?wait=true", json=body).json()
        operation = failed["operation"]
        assert operation["status"] == "failed"
        assert operation["resource"] == f"{sid}-machine" and "no capacity in yul" in operation["error"]
        town = backend.get(f"/v1/towns/{failed['id']}").json()
        assert town["status"] == "failed" and "no capacity in yul" in town["failure"]
        # The seed's rollback: nothing of the failed create stays on Fly.
        assert town_objects(world.fly, sid) == {"app": False, "machines": [], "volumes": []}

        retried = backend.post("/v1/towns?wait=true", json=body).json()
        assert retried["id"] == failed["id"] and retried["operation"]["status"] == "succeeded", retried
        assert backend.get(f"/v1/towns/{failed['id']}").json()["status"] == "running"
    assert town_objects(world.fly, sid)["machines"] == ["town"]
