"""`pulumi refresh` and credential rotation on the real engine.

- A converged silo refreshes with no changes. Changes made outside Pulumi (a machine stopped by hand,
  an app secret unset) show in the refresh, the next `up` repairs them, and a refresh after that is
  clean again.
- The engine configures dynamic providers for `refresh` and `destroy` with the config saved in state at
  the last `up`. After `pulumi config set --secret fly:apiToken NEW` (the old token revoked), a plain
  refresh still sends the old token and fails; the README's procedure (`--run-program`, or an `up`
  first) works.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.providers.fly.client import FlyClient
from components.providers.fly.settings import FlySettings
from emulators.fly import FlyEmulator
from tests.fixtures.program import SiloProgram, assert_state_matches_emulator

pytestmark = pytest.mark.engine

PG, REST, KONG = "devenv-acme-erp-pg", "devenv-acme-erp-rest", "devenv-acme-erp-kong"


def test_refresh_shows_changes_made_by_hand_and_the_next_up_repairs_them(tmp_path: Path, fly_emulator) -> None:
    # No auto-stop: a stopped machine is then drift, not Fly's proxy resting an idle machine.
    program = SiloProgram(fly_emulator, tmp_path, studio="false", autoStopMinutes="0")
    program.up()
    clean = program.run("refresh")
    assert clean.ok, clean.error
    assert clean.changed() == {} and set(clean.changes) == {"same"}, clean.changes

    with FlyClient(FlySettings(fly_emulator.url, "by-hand", "env")) as fly:
        [pg] = fly.list_machines(PG)
        fly.stop_machine(PG, pg["id"])
        fly.wait(PG, pg["id"], "stopped", version=pg["instance_id"], timeout_s=60)
        fly.set_secrets(REST, {"PGRST_DB_URI": None})

    drift = program.run("refresh")
    assert drift.ok, drift.error
    assert drift.changed() == {f"{PG}-machine": "update", f"{REST}-secrets": "update"}
    assert program.resource(f"{PG}-machine").outputs["state"] == "stopped"

    repaired = program.up()
    assert repaired.changed() == {
        f"{PG}-machine": "update",  # started again
        f"{REST}-secrets": "update",  # the secret set again
        f"{REST}-machine": "update",  # restarted on the new secrets version
        "devenv-acme-erp-ready": "update",  # ... and waited for until healthy
    }
    snap = fly_emulator.snapshot()
    assert {m["name"]: m["state"] for m in snap["machines"].values()}["pg"] == "started"
    assert "PGRST_DB_URI" in snap["secrets"][REST]
    assert_state_matches_emulator(program)
    again = program.run("refresh")
    assert again.changed() == {}, again.changed()


def test_an_idle_machine_stopped_by_fly_autostop_is_not_drift(tmp_path: Path, fly_emulator) -> None:
    # autoStopMinutes 30 (the default): Fly's proxy stops idle machines and starts them on demand.
    program = SiloProgram(fly_emulator, tmp_path, studio="false")
    program.up()
    with FlyClient(FlySettings(fly_emulator.url, "proxy", "env")) as fly:
        [kong] = fly.list_machines("devenv-acme-erp-kong")
        fly.stop_machine("devenv-acme-erp-kong", kong["id"])
        fly.wait("devenv-acme-erp-kong", kong["id"], "stopped", version=kong["instance_id"], timeout_s=60)
    refreshed = program.run("refresh")
    assert refreshed.ok and refreshed.changed() == {}, refreshed.changed()


def test_a_refresh_of_an_unchanged_stopped_silo_is_clean(tmp_path: Path, fly_emulator) -> None:
    # The default autostop: the services' machines auto-stop when idle. Stopped because the silo is, they
    # are as wanted; the scheduled drift check must not alarm every day for every stopped silo.
    program = SiloProgram(fly_emulator, tmp_path, studio="false")
    program.up()
    program.up(state="stopped")
    assert {m["state"] for m in fly_emulator.snapshot()["machines"].values()} == {"stopped"}
    clean = program.run("refresh", state="stopped")
    assert clean.ok, clean.error
    assert clean.changed() == {}, clean.changed()

    # A machine started in a stopped silo, by hand or by a request through Kong, is drift all the same.
    with FlyClient(FlySettings(fly_emulator.url, "by-hand", "env")) as fly:
        [kong] = fly.list_machines(KONG)
        fly.start_machine(KONG, kong["id"])
        fly.wait(KONG, kong["id"], "started", timeout_s=60)
    drift = program.run("refresh", state="stopped")
    assert drift.ok, drift.error
    assert drift.changed() == {f"{KONG}-machine": "update"}
    assert program.resource(f"{KONG}-machine").outputs["state"] == "started"


@pytest.fixture
def guarded_emulator() -> FlyEmulator:
    emulator = FlyEmulator(token="old-token")
    emulator.start()
    yield emulator
    emulator.stop()


def test_a_rotated_fly_token_is_used_by_refresh_and_destroy_through_the_documented_procedure(
    tmp_path: Path, guarded_emulator: FlyEmulator
) -> None:
    program = SiloProgram(guarded_emulator, tmp_path, studio="false")
    program.set_secret("fly:apiToken", "old-token")
    program.up()

    # Rotate: the new token in the stack's config, the old one revoked.
    program.set_secret("fly:apiToken", "new-token")
    guarded_emulator.set_token("new-token")

    # refresh and destroy configure the providers from the state of the last `up`: the old token.
    stale = program.run("refresh")
    assert not stale.ok
    assert "401" in stale.error or "token" in stale.error.lower(), stale.error
    assert "old-token" not in stale.text and "new-token" not in stale.text

    # The procedure (docs/security.md, "Rotating credentials"): run the program so the providers get the config
    # of the stack file — `refresh --run-program` / `destroy --run-program`, or any `up`.
    fresh = program.run("refresh", engine_args={"run_program": True})
    assert fresh.ok, fresh.error
    # No Fly object drifted (running the program re-registers the stack's and components' outputs).
    assert [s.name for s in fresh.steps if s.type.startswith("pulumi-python:") and s.op != "refresh"] == []
    destroyed = program.run("destroy", engine_args={"run_program": True})
    assert destroyed.ok, destroyed.error
    assert set(guarded_emulator.snapshot()["apps"]) == {PG, "devenv-acme-erp-storage"}  # data apps kept
    assert "old-token" not in program.raw_state() and "new-token" not in program.raw_state()
