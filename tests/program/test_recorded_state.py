"""Provider class paths are a contract: a stack recorded by an earlier version of the code (its dynamic
providers pickled into state by module path) still previews, refreshes and destroys under today's code.

Moving a provider module without keeping its old path importable turns this red: `refresh` reads every
resource and `destroy` deletes every resource through the provider pickled in its recorded state.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pulumi.automation import Deployment

from emulators.fly import FlyEmulator
from tests.fixtures.program import SiloProgram
from tests.fixtures.recorded import CHECKPOINT, FLY_WORLD, PASSPHRASE, RECORDED_DIR, STACK_FILE

pytestmark = pytest.mark.engine


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[SiloProgram]:
    world = tmp_path / FLY_WORLD
    shutil.copy(RECORDED_DIR / FLY_WORLD, world)
    emulator = FlyEmulator(state_file=world)
    emulator.start()
    try:
        program = SiloProgram(emulator, tmp_path)
        program.state_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(RECORDED_DIR / PASSPHRASE, program.state_dir / "passphrase")
        shutil.copy(RECORDED_DIR / STACK_FILE, program.config_file)
        checkpoint = json.loads((RECORDED_DIR / CHECKPOINT).read_text())
        program.stack.import_stack(Deployment(version=3, deployment=checkpoint))
        yield program
    finally:
        emulator.stop()


def test_the_recording_pins_todays_provider_paths() -> None:
    """What the recording holds: dynamic resources whose providers were pickled from the layered tree."""
    text = (RECORDED_DIR / CHECKPOINT).read_text()
    resources = json.loads(text)["resources"]
    dynamic = [r for r in resources if r["type"].startswith("pulumi-python:dynamic")]
    assert len(dynamic) >= 30
    assert all("__provider" in r["inputs"] for r in dynamic)
    # No plaintext secret in the fixture: generated secrets are ciphertext under the recorded passphrase.
    secrets = [r["outputs"]["result"] for r in dynamic if r["type"].endswith(":GeneratedSecret")]
    assert secrets and all("ciphertext" in s and "plaintext" not in s for s in secrets)


def test_a_recorded_stack_previews_refreshes_and_destroys(recorded: SiloProgram) -> None:
    program = recorded
    apps_before = set(program.emulator.snapshot()["apps"])
    assert {"devenv-acme-erp-pg", "devenv-acme-erp-kong"} <= apps_before

    preview = program.run("preview")
    assert preview.ok, preview.error
    assert "replace" not in preview.changes and "delete" not in preview.changes, preview.steps

    refreshed = program.run("refresh")
    assert refreshed.ok, refreshed.error

    destroyed = program.run("destroy")
    assert destroyed.ok, destroyed.error
    # The data apps are retained by default (allowDataDeletion false); everything else is gone.
    assert set(program.emulator.snapshot()["apps"]) == {"devenv-acme-erp-pg", "devenv-acme-erp-storage"}
    assert program.state().resources == {} or all(
        not r.type.startswith("pulumi-python") for r in program.state().resources.values()
    )
