"""The Fly dynamic providers' methods against the emulator (the engine's view: check, diff, CRUD).

The same provider objects also run through the SDK's provider host, started by the real CLI, in the program tests.
"""

from __future__ import annotations

import base64
import json

import pytest
from pulumi.dynamic import Config as DynamicConfig
from pulumi.dynamic import ConfigureRequest
from pulumi.output import Unknown

from components.config.model import VOLUME_CONFIG_KEYS
from components.providers.fly.app_secrets import FlySecretsProvider
from components.providers.fly.apps import FlyAppProvider
from components.providers.fly.errors import FlyError
from components.providers.fly.ip_assignments import FlyIpAssignmentProvider
from components.providers.fly.machines import FlyMachineProvider
from components.providers.fly.ready import FlyMachinesReadyProvider, entries, entry_line
from components.providers.fly.volumes import REPLACEMENT_KEY, FlyVolumeProvider


def configured(provider, fly_emulator):
    provider.configure(
        ConfigureRequest(DynamicConfig({"fly:apiToken": "test", "fly:apiUrl": fly_emulator.url}, "silo"))
    )
    return provider


@pytest.fixture
def app(fly_emulator):
    provider = configured(FlyAppProvider(), fly_emulator)
    props = {"name": "devenv-acme-erp-pg", "org": "acme", "keep_volumes": True}
    provider.create(props)
    return props["name"]


def test_app_check_names_the_property() -> None:
    result = FlyAppProvider().check({}, {"name": "Bad_Name", "org": ""})
    assert {f.property for f in result.failures} == {"name", "org"}
    assert FlyAppProvider().check({}, {"name": Unknown(), "org": "acme"}).failures == []


def test_app_diff_replaces_on_name_and_ignores_provider_blob() -> None:
    olds = {"name": "a", "org": "acme", "keep_volumes": True, "__provider": "old", "app_id": "x"}
    same = FlyAppProvider().diff("a", olds, {"name": "a", "org": "acme", "keep_volumes": True, "__provider": "new"})
    assert same.changes is False
    renamed = FlyAppProvider().diff("a", olds, {"name": "b", "org": "acme", "keep_volumes": True})
    assert renamed.changes and renamed.replaces == ["name"] and renamed.delete_before_replace is True


def test_app_delete_refuses_while_it_holds_data_volumes(fly_emulator, app) -> None:
    volumes = configured(FlyVolumeProvider(), fly_emulator)
    volumes.create({"app": app, "name": "pg_data", "region": "yul", "size_gb": 1, "allow_delete": False})
    with pytest.raises(FlyError, match="pg_data"):
        configured(FlyAppProvider(), fly_emulator).delete(app, {"name": app, "keep_volumes": True})
    assert app in fly_emulator.snapshot()["apps"]
    # With data deletion allowed the app goes, and 404 afterwards counts as done.
    provider = configured(FlyAppProvider(), fly_emulator)
    provider.delete(app, {"name": app, "keep_volumes": False})
    provider.delete(app, {"name": app, "keep_volumes": False})
    assert app not in fly_emulator.snapshot()["apps"]


def test_volume_rules(fly_emulator, app) -> None:
    provider = configured(FlyVolumeProvider(), fly_emulator)
    bad = provider.check({}, {"app": app, "name": "PG-data", "region": "yul", "size_gb": 0})
    assert {f.property for f in bad.failures} == {"name", "size_gb"}
    shrink = provider.check({"size_gb": 10}, {"app": app, "name": "pg_data", "region": "yul", "size_gb": 5.0})
    assert [f.property for f in shrink.failures] == ["size_gb"] and "only grow" in shrink.failures[0].reason

    props = {"app": app, "name": "pg_data", "region": "yul", "size_gb": 1, "allow_delete": False}
    created = provider.create(props)
    assert created.outs["volume_id"] == created.id
    # Numbers come back from the engine as floats: no phantom diff.
    assert provider.diff(created.id, created.outs, {**props, "size_gb": 1.0}).changes is False
    moved = provider.diff(created.id, created.outs, {**props, "region": "ams"})
    # A volume in another region has another identity: the new one is made first, the old one released after.
    assert moved.replaces == ["region"] and not moved.delete_before_replace
    grown = provider.update(created.id, created.outs, {**props, "size_gb": 3})
    assert fly_emulator.snapshot()["volumes"][created.id]["size_gb"] == 3
    assert grown.outs["size_gb"] == 3

    # A second create (after a lost response, or after destroy kept the data) adopts the volume.
    assert provider.create(props).id == created.id

    with pytest.raises(FlyError, match="refusing to delete data volume pg_data"):
        provider.delete(created.id, created.outs)
    assert created.id in fly_emulator.snapshot()["volumes"]
    provider.delete(created.id, {**created.outs, "allow_delete": True})
    provider.delete(created.id, {**created.outs, "allow_delete": True})  # 404 = done


