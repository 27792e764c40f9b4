"""A machine whose health checks never pass fails `up` with a message naming it and its check, and leaves
nothing untracked: the machines created so far are in state, those that need it at boot were never
created, and the next `up` converges."""

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
