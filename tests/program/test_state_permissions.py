"""The local state is its owner's only (issue 26 item 10): after a real `up` on the file backend, the
state directory and every directory in it are 0700 and every file the CLI wrote (checkpoint, backups,
history, locks, PULUMI_HOME) or the wrapper wrote (passphrase) has no group or other bits, including a
state directory an earlier version left 0755 with 0644 checkpoints. `scripts/pulumi.sh` makes `.silo/`
0700 too."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from engine.runner import run as run_op
from tests.fixtures.program import StackProgram

pytestmark = pytest.mark.engine

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_PROJECT = Path(__file__).resolve().parent / "guardrails_program"


def readable_by_others(root: Path) -> list[str]:
    """Every path under `root` (itself included) with a group or other permission bit, with its mode."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        for path in (Path(dirpath), *(Path(dirpath) / n for n in dirs + files)):
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and mode & 0o077:
                found.append(f"{oct(stat.S_IMODE(mode))} {path.relative_to(root)}")
    return sorted(set(found))


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_an_up_leaves_the_state_readable_by_its_owner_only(tmp_path: Path) -> None:
    umask = current_umask()
    # A program with no resources: what is checked is what the CLI and the wrapper write.
    program = StackProgram(tmp_path, "private", project=FIXTURE_PROJECT)
    program.write_stack_file({"fixture:resources": []})
    program.set_secret("fixture:token", "a-secret-value")  # the state holds a ciphertext
    up = run_op(program.stack, "up")
    assert up.ok, up.error

    state = program.state_dir
    checkpoint = state / "backend" / ".pulumi" / "stacks" / "guardrails-fixture" / "private.json"
    assert checkpoint.exists() and "a-secret-value" not in checkpoint.read_text()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(checkpoint.stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "passphrase").stat().st_mode) == 0o600
    assert readable_by_others(state) == []
    assert current_umask() == umask  # this process's own umask is back to what it was

    # A state directory as an earlier version left it (0755, 0644 checkpoints): the next run fixes it.
    for dirpath, _dirs, files in os.walk(state):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(Path(dirpath) / name, 0o644)
    again = StackProgram(tmp_path, "private", project=FIXTURE_PROJECT)
    refresh = run_op(again.stack, "refresh")
    assert refresh.ok, refresh.error
    assert readable_by_others(state) == []


def test_pulumi_sh_makes_silo_private(tmp_path: Path) -> None:
    """`scripts/pulumi.sh` creates `.silo/` (emulator state, log, pid) 0700, and makes an existing one
    0700. The operation is one `python -m engine` refuses before it reads any state, so the run stops
    there (a Fly URL is set, so no emulator is started)."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    for script in ("pulumi.sh", "fly-target.sh"):
        shutil.copy(REPO_ROOT / "scripts" / script, root / "scripts" / script)
    (root / "venv").symlink_to(REPO_ROOT / "venv", target_is_directory=True)
    (root / "Pulumi.dev.yaml").write_text("config: {}\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "FLY_API_HOSTNAME": "http://127.0.0.1:9"}

    def pulumi_sh() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "scripts/pulumi.sh", "no-such-op", "dev"],
            cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    result = pulumi_sh()
    assert "invalid choice: 'no-such-op'" in result.stderr, result.stderr
    assert stat.S_IMODE((root / ".silo").stat().st_mode) == 0o700
    (root / ".silo").chmod(0o755)
    pulumi_sh()
    assert stat.S_IMODE((root / ".silo").stat().st_mode) == 0o700