def test_secrets_set_update_unset_and_values_never_leave_the_state(fly_emulator, app) -> None:
    provider = configured(FlySecretsProvider(), fly_emulator)
    assert provider.check({}, {"app": app, "values": {"bad-name": "x"}}).failures
    created = provider.create({"app": app, "values": {"POSTGRES_PASSWORD": "p1", "JWT_SECRET": "j1"}})
    assert created.outs["version"] >= 1
    assert set(created.outs["digests"]) == {"JWT_SECRET", "POSTGRES_PASSWORD"}
    news = {"app": app, "values": {"POSTGRES_PASSWORD": "p2"}}
    assert provider.diff(app, created.outs, news).changes is True
    updated = provider.update(app, created.outs, news)
    assert updated.outs["version"] > created.outs["version"]
    live = fly_emulator.snapshot()["secrets"][app]
    assert set(live) == {"POSTGRES_PASSWORD"}
    assert "p2" not in str(fly_emulator.snapshot())
    assert provider.diff(app, updated.outs, news).changes is False
    provider.delete(app, updated.outs)
    assert not fly_emulator.snapshot()["secrets"].get(app)


def test_generated_secrets_are_made_once_kept_and_made_again_only_when_lost(fly_emulator, app) -> None:
    provider = configured(FlySecretsProvider(), fly_emulator)
    bad = provider.check({}, {"app": app, "values": {"KEY": "x"}, "generate": {"KEY": 48, "SHORT": 4}}).failures
    assert sorted(f.reason for f in bad) == [
        "secret KEY is both given and generated",
        "secret SHORT: length must be a number from 16 to 256",
    ]
    props = {"app": app, "values": {"KILO_JWT": "jwt"}, "generate": {"INTERNAL_API_KEY": 48}}
    created = provider.create(props)
    key = created.outs["generated"]["INTERNAL_API_KEY"]
    assert len(key) == 48 and key.isalnum()
    assert set(fly_emulator.snapshot()["secrets"][app]) == {"INTERNAL_API_KEY", "KILO_JWT"}
    assert set(created.outs["digests"]) == {"INTERNAL_API_KEY", "KILO_JWT"}
    # Kept across runs and across updates of the other values: no new value, no restart.
    assert provider.diff(app, created.outs, props).changes is False
    updated = provider.update(app, created.outs, {**props, "values": {"KILO_JWT": "jwt2"}})
    assert updated.outs["generated"] == {"INTERNAL_API_KEY": key}
    # Changed outside Pulumi: the refresh forgets it, the next up makes a new one and sets it.
    with provider.client() as fly:
        fly.set_secrets(app, {"INTERNAL_API_KEY": "tampered-outside-pulumi"})
    refreshed = provider.read(app, updated.outs)
    assert refreshed.outs["generated"] == {} and refreshed.inputs["generate"] == {"INTERNAL_API_KEY": 48}
    wanted = {**props, "values": {"KILO_JWT": "jwt2"}}
    assert provider.diff(app, refreshed.outs, wanted).changes is True
    repaired = provider.update(app, refreshed.outs, wanted)
    new_key = repaired.outs["generated"]["INTERNAL_API_KEY"]
    assert len(new_key) == 48 and new_key != key
    with provider.client() as fly:
        live = fly.list_secrets(app, min_version=repaired.outs["version"])
        assert live["INTERNAL_API_KEY"] == repaired.outs["digests"]["INTERNAL_API_KEY"]
    # A value an older program set as a plain secret (a GeneratedSecret of its own) is adopted, not rotated.
    legacy = {**created.outs, "values": {"KILO_JWT": "jwt", "INTERNAL_API_KEY": key}, "generated": None}
    legacy.pop("generate")
    assert provider.diff(app, legacy, props).changes is True  # the inputs moved, the value does not
    adopted = provider.update(app, legacy, props)
    assert adopted.outs["generated"] == {"INTERNAL_API_KEY": key} and adopted.outs["version"] == legacy["version"]
    # A longer key asked for: a new value.
    longer = provider.update(app, adopted.outs, {**props, "generate": {"INTERNAL_API_KEY": 64}})
    assert len(longer.outs["generated"]["INTERNAL_API_KEY"]) == 64 and longer.outs["version"] > legacy["version"]


