"""No leaks when a town's `up` fails part way (issue: "if any step after the volume fails (machine
create, secrets, registry row), everything created by that step is removed before the error is shown,
or the next up adopts it. Prove it with the emulator's fault injection at every step.").

Every mutating call a town's first `up` makes (Fly: app, IP, secrets, volume, machine create, the
wait for it to start, and the start of a stopped town; Cloudflare: temporary R2 credentials) is made to
fail once, with the change either not applied or applied and its answer lost (``after_effect``); the
registry database refuses once too. The failing `up` must report the error; the next `up` without
faults must converge: exactly one app/volume/machine per town on Fly with the volume attached, exactly
one active registry row carrying those Fly ids, and the stack's state and the emulator agreeing both ways.

Faults use non-transient statuses (Fly 422, Cloudflare 400): transient ones are retried inside the
same `up` (tested with the client), and these tests are about what a *failed* run leaves behind.

Speed: the control stack and the silo's Supabase apps are deployed once per module; each test gets
copies (emulator state files, the stacks' project and backend, ``CREATE DATABASE ... TEMPLATE``), so its runs only
touch the town, and the fault hits the town's call, not a Supabase app's.
"""

from __future__ import annotations

import json
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from components.domain.naming import is_owner_secret, sandbox_id, town_volume_name
from emulators.cloudflare import CloudflareEmulator
from emulators.fly import FlyEmulator
from engine.runner import RunResult
from tests.fixtures.cloudflare import CF_TOKEN
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.program import (
    FLY,
    STACK,
    TOWNS_SILO,
    SiloProgram,
    StackProgram,
    assert_state_matches_emulator,
    control_env,
    fly_env,
)

pytestmark = [pytest.mark.db, pytest.mark.engine]

CONTROL = {"silo:kind": "control", "silo:backupBucket": "acme-gastown-backups"}
TOWN = {"name": "alpha", "user": "user-1", "rigs": [{"name": "web", "url": "https://github.com/acme/web.git"}]}
SID = sandbox_id(TOWN["user"], TOWN["name"])
RECORDS = "acme-erp-town-records"  # the silo's registry rows: one resource for all its towns
TOWN_SECRETS = {"R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_SESSION_TOKEN", "INTERNAL_API_KEY"}
TEMP_CREDENTIALS = "/client/v4/accounts/{account_id}/r2/temp-access-credentials"
FLY_FAULT_STATUS = 422
CF_FAULT_STATUS = 400


def silo_config(state: str = "running") -> dict[str, str]:
    return {**TOWNS_SILO, "silo:towns": json.dumps([{**TOWN, "state": state}])}


@dataclass
class World:
    """Emulators, a registry database and the two stacks (one project, one backend) under `root`."""

    root: Path
    fly: FlyEmulator
    cf: CloudflareEmulator
    dsn: str
    env_overrides: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**fly_env(self.fly), **control_env(self.dsn, self.cf), **self.env_overrides}

    def run(self, op: str, stack: str, config: dict[str, str]) -> RunResult:
        # A workspace per run: its environment is fixed when it is made, and tests change it.
        return StackProgram(self.root, stack, self.env()).run_config(op, config)

    def up(self, stack: str, config: dict[str, str]) -> RunResult:
        result = self.run("up", stack, config)
        assert result.ok, f"up {stack} failed: {result.error}\n{result.text[-3000:]}"
        return result

    @property
    def program(self) -> SiloProgram:
        """The silo stack seen through the shared helpers."""
        return SiloProgram(self.fly, self.root, env=self.env())


@dataclass(frozen=True)
class Baseline:
    root: Path  # fly.json, cf.json, project/, state/
    database: str


def _start(root: Path) -> tuple[FlyEmulator, CloudflareEmulator]:
    fly = FlyEmulator(state_file=root / "fly.json")
    cf = CloudflareEmulator(token=CF_TOKEN, state_file=root / "cf.json")
    fly.start()
    cf.start()
    return fly, cf


@pytest.fixture(scope="module")
def baseline(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Baseline]:
    """The control stack and a silo without towns, deployed once and frozen on disk."""
    root = tmp_path_factory.mktemp("town-baseline")
    database = postgres_server.create_database()
    try:
        fly, cf = _start(root)
        try:
            world = World(root, fly, cf, postgres_server.dsn(database))
            world.up("control", CONTROL)
            world.up(STACK, TOWNS_SILO)
        finally:
            fly.stop()
            cf.stop()
        yield Baseline(root, database)
    finally:
        postgres_server.drop_database(database)


