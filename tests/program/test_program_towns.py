"""The control stack and a silo with two towns, on the real Pulumi CLI, a real PostgreSQL and the Fly
and Cloudflare emulators: registry rows and Fly state match at every step (issues 4 and 5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from components.domain.naming import is_owner_secret, sandbox_id, town_volume_name
from components.stacks.town import FLUSH_COMMAND
from tests.fixtures.cloudflare import CF_ACCOUNT_ID
from tests.fixtures.program import (
    GENERATED_SECRET,
    TOWNS_SILO,
    StackProgram,
    assert_no_secret_leaks,
    control_env,
    fly_env,
)

pytestmark = [pytest.mark.db, pytest.mark.engine]
ALPHA = {"name": "alpha", "user": "user-1", "rigs": [{"name": "web", "url": "https://github.com/acme/web.git"}]}
GIT_CREDENTIALS = "https://rig-bot:ghp_neverInPlaintext0123456789@github.com"
BETA = {"name": "Beta Town", "user": "user-2", "rigs": []}


@pytest.fixture
def stacks(tmp_path: Path, pg_database: str, fly_emulator, cloudflare_emulator) -> dict[str, StackProgram]:
    """The control stack and the silo, in one project and one file backend."""
    env = {**fly_env(fly_emulator), **control_env(pg_database, cloudflare_emulator)}
    return {name: StackProgram(tmp_path, name, env) for name in ("control", "dev")}


@pytest.fixture
def deploy(stacks: dict[str, StackProgram]):
    def deploy(op: str, stack: str, config: dict[str, Any]):
        result = stacks[stack].run_config(op, config)
        assert result.ok, f"{op} {stack} failed: {result.error}\n{result.text[-3000:]}"
        return result

    return deploy


def town_secrets(stacks: dict[str, StackProgram]) -> dict[str, str]:
    """Every secret the two stacks hold: generated keys, towns' R2 credentials, the backend login."""
    found: dict[str, str] = {}
    for name, program in stacks.items():
        st = program.state()
        for res in st.resources.values():
            if res.type == GENERATED_SECRET:
                found[f"{name} {res.name}"] = res.outputs["result"]
            for key, value in (res.outputs.get("generated") or {}).items():  # FlySecrets' own (INTERNAL_API_KEY)
                found[f"{name} {res.name}.{key}"] = value
            if res.type.endswith("cloudflare:R2TownCredentials"):
                for key in ("secret_access_key", "session_token"):
                    found[f"{name} {res.name}.{key}"] = res.outputs[key]
        if "registry_backend_dsn" in st.outputs:
            found[f"{name} registry_backend_dsn"] = st.outputs["registry_backend_dsn"]
    return found


def assert_no_town_secret_leaks(stacks: dict[str, StackProgram], *results) -> None:
    """No town credential in plaintext in the shared backend's files, the stack files or the runs' output."""
    secrets = {**town_secrets(stacks), "silo:gitCredentials": GIT_CREDENTIALS}
    assert {k for k in secrets if k.endswith(".session_token")}, "no town credentials found in state"
    for program in stacks.values():
        assert_no_secret_leaks(program, secrets, *results)


def towns_in_db(dsn: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, town_name, sandbox_id, status, fly_machine_id, fly_volume_id, destroyed_at FROM gastown_towns"
        ).fetchall()
        rigs = conn.execute("SELECT town_id, rig_name, status FROM gastown_rigs").fetchall()
    out = {}
    for town_id, name, sid, status, machine, volume, destroyed in rows:
        out[f"{name}/{town_id}"] = {
            "name": name,
            "sandbox_id": sid,
            "status": status,
            "machine": machine,
            "volume": volume,
            "destroyed": destroyed is not None,
            "rigs": sorted((r[1], r[2]) for r in rigs if r[0] == town_id),
        }
    return out


def active(dsn: str) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in towns_in_db(dsn).values() if not t["destroyed"]}


