"""Bad stack config fails `preview` of the real program (real CLI) before anything is created, with the same
`<key>: <reason>` line that `silo validate` prints; a region change of an existing silo is refused
unless `silo:regionMigration` says the data was moved (issue: "`validate` rejects bad config ... with
a line naming the key; the program fails preview the same way")."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from components.cli import main as cli
from emulators.fly import FlyEmulator
from tests.fixtures.program import FLY, STACK, SiloProgram, StackProgram, base_config, fly_env

pytestmark = pytest.mark.engine

TOWN = {"name": "alpha", "user": "user-1", "rigs": []}
DROP = object()  # marks a key to remove from the base config


def _edit(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def apply(config: dict[str, Any]) -> None:
        for key, value in changes.items():
            if value is DROP:
                config.pop(key, None)
            else:
                config[key] = value

    return apply


# (case id, edit of the example stack file, the key the error must name)
BAD_CONFIGS = [
    ("bad-slug", _edit(**{"silo:client": "Acme_Corp"}), "silo:client"),
    ("name-too-long", _edit(**{"silo:app": "enterprise-resource-planning-" + "x" * 30}), "silo:app"),
    ("unknown-region", _edit(**{"silo:region": "mars"}), "silo:region"),
    ("bad-state", _edit(**{"silo:state": "paused"}), "silo:state"),
    ("bad-rls-mode", _edit(**{"silo:rlsMode": "off"}), "silo:rlsMode"),
    ("non-https-site-url", _edit(**{"silo:siteUrl": "http://silo-acme-erp.netlify.app"}), "silo:siteUrl"),
    ("missing-fly-org", _edit(**{"silo:flyOrg": DROP}), "silo:flyOrg"),
    ("unknown-key", _edit(**{"silo:autostopMinutes": "10"}), "silo:autostopMinutes"),
    ("towns-without-control-stack", _edit(**{"silo:towns": json.dumps([TOWN])}), "silo:towns"),
    ("latest-image-tag", _edit(**{"silo:images": {"pg": "latest"}}), "silo:images.pg"),
]


@pytest.fixture
def emulator() -> Iterator[FlyEmulator]:
    fly = FlyEmulator()
    fly.start()
    try:
        yield fly
    finally:
        fly.stop()


@pytest.mark.parametrize(("edit", "key"), [pytest.param(e, k, id=i) for i, e, k in BAD_CONFIGS])
def test_bad_config_fails_preview_naming_the_key_like_validate(
    edit: Callable[[dict[str, Any]], None],
    key: str,
    tmp_path: Path,
    emulator: FlyEmulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = base_config()
    edit(config)
    program = StackProgram(tmp_path, STACK, fly_env(emulator))

    result = program.run_config("preview", config)

    assert not result.ok
    assert result.error is not None
    # `silo validate` on the same file: exit status 2-ish and a line starting with the key...
    assert cli.main(["validate", str(program.config_file)]) != 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"{key}: ")]
    assert lines, f"validate did not name {key}"
    # ...and the preview reports that very line (same wording, not just the same key).
    assert any(line in result.error for line in lines), (lines, result.error)
    # Nothing was asked of Fly (not even a read) and no state was written.
    assert emulator.calls() == []
    assert program.state().resources == {}
    assert not [s for s in result.steps if s.type.startswith(FLY)]


@pytest.mark.parametrize("op", ["preview", "up"])
def test_towns_without_the_r2_parent_access_key_fail_before_anything_is_created(
    op: str, tmp_path: Path, emulator: FlyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each town's R2 credentials are minted from cloudflare:r2ParentAccessKeyId: without it the town's `up`
    used to fail after its registry row and Fly app existed. Now the program refuses first, naming the key."""
    for key in ("CLOUDFLARE_R2_PARENT_ACCESS_KEY_ID", "CLOUDFLARE_API_TOKEN", "CLOUDFLARE_API_URL"):
        monkeypatch.delenv(key, raising=False)
    config = {
        **base_config(),
        "silo:towns": json.dumps([TOWN]),
        "silo:controlStack": "organization/silo/control",
        "cloudflare:accountId": "0123456789abcdef0123456789abcdef",
        "cloudflare:apiUrl": "http://127.0.0.1:9",  # a loopback emulator: no token needed, only the key
    }
    program = StackProgram(tmp_path, STACK, fly_env(emulator))

    result = program.run_config(op, config)

    assert not result.ok
    assert "towns need cloudflare:r2ParentAccessKeyId: temporary R2 credentials" in (result.error or "")
    assert "Traceback" not in (result.error or "")
    assert emulator.calls() == []
    # At most the stack itself is recorded (by the failed `up`): no resource.
    assert {r.type for r in program.state().resources.values()} <= {"pulumi:pulumi:Stack"}


# -- region change of an existing silo ---------------------------------------------------------------
@pytest.fixture(scope="module")
def deployed_in_yul(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiloProgram]:
    fly = FlyEmulator()
    fly.start()
    try:
        program = SiloProgram(fly, tmp_path_factory.mktemp("yul"), studio="false")
        program.up()
        yield program
    finally:
        fly.stop()


def test_region_change_without_migration_flag_fails_preview_naming_region(deployed_in_yul: SiloProgram) -> None:
    program = deployed_in_yul
    program.emulator.clear_calls()

    result = program.run("preview", region="ams")

    assert not result.ok
    assert result.error is not None
    assert "region" in result.error and "silo:regionMigration" in result.error, result.error
    # Refused by the volume provider's check, i.e. for the data volumes, before any change.
    assert "pg_data" in result.error or "storage_data" in result.error, result.error
    assert [c for c in program.emulator.calls() if c["mutating"]] == []
    assert {v["region"] for v in program.emulator.snapshot()["volumes"].values()} == {"yul"}


def test_region_change_with_migration_flag_previews_replacing_volumes_and_machines(
    deployed_in_yul: SiloProgram,
) -> None:
    program = deployed_in_yul
    before = program.emulator.snapshot()
    program.emulator.clear_calls()

    result = program.run("preview", region="ams", regionMigration="true")

    assert result.ok, result.error
    volumes = {r.name for r in program.fly_resources("Volume")}
    machines = {r.name for r in program.fly_resources("Machine")}
    assert volumes == {"devenv-acme-erp-pg-pg-data", "devenv-acme-erp-storage-storage-data"}
    gates = {"devenv-acme-erp-ready", "devenv-acme-erp-pg-ready"}  # waiting for the new machines
    replaced = {name for name, op in result.changed().items() if op == "replace"}
    assert replaced == volumes | machines, result.steps
    assert set(result.changed()) - replaced == gates and {result.changed()[g] for g in gates} == {"update"}
    # Apps, IPs and secrets stay; the preview itself changed nothing.
    assert [c for c in program.emulator.calls() if c["mutating"]] == []
    assert program.emulator.snapshot() == before
    program.write_config()  # the stack file back to yul for any later test
