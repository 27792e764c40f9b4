"""Seed 004 through the API: a silo's status, start and stop, and its connection info per role (withdrawn
while stopped); and a town declared in a silo's stack file, visible to the API but changed only there."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from service.auth import Role
from tests.fixtures.program import TOWNS_SILO, StackProgram
from tests.fixtures.service import ServiceWorld

pytestmark = [pytest.mark.db, pytest.mark.engine]
TOWN = {"name": "stackfile", "user": "user-file", "rigs": []}


@pytest.fixture(scope="module")
def silo(api_world: ServiceWorld) -> Iterator[StackProgram]:
    """The silo acme-erp, with one town in its stack file, deployed in the service's silos project."""
    program = StackProgram(api_world.root, "erp", api_world.env)
    program.work_dir = api_world.silos_dir
    program.config_file = api_world.silos_dir / "Pulumi.erp.yaml"
    up = program.run_config("up", {**TOWNS_SILO, "silo:towns": [TOWN]})
    assert up.ok, up.error
    yield program


def info(world: ServiceWorld, role: Role) -> dict[str, Any]:
    with world.client(role) as client:
        answer = client.get("/v1/silos/acme-erp/connection-info")
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_silo_status_start_stop_and_connection_info_per_role(api_world: ServiceWorld, silo: StackProgram) -> None:
    with api_world.client(Role.DEVOPS) as devops:
        status = devops.get("/v1/silos/acme-erp").json()
    assert status["silo_id"] == "acme-erp" and status["status"] == "running"
    assert {s["status"] for s in status["services"].values()} == {"running"} and "kong" in status["services"]

    # The access-control matrix (seed 004): devops everything, workers the URL and the anon key, the
    # auditor the connection string as logs show it, clientele nothing at all.
    full = info(api_world, Role.DEVOPS)["connection_info"]
    assert full["supabase_service_role_key"] and full["db_password"] and full["supabase_anon_key"]
    for role in (Role.DEV_WORKER, Role.DEV_ORCHESTRATOR):
        assert set(info(api_world, role)["connection_info"]) == {"supabase_url", "supabase_anon_key"}
    audit = info(api_world, Role.SECURITY_AUDITOR)["connection_info"]
    assert set(audit) == {"db_connection_string"} and "********" in audit["db_connection_string"]
    with api_world.client(Role.CLIENTELE) as clientele:
        assert clientele.get("/v1/silos/acme-erp/connection-info").status_code == 403

    with api_world.client(Role.DEVOPS) as devops:
        stopped = devops.post("/v1/silos/acme-erp/stop?wait=true").json()
    assert stopped["operation"]["status"] == "succeeded", stopped
    # Withdrawn the moment the silo stops, for every role.
    assert info(api_world, Role.DEVOPS) == {"silo_id": "acme-erp", "status": "stopped", "connection_info": None}
    assert info(api_world, Role.DEV_WORKER)["connection_info"] is None
    with api_world.client(Role.DEVOPS) as devops:
        assert devops.get("/v1/silos/acme-erp").json()["status"] == "stopped"

    with api_world.client(Role.DEV_WORKER) as worker:  # dev-workers restart silos (seed 004)
        started = worker.post("/v1/silos/acme-erp/start?wait=true").json()
    assert started["operation"]["status"] == "succeeded", started
    assert info(api_world, Role.DEV_WORKER)["connection_info"]["supabase_url"].endswith("-kong.fly.dev")


def test_a_town_in_a_stack_file_is_visible_but_changed_only_there(api_world: ServiceWorld, silo: StackProgram) -> None:
    with api_world.client(Role.BACKEND, **{"X-User-Id": TOWN["user"]}) as backend:
        [town] = backend.get("/v1/towns", params={"user_id": TOWN["user"]}).json()
        assert town["name"] == "stackfile" and town["status"] == "running"
        refused = backend.post(f"/v1/towns/{town['id']}/stop")
    assert refused.status_code == 409 and "silo:towns" in refused.json()["detail"]


def test_the_service_renews_r2_credentials_before_they_lapse(api_world: ServiceWorld) -> None:
    with api_world.client(Role.BACKEND) as backend:
        soon = backend.post("/v1/towns?wait=true", json={"user_id": "user-renew", "name": "soon", "rigs": []}).json()
        later = backend.post("/v1/towns?wait=true", json={"user_id": "user-renew", "name": "later", "rigs": []}).json()
    with psycopg.connect(api_world.dsn) as conn:
        expiry = conn.execute("SELECT r2_credentials_expire_at FROM gastown_towns WHERE id = %s", (later["id"],))
        assert expiry.fetchone()[0] is not None  # recorded by the town's up
        conn.execute(
            "UPDATE gastown_towns SET r2_credentials_expire_at = now() + interval '1 hour' WHERE id = %s", (soon["id"],)
        )
    deadline = time.monotonic() + 120
    renewal = None
    while renewal is None and time.monotonic() < deadline:
        with psycopg.connect(api_world.dsn) as conn:
            renewal = conn.execute(
                "SELECT id::text, status FROM silo_operations WHERE town_id = %s AND kind = 'town.renew'", (soon["id"],)
            ).fetchone()
    assert renewal is not None, "no renewal was queued"
    with api_world.client(Role.DEVOPS) as devops:
        assert api_world.wait(devops, renewal[0])["status"] == "succeeded"
    with psycopg.connect(api_world.dsn) as conn:
        others = conn.execute(
            "SELECT count(*) FROM silo_operations WHERE town_id = %s AND kind = 'town.renew'", (later["id"],)
        ).fetchone()
    assert others == (0,)  # credentials a week from lapsing are left alone