def test_ip_assignment_is_idempotent(fly_emulator, app) -> None:
    provider = configured(FlyIpAssignmentProvider(), fly_emulator)
    assert [f.property for f in provider.check({}, {"app": app, "type": "v5"}).failures] == ["type"]
    first = provider.create({"app": app, "type": "private_v6"})
    assert first.id.startswith("fdaa:")
    assert provider.create({"app": app, "type": "private_v6"}).id == first.id
    provider.delete(first.id, first.outs)
    provider.delete(first.id, first.outs)
    assert not fly_emulator.snapshot()["ips"].get(app)


def test_region_change_of_a_data_volume_is_refused_without_the_migration_override() -> None:
    provider = FlyVolumeProvider()
    olds = {"app": "a", "name": "pg_data", "region": "yul", "size_gb": 10}
    refused = provider.check(olds, {**olds, "region": "ams"})
    assert [f.property for f in refused.failures] == ["region"]
    # The provider names its own input; the stack that declares the volume says how users set it.
    assert "allow_region_change=true" in refused.failures[0].reason
    named = provider.check(olds, {**olds, "region": "ams", "config_keys": VOLUME_CONFIG_KEYS}).failures
    assert "silo:regionMigration=true" in named[0].reason
    assert provider.check(olds, {**olds, "region": "ams", "allow_region_change": True}).failures == []


FLY_TOML = """
app = "devenv-acme-erp-meta"
primary_region = "yul"
kill_signal = "SIGTERM"
kill_timeout = 10

[env]
PG_META_PORT = "8080"

[[services]]
internal_port = 8080
protocol = "tcp"
auto_stop_machines = "stop"
auto_start_machines = true
min_machines_running = 0

[[services.ports]]
port = 8080

[[services.tcp_checks]]
interval = "15s"
timeout = "5s"
grace_period = "5s"
"""


def machine_props(app: str, **overrides):
    props = {
        "app": app,
        "name": f"{app}-1",
        "region": "yul",
        "fly_toml": FLY_TOML,
        "image": "supabase/postgres-meta:v0.95.2",
        "desired_state": "started",
        "metadata": {},
    }
    props.update(overrides)
    checked = FlyMachineProvider().check({}, props)
    assert checked.failures == []
    return checked.inputs


@pytest.fixture
def meta_app(fly_emulator):
    configured(FlyAppProvider(), fly_emulator).create({"name": "devenv-acme-erp-meta", "org": "acme"})
    return "devenv-acme-erp-meta"


def test_machine_check_rejects_latest_and_invalid_fly_toml() -> None:
    bad = FlyMachineProvider().check(
        {},
        {
            "app": "a",
            "name": "a-1",
            "region": "yul",
            "desired_state": "up",
            "image": "kong:latest",
            "fly_toml": "[autoscaling]\nmax_machines = 3\n",
        },
    )
    assert {f.property for f in bad.failures} == {"desired_state", "image", "fly_toml"}


def test_machine_lifecycle_update_stop_start_delete(fly_emulator, meta_app) -> None:
    provider = configured(FlyMachineProvider(), fly_emulator)
    props = machine_props(meta_app)
    created = provider.create(props)
    machine = fly_emulator.snapshot()["machines"][created.id]
    assert created.outs["state"] == "started"
    assert machine["config"]["metadata"]["fly_platform_version"] == "v2"
    # Unchanged inputs arriving as engine floats: no diff.
    assert provider.diff(created.id, created.outs, {**props, "ready_timeout_s": 5.0}).changes is False

    new_image = machine_props(meta_app, image="supabase/postgres-meta:v0.91.0")
    diff = provider.diff(created.id, created.outs, new_image)
    assert diff.changes and not diff.replaces
    fly_emulator.clear_calls()
    updated = provider.update(created.id, created.outs, new_image)
    # Reconfigured under a lease; the machine already runs, so nothing is started and nothing read again.
    routes = [f"{c['method']} {c['route']}" for c in fly_emulator.calls()]
    assert routes.count("POST /v1/apps/{app}/machines/{machine_id}") == 1
    assert not any(r.endswith("/start") for r in routes)
    assert routes.count("GET /v1/apps/{app}/machines/{machine_id}") == 2, routes  # before the update, then its state
    assert updated.outs["instance_id"] != created.outs["instance_id"]
    assert fly_emulator.snapshot()["machines"][created.id]["config"]["image"] == "supabase/postgres-meta:v0.91.0"

    stopped = provider.update(created.id, updated.outs, {**new_image, "desired_state": "stopped"})
    assert stopped.outs["state"] == "stopped"
    started = provider.update(created.id, stopped.outs, new_image)
    assert started.outs["state"] == "started"

    moved = provider.diff(created.id, started.outs, {**new_image, "region": "ams"})
    assert moved.replaces == ["region"] and moved.delete_before_replace

    provider.delete(created.id, started.outs)
    provider.delete(created.id, started.outs)
    assert created.id not in fly_emulator.snapshot()["machines"]


