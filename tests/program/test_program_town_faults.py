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
copies (``town_world``, tests/fixtures/town_world.py: emulator state files, the stacks' project and backend,
``CREATE DATABASE ... TEMPLATE``), so its runs only touch the town, and the fault hits the town's call, not a
Supabase app's.
"""

from __future__ import annotations

import socket
from typing import Any

import psycopg
import pytest

from tests.fixtures.program import FLY, STACK
from tests.fixtures.town_world import (
    RECORDS,
    SID,
    TOWN,
    World,
    assert_converged,
    assert_no_duplicates,
    registry_rows,
    silo_config,
    town_objects,
)

pytestmark = [pytest.mark.db, pytest.mark.engine]

TEMP_CREDENTIALS = "/client/v4/accounts/{account_id}/r2/temp-access-credentials"
FLY_FAULT_STATUS = 422
CF_FAULT_STATUS = 400


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
    town_world: World, target: str, method: str, route: str, after_effect: bool
) -> None:
    if target == "fly":
        town_world.fly.fail(method, route, status=FLY_FAULT_STATUS, after_effect=after_effect)
    else:
        town_world.cf.fail(method, route, status=CF_FAULT_STATUS, after_effect=after_effect)

    failed = town_world.run("up", STACK, silo_config())

    assert not failed.ok
    assert failed.error is not None
    status = FLY_FAULT_STATUS if target == "fly" else CF_FAULT_STATUS
    calls = town_world.fly.calls() if target == "fly" else town_world.cf.calls()
    assert fault_fired(calls, method, route, status), "the fault never hit the town's call"
    assert str(status) in failed.error, failed.error
    leftover = assert_no_duplicates(town_world.fly)
    if route.endswith("/wait"):
        [machine_id] = leftover["machines"]  # the machine the gate gave up on: kept, to be checked again
        assert town_world.program.resource(f"{SID}-machine").id == machine_id, "it must stay tracked in state"
        assert f"{SID}-machine" in failed.error or machine_id in failed.error, failed.error
    if not after_effect and route in ("/v1/apps/{app}/volumes", "/v1/apps/{app}/machines"):
        kind = "volumes" if route.endswith("volumes") else "machines"
        assert leftover[kind] == {}, f"a refused create left {kind}"

    town_world.up(STACK, silo_config())

    assert_converged(town_world, leftover, check_preview=after_effect)


@pytest.mark.parametrize("after_effect", [False, True], ids=["refused", "lost-answer"])
def test_failed_start_of_a_stopped_town_converges_on_the_next_up(town_world: World, after_effect: bool) -> None:
    town_world.up(STACK, silo_config("stopped"))
    [machine_id] = town_objects(town_world.fly)["machines"]
    route = "/v1/apps/{app}/machines/{machine_id}/start"
    town_world.fly.fail("POST", route, status=FLY_FAULT_STATUS, after_effect=after_effect)

    failed = town_world.run("up", STACK, silo_config())

    assert not failed.ok
    assert fault_fired(town_world.fly.calls(), "POST", route, FLY_FAULT_STATUS)
    leftover = assert_no_duplicates(town_world.fly)
    assert set(leftover["machines"]) == {machine_id}, "a failed start must not remove or duplicate the machine"
    # The registry still says what was last deployed, not what was attempted.
    assert [r["status"] for r in registry_rows(town_world.dsn)] == ["stopped"]

    town_world.up(STACK, silo_config())

    assert_converged(town_world, leftover)


# -- the registry refuses -----------------------------------------------------------------------------------
REFUSE_RECORD = """
CREATE FUNCTION test_refuse_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'registry refuses the town record (test fault)'; END $$;
CREATE TRIGGER test_refuse_record BEFORE UPDATE OF fly_machine_id ON gastown_towns
    FOR EACH ROW WHEN (NEW.fly_machine_id IS DISTINCT FROM OLD.fly_machine_id)
    EXECUTE FUNCTION test_refuse_record();
