"""The README's main job, `make up` = `scripts/pulumi.sh up dev`, on a fresh copy of the repository with
no Fly token anywhere: it starts the local Fly emulator itself, brings the dev silo up on it, a second
run changes nothing, and destroy keeps only the data apps. The engine is the in-repo harness here
(SILO_ENGINE=harness), since the Pulumi CLI cannot be installed on this machine."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.fly.client import FlyClient
from components.fly.settings import FlySettings

pytestmark = pytest.mark.harness

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("pg", "rest", "auth", "storage", "meta", "studio", "kong")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fresh_checkout(tmp_path: Path) -> Iterator[Path]:
    """The tracked files only (what a clone has), with this test run's virtualenv as its venv/."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    root = tmp_path / "silo"
    for name in filter(None, files):
        source, target = REPO_ROOT / name, root / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)
    (root / "venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    yield root
    pid_file = root / ".silo" / "fly-emulator.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


def test_make_up_starts_the_emulator_and_brings_the_dev_silo_up(fresh_checkout: Path) -> None:
    port = _free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("FLY_", "PULUMI_")) and k != "CLOUDFLARE_API_TOKEN"
    }
    env.update(SILO_ENGINE="harness", SILO_EMULATOR_PORT=str(port))

    def pulumi(op: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["scripts/pulumi.sh", op, "dev"], cwd=fresh_checkout, env=env, capture_output=True, text=True, timeout=600
        )

    up = pulumi("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"starting the local Fly emulator on 127.0.0.1:{port}" in up.stdout
    assert "supabase_url: \"https://devenv-acme-erp-kong.fly.dev\"" in up.stdout
    assert "service_role_key: \"[secret]\"" in up.stdout
    with FlyClient(FlySettings(f"http://127.0.0.1:{port}", "local", "env")) as fly:
        for service in SERVICES:
            machines = fly.list_machines(f"devenv-acme-erp-{service}")
            assert [m["state"] for m in machines] == ["started"], service
    assert (fresh_checkout / ".silo" / "fly-emulator.json").exists()

    again = pulumi("up")  # the emulator from the first run is reused, and the silo is unchanged
    assert again.returncode == 0, again.stdout + again.stderr
    assert "starting the local Fly emulator" not in again.stdout
    summary = again.stdout.strip().splitlines()[-1]
    assert summary.startswith("Resources:") and summary.split(":", 1)[1].split(",")[0].endswith("same"), summary
    assert "create" not in summary and "update" not in summary and "replace" not in summary

    destroyed = pulumi("destroy")
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    with FlyClient(FlySettings(f"http://127.0.0.1:{port}", "local", "env")) as fly:
        kept = {f"devenv-acme-erp-{s}" for s in SERVICES if fly.get_app(f"devenv-acme-erp-{s}") is not None}
    assert kept == {"devenv-acme-erp-pg", "devenv-acme-erp-storage"}  # data apps are retained by default
