"""A machine whose health checks never pass fails `up` with a message naming it, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulators.fly import LatencyModel
from tests.fixtures.program import SiloProgram

pytestmark = pytest.mark.engine


def test_unhealthy_machine_fails_up_without_orphans_and_next_up_converges(tmp_path: Path, fly_emulator) -> None:
    program = SiloProgram(fly_emulator, tmp_path, studio="false", readyTimeoutSeconds="2")

    fly_emulator.set_latency(LatencyModel(check_pass_s=120))
    failed = program.run("up")
    assert not failed.ok
    assert "devenv-acme-erp-pg" in failed.error and "health checks" in failed.error
    # The unhealthy pg machine was rolled back, and nothing that needs it was started.
    assert fly_emulator.snapshot()["machines"] == {}

    fly_emulator.set_latency(LatencyModel())
    converged = program.run("up")
    assert converged.ok, converged.error
    machines = fly_emulator.snapshot()["machines"].values()
    assert sorted(m["app"] for m in machines) == sorted(
        f"devenv-acme-erp-{s}" for s in ("pg", "rest", "auth", "storage", "meta", "kong")
    )
