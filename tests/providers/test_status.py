"""`silo status` reads machines, checks, volumes and IPs of a silo's apps from the Fly API (emulator)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from components.providers.fly.client import FlyClient
from components.providers.fly.settings import FlySettings

ROOT = Path(__file__).resolve().parents[2]


def test_status_lists_each_app_with_machine_state_checks_volume_and_ips(fly_emulator, tmp_path: Path) -> None:
    with FlyClient(FlySettings(fly_emulator.url, "test", "env")) as fly:
        fly.create_app("devenv-acme-erp-pg", "acme-erp")
        volume = fly.create_volume("devenv-acme-erp-pg", {"name": "pg_data", "region": "yul", "size_gb": 10})
        fly.allocate_ip("devenv-acme-erp-pg", "private_v6")
        config = {
            "image": "supabase/postgres:15.8.1.085",
            "mounts": [{"volume": volume["id"], "path": "/data"}],
            "services": [
                {
                    "protocol": "tcp",
                    "internal_port": 5432,
                    "ports": [{"port": 5432}],
                    "checks": [{"type": "tcp", "interval": "15s", "timeout": "5s"}],
                }
            ],
        }
        machine = fly.create_machine("devenv-acme-erp-pg", {"name": "pg", "region": "yul", "config": config})
        fly.wait("devenv-acme-erp-pg", machine["id"], "started", timeout_s=30)
        fly.wait_for_checks("devenv-acme-erp-pg", machine["id"], timeout_s=30)
    before = len([c for c in fly_emulator.calls() if c["mutating"]])

    env = {**os.environ, "FLY_API_HOSTNAME": fly_emulator.url, "FLY_API_TOKEN": "test"}
    result = subprocess.run(
        [sys.executable, "-m", "components.cli.main", "status", str(ROOT / "Pulumi.dev.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    pg = next(line for line in lines if line.startswith("devenv-acme-erp-pg "))
    assert machine["id"] in pg and "started" in pg and "passing" in pg
    assert f"pg_data:{volume['id']}:10GB" in pg and "private_v6:fdaa:" in pg
    assert any(line.startswith("devenv-acme-erp-kong") and "absent" in line for line in lines)
    # status only reads.
    assert len([c for c in fly_emulator.calls() if c["mutating"]]) == before


def test_status_shows_a_failed_machine_with_its_last_event(fly_emulator) -> None:
    # Fly's `failed` state stays until someone acts: status says so, and why (the exit of its last event).
    with FlyClient(FlySettings(fly_emulator.url, "test", "env")) as fly:
        fly.create_app("devenv-acme-erp-auth", "acme")
        config = {"image": "supabase/gotrue:v2.170.0"}
        machine = fly.create_machine("devenv-acme-erp-auth", {"name": "auth", "region": "yul", "config": config})
        fly.wait("devenv-acme-erp-auth", machine["id"], "started", timeout_s=30)
    fly_emulator.fail_machine("devenv-acme-erp-auth", machine["id"], exit_code=3)

    env = {**os.environ, "FLY_API_HOSTNAME": fly_emulator.url, "FLY_API_TOKEN": "test"}
    result = subprocess.run(
        [sys.executable, "-m", "components.cli.main", "status", str(ROOT / "Pulumi.dev.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    auth = next(line for line in result.stdout.splitlines() if line.startswith("devenv-acme-erp-auth "))
    assert machine["id"] in auth and "failed (" in auth and "exit (failed): exit code 3" in auth