def test_machine_state_keeps_a_digest_of_its_config_and_a_conversion_change_updates_it(
    fly_emulator, meta_app, monkeypatch
) -> None:
    from components.providers.fly import flytoml
    from components.providers.fly import machines as fly_resources

    provider = configured(FlyMachineProvider(), fly_emulator)
    props = machine_props(meta_app)
    created = provider.create(props)
    # The config the API got is derived from the fly.toml; the state keeps its digest, not a second copy.
    assert "config" not in created.outs and len(created.outs["config_sha256"]) == 64
    assert provider.diff(created.id, created.outs, machine_props(meta_app)).changes is False

    # The same fly.toml converted differently (a code upgrade): an update that sends the new config.
    convert = flytoml.to_machine_config

    def upgraded(doc, **kwargs):
        return {**convert(doc, **kwargs), "env": {**convert(doc, **kwargs)["env"], "UPGRADED": "1"}}

    monkeypatch.setattr(fly_resources.flytoml, "to_machine_config", upgraded)
    news = machine_props(meta_app)
    assert news["fly_toml"] == created.outs["fly_toml"]
    diff = provider.diff(created.id, created.outs, news)
    assert diff.changes and not diff.replaces
    provider.update(created.id, created.outs, news)
    assert fly_emulator.snapshot()["machines"][created.id]["config"]["env"]["UPGRADED"] == "1"

    # State written before the digest kept the whole config: compared through its digest.
    legacy = {k: v for k, v in created.outs.items() if k != "config_sha256"}
    legacy["config"] = upgraded(flytoml.parse(FLY_TOML), image=props["image"], volume_id=None)
    assert provider.diff(created.id, legacy, news).changes is False
    assert provider.diff(created.id, {**legacy, "config": {**legacy["config"], "env": {}}}, news).changes


def test_a_fly_toml_written_another_way_but_meaning_the_same_updates_no_machine(fly_emulator, meta_app) -> None:
    provider = configured(FlyMachineProvider(), fly_emulator)
    created = provider.create(machine_props(meta_app))
    # What a template or renderer change can do without changing the machine: another quoting, a comment.
    rewritten = FLY_TOML.replace('PG_META_PORT = "8080"', "# the port meta listens on\nPG_META_PORT = '8080'")
    assert rewritten != FLY_TOML
    # On Fly an update restarts the machine: none for the same config.
    assert provider.diff(created.id, created.outs, machine_props(meta_app, fly_toml=rewritten)).changes is False
    # A change in what it means is an update.
    moved = FLY_TOML.replace('PG_META_PORT = "8080"', 'PG_META_PORT = "8081"')
    diff = provider.diff(created.id, created.outs, machine_props(meta_app, fly_toml=moved))
    assert diff.changes and not diff.replaces
    # Without a digest on either side (an input still unknown in a preview), the text decides.
    text_only = {k: v for k, v in machine_props(meta_app, fly_toml=rewritten).items() if k != "config_sha256"}
    assert provider.diff(created.id, created.outs, text_only).changes


def _with_file(guest_path: str, **source: str) -> str:
    key, value = next(iter(source.items()))
    return FLY_TOML + f'\n[[files]]\nguest_path = "{guest_path}"\n{key} = {json.dumps(value)}\n'