@pytest.fixture
def world(baseline: Baseline, postgres_server: PostgresServer, tmp_path: Path) -> Iterator[World]:
    """A private copy of the baseline: emulators restarted from copied state, a cloned database."""
    database = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(database), sql.Identifier(baseline.database)
            )
        )
    root = tmp_path / "world"
    shutil.copytree(baseline.root, root)
    fly, cf = _start(root)
    try:
        yield World(root, fly, cf, postgres_server.dsn(database))
    finally:
        fly.stop()
        cf.stop()
        postgres_server.drop_database(database)


# -- what the emulators and the registry hold for the town -------------------------------------------
def town_objects(fly: FlyEmulator) -> dict[str, Any]:
    snap = fly.snapshot()
    return {
        "app": SID in snap["apps"],
        "volumes": {vid: v for vid, v in snap["volumes"].items() if v["app"] == SID},
        "machines": {mid: m for mid, m in snap["machines"].items() if m["app"] == SID},
        "ips": [ip["type"] for ip in snap["ips"].get(SID, [])],
        # The stack's ownership mark (FlyApp's, not a town secret) is left out: it comes with the app.
        "secrets": {k for k in snap["secrets"].get(SID, {}) if not is_owner_secret(k)},
    }


def registry_rows(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT id::text, sandbox_id, status, fly_machine_id, fly_volume_id, destroyed_at IS NOT NULL "
            "FROM gastown_towns WHERE user_id = %s AND town_name = %s",
            (TOWN["user"], TOWN["name"]),
        )
        keys = ("id", "sandbox_id", "status", "machine", "volume", "destroyed")
        return [dict(zip(keys, row, strict=True)) for row in cur.fetchall()]


def assert_no_duplicates(fly: FlyEmulator) -> dict[str, Any]:
    """Even right after a failure, never two of anything for one town."""
    objects = town_objects(fly)
    assert len(objects["volumes"]) <= 1 and len(objects["machines"]) <= 1 and len(objects["ips"]) <= 1, objects
    return objects


def assert_converged(world: World, leftover: dict[str, Any], *, check_preview: bool = True) -> None:
    """One of everything, matching ids everywhere; with `check_preview`, a preview then has nothing to do
    (skipped where the recovering up was a plain first create, to keep the module quick)."""
    objects = town_objects(world.fly)
    assert objects["app"]
    [(volume_id, volume)] = objects["volumes"].items()
    [(machine_id, machine)] = objects["machines"].items()
    assert volume["name"] == town_volume_name(SID)
    assert volume["attached_machine_id"] == machine_id
    assert [m["volume"] for m in machine["config"]["mounts"]] == [volume_id]
    assert machine["state"] == "started"
    assert objects["ips"] == ["private_v6"]
    assert objects["secrets"] == TOWN_SECRETS
    # What a failed run left on Fly was adopted, not replaced by a second copy.
    assert set(leftover["volumes"]) <= {volume_id}, "a volume left by the failed run was not adopted"
    assert set(leftover["machines"]) <= {machine_id}, "a machine left by the failed run was not adopted"

    [row] = registry_rows(world.dsn)  # one row ever: no duplicate, no destroyed leftover
    assert row == {"id": row["id"], "sandbox_id": SID, "status": "running", "machine": machine_id,
                   "volume": volume_id, "destroyed": False}  # fmt: skip

    program = world.program
    assert_state_matches_emulator(program)
    assert program.resource(f"{SID}-machine").id == machine_id
    assert program.resource(f"{SID}-volume").id == volume_id
    assert program.resource(f"{SID}-registration").id == row["id"]
    record = program.resource(RECORDS).outputs["towns"][SID]
    assert (record["fly_machine_id"], record["fly_volume_id"], record["status"]) == (machine_id, volume_id, "running")
    # The machine holds credentials Cloudflare issued for this town's prefix only.
    credentials = program.resource(f"{SID}-r2-credentials").outputs
    issued = {c["accessKeyId"]: c["prefixes"] for c in world.cf.snapshot()["temp_credentials"]}
    assert issued.get(credentials["access_key_id"]) == [f"gastown/{row['id']}/"]

    if not check_preview:
        return
    # Adopted objects must match what the program wants: nothing left to do.
    world.fly.clear_calls()
    preview = world.run("preview", STACK, silo_config())
    assert preview.ok, preview.error
    assert set(preview.changes) <= {"same", "read"}, preview.steps
    assert [c for c in world.fly.calls() if c["mutating"]] == []


