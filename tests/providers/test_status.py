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


def test_status_says_when_a_towns_r2_credentials_have_lapsed(fly_emulator, tmp_path: Path) -> None:
    # A town's backups stop once its temporary R2 credentials lapse: status shows each town machine's
    # expiry (from its config, as `pulumi up` set it), so a lapsed one is seen before it matters.
    import datetime as dt
    import json

    import yaml

    from components.domain.naming import sandbox_id

    now = dt.datetime.now(dt.UTC)
    towns = [{"name": "alpha", "user": "user-1", "rigs": []}, {"name": "beta", "user": "user-1", "rigs": []}]
    expiry = {"alpha": now + dt.timedelta(days=5), "beta": now - dt.timedelta(hours=2)}
    with FlyClient(FlySettings(fly_emulator.url, "test", "env")) as fly:
        for town in towns:
            app = sandbox_id(town["user"], town["name"])
            fly.create_app(app, "acme")
            env = {"R2_CREDENTIALS_EXPIRE_AT": expiry[town["name"]].isoformat(timespec="seconds")}
            fly.create_machine(app, {"name": "town", "region": "yul", "config": {"image": "gastown:1", "env": env}})
    stack = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())
    stack["config"]["silo:towns"] = json.dumps(towns)
    stack["config"]["silo:controlStack"] = "organization/silo/control"
    path = tmp_path / "Pulumi.towns.yaml"
    path.write_text(yaml.safe_dump(stack))

    env = {**os.environ, "FLY_API_HOSTNAME": fly_emulator.url, "FLY_API_TOKEN": "test"}
    result = subprocess.run(
        [sys.executable, "-m", "components.cli.main", "status", str(path)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "R2 CREDENTIALS" in lines[0]
    alpha = next(line for line in lines if line.startswith(sandbox_id("user-1", "alpha")))
    beta = next(line for line in lines if line.startswith(sandbox_id("user-1", "beta")))
    assert f"ok until {expiry['alpha'].isoformat(timespec='seconds')}" in alpha
    assert f"EXPIRED {expiry['beta'].isoformat(timespec='seconds')}" in beta
