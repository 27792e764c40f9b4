"""A machine whose health checks never pass fails `up` with a message naming it, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from emulators.fly import LatencyModel
from harness.engine import run

pytestmark = pytest.mark.harness
ROOT = Path(__file__).resolve().parent.parent


def test_unhealthy_machine_fails_up_without_orphans_and_next_up_converges(tmp_path: Path, fly_emulator) -> None:
    config = {**yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"], "silo:studio": "false",
              "silo:readyTimeoutSeconds": "2"}
    config_file = tmp_path / "Pulumi.dev.yaml"
    config_file.write_text(yaml.safe_dump({"config": config}))

    def up():
        return run("up", "dev", ROOT, tmp_path / "state", config_file=config_file,
                   env={"FLY_API_HOSTNAME": fly_emulator.url})

    fly_emulator.set_latency(LatencyModel(check_pass_s=120))
    failed = up()
    assert not failed.ok
    assert "devenv-acme-erp-pg" in failed.error and "health checks" in failed.error
    # The unhealthy pg machine was rolled back, and nothing that needs it was started.
    assert fly_emulator.snapshot()["machines"] == {}

    fly_emulator.set_latency(LatencyModel())
    converged = up()
    assert converged.ok, converged.error
    machines = fly_emulator.snapshot()["machines"].values()
    assert sorted(m["app"] for m in machines) == sorted(f"devenv-acme-erp-{s}" for s in
                                                        ("pg", "rest", "auth", "storage", "meta", "kong"))