def test_a_local_path_file_reaches_the_machine_as_its_bytes(fly_emulator, meta_app, tmp_path) -> None:
    script = tmp_path / "startup.sh"
    script.write_text("#!/bin/sh\necho 'booting'\n")
    provider = configured(FlyMachineProvider(), fly_emulator)
    created = provider.create(machine_props(meta_app, fly_toml=_with_file("/bin/start.sh", local_path=str(script))))
    files = fly_emulator.snapshot()["machines"][created.id]["config"]["files"]
    # flyctl's File.toMachineFile: the bytes, base64-encoded, as for a raw_value.
    assert [(f["guest_path"], base64.b64decode(f["raw_value"])) for f in files] == [
        ("/bin/start.sh", b"#!/bin/sh\necho 'booting'\n")
    ]


def test_a_local_path_that_cannot_be_read_fails_check_naming_it(tmp_path) -> None:
    missing = tmp_path / "gone.sh"
    props = {**machine_props("app-a"), "fly_toml": _with_file("/bin/start.sh", local_path=str(missing))}
    failures = FlyMachineProvider().check({}, props).failures
    assert [f.property for f in failures] == ["fly_toml"]
    assert str(missing) in failures[0].reason and "cannot read" in failures[0].reason
    relative = {**props, "fly_toml": _with_file("/bin/start.sh", local_path="scripts/start.sh")}
    failures = FlyMachineProvider().check({}, relative).failures
    assert [(f.property, f.reason) for f in failures] == [
        ("fly_toml", "[[files]][0].local_path: must be an absolute path")
    ]


def test_a_local_path_file_changed_after_check_is_not_deployed(fly_emulator, meta_app, tmp_path) -> None:
    script = tmp_path / "startup.sh"
    script.write_text("v1\n")
    provider = configured(FlyMachineProvider(), fly_emulator)
    checked = machine_props(meta_app, fly_toml=_with_file("/bin/start.sh", local_path=str(script)))
    script.write_text("v2, never previewed\n")
    with pytest.raises(FlyError, match="changed after this run checked them"):
        provider.create(checked)
    assert not fly_emulator.snapshot()["machines"]


def test_a_script_moved_from_raw_value_to_local_path_updates_no_machine(fly_emulator, meta_app, tmp_path) -> None:
    # A fly.toml that carried the script inline (state from before the machine-file store) and one naming
    # the same bytes by local_path deploy the same config: upgrading restarts no machine.
    script = tmp_path / "startup.sh"
    script.write_text("#!/bin/sh\nexec gt up\n")
    provider = configured(FlyMachineProvider(), fly_emulator)
    created = provider.create(machine_props(meta_app, fly_toml=_with_file("/s.sh", raw_value=script.read_text())))
    by_path = machine_props(meta_app, fly_toml=_with_file("/s.sh", local_path=str(script)))
    assert provider.diff(created.id, created.outs, by_path).changes is False
    # Another script is another config: an update.
    script.write_text("#!/bin/sh\nexec gt up --verbose\n")
    changed = machine_props(meta_app, fly_toml=_with_file("/s.sh", local_path=str(script)))
    diff = provider.diff(created.id, created.outs, changed)
    assert diff.changes and not diff.replaces


def gate_props(*machines, timeout_s: int = 5) -> dict:
    """FlyMachinesReady's inputs for machines as the machine provider returned them (its outputs): one
    line per machine, keyed by the machine's resource name."""
    entries = {
        f"{m.outs['name']}-machine": entry_line(
            {"app": m.outs["app"], "machine_id": m.outs["machine_id"], "instance_id": m.outs["instance_id"],
             "desired_state": state}
        )
        for m, state in machines
    }  # fmt: skip
    return {"machines": entries, "timeout_s": timeout_s}


def test_machine_create_returns_at_once_and_the_gate_waits_for_its_checks(fly_emulator, meta_app) -> None:
    from emulators.fly import LatencyModel

    fly_emulator.set_latency(LatencyModel(boot_s=1, check_pass_s=1))
    created = configured(FlyMachineProvider(), fly_emulator).create(machine_props(meta_app))
    # Created and launched, but not waited for: the provider call did not hold a slot for the boot.
    assert fly_emulator.snapshot()["machines"][created.id]["state"] in ("created", "starting")
    gate = configured(FlyMachinesReadyProvider(), fly_emulator)
    ready = gate.create(gate_props((created, "started"), timeout_s=30))
    assert ready.outs["states"] == {created.id: "started"}
    machine = fly_emulator.snapshot()["machines"][created.id]
    assert machine["checks"] and all(c["status"] == "passing" for c in machine["checks"])


