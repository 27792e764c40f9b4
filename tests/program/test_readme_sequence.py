"""The README's per-silo sequence ("Daily work, per silo, with the raw CLI"), run line by line as written,
with the CLI `make engine` built, through `source scripts/env.sh` (issue 25: "the README's per-silo
sequence runs verbatim in a test on the built CLI").

What a user's machine has and a test's does not is supplied from outside the commands, never by editing
them: the state, home and passphrase are exported to a temporary directory first (env.sh keeps what is
exported), `fly tokens create` is a stand-in `fly` on PATH that prints a token, FLY_API_HOSTNAME points the
providers at a Fly emulator on loopback, and PULUMI_SKIP_CONFIRMATIONS answers the CLI's "yes" prompts.
After each command the emulator is checked for what the README says it does.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from emulators.fly import FlyEmulator
from engine.workspace import program_project

pytestmark = pytest.mark.engine

REPO_ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Daily work, per silo, with the raw CLI"


def readme_commands() -> list[str]:
    """The shell lines of the section's first code block, in order."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "the README's per-silo section has no ```sh block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def machine_states(emulator: FlyEmulator) -> dict[str, str]:
    snap = emulator.snapshot()
    return {f"{m['app']}/{m.get('name')}": m["state"] for m in snap["machines"].values()}


def test_the_readme_per_silo_sequence_runs_as_written(tmp_path: Path, fly_emulator: FlyEmulator) -> None:
    emulator = fly_emulator
    commands = readme_commands()
    assert commands[0] == "source scripts/env.sh"
    # The repository's program and virtualenv, from a directory of its own (the stack file lands there).
    project = program_project(tmp_path / "project")
    (project / "scripts").symlink_to(REPO_ROOT / "scripts")  # `source scripts/env.sh` from here
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fly = bin_dir / "fly"
    fly.write_text('#!/bin/sh\n[ "$1 $2" = "tokens create" ] && echo "FlyV1 fm2_readme-test-token"\n')
    fly.chmod(0o755)
    (tmp_path / "passphrase").write_text("readme-sequence-passphrase\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "FLY_", "SILO_"))},
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PULUMI_BACKEND_URL": (tmp_path / "backend").as_uri(),
        "PULUMI_HOME": str(tmp_path / "home"),
        "PULUMI_CONFIG_PASSPHRASE_FILE": str(tmp_path / "passphrase"),
        "PULUMI_SKIP_CONFIRMATIONS": "true",
        "FLY_API_HOSTNAME": emulator.url,
    }

    ups = 0
    for command in commands[1:]:
        done = subprocess.run(
            ["bash", "-c", f"set -e; {commands[0]}; {command}"],
            cwd=project, env=env, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        words = command.split("#")[0].split()
        states = machine_states(emulator)
        if words[:1] == ["pulumi"] and words[1] in ("up", "preview", "refresh", "destroy"):
            # Every run that reaches Fly says which Fly it is (issue 25: "know where you are").
            assert (
                f"fly: {emulator.url} with the token from Pulumi.acme-erp.yaml (an emulator on loopback" in done.stderr
            )

        if words[:2] == ["pulumi", "up"]:
            ups += 1
            assert states and set(states.values()) == {"started"}, states
            assert any(app.startswith("devenv-acme-erp-kong/") for app in states)
        elif "silo:state stopped" in command:
            assert states and set(states.values()) == {"stopped"}, states
        elif "silo:state running" in command:
            assert set(states.values()) == {"started"}, states
        elif words[:2] == ["pulumi", "preview"]:
            assert states == {}  # a preview creates nothing
            assert "devenv-acme-erp-kong" in done.stdout
        elif words[:2] == ["pulumi", "destroy"]:
            assert states == {}, states
            # The data volumes are kept (docs/config.md): destroy says so rather than deleting them.
            assert emulator.snapshot()["volumes"], "the data volumes must survive a destroy"
            # ... and names what it kept, which the CLI's own summary counts among the deleted.
            kept = re.search(r"^Retained, not deleted \((\d+);.*$", done.stderr, re.M)
            assert kept, done.stderr[-2000:]
            assert "volume pg_data (vol_" in kept.group(0) and "app devenv-acme-erp-pg" in kept.group(0)
    assert ups == 1
    stack_file = yaml.safe_load((project / "Pulumi.acme-erp.yaml").read_text())["config"]
    assert stack_file["silo:client"] == "acme" and stack_file["fly:apiToken"]["secure"]
