"""The control stack and a silo with two towns, under the engine harness, on a real PostgreSQL and the
Fly and Cloudflare emulators: registry rows and Fly state match at every step (issues 4 and 5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from components.naming import sandbox_id, town_volume_name
from harness.engine import run
from harness.state import load as load_state
from tests.fixtures.cloudflare import CF_ACCOUNT_ID, CF_PARENT_ACCESS_KEY_ID, CF_TOKEN
from tests.fixtures.program import TOWNS_SILO

pytestmark = [pytest.mark.db, pytest.mark.harness]

ROOT = Path(__file__).resolve().parent.parent
ALPHA = {"name": "alpha", "user": "user-1", "rigs": [{"name": "web", "url": "https://github.com/acme/web.git"}]}
BETA = {"name": "Beta Town", "user": "user-2", "rigs": []}


@pytest.fixture
def deploy(tmp_path: Path, pg_database: str, fly_emulator, cloudflare_emulator):
    state_dir = tmp_path / "state"
    env = {
        "FLY_API_HOSTNAME": fly_emulator.url,
        "SILO_REGISTRY_DSN": pg_database,
        "CLOUDFLARE_API_URL": cloudflare_emulator.url,
        "CLOUDFLARE_API_TOKEN": CF_TOKEN,
        "CLOUDFLARE_ACCOUNT_ID": CF_ACCOUNT_ID,
        "CLOUDFLARE_R2_PARENT_ACCESS_KEY_ID": CF_PARENT_ACCESS_KEY_ID,
    }

    def deploy(op: str, stack: str, config: dict[str, Any]):
        config_file = tmp_path / f"Pulumi.{stack}.yaml"
        config_file.write_text(yaml.safe_dump({"config": config}))
        result = run(op, stack, ROOT, state_dir, config_file=config_file, env=env, timeout=600)
        assert result.ok, f"{op} {stack} failed: {result.error}\n{result.stderr[-3000:]}"
        return result

    return deploy


def towns_in_db(dsn: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, town_name, sandbox_id, status, fly_machine_id, fly_volume_id, destroyed_at FROM gastown_towns"
        ).fetchall()
        rigs = conn.execute("SELECT town_id, rig_name, status FROM gastown_rigs").fetchall()
    out = {}
    for town_id, name, sid, status, machine, volume, destroyed in rows:
        out[f"{name}/{town_id}"] = {
            "name": name, "sandbox_id": sid, "status": status, "machine": machine, "volume": volume,
            "destroyed": destroyed is not None,
            "rigs": sorted((r[1], r[2]) for r in rigs if r[0] == town_id),
        }
    return out


def active(dsn: str) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in towns_in_db(dsn).values() if not t["destroyed"]}


def test_control_stack_then_two_towns_lifecycle(
    deploy, tmp_path: Path, pg_database, fly_emulator, cloudflare_emulator
) -> None:
    control = {"silo:kind": "control", "silo:backupBucket": "acme-gastown-backups"}
    first = deploy("up", "control", control)
    assert first.outputs["backup_bucket"] == "acme-gastown-backups"
    assert first.outputs["backup_s3_endpoint"] == f"https://{CF_ACCOUNT_ID}.r2.cloudflarestorage.com"
    with psycopg.connect(pg_database) as conn:
        tags = {r[0] for r in conn.execute("SELECT image_tag FROM kiloclaw_available_versions")}
    assert "15.8.1.085" in tags
    # The backend's login (pulumi-postgresql Role + Grants) reads the catalog and cannot rewrite it.
    assert first.outputs["registry_backend_dsn"] == "[secret]"
    backend_dsn = load_state(tmp_path / "state", "control").outputs["registry_backend_dsn"]
    with psycopg.connect(backend_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM kiloclaw_available_versions").fetchone()[0] >= 7
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM kiloclaw_available_versions")
    again = deploy("up", "control", control)
    assert set(again.changes) == {"same"}, again.changes

    silo = {**TOWNS_SILO, "silo:towns": json.dumps([ALPHA, BETA])}
    up = deploy("up", "dev", silo)
    alpha_id, beta_id = sandbox_id("user-1", "alpha"), sandbox_id("user-2", "Beta Town")
    snap = fly_emulator.snapshot()
    assert {alpha_id, beta_id} <= set(snap["apps"])
    rows = active(pg_database)
    assert set(rows) == {"alpha", "Beta Town"}
    for name, sid in (("alpha", alpha_id), ("Beta Town", beta_id)):
        row = rows[name]
        assert row["sandbox_id"] == sid and row["status"] == "running"
        machine = snap["machines"][row["machine"]]
        assert machine["state"] == "started" and machine["app"] == sid
        volume = snap["volumes"][row["volume"]]
        assert volume["name"] == town_volume_name(sid) and volume["size_gb"] == 50
        assert volume["attached_machine_id"] == row["machine"]
        env = machine["config"]["env"]
        town_id = up.outputs["towns"][name]["town_id"]
        assert env["TOWN_ID"] == town_id and env["R2_BUCKET"] == "acme-gastown-backups"
        assert machine["config"]["stop_config"]["signal"] == "SIGTERM"
        assert set(snap["secrets"][sid]) == {"R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_SESSION_TOKEN",
                                             "INTERNAL_API_KEY"}
    assert rows["alpha"]["rigs"] == [("web", "active")]
    # Each town's R2 credentials are limited to its own prefix.
    prefixes = {json.dumps(c.get("prefixes")) for c in cloudflare_emulator.snapshot()["temp_credentials"]}
    assert prefixes == {json.dumps([f"gastown/{up.outputs['towns'][n]['town_id']}/"]) for n in ("alpha", "Beta Town")}

    # Stop beta, add a rig to alpha: no replacement, volumes kept, rows follow.
    alpha_rigs = {**ALPHA, "rigs": [*ALPHA["rigs"], {"name": "api", "url": "https://github.com/acme/api.git"}]}
    changed = deploy("up", "dev", {**TOWNS_SILO, "silo:towns": json.dumps([alpha_rigs, {**BETA, "state": "stopped"}])})
    assert not changed.ops("replace") and not changed.ops("delete"), changed.steps
    rows2 = active(pg_database)
    assert rows2["Beta Town"]["status"] == "stopped"
    assert fly_emulator.snapshot()["machines"][rows2["Beta Town"]["machine"]]["state"] == "stopped"
    assert rows2["alpha"]["rigs"] == [("api", "active"), ("web", "active")]
    assert rows2["alpha"]["volume"] == rows["alpha"]["volume"]
    rig_file = next(f for f in fly_emulator.snapshot()["machines"][rows2["alpha"]["machine"]]["config"]["files"]
                    if f["guest_path"] == "/etc/gastown/rigs.json")
    assert rig_file

    # Destroy beta by removing it from the config. Its data goes only once deletion was allowed by a
    # previous up (the flag recorded in state is what protects a removed resource, as with Pulumi).
    kept = deploy("up", "dev", {**TOWNS_SILO, "silo:towns": json.dumps([alpha_rigs])})
    assert beta_id in fly_emulator.snapshot()["apps"], "data of a removed town is kept by default"
    assert [v for v in fly_emulator.snapshot()["volumes"].values() if v["app"] == beta_id]
    assert not fly_emulator.snapshot()["machines"].get(rows2["Beta Town"]["machine"])
    assert kept.ok
    allowed = {**TOWNS_SILO, "silo:allowDataDeletion": "true"}
    deploy("up", "dev", {**allowed, "silo:towns": json.dumps([alpha_rigs, BETA])})
    gone = deploy("up", "dev", {**allowed, "silo:towns": json.dumps([alpha_rigs])})
    assert beta_id not in fly_emulator.snapshot()["apps"]
    assert not [v for v in fly_emulator.snapshot()["volumes"].values() if v["app"] == beta_id]
    destroyed = [t for t in towns_in_db(pg_database).values() if t["name"] == "Beta Town"]
    assert destroyed and all(t["destroyed"] and t["status"] == "destroyed" for t in destroyed)
    # The final flush ran through exec before the machine went away.
    assert any(e["app"] == beta_id and "--immediate" in e["cmd"] for e in fly_emulator.exec_log())
    assert set(active(pg_database)) == {"alpha"}
    assert gone.ok