def test_control_stack_then_two_towns_lifecycle(
    deploy, stacks: dict[str, StackProgram], pg_database, fly_emulator, cloudflare_emulator
) -> None:
    control = {"silo:kind": "control", "silo:backupBucket": "acme-gastown-backups"}
    first = deploy("up", "control", control)
    assert first.outputs["backup_bucket"] == "acme-gastown-backups"
    assert first.outputs["backup_s3_endpoint"] == f"https://{CF_ACCOUNT_ID}.r2.cloudflarestorage.com"
    with psycopg.connect(pg_database) as conn:
        tags = {r[0] for r in conn.execute("SELECT image_tag FROM kiloclaw_available_versions")}
    assert "15.8.1.085" in tags
    # The backend's login (DatabaseLogin) reads the catalog and cannot rewrite it.
    assert first.outputs["registry_backend_dsn"] == "[secret]"
    backend_dsn = stacks["control"].state().outputs["registry_backend_dsn"]
    with psycopg.connect(backend_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM kiloclaw_available_versions").fetchone()[0] >= 7
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM kiloclaw_available_versions")
    again = deploy("up", "control", control)
    assert set(again.changes) == {"same"}, again.changes

    silo = {**TOWNS_SILO, "silo:towns": json.dumps([ALPHA, BETA])}
    stacks["dev"].set_secret("silo:gitCredentials", GIT_CREDENTIALS)  # private rigs
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
        assert {k for k in snap["secrets"][sid] if not is_owner_secret(k)} == {
            "R2_ACCESS_KEY_ID",
            "R2_SECRET_ACCESS_KEY",
            "R2_SESSION_TOKEN",
            "INTERNAL_API_KEY",
            "KILO_JWT",  # its own heartbeat token, generated like INTERNAL_API_KEY (service/ checks it)
            "GIT_CREDENTIALS",
        }
    assert rows["alpha"]["rigs"] == [("web", "active")]
    assert_no_town_secret_leaks(stacks, first, up)
    # Networks: the silo's apps share one; each town has its own and reaches the silo only through Kong.
    assert {snap["apps"][f"devenv-acme-erp-{s}"]["network"] for s in ("pg", "meta", "kong")} == {"devenv-acme-erp"}
    for sid in (alpha_id, beta_id):
        assert snap["apps"][sid]["network"] == sid
        for service in ("meta", "pg", "rest"):
            assert not fly_emulator.can_reach(sid, f"devenv-acme-erp-{service}.flycast"), (sid, service)
        assert fly_emulator.can_reach(sid, "devenv-acme-erp-kong.fly.dev")
    assert not fly_emulator.can_reach(alpha_id, f"{beta_id}.flycast"), "one town reaches another"
    assert fly_emulator.can_reach("devenv-acme-erp-kong", "devenv-acme-erp-meta.flycast")
    # Each town's R2 credentials are limited to its own prefix.
    prefixes = {json.dumps(c.get("prefixes")) for c in cloudflare_emulator.snapshot()["temp_credentials"]}
    assert prefixes == {json.dumps([f"gastown/{up.outputs['towns'][n]['town_id']}/"]) for n in ("alpha", "Beta Town")}

    # Stop beta, add a rig to alpha: no replacement, volumes kept, rows follow.
    alpha_rigs = {**ALPHA, "rigs": [*ALPHA["rigs"], {"name": "api", "url": "https://github.com/acme/api.git"}]}
    changed = deploy("up", "dev", {**TOWNS_SILO, "silo:towns": json.dumps([alpha_rigs, {**BETA, "state": "stopped"}])})
    assert set(changed.changed().values()) <= {"update"}, changed.changed()
    rows2 = active(pg_database)
    assert rows2["Beta Town"]["status"] == "stopped"
    assert fly_emulator.snapshot()["machines"][rows2["Beta Town"]["machine"]]["state"] == "stopped"
    assert rows2["alpha"]["rigs"] == [("api", "active"), ("web", "active")]
    assert rows2["alpha"]["volume"] == rows["alpha"]["volume"]
    rig_file = next(
        f
        for f in fly_emulator.snapshot()["machines"][rows2["alpha"]["machine"]]["config"]["files"]
        if f["guest_path"] == "/etc/gastown/rigs.json"
    )
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
    # The town was stopped and flushed through exec (startup.sh --stop) before each of its machines went away.
    flushes = [e["cmd"] for e in fly_emulator.exec_log() if e["app"] == beta_id]
    assert flushes and all(cmd == FLUSH_COMMAND for cmd in flushes), flushes
    assert set(active(pg_database)) == {"alpha"}
    assert gone.ok
