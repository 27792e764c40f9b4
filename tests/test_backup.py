"""Gas Town R2 disaster-recovery scripts, run for real on a real town.

The town is built by the real ``gt``, ``bd`` and ``dolt`` (tests/fixtures/town.py); the scripts are
installed from the town's rendered fly.toml (tests/fixtures/sandbox.py) and run against moto's S3
server with the pinned AWS CLI, real git, flock, tar and curl. The one stand-in is the agent CLI
(Claude Code / OpenCode cannot run here): an idle process that shows gastown's ready prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

from components.town import FLUSH_COMMAND, STATUS_PORT, WORK_DIR, town_script_context
from components.town_scripts import TOWN_SCRIPT_MODE, TownScriptContext, render_town_scripts
from tests.fixtures.sandbox import KILO_JWT, TOWN_ID, VENV_BIN, Heartbeats, Sandbox, installed_files, lose_volume
from tests.fixtures.town import RIGS, GasTown, repositories, run, town_state

TS_LEN = len("20260217T120000Z")
# The rig checks `gt doctor --rig` runs that a restore must keep passing (gastown internal/doctor).
RIG_FIDELITY_CHECKS = (
    "bare-repo-exists",
    "bare-repo-refspec",
    "default-branch-exists",
    "mayor-clone-exists",
    "hooks-path-configured",
    "polecat-clones-valid",
    "beads-config-valid",
    "beads-redirect",
    "rig-is-git-repo",
)


def doctor(town: GasTown, root: Path, rig: str | None = None) -> dict[str, str]:
    """check name → ✓ / ⚠ / ✖, as `gt doctor [--rig R]` prints them."""
    args = ["gt", "doctor"] + (["--rig", rig] if rig else [])
    out = run(args, cwd=root, env=town.env, check=False, timeout=300)
    results = {}
    # Each check prints "○  name..." then, after a carriage return, "✓|⚠|✖  name message".
    for line in out.splitlines():
        found = re.match(r"^\s*(✓|⚠|✖)\s+([a-z][a-z0-9-]*)\s", line)
        if found:
            results[found.group(2)] = found.group(1)
    assert results, out
    return results


# ---- rendering ---------------------------------------------------------------------------------


def test_installed_scripts_are_shellcheck_clean_and_flush_command_names_one(tmp_path: Path) -> None:
    files = installed_files()
    scripts = {p: c for p, c in files.items() if p.endswith(".sh")}
    assert sorted(Path(p).name for p in scripts) == ["r2-restore.sh", "r2-sync.sh", "startup.sh"]
    # The destroy's pre-stop exec must run a script the machine really has.
    assert FLUSH_COMMAND[0] == "bash" and FLUSH_COMMAND[1] in scripts and FLUSH_COMMAND[2:] == ["--stop"]
    paths = []
    for guest_path, content in scripts.items():
        path = tmp_path / Path(guest_path).name
        path.write_text(content)
        paths.append(str(path))
    result = subprocess.run(
        [str(VENV_BIN / "shellcheck"), "--severity=style", *paths], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
    status_js = tmp_path / "town-status.js"
    status_js.write_text(next(c for p, c in files.items() if p.endswith("town-status.js")))
    assert subprocess.run(["node", "--check", str(status_js)], capture_output=True, check=False).returncode == 0


def test_rendered_settings_and_defaults() -> None:
    ctx = TownScriptContext(town_root="/data/town", sync_interval_seconds=60, keep_snapshots=5, key_prefix="dr/gt")
    scripts = render_town_scripts(ctx)
    sync = scripts["/usr/local/bin/r2-sync.sh"]
    assert 'GT_TOWN_ROOT="${GT_TOWN_ROOT:-/data/town}"' in sync
    assert 'SYNC_INTERVAL_SECONDS="${SYNC_INTERVAL_SECONDS:-60}"' in sync
    assert 'PREFIX="dr/gt/$TOWN_ID"' in sync
    # Snapshot scratch space defaults to the volume, beside the town, never the root fs's /tmp.
    assert 'R2_WORK_DIR="${R2_WORK_DIR:-/data/.r2-work}"' in sync
    assert oct(TOWN_SCRIPT_MODE) == "0o755"


def test_town_machine_keeps_snapshot_work_on_its_volume_and_checks_its_boot_phase() -> None:
    from components.config import SiloConfig, TownConfig
    from components.fly import flytoml
    from components.town import town_fly_toml

    cfg = SiloConfig(client="acme", app="erp", fly_org="acme", site_url="https://erp.acme.dev")
    text = town_fly_toml(cfg, TownConfig(name="acme", user="u_1"), "img:1", town_id=TOWN_ID, bucket="b", endpoint="e")
    doc = flytoml.parse(text)
    [mount] = doc["mounts"]
    assert WORK_DIR.startswith(mount["destination"] + "/")
    assert town_script_context().work_dir == WORK_DIR
    # The machine check asks the status endpoint, which answers from the first second of the boot.
    assert doc["checks"]["town"] == {
        "type": "http",
        "port": STATUS_PORT,
        "path": "/healthz",
        "interval": "15s",
        "timeout": "5s",
        "grace_period": "30s",
    }
    assert all("tcp_checks" not in s for s in doc.get("services", []))
    assert doc["env"]["SHUTDOWN_TIMEOUT_SECONDS"] == str(doc["kill_timeout"])


# ---- backup and restore ----------------------------------------------------------------------------


def test_backup_then_restore_brings_the_town_back_working(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    town = sandbox.town
    town.start_dolt()
    before_doctor = {rig: doctor(town, town.root, rig) for rig in RIGS}
    origin_main = run(
        ["git", "rev-parse", "refs/remotes/origin/main"], cwd=town.root / "backend" / ".repo.git", env=town.env
    ).strip()
    sync = sandbox.sync()  # with the Dolt server running, as in a live town

    [ts] = sandbox.snapshots()
    assert len(ts) == TS_LEN
    manifest_bytes = sandbox.bucket.get(f"{sandbox.prefix}/snapshots/{ts}/manifest.json")
    assert sandbox.latest() == {"timestamp": ts, "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest()}
    manifest = json.loads(manifest_bytes)
    assert manifest["format"] == 2 and manifest["gt_version"].startswith("gt version 1.0.1")
    assert sorted(manifest["databases"]) == sorted(["hq", *RIGS])
    backend = next(r for r in manifest["rigs"] if r["name"] == "backend")
    assert sorted(r["path"] for r in backend["repos"]) == [
        "backend/.repo.git",
        "backend/crew/alice",
        "backend/mayor/rig",
    ]

    town.stop()
    original = town_state(town.root, town.env)
    lost = lose_volume(sandbox)
    # The restore needs nothing but the snapshot: the upstreams are unreachable meanwhile.
    for upstream in town.upstreams.values():
        upstream.rename(upstream.with_name(upstream.name + ".gone"))
    try:
        restore = sandbox.restore(town.root)
    finally:
        for upstream in town.upstreams.values():
            upstream.with_name(upstream.name + ".gone").rename(upstream)
    assert restore.returncode == 0, restore.stderr

    restored = town_state(town.root, town.env)
    assert restored["dolt"] == original["dolt"]  # every database, working sets included
    assert restored["repos"] == original["repos"]  # refs, HEAD, settings, worktrees of every repository
    # gastown's activity log grew when the town was stopped after the snapshot: compare the rest.
    events = ".events.jsonl"
    assert (lost / "gt" / events).read_text().startswith((town.root / events).read_text())
    assert {k: v for k, v in restored["files"].items() if k != events} == {
        k: v for k, v in original["files"].items() if k != events
    }  # configuration, overlays, plugins, dirty work
    root = town.root
    # Gap 1: the shared repo keeps what gastown set at clone time.
    repo = root / "backend" / ".repo.git"
    assert town.git("config", "remote.origin.fetch", cwd=repo).strip() == "+refs/heads/*:refs/remotes/origin/*"
    assert town.git("config", "core.hooksPath", cwd=repo).strip() == ".githooks"
    assert town.git("config", "remote.origin.pushurl", cwd=root / "docs" / ".repo.git").strip() == (
        f"file://{town.fork}"
    )
    # Gap 2: the mayor's and the crew's clones, unpushed commits and uncommitted files included.
    assert town.git("log", "-1", "--format=%s", cwd=root / "webapp" / "mayor" / "rig").strip() == (
        "mayor: plan not pushed yet"
    )
    assert (root / "webapp" / "mayor" / "rig" / "notes.md").read_text() == "draft\n"
    alice = root / "backend" / "crew" / "alice"
    assert town.git("log", "-1", "--format=%s", cwd=alice).strip() == "alice: unpushed crew work"
    assert (alice / "TODO.md").exists() and (alice / ".env").read_text() == "ALICE=1\n"
    nux = root / "backend" / "polecats" / "nux" / "backend"
    status = town.git("status", "--porcelain", cwd=nux).splitlines()
    assert {" D README.md", " M src/app.py", "?? notes/", "?? run.sh", "?? src/staged.py"} <= set(status)
    # Gap 4: git-ignored files inside worktrees (the overlay's .env), overlays and setup hooks,
    # the namepool, rig and town beads settings and formulas, plugins, dogs.
    assert (nux / ".env").read_text().startswith("DATABASE_URL=")
    for rel in (
        "backend/.runtime/overlay/.env",
        "backend/.runtime/setup-hooks/10-hello.sh",
        "backend/.beads/config.yaml",
        ".beads/formulas/acme-release.formula.toml",
        "plugins/hello/plugin.md",
        "backend/plugins/lint/plugin.md",
        "deacon/dogs/alpha/.dog.json",
    ):
        assert (root / rel).is_file(), rel
    assert not (nux / "build").exists()  # ignored directories (build output) are not kept
    for repository in repositories(root):
        town.git("fsck", "--no-progress", "--connectivity-only", cwd=repository)

    # The restored town works: gt doctor's rig checks pass as they did, and a new polecat starts
    # from origin/<default>.
    town.start_dolt()
    for rig in RIGS:
        after = doctor(town, root, rig)
        assert after == before_doctor[rig], rig
        # None of the checks a plain re-clone breaks (refspec, origin/<default>, mayor clone...) fails.
        assert set(RIG_FIDELITY_CHECKS) <= set(after), rig
        assert [check for check in RIG_FIDELITY_CHECKS if after[check] == "✖"] == [], rig
    town.gt("polecat", "add", "backend", "furiosa")
    furiosa = root / "backend" / "polecats" / "furiosa" / "backend"
    assert town.git("merge-base", "--is-ancestor", origin_main, "HEAD", cwd=furiosa) == ""

    [beat] = heartbeats.events("r2_restore")
    assert beat["status"] == "restored" and beat["snapshot"] == ts
    for output in (sync.stderr, restore.stderr):
        assert KILO_JWT not in output and sandbox.bucket.secret_key not in output


def test_restore_skips_when_the_volume_has_a_town(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    marker = sandbox.town.root / "settings" / "marker.txt"
    marker.write_text("mine")
    restore = sandbox.restore(sandbox.town.root)
    assert restore.returncode == 0, restore.stderr
    assert "skipping the restore" in restore.stderr
    assert marker.read_text() == "mine"
    [beat] = heartbeats.events("r2_restore")
    assert beat["status"] == "skipped"


def test_restore_refuses_unknown_data_and_cleans_its_own_leftovers(sandbox: Sandbox) -> None:
    sandbox.sync()
    stray = sandbox.tmp / "stray-volume" / "gt"
    (stray / "notes").mkdir(parents=True)
    (stray / "notes" / "keep.txt").write_text("not ours")

    refused = sandbox.restore(stray)

    assert refused.returncode == 1
    assert "refusing to restore over unknown data" in refused.stderr
    assert sorted(str(p.relative_to(stray.parent)) for p in stray.parent.rglob("*")) == [
        "gt",
        "gt/notes",
        "gt/notes/keep.txt",
    ]

    # An interrupted restore leaves only its work directory behind (the town is moved into place
    # in one rename): the next attempt clears it and succeeds.
    empty = sandbox.tmp / "empty-volume" / "gt"
    leftovers = empty.parent / ".r2-work" / "restore.abc123" / "town"
    leftovers.mkdir(parents=True)
    (leftovers / "half-written").write_text("x")
    retried = sandbox.restore(empty)
    assert retried.returncode == 0, retried.stderr
    assert (empty / "mayor" / "town.json").exists()
    assert not (empty.parent / ".r2-work" / "restore.abc123").exists()


def test_missing_r2_setting_is_named(sandbox: Sandbox) -> None:
    env = {k: v for k, v in sandbox.env.items() if k != "R2_BUCKET"}
    result = subprocess.run(
        ["bash", str(sandbox.bin_dir / "r2-sync.sh"), "--immediate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "R2_BUCKET is required" in result.stderr
    assert sandbox.bucket.keys() == []


def test_failed_sync_is_reported(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    result = sandbox.run("r2-sync.sh", "--immediate", R2_BUCKET="no-such-bucket-here")
    assert result.returncode != 0
    [beat] = heartbeats.events("r2_sync")
    assert beat["status"] == "failed"


def test_uninitialised_town_never_uploads(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    good = b'{"timestamp": "20260101T000000Z", "manifest_sha256": "abc"}'
    sandbox.bucket.put(f"{sandbox.prefix}/latest.json", good)
    (sandbox.town.root / "mayor" / "town.json").unlink()

    result = sandbox.run("r2-sync.sh", "--immediate")

    assert result.returncode == 0, result.stderr
    assert "refusing to upload" in result.stderr
    assert sandbox.bucket.keys() == [f"{sandbox.prefix}/latest.json"]
    assert sandbox.bucket.get(f"{sandbox.prefix}/latest.json") == good
    [beat] = heartbeats.events("r2_sync")
    assert beat["status"] == "skipped"


def test_snapshot_work_stays_on_the_volume(sandbox: Sandbox) -> None:
    # The root filesystem's /tmp is not used at all: a TMPDIR that does not exist changes nothing.
    result = sandbox.sync(TMPDIR=str(sandbox.tmp / "no-such-tmp"))
    assert "building snapshot" in result.stderr
    assert [p.name for p in (sandbox.town.volume / ".r2-work").iterdir()] == []
    assert not (sandbox.tmp / "no-such-tmp").exists()