def test_a_machine_that_never_gets_healthy_fails_the_gate_naming_it_and_stays_tracked(fly_emulator, meta_app) -> None:
    from emulators.fly import LatencyModel

    fly_emulator.set_latency(LatencyModel(check_pass_s=60))
    healthy_app = "devenv-acme-erp-kong"
    configured(FlyAppProvider(), fly_emulator).create({"name": healthy_app, "org": "acme"})
    machines = configured(FlyMachineProvider(), fly_emulator)
    slow = machines.create(machine_props(meta_app))
    gate = configured(FlyMachinesReadyProvider(), fly_emulator)
    with pytest.raises(FlyError, match="health checks") as caught:
        gate.create(gate_props((slow, "started"), timeout_s=2))
    assert meta_app in str(caught.value) and slow.id in str(caught.value) and "1 of 1 machines" in str(caught.value)
    # The machine is in the state the engine records for its (successful) create: nothing is orphaned,
    # and the next `up` waits for it again.
    assert slow.id in fly_emulator.snapshot()["machines"]


def test_the_gate_waits_for_many_machines_at_once(fly_emulator, meta_app) -> None:
    from emulators.fly import LatencyModel

    fly_emulator.set_latency(LatencyModel(boot_s=2, check_pass_s=2))
    machines = configured(FlyMachineProvider(), fly_emulator)
    created = [machines.create(machine_props(meta_app, name=f"m-{i}")) for i in range(6)]
    stopped = machines.create(machine_props(meta_app, name="resting", desired_state="stopped"))
    gate = configured(FlyMachinesReadyProvider(), fly_emulator)
    ready = gate.create(gate_props(*[(m, "started") for m in created], (stopped, "stopped"), timeout_s=30))
    assert ready.outs["states"] == {**{m.id: "started" for m in created}, stopped.id: "stopped"}
    states = {m["name"]: m["state"] for m in fly_emulator.snapshot()["machines"].values()}
    # A machine created to stay stopped is never launched ("created": skip_launch).
    assert states == {**{f"m-{i}": "started" for i in range(6)}, "resting": "created"}


def test_the_gate_diff_waits_again_only_for_a_new_version_or_state(fly_emulator) -> None:
    gate = FlyMachinesReadyProvider()
    machine = {"app": "a", "machine_id": "m1", "instance_id": "v1", "desired_state": "started"}

    def props(**change: str) -> dict:
        return {"machines": {"a-machine": entry_line({**machine, **change})}}

    olds = {**props(), "timeout_s": 600, "states": {"m1": "started"}}
    assert gate.diff("g", olds, {**props(), "timeout_s": 900}).changes is False
    bumped = gate.diff("g", olds, {**props(instance_id="v2"), "timeout_s": 600})
    assert bumped.changes and bumped.replaces == []
    assert gate.diff("g", olds, props(desired_state="stopped")).changes
    assert gate.diff("g", olds, {"machines": Unknown()}).changes
    # A gate recorded by an earlier version (a list of records) still reads, waits and compares.
    recorded = {"machines": [machine], "timeout_s": 600, "states": {"m1": "started"}}
    assert gate.diff("g", recorded, {"machines": {"a/m1": entry_line(machine)}}).changes is False


def test_a_stop_shows_one_line_per_machine_in_the_gate() -> None:
    """`preview --diff` of a stop: the gate's input is one line per machine (what the CLI prints), each
    saying the state, the app and the machine, not a record of four fields."""
    line = entry_line(
        {"app": "devenv-acme-erp-pg", "machine_id": "m1", "instance_id": "v1", "desired_state": "stopped"}
    )
    assert line == "stopped devenv-acme-erp-pg/m1@v1"
    assert entries({"devenv-acme-erp-pg-machine": line}) == [
        {"app": "devenv-acme-erp-pg", "machine_id": "m1", "instance_id": "v1", "desired_state": "stopped"}
    ]
    assert FlyMachinesReadyProvider().check({}, {"machines": {"x": "paused a/m1@v1"}}).failures


def test_delete_flushes_through_exec_first(fly_emulator, meta_app) -> None:
    provider = configured(FlyMachineProvider(), fly_emulator)
    props = machine_props(meta_app, pre_stop_exec=["/usr/local/bin/r2-sync.sh", "--immediate"])
    created = provider.create(props)
    provider.delete(created.id, created.outs)
    assert [e["cmd"] for e in fly_emulator.exec_log()] == [["/usr/local/bin/r2-sync.sh", "--immediate"]]
    assert created.id not in fly_emulator.snapshot()["machines"]


