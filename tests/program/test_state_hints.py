"""After the CLI's one-line state errors, `make up`/`preview` add what to do (engine/hints.py): the real CLI's
own messages, produced here on a scratch stack, are the ones the hints recognise."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from engine.hints import state_hint
from engine.workspace import program_project

pytestmark = pytest.mark.engine

REPO_ROOT = Path(__file__).resolve().parents[2]
PULUMI = REPO_ROOT / ".engine" / "current" / "bin" / "pulumi"


def cli(project: Path, env: dict[str, str], *args: str, passphrase: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PULUMI), *args, "--non-interactive"],
        cwd=project, env={**env, "PULUMI_CONFIG_PASSPHRASE": passphrase},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_a_wrong_passphrase_and_a_dead_runs_lock_each_get_the_way_forward(tmp_path: Path) -> None:
    project = program_project(tmp_path / "project")
    backend = tmp_path / "backend"
    backend.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "FLY_", "SILO_"))},
        "PULUMI_BACKEND_URL": backend.as_uri(),
        "PULUMI_HOME": str(tmp_path / "home"),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
    }
    made = cli(project, env, "stack", "init", "hints", passphrase="the-right-one")
    assert made.returncode == 0, made.stderr
    assert cli(project, env, "config", "set", "--secret", "silo:x", "y", passphrase="the-right-one").returncode == 0

    wrong = cli(project, env, "preview", passphrase="not-the-right-one")
    assert wrong.returncode != 0 and "incorrect passphrase" in wrong.stderr
    hint = state_hint(wrong.stdout + wrong.stderr, "hints")
    assert hint is not None and "stack hints's secrets" in hint and '"A lost passphrase"' in hint
    # The section the hint sends a user to exists.
    assert "## A lost passphrase" in (REPO_ROOT / "docs" / "security.md").read_text()

    # A lock as the file backend writes it (backend/diy/lock.go), left by a run that died.
    locks = backend / ".pulumi" / "locks" / "organization" / "silo" / "hints"
    locks.mkdir(parents=True, exist_ok=True)
    holder = {"pid": 2**22 + 1, "username": "ci", "hostname": socket.gethostname(), "timestamp": "2026-12-07T00:00:00Z"}
    (locks / f"{uuid.uuid4()}.json").write_text(json.dumps(holder))
    locked = cli(project, env, "up", "--yes", passphrase="the-right-one")
    assert locked.returncode != 0 and "currently locked" in locked.stderr
    hint = state_hint(locked.stdout + locked.stderr, "hints")
    assert hint is not None and "`silo recover hints`" in hint

    assert state_hint("error: something else entirely", "hints") is None
