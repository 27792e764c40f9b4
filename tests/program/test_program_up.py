"""The real program (`__main__.py`) on the real Pulumi CLI against the Fly emulator: what `up`
creates, that a repeated `up` is a no-op, what a preview says a config change will do, and the
stop → start → destroy → adopt life cycle.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import yaml

from components.domain import services as svc
from components.domain.naming import owner_secret, stack_owner
from components.providers.fly.client import FlyClient
from components.providers.fly.settings import FlySettings
from components.stacks.outputs import MASK, db_connection_string
from emulators.fly import FlyEmulator
from engine.runner import RunResult
from engine.workspace import SDK_DEBUG_ENV
from tests.fixtures.program import (
    FLY,
    REPO_ROOT,
    SiloProgram,
    assert_no_secret_leaks,
    assert_state_matches_emulator,
    expected_world,
    world,
)

pytestmark = pytest.mark.engine

KONG_URL = "https://devenv-acme-erp-kong.fly.dev"
APPS = {f"devenv-acme-erp-{s}" for s in ("pg", "rest", "auth", "storage", "meta", "studio", "kong")}
SECRET_OUTPUTS = {"service_role_key", "db_password", "db_connection_string", "connection_info", "roles_devops"}
RLS = "devenv-acme-erp-pg-rls"  # one resource whatever the mode
SILO_READY, PG_READY = "devenv-acme-erp-ready", "devenv-acme-erp-pg-ready"  # the health gates


def verify_key(token: str, jwt_secret: str) -> dict[str, object]:
    """The claims of a Supabase key, if `jwt_secret` signed it (HS256, as GoTrue and PostgREST check)."""
    return jwt.decode(token, jwt_secret, algorithms=["HS256"], options={"verify_aud": False})


def other_tag(service: str) -> str:
    """A deployable tag of `service` from catalog/images.yaml that is not its default."""
    entries = yaml.safe_load((REPO_ROOT / "catalog" / "images.yaml").read_text())["images"]
    return next(
        e["tag"] for e in entries if e["service"] == service and e["status"] != "disabled" and not e.get("default")
    )


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SiloProgram, RunResult]]:
    """One silo deployed on an empty emulator, shared by the read-only tests (previews never mutate)."""
    emulator = FlyEmulator()
    emulator.start()
    try:
        program = SiloProgram(emulator, tmp_path_factory.mktemp("deployed"))
        yield program, program.up()
    finally:
        emulator.stop()


# -- 1. what `up` creates ------------------------------------------------------------------------------
def test_up_on_an_empty_account_creates_exactly_the_silo(deployed: tuple[SiloProgram, RunResult]) -> None:
    program, result = deployed
    snap = program.emulator.snapshot()
    assert set(snap["apps"]) == APPS
    assert world(snap) == expected_world(program.cfg())
    assert sorted(ip["type"] for ip in snap["ips"]["devenv-acme-erp-kong"]) == ["shared_v4", "v6"]
    # Each app holds exactly the secrets its service reads, e.g. rest gets the DB URL and JWT secret, and
    # the stack's ownership mark (a name only: the API never returns values).
    mark = owner_secret(stack_owner("silo", "dev", "acme", "erp"))
    assert set(snap["secrets"]["devenv-acme-erp-pg"]) == {"POSTGRES_PASSWORD", "JWT_SECRET", mark}
    assert set(snap["secrets"]["devenv-acme-erp-kong"]) == {svc.KONG_YML_SECRET, mark}
    assert {v["name"]: v["app"] for v in snap["volumes"].values()} == {
        "pg_data": "devenv-acme-erp-pg",
        "storage_data": "devenv-acme-erp-storage",
    }
    cfg = program.cfg()
    images = {s: program.resource(f"{cfg.app_name(s)}-machine").outputs["metadata"]["silo_image_tag"]
              for s in cfg.services}  # fmt: skip
    for machine in snap["machines"].values():
        service = machine["app"].removeprefix("devenv-acme-erp-")
        assert machine["state"] == "started", machine["name"]
        assert machine["checks"] and all(c["status"] == "passing" for c in machine["checks"]), machine["name"]
        meta = machine["config"]["metadata"]
        assert meta["fly_platform_version"] == "v2" and meta["fly_process_group"], machine["name"]
        assert meta["silo_image_tag"] == images[service] and meta["silo_service"] == service
        mounts = [m["volume"] for m in machine["config"].get("mounts") or []]
        volume = svc.SERVICES[service].volume
        assert [snap["volumes"][v]["name"] for v in mounts] == ([volume.name] if volume else []), machine["name"]
    assert set(result.changes) == {"create"}
    assert_state_matches_emulator(program)


def test_outputs_publish_url_and_anon_key_and_keep_the_rest_secret(
    deployed: tuple[SiloProgram, RunResult],
) -> None:
    program, result = deployed
    outputs = result.outputs
    assert outputs["supabase_url"] == KONG_URL
    assert outputs["status"] == "running"
    assert {k for k, v in outputs.items() if v == "[secret]"} == SECRET_OUTPUTS

    st = program.state()
    jwt_secret = program.resource("devenv-acme-erp-jwt-secret").outputs["result"]
    anon = outputs["anon_key"]
    assert verify_key(anon, jwt_secret)["role"] == "anon"
    assert verify_key(st.outputs["service_role_key"], jwt_secret)["role"] == "service_role"
    with pytest.raises(jwt.InvalidSignatureError):
        verify_key(anon, jwt_secret + "x")
    assert st.secret_outputs >= SECRET_OUTPUTS and "anon_key" not in st.secret_outputs

    password = program.resource("devenv-acme-erp-db-password").outputs["result"]
    assert st.outputs["db_password"] == password
    assert st.outputs["db_connection_string"] == db_connection_string(program.cfg(), password)
    info = st.outputs["connection_info"]
    assert info["status"] == "running"
    assert info["connection_info"]["supabase_url"] == KONG_URL
    assert info["connection_info"]["supabase_service_role_key"] == st.outputs["service_role_key"]
    assert st.outputs["roles_devops"]["db_password"] == password
    # Seed 004's access matrix: workers see URL + anon key only, the auditor a masked string, clientele nothing.
    public = {"supabase_url": KONG_URL, "supabase_anon_key": anon}
    assert outputs["roles"] == {
        "dev-worker": public,
        "dev-orchestrator": public,
        "security-auditor": {"db_connection_string": db_connection_string(program.cfg(), MASK)},
        "clientele": {},
    }
    assert outputs["netlify"] == {"VITE_SUPABASE_URL": KONG_URL, "VITE_SUPABASE_ANON_KEY": anon}


def test_no_secret_reaches_the_state_file_the_emulator_or_the_run_output(
    deployed: tuple[SiloProgram, RunResult],
) -> None:
    program, result = deployed
    secrets = program.secret_values()
    assert {"devenv-acme-erp-jwt-secret", "devenv-acme-erp-db-password", "output service_role_key"} <= set(secrets)
    assert_no_secret_leaks(program, secrets, result)
    # Kong's one secret is kong.yml itself: it carries the service key, so it must be a Fly secret only.
    kong_yml = program.resource("devenv-acme-erp-kong-secrets").outputs["values"][svc.KONG_YML_SECRET]
    assert program.state().outputs["service_role_key"] in base64.b64decode(kong_yml).decode()


# -- 2. no change, no calls ------------------------------------------------------------------------------
def test_second_up_and_preview_without_changes_touch_nothing(
    deployed: tuple[SiloProgram, RunResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    program, first = deployed
    before = program.emulator.snapshot()
    program.emulator.clear_calls()
    again = program.up()
    assert [c for c in program.emulator.calls() if c["mutating"]] == []
    assert set(again.changes) == {"same"} and again.changes["same"] == sum(first.changes.values())
    assert again.outputs == first.outputs

    program.emulator.clear_calls()
    preview = program.run("preview")
    assert preview.ok, preview.error
    assert set(preview.changes) == {"same"}
    assert program.emulator.calls() == []
    assert program.emulator.snapshot() == before
    # The SDK's own trace (several messages per resource, shown by the CLI only with --debug) is not
    # sent unless asked for: it cost a 100-town preview 1.8 s (engine/workspace.py).
    assert [d for d in preview.diagnostics if d["severity"] == "debug"] == []
    monkeypatch.setenv(SDK_DEBUG_ENV, "1")
    traced = program.run("preview")
    assert traced.ok and set(traced.changes) == {"same"}
    assert any("registering resource" in d["message"] for d in traced.diagnostics if d["severity"] == "debug")


# -- 3. previews of one config change ----------------------------------------------------------------------
def test_preview_of_an_image_tag_change_updates_only_that_machine(
    deployed: tuple[SiloProgram, RunResult],
) -> None:
    program, _ = deployed
    program.emulator.clear_calls()
    result = program.run("preview", images={"storage": other_tag("storage")})
    assert result.ok, result.error
    # The machine, and the gate that waits for its new version (`up` ends once it runs and is healthy).
    assert result.changed() == {"devenv-acme-erp-storage-machine": "update", SILO_READY: "update"}
    assert [c for c in program.emulator.calls() if c["mutating"]] == []


def test_preview_of_stopping_updates_machines_and_gates_only(
    deployed: tuple[SiloProgram, RunResult],
) -> None:
    program, _ = deployed
    result = program.run("preview", state="stopped")
    assert result.ok, result.error
    machines = {f"{app}-machine": "update" for app in APPS}
    gates = {SILO_READY: "update", PG_READY: "update"}  # now waiting for stopped machines
    assert result.changed() == {**machines, **gates}  # the RLS policies stay in the database: nothing to run


def test_preview_of_an_rls_mode_change_touches_only_the_rls_exec(deployed: tuple[SiloProgram, RunResult]) -> None:
    program, _ = deployed
    result = program.run("preview", rlsMode="permissive")
    assert result.ok, result.error
    assert result.changed() == {RLS: "update"}


def test_preview_of_allowing_data_deletion_updates_the_safety_switches_and_replaces_nothing(
    deployed: tuple[SiloProgram, RunResult],
) -> None:
    """A change that only updates the data volumes (and the apps that own them) must not preview the
    machines that mount them as replacements: their volume ids are unknown in a preview."""
    program, _ = deployed
    result = program.run("preview", allowDataDeletion="true")
    assert result.ok, result.error
    changed = result.changed()
    assert set(changed.values()) == {"update"}, changed
    assert {n for n in changed if n.endswith(("-pg-data", "-storage-data"))} == {
        "devenv-acme-erp-pg-pg-data",
        "devenv-acme-erp-storage-storage-data",
    }
    assert not [n for n in changed if n.endswith("-machine")], changed
    program.write_config()


def test_region_change_is_refused_before_anything_changes(deployed: tuple[SiloProgram, RunResult]) -> None:
    """A volume cannot move between regions: the program refuses rather than replace data with an empty volume."""
    program, _ = deployed
    before = program.emulator.snapshot()
    program.emulator.clear_calls()
    for op in ("preview", "up"):
        result = program.run(op, region="ams")
        assert not result.ok, op
        assert "silo:regionMigration" in result.error and "region" in result.error, result.error
        assert "replace" not in result.changes and "delete" not in result.changes, result.changes
    assert [c for c in program.emulator.calls() if c["mutating"]] == []
    assert program.emulator.snapshot()["volumes"].keys() == before["volumes"].keys()
    program.write_config()  # back to the shared config for the other tests


def test_region_migration_adopts_the_migrated_volume_and_keeps_the_old_ones(silo_program: SiloProgram) -> None:
    """With the override, the silo moves: a pg_data volume the user restored in the new region (e.g. with
    `fly volumes create pg_data --snapshot-id ... --region ams`) is adopted, storage gets a new volume, the
    old volumes are kept (never deleted without silo:allowDataDeletion), and every name stays the same."""
    program = silo_program
    first = program.up()
    old_volumes = {r.id for r in program.fly_resources("Volume")}
    with FlyClient(FlySettings(program.emulator.url, "test", "env")) as fly:
        restored = fly.create_volume("devenv-acme-erp-pg", {"name": "pg_data", "region": "ams", "size_gb": 10})

    moved = program.up(region="ams", regionMigration="true")
    assert moved.ok, moved.error
    assert "delete" not in moved.changes and "create" not in moved.changes, moved.changes
    snap = program.emulator.snapshot()
    assert {m["region"] for m in snap["machines"].values()} == {"ams"}
    assert set(machine_states(program).values()) == {"started"}
    assert old_volumes <= set(snap["volumes"]), "a volume in the old region was deleted"
    assert all(snap["volumes"][v]["attached_machine_id"] is None for v in old_volumes)
    pg_volume = program.resource("devenv-acme-erp-pg-pg-data")
    assert pg_volume.id == restored["id"] and snap["volumes"][restored["id"]]["attached_machine_id"]
    assert {r.outputs["region"] for r in program.fly_resources("Volume")} == {"ams"}
    assert set(snap["apps"]) == APPS and moved.outputs["supabase_url"] == first.outputs["supabase_url"] == KONG_URL
    # The kept volumes are out of state (retained on replace): the user deletes them once the move is verified.
    assert {r.id for r in program.fly_resources("Volume")} == set(snap["volumes"]) - old_volumes

    again = program.up(region="ams", regionMigration="true")
    assert set(again.changes) == {"same"}, again.changes


def test_region_migration_with_data_deletion_allowed_replaces_machines_and_volumes(
    silo_program: SiloProgram,
) -> None:
    """Delete-before-replace of a volume takes its machine down first (the engine deletes dependents it
    replaces), so the old volume can be deleted: the account then holds exactly the silo, in the new region."""
    program = silo_program
    program.up(allowDataDeletion="true")
    moved = program.up(region="ams", regionMigration="true", allowDataDeletion="true")
    assert moved.ok, moved.error
    snap = program.emulator.snapshot()
    assert {v["region"] for v in snap["volumes"].values()} == {"ams"} and len(snap["volumes"]) == 2
    assert {m["region"] for m in snap["machines"].values()} == {"ams"}
    assert set(machine_states(program).values()) == {"started"}
    assert world(snap) == expected_world(program.cfg(region="ams"))
    assert_state_matches_emulator(program)


# -- without Studio -------------------------------------------------------------------------------------
def test_up_without_studio_creates_six_apps_and_kong_routes_no_studio(silo_program: SiloProgram) -> None:
    result = silo_program.up(studio="false")
    snap = silo_program.emulator.snapshot()
    assert set(snap["apps"]) == APPS - {"devenv-acme-erp-studio"}
    assert world(snap) == expected_world(silo_program.cfg(studio="false"))
    assert result.outputs.get("studio_url") is None
    assert silo_program.state().outputs["connection_info"]["connection_info"].get("studio_url") is None
    kong_yml = silo_program.resource("devenv-acme-erp-kong-secrets").outputs["values"][svc.KONG_YML_SECRET]
    assert "devenv-acme-erp-studio" not in base64.b64decode(kong_yml).decode()
    assert_state_matches_emulator(silo_program)


# -- 4. stop → start → destroy → adopt ------------------------------------------------------------------
def machine_states(program: SiloProgram) -> dict[str, str]:
    return {m["name"]: m["state"] for m in program.emulator.snapshot()["machines"].values()}


def test_stop_start_destroy_keeps_names_keys_and_data(silo_program: SiloProgram, tmp_path: Path) -> None:
    program = silo_program
    first = program.up()
    anon = first.outputs["anon_key"]
    ids = {kind: {r.name: r.id for r in program.fly_resources(kind)} for kind in ("App", "Volume", "Machine")}

    # Stop: machines stopped, nothing deleted, connection data withdrawn.
    before = program.emulator.snapshot()
    stopped = program.up(state="stopped")
    snap = program.emulator.snapshot()
    assert set(machine_states(program).values()) == {"stopped"}
    assert world(snap) == world(before)
    assert "replace" not in stopped.changes and "delete" not in stopped.changes
    assert stopped.outputs["status"] == "stopped"
    withdrawn = {"supabase_url", "anon_key", "connection_info", "service_role_key", "db_password",
                 "db_connection_string", "roles", "roles_devops", "netlify"}  # fmt: skip
    assert withdrawn.isdisjoint(stopped.outputs), sorted(stopped.outputs)
    assert withdrawn.isdisjoint(program.state().outputs)
    assert_state_matches_emulator(program)

    # Start: same apps, URL and key; nothing replaced or created; the RLS policies are not run again.
    started = program.up(state="running")
    assert set(machine_states(program).values()) == {"started"}
    assert "replace" not in started.changes and "delete" not in started.changes
    assert "create" not in started.changes and RLS not in started.changed()
    assert started.outputs["supabase_url"] == KONG_URL and started.outputs["anon_key"] == anon
    assert {kind: {r.name: r.id for r in program.fly_resources(kind)} for kind in ids} == ids
    assert program.emulator.snapshot()["apps"].keys() == before["apps"].keys()
    assert_no_secret_leaks(program, program.secret_values(), first, stopped, started)

    # Destroy with the default (allowDataDeletion false): only the data apps and their volumes remain.
    destroyed = program.run("destroy")
    assert destroyed.ok, destroyed.error
    snap = program.emulator.snapshot()
    assert set(snap["apps"]) == {"devenv-acme-erp-pg", "devenv-acme-erp-storage"}
    assert set(snap["volumes"]) == set(ids["Volume"].values())
    assert snap["machines"] == {} and all(not ips for ips in snap["ips"].values())
    assert program.state().resources == {}

    # A later up adopts the retained apps and volumes (same ids) without replacing anything.
    adopted = program.up()
    assert "replace" not in adopted.changes and "delete" not in adopted.changes
    assert {r.name: r.id for r in program.fly_resources("Volume")} == ids["Volume"]
    assert world(program.emulator.snapshot()) == expected_world(program.cfg())
    assert_state_matches_emulator(program)


def test_destroy_with_data_deletion_allowed_leaves_the_account_empty(silo_program: SiloProgram) -> None:
    program = silo_program
    program.up()
    # Allowing deletion is an in-place change of the safety switches, never a replacement.
    allowed = program.up(allowDataDeletion="true")
    assert set(allowed.changes) <= {"same", "update"}, allowed.changes
    destroyed = program.run("destroy", allowDataDeletion="true")
    assert destroyed.ok, destroyed.error
    assert program.emulator.snapshot() == {"apps": {}, "machines": {}, "volumes": {}, "ips": {}, "secrets": {}}
    assert [r for r in program.state().resources.values() if r.type.startswith(FLY)] == []
    assert not program.checkpoint()["checkpoint"]["latest"].get("resources")