def test_read_refreshes_outputs_and_inputs_and_reports_gone(fly_emulator, app) -> None:
    ips = configured(FlyIpAssignmentProvider(), fly_emulator)
    created = ips.create({"app": app, "type": "private_v6"})
    read = ips.read(created.id, created.outs)
    assert read.id == created.id and read.inputs == {"app": app, "type": "private_v6"}
    ips.delete(created.id, created.outs)
    assert ips.read(created.id, created.outs).id == ""
    apps = configured(FlyAppProvider(), fly_emulator)
    assert apps.read(app, {"name": app, "org": "acme"}).inputs["name"] == app


@pytest.mark.parametrize("service", ["kong", "pg"])
def test_files_read_by_non_root_processes_get_an_explicit_read_only_mode(fly_emulator, service: str) -> None:
    """Kong (user kong) reads kong.yml; postgres reads pg_hba.conf and the init SQL. fly.toml has no file mode
    (flyctl's appconfig.File), so the Machine config sets one (fly-go File.Mode) instead of Fly's default."""
    from components.config.model import SiloConfig
    from components.domain import services as svc
    from components.domain.catalog import silo_image
    from components.render.files import render_fly_toml

    cfg = SiloConfig(client="acme", app="erp", fly_org="acme", site_url="https://erp.acme.dev")
    app = cfg.app_name(service)
    configured(FlyAppProvider(), fly_emulator).create({"name": app, "org": "acme"})
    volume_id = None
    if svc.SERVICES[service].volume:
        volume = configured(FlyVolumeProvider(), fly_emulator).create(
            {"app": app, "name": svc.SERVICES[service].volume.name, "region": "yul", "size_gb": 1}
        )
        volume_id = volume.id
    props = machine_props(
        app,
        name=service,
        fly_toml=render_fly_toml(cfg, service),
        image=silo_image(cfg, service).ref,
        volume_id=volume_id,
    )
    created = configured(FlyMachineProvider(), fly_emulator).create(props)
    files = fly_emulator.snapshot()["machines"][created.id]["config"]["files"]
    assert files and {f["guest_path"]: f.get("mode") for f in files} == {f["guest_path"]: 0o444 for f in files}


# -- what a real account does that the providers must cope with --------------------------------------


def test_rls_sql_through_exec_succeeds_when_the_answer_has_no_exit_code(fly_emulator, meta_app) -> None:
    from components.providers.fly.exec import FlyExecProvider

    machine = configured(FlyMachineProvider(), fly_emulator).create(machine_props(meta_app))
    provider = configured(FlyExecProvider(), fly_emulator)
    created = provider.create({"app": meta_app, "machine_id": machine.id, "command": ["psql", "-c", "select 1"]})
    assert created.outs["exit_code"] == 0
    fly_emulator.set_exec_handler(lambda *_: {"exit_code": 3, "stderr": "ERROR: boom"})
    with pytest.raises(FlyError, match=r"exit 3\): ERROR: boom"):
        provider.update(created.id, created.outs, {**created.outs, "command": ["psql", "-c", "select 2"]})


def test_a_volume_being_destroyed_is_neither_adopted_nor_a_reason_to_keep_the_app(fly_emulator, app) -> None:
    from emulators.fly import LatencyModel

    fly_emulator.set_latency(LatencyModel(volume_destroy_s=60))
    provider = configured(FlyVolumeProvider(), fly_emulator)
    props = {"app": app, "name": "pg_data", "region": "yul", "size_gb": 1, "allow_delete": True}
    first = provider.create(props)
    provider.delete(first.id, first.outs)
    second = provider.create(props)
    assert second.id != first.id  # a new volume, not the one on its way out
    provider.delete(second.id, second.outs)
    apps = configured(FlyAppProvider(), fly_emulator)
    apps.delete(app, {"name": app, "keep_volumes": True})  # only dying volumes left: nothing to keep
    assert app not in fly_emulator.snapshot()["apps"]