"""


def test_refused_registry_record_write_converges_on_the_next_up(town_world: World) -> None:
    """The last step (the row gets the Fly ids) fails after app, volume and machine exist."""
    with psycopg.connect(town_world.dsn, autocommit=True) as conn:
        conn.execute(REFUSE_RECORD)

    failed = town_world.run("up", STACK, silo_config())

    assert not failed.ok
    assert failed.error is not None and "registry refuses the town record" in failed.error, failed.error
    leftover = assert_no_duplicates(town_world.fly)
    assert len(leftover["machines"]) == 1 and len(leftover["volumes"]) == 1
    [row] = registry_rows(town_world.dsn)
    assert (row["status"], row["machine"]) == ("provisioning", None)
    assert not [r for r in town_world.program.state().resources.values() if r.name == RECORDS]

    with psycopg.connect(town_world.dsn, autocommit=True) as conn:
        conn.execute("DROP TRIGGER test_refuse_record ON gastown_towns; DROP FUNCTION test_refuse_record()")
    town_world.up(STACK, silo_config())

    assert_converged(town_world, leftover)


def test_unreachable_registry_creates_nothing_on_fly_and_the_next_up_converges(town_world: World) -> None:
    """The row comes first: without it no town id exists, so nothing may be created on Fly."""
    with socket.socket() as closed:  # bound, never listening: connections are refused at once
        closed.bind(("127.0.0.1", 0))
        town_world.env_overrides["SILO_REGISTRY_DSN"] = (
            f"host=127.0.0.1 port={closed.getsockname()[1]} user=postgres dbname=postgres connect_timeout=5"
        )
        town_world.fly.clear_calls()
        failed = town_world.run("up", STACK, silo_config())
    town_world.env_overrides.clear()

    assert not failed.ok
    assert failed.error is not None and f"{SID}-registration" in failed.error, failed.error
    assert [c for c in town_world.fly.calls() if c["mutating"]] == []
    assert town_objects(town_world.fly) == {"app": False, "volumes": {}, "machines": {}, "ips": [], "secrets": set()}
    assert registry_rows(town_world.dsn) == []
    assert not [r for r in town_world.program.state().resources.values() if r.type.startswith(FLY) and SID in r.name]

    town_world.up(STACK, silo_config())

    assert_converged(town_world, town_objects(town_world.fly), check_preview=False)


# -- the registry row edited outside Pulumi ------------------------------------------------------------------
def test_refresh_shows_a_registry_row_edited_by_hand_and_the_next_up_writes_it_back(town_world: World) -> None:
    town_world.up(STACK, silo_config())
    clean = town_world.run("refresh", STACK, silo_config())
    assert clean.ok and clean.changed() == {}, clean.changed()
    [row] = registry_rows(town_world.dsn)
    with psycopg.connect(town_world.dsn, autocommit=True) as conn:
        conn.execute("UPDATE gastown_towns SET status = 'stopped', fly_machine_id = NULL WHERE id = %s", (row["id"],))
        conn.execute("UPDATE gastown_rigs SET status = 'removed' WHERE town_id = %s", (row["id"],))

    drift = town_world.run("refresh", STACK, silo_config())
    assert drift.ok, drift.error
    assert drift.changed() == {RECORDS: "update"}
    recorded = town_world.program.resource(RECORDS).outputs["towns"][SID]
    assert (recorded["status"], recorded.get("fly_machine_id"), recorded["rigs"]) == ("stopped", None, [])

    repaired = town_world.up(STACK, silo_config())
    assert repaired.changed() == {RECORDS: "update"}
    [row] = registry_rows(town_world.dsn)
    assert (row["status"], row["machine"]) == ("running", town_objects(town_world.fly)["machines"].popitem()[0])
    with psycopg.connect(town_world.dsn) as conn:
        rigs = conn.execute("SELECT rig_name FROM gastown_rigs WHERE town_id = %s AND status = 'active'", (row["id"],))
        assert [r[0] for r in rigs] == [TOWN["rigs"][0]["name"]]
    assert town_world.run("refresh", STACK, silo_config()).changed() == {}