def fault_fired(calls: list[dict[str, Any]], method: str, route: str, status: int) -> bool:
    return any(c["method"] == method and c["route"] == route and c["status"] == status for c in calls)


# -- Fly and Cloudflare faults on the town's first up ------------------------------------------------------
FLY_STEPS = [
    ("POST", "/v1/apps"),
    ("POST", "/v1/apps/{app}/ip_assignments"),
    ("POST", "/v1/apps/{app}/secrets"),
    ("POST", "/v1/apps/{app}/volumes"),
    ("POST", "/v1/apps/{app}/machines"),
]
FAULTS = [
    *[
        pytest.param(
            "fly", method, route, after, id=f"{route.rsplit('/', 1)[-1]}-{'lost-answer' if after else 'refused'}"
        )
        for method, route in FLY_STEPS
        for after in (False, True)
    ],
    # The machine was created but the boot gate's wait was refused: the up fails, the machine stays
    # tracked in state (not orphaned), and the next up's gate finds it started.
    pytest.param("fly", "GET", "/v1/apps/{app}/machines/{machine_id}/wait", False, id="wait-refused"),
    pytest.param("cloudflare", "POST", TEMP_CREDENTIALS, False, id="r2-credentials-refused"),
    pytest.param("cloudflare", "POST", TEMP_CREDENTIALS, True, id="r2-credentials-lost-answer"),
]


@pytest.mark.parametrize(("target", "method", "route", "after_effect"), FAULTS)
def test_failed_town_step_leaves_nothing_the_next_up_does_not_adopt(
    world: World, target: str, method: str, route: str, after_effect: bool
) -> None:
    if target == "fly":
        world.fly.fail(method, route, status=FLY_FAULT_STATUS, after_effect=after_effect)
    else:
        world.cf.fail(method, route, status=CF_FAULT_STATUS, after_effect=after_effect)

    failed = world.run("up", STACK, silo_config())

    assert not failed.ok
    assert failed.error is not None
    status = FLY_FAULT_STATUS if target == "fly" else CF_FAULT_STATUS
    calls = world.fly.calls() if target == "fly" else world.cf.calls()
    assert fault_fired(calls, method, route, status), "the fault never hit the town's call"
    assert str(status) in failed.error, failed.error
    leftover = assert_no_duplicates(world.fly)
    if route.endswith("/wait"):
        [machine_id] = leftover["machines"]  # the machine the gate gave up on: kept, to be checked again
        assert world.program.resource(f"{SID}-machine").id == machine_id, "it must stay tracked in state"
        assert f"{SID}-machine" in failed.error or machine_id in failed.error, failed.error
    if not after_effect and route in ("/v1/apps/{app}/volumes", "/v1/apps/{app}/machines"):
        kind = "volumes" if route.endswith("volumes") else "machines"
        assert leftover[kind] == {}, f"a refused create left {kind}"

    world.up(STACK, silo_config())

    assert_converged(world, leftover, check_preview=after_effect)


@pytest.mark.parametrize("after_effect", [False, True], ids=["refused", "lost-answer"])
def test_failed_start_of_a_stopped_town_converges_on_the_next_up(world: World, after_effect: bool) -> None:
    world.up(STACK, silo_config("stopped"))
    [machine_id] = town_objects(world.fly)["machines"]
    route = "/v1/apps/{app}/machines/{machine_id}/start"
    world.fly.fail("POST", route, status=FLY_FAULT_STATUS, after_effect=after_effect)

    failed = world.run("up", STACK, silo_config())

    assert not failed.ok
    assert fault_fired(world.fly.calls(), "POST", route, FLY_FAULT_STATUS)
    leftover = assert_no_duplicates(world.fly)
    assert set(leftover["machines"]) == {machine_id}, "a failed start must not remove or duplicate the machine"
    # The registry still says what was last deployed, not what was attempted.
    assert [r["status"] for r in registry_rows(world.dsn)] == ["stopped"]

    world.up(STACK, silo_config())

    assert_converged(world, leftover)