def test_secret_digests_in_state_are_those_of_the_version_written(fly_emulator, app) -> None:
    from emulators.fly import LatencyModel

    fly_emulator.set_latency(LatencyModel(secrets_lag_s=60))
    provider = configured(FlySecretsProvider(), fly_emulator)
    created = provider.create({"app": app, "values": {"POSTGRES_PASSWORD": "p1"}})
    live = fly_emulator.snapshot()["secrets"][app]
    assert created.outs["digests"] == live and live["POSTGRES_PASSWORD"]
    updated = provider.update(app, created.outs, {"app": app, "values": {"POSTGRES_PASSWORD": "p2"}})
    assert updated.outs["digests"] == fly_emulator.snapshot()["secrets"][app] != created.outs["digests"]
    # A refresh reads at least the recorded version: nothing looks changed outside Pulumi.
    assert provider.read(app, updated.outs).outs["values"] == {"POSTGRES_PASSWORD": "p2"}


def test_an_update_is_ready_only_once_the_new_version_runs(fly_emulator, meta_app) -> None:
    import httpx

    from emulators.fly import LatencyModel

    provider = configured(FlyMachineProvider(), fly_emulator)
    created = provider.create(machine_props(meta_app))
    gate = configured(FlyMachinesReadyProvider(), fly_emulator)
    gate.create(gate_props((created, "started"), timeout_s=60))
    fly_emulator.set_latency(LatencyModel(replace_lag_s=3))
    news = machine_props(meta_app, image="supabase/postgres-meta:v0.91.0")
    updated = provider.update(created.id, created.outs, news)
    assert updated.outs["instance_id"] != created.outs["instance_id"]
    gate.update("g", {}, gate_props((updated, "started"), timeout_s=60))
    # The gate returned: the new version is the one running.
    wait = f"{fly_emulator.url}/v1/apps/{meta_app}/machines/{created.id}/wait"
    answer = httpx.get(
        wait,
        params={"state": "started", "version": updated.outs["instance_id"], "timeout": 1},
        headers={"Authorization": "Bearer test"},
    )
    assert answer.status_code == 200


def test_growing_an_attached_volume_restarts_its_machine_so_the_filesystem_grows(fly_emulator, app) -> None:
    volumes = configured(FlyVolumeProvider(), fly_emulator)
    props = {"app": app, "name": "pg_data", "region": "yul", "size_gb": 1}
    volume = volumes.create(props)
    machine = configured(FlyMachineProvider(), fly_emulator).create(
        machine_props(
            app, fly_toml=FLY_TOML + '\n[[mounts]]\nsource = "pg_data"\ndestination = "/data"\n', volume_id=volume.id
        )
    )
    grown = volumes.update(volume.id, volume.outs, {**props, "size_gb": 4})
    assert grown.outs["size_gb"] == 4
    snapshot = fly_emulator.snapshot()
    assert snapshot["volumes"][volume.id]["fs_size_gb"] == 4
    assert snapshot["machines"][machine.id]["state"] == "started"


def test_flycast_ip_of_an_app_on_its_own_network_is_allocated_on_that_network(fly_emulator) -> None:
    configured(FlyAppProvider(), fly_emulator).create(
        {"name": "devenv-acme-erp-rest", "org": "acme", "network": "acme-erp"}
    )
    ip = configured(FlyIpAssignmentProvider(), fly_emulator).create(
        {"app": "devenv-acme-erp-rest", "type": "private_v6"}
    )
    [recorded] = fly_emulator.snapshot()["ips"]["devenv-acme-erp-rest"]
    assert recorded["ip"] == ip.id and (recorded["org_slug"], recorded["network"]) == ("acme", "acme-erp")


def test_volume_check_marks_a_replacement_for_the_guardrails(fly_emulator, app) -> None:
    """The policy pack sees checked inputs only: a change the engine will replace the volume for is marked."""
    provider = configured(FlyVolumeProvider(), fly_emulator)
    props = {"app": app, "name": "pg_data", "region": "yul", "size_gb": 1, "encrypted": True}
    assert REPLACEMENT_KEY not in provider.check({}, props).inputs  # a create replaces nothing
    assert REPLACEMENT_KEY not in provider.check(props, {**props, "size_gb": 2}).inputs  # grown in place
    renamed = provider.check(props, {**props, "name": "pg_files"}).inputs
    assert renamed[REPLACEMENT_KEY] == ["name"]
    # The mark never reaches the outputs (what a stack policy and later runs see).
    created = provider.create(renamed)
    assert REPLACEMENT_KEY not in created.outs
    assert provider.diff(created.id, created.outs, renamed).changes is False
