"""A machine whose health checks never pass fails `up` with a message naming it and its check, and leaves
nothing untracked: the machines created so far are in state, those that need it at boot were never
created, and the next `up` converges.

A machine Fly cannot start (the persistent `failed` state) shows in a refresh; the next `up` starts it,
and when it fails again the `up` fails at once with the machine's last events, not after
`readyTimeoutSeconds`."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulators.fly import LatencyModel
from tests.fixtures.program import SiloProgram, assert_state_matches_emulator

pytestmark = pytest.mark.engine


def test_unhealthy_machine_fails_up_without_orphans_and_next_up_converges(tmp_path: Path, fly_emulator) -> None:
    program = SiloProgram(fly_emulator, tmp_path, studio="false", readyTimeoutSeconds="2")

    fly_emulator.set_latency(LatencyModel(check_pass_s=120))
    failed = program.run("up")
    assert not failed.ok
    assert "devenv-acme-erp-pg" in failed.error and "health checks" in failed.error
    # Postgres never became healthy: what needs it at boot (PostgREST, GoTrue, Storage) was never
    # created; what reaches it per request booted alongside. Everything on Fly is in state.
    apps = sorted(m["app"] for m in fly_emulator.snapshot()["machines"].values())
    assert apps == [f"devenv-acme-erp-{s}" for s in ("kong", "meta", "pg")]
    assert_state_matches_emulator(program)

    fly_emulator.set_latency(LatencyModel())
    converged = program.run("up")
    assert converged.ok, converged.error
    machines = fly_emulator.snapshot()["machines"].values()
    assert sorted(m["app"] for m in machines) == sorted(
        f"devenv-acme-erp-{s}" for s in ("pg", "rest", "auth", "storage", "meta", "kong")
    )
    assert {m["state"] for m in machines} == {"started"}
    assert_state_matches_emulator(program)


def test_a_machine_fly_cannot_start_shows_in_refresh_and_fails_up_at_once(tmp_path: Path, fly_emulator) -> None:
    meta = "devenv-acme-erp-meta"
    # The default readyTimeoutSeconds (600): a wait that ignored `failed` would spend it all.
    program = SiloProgram(fly_emulator, tmp_path, studio="false")
    program.up()
    [machine_id] = [mid for mid, m in fly_emulator.snapshot()["machines"].items() if m["app"] == meta]
    fly_emulator.fail_machine(meta, machine_id, exit_code=3, every_start=True)

    refreshed = program.run("refresh")
    assert refreshed.ok, refreshed.error
    assert refreshed.changed() == {f"{meta}-machine": "update", "devenv-acme-erp-ready": "update"}
    assert program.resource(f"{meta}-machine").outputs["state"] == "failed"

    failed = program.run("up")
    assert not failed.ok
    assert meta in failed.error and "`failed` state" in failed.error and "exit code 3" in failed.error
    assert "did not reach" not in failed.error
    assert_state_matches_emulator(program)

    # The cause fixed, a refresh and an up start it again.
    fly_emulator.heal_machine(meta, machine_id)
    assert program.run("refresh").ok
    converged = program.run("up")
    assert converged.ok, converged.error
    assert {m["state"] for m in fly_emulator.snapshot()["machines"].values()} == {"started"}
    again = program.run("refresh")
    assert again.ok and again.changed() == {}, again.changed()