# -- the registry refuses -----------------------------------------------------------------------------------
REFUSE_RECORD = """
CREATE FUNCTION test_refuse_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'registry refuses the town record (test fault)'; END $$;
CREATE TRIGGER test_refuse_record BEFORE UPDATE OF fly_machine_id ON gastown_towns
    FOR EACH ROW WHEN (NEW.fly_machine_id IS DISTINCT FROM OLD.fly_machine_id)
    EXECUTE FUNCTION test_refuse_record();
"""


def test_refused_registry_record_write_converges_on_the_next_up(world: World) -> None:
    """The last step (the row gets the Fly ids) fails after app, volume and machine exist."""
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        conn.execute(REFUSE_RECORD)

    failed = world.run("up", STACK, silo_config())

    assert not failed.ok
    assert failed.error is not None and "registry refuses the town record" in failed.error, failed.error
    leftover = assert_no_duplicates(world.fly)
    assert len(leftover["machines"]) == 1 and len(leftover["volumes"]) == 1
    [row] = registry_rows(world.dsn)
    assert (row["status"], row["machine"]) == ("provisioning", None)
    assert not [r for r in world.program.state().resources.values() if r.name == RECORDS]

    with psycopg.connect(world.dsn, autocommit=True) as conn:
        conn.execute("DROP TRIGGER test_refuse_record ON gastown_towns; DROP FUNCTION test_refuse_record()")
    world.up(STACK, silo_config())

    assert_converged(world, leftover)


def test_unreachable_registry_creates_nothing_on_fly_and_the_next_up_converges(world: World) -> None:
    """The row comes first: without it no town id exists, so nothing may be created on Fly."""
    with socket.socket() as closed:  # bound, never listening: connections are refused at once
        closed.bind(("127.0.0.1", 0))
        world.env_overrides["SILO_REGISTRY_DSN"] = (
            f"host=127.0.0.1 port={closed.getsockname()[1]} user=postgres dbname=postgres connect_timeout=5"
        )
        world.fly.clear_calls()
        failed = world.run("up", STACK, silo_config())
    world.env_overrides.clear()

    assert not failed.ok
    assert failed.error is not None and f"{SID}-registration" in failed.error, failed.error
    assert [c for c in world.fly.calls() if c["mutating"]] == []
    assert town_objects(world.fly) == {"app": False, "volumes": {}, "machines": {}, "ips": [], "secrets": set()}
    assert registry_rows(world.dsn) == []
    assert not [r for r in world.program.state().resources.values() if r.type.startswith(FLY) and SID in r.name]

    world.up(STACK, silo_config())

    assert_converged(world, town_objects(world.fly), check_preview=False)


# -- the registry row edited outside Pulumi ------------------------------------------------------------------
def test_refresh_shows_a_registry_row_edited_by_hand_and_the_next_up_writes_it_back(world: World) -> None:
    world.up(STACK, silo_config())
    clean = world.run("refresh", STACK, silo_config())
    assert clean.ok and clean.changed() == {}, clean.changed()
    [row] = registry_rows(world.dsn)
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        conn.execute("UPDATE gastown_towns SET status = 'stopped', fly_machine_id = NULL WHERE id = %s", (row["id"],))
        conn.execute("UPDATE gastown_rigs SET status = 'removed' WHERE town_id = %s", (row["id"],))

    drift = world.run("refresh", STACK, silo_config())
    assert drift.ok, drift.error
    assert drift.changed() == {RECORDS: "update"}
    recorded = world.program.resource(RECORDS).outputs["towns"][SID]
    assert (recorded["status"], recorded.get("fly_machine_id"), recorded["rigs"]) == ("stopped", None, [])

    repaired = world.up(STACK, silo_config())
    assert repaired.changed() == {RECORDS: "update"}
    [row] = registry_rows(world.dsn)
    assert (row["status"], row["machine"]) == ("running", town_objects(world.fly)["machines"].popitem()[0])
    with psycopg.connect(world.dsn) as conn:
        rigs = conn.execute("SELECT rig_name FROM gastown_rigs WHERE town_id = %s AND status = 'active'", (row["id"],))
        assert [r[0] for r in rigs] == [TOWN["rigs"][0]["name"]]
    assert world.run("refresh", STACK, silo_config()).changed() == {}
