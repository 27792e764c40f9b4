"""The passphrase `python -m engine` hands the Pulumi CLI (issue 26 item 6): an empty one is refused.

The CLI takes a set-but-empty `PULUMI_CONFIG_PASSPHRASE` as the passphrase, and encrypts the stack's
secrets with the empty string, while the wrapper used to take it as unset, generate `.silo/passphrase`
and say the secrets were encrypted with that. Now it stops with one line saying what to do, before it
creates anything; a blank `PULUMI_CONFIG_PASSPHRASE_FILE` is refused the same way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.workspace import EngineMissing, engine_env

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE_KEYS = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE", "PULUMI_BACKEND_URL")


@pytest.fixture(autouse=True)
def no_passphrase_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in PASSPHRASE_KEYS:
        monkeypatch.delenv(key, raising=False)


def refusal(state: Path) -> str:
    with pytest.raises(EngineMissing) as caught:
        engine_env(state)
    message = str(caught.value)
    assert "\n" not in message  # one line
    assert not state.exists()  # nothing generated, not even the state directory
    return message


@pytest.mark.parametrize("value", ["", "  ", "\n"])
def test_an_empty_passphrase_in_the_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", value)
    message = refusal(tmp_path / "state")
    assert message.startswith("PULUMI_CONFIG_PASSPHRASE is set but empty")
    assert "unset PULUMI_CONFIG_PASSPHRASE" in message


def test_an_empty_passphrase_from_the_caller_is_refused_too(tmp_path: Path) -> None:
    with pytest.raises(EngineMissing, match="PULUMI_CONFIG_PASSPHRASE is set but empty"):
        engine_env(tmp_path / "state", {"PULUMI_CONFIG_PASSPHRASE": ""})


@pytest.mark.parametrize("content", ["", "\n", "  \n\t\n"])
def test_a_blank_passphrase_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str) -> None:
    file = tmp_path / "passphrase.txt"
    file.write_text(content)
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE_FILE", str(file))
    message = refusal(tmp_path / "state")
    assert message.startswith(f"PULUMI_CONFIG_PASSPHRASE_FILE ({file}) is empty")


def test_an_unreadable_passphrase_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE_FILE", str(tmp_path / "missing"))
    assert "cannot be read" in refusal(tmp_path / "state")


def test_a_real_passphrase_or_none_at_all_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # None: one is generated, 0600, and named for the CLI.
    env = engine_env(tmp_path / "generated")
    generated = Path(env["PULUMI_CONFIG_PASSPHRASE_FILE"])
    assert generated == (tmp_path / "generated" / "passphrase").resolve()
    assert len(generated.read_text().strip()) >= 32 and generated.stat().st_mode & 0o777 == 0o600
    # The user's own passphrase or file: used as they are, nothing generated.
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "correct horse battery staple")
    assert "PULUMI_CONFIG_PASSPHRASE_FILE" not in engine_env(tmp_path / "own")
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE")
    file = tmp_path / "own-passphrase"
    file.write_text("correct horse battery staple\n")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE_FILE", str(file))
    assert "PULUMI_CONFIG_PASSPHRASE_FILE" not in engine_env(tmp_path / "file")
    assert not (tmp_path / "own" / "passphrase").exists() and not (tmp_path / "file" / "passphrase").exists()


def test_python_m_engine_stops_with_the_line(tmp_path: Path) -> None:
    """What `make up` prints: `engine: <the line>`, exit status 1, and no CLI run. The engine package is
    copied so its state directory (`.silo/` beside it) is this test's, not the repository's."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO_ROOT / "engine", root / "engine", ignore=shutil.ignore_patterns("__pycache__", "cli", "bin"))
    if (REPO_ROOT / ".engine").exists():
        (root / ".engine").symlink_to(REPO_ROOT / ".engine", target_is_directory=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO_ROOT),  # the project's other packages, after the copied engine (cwd)
        "PULUMI_CONFIG_PASSPHRASE": "",
    }
    result = subprocess.run(
        [sys.executable, "-m", "engine", "preview", "dev"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result
    assert result.stderr.strip().splitlines() == [
        "engine: PULUMI_CONFIG_PASSPHRASE is set but empty, so the CLI would encrypt the stack's secrets with "
        "an empty passphrase: set a real one, or unset PULUMI_CONFIG_PASSPHRASE to use the one generated in "
        f"{root / '.silo' / 'passphrase'}"
    ], result.stderr
    assert "state:" not in result.stdout and not (root / ".silo" / "passphrase").exists()
