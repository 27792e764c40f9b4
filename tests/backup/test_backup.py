"""Gas Town R2 disaster-recovery scripts, run for real on a real town.

The town is built by the real ``gt``, ``bd`` and ``dolt`` (tests/fixtures/town.py); the scripts are
installed from the town's rendered fly.toml (tests/fixtures/sandbox.py) and run against moto's S3
server with the pinned AWS CLI, real git, flock, tar and curl. The one stand-in is the agent CLI
(Claude Code / OpenCode cannot run here): an idle process that shows gastown's ready prompt.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import pulumi
import pytest

from components.config.model import SiloConfig, TownConfig
from components.providers.fly import flytoml
from components.render.town_scripts import TOWN_SCRIPT_MODE, TownScriptContext, render_town_scripts
from components.stacks.town import FLUSH_COMMAND, STATUS_PORT, WORK_DIR, town_script_context
from tests.fixtures.pulumi_mocks import RecordingMocks, declare_town
from tests.fixtures.sandbox import (
    KILO_JWT,
    TOWN_ID,
    VENV_BIN,
    Heartbeats,
    Sandbox,
    installed_files,
    lose_volume,
    wait_for,
)
from tests.fixtures.town import (
    GT_101_POLECAT_STOP_HOOK,
    RIGS,
    GasTown,
    doctor,
    doctor_report,
    repositories,
    run,
    town_state,
)

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


def _commit_file(town: GasTown, repo: Path, name: str, content: str, message: str) -> None:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(content)
    town.git("add", name, cwd=repo)
    town.git("commit", "-q", "-m", message, cwd=repo)


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
    from components.stacks.town import town_fly_toml

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


def test_the_town_machine_is_told_when_its_r2_credentials_expire(
    silo_mocks: RecordingMocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The per-town R2 credentials lapse at expires_at (R2TownCredentials): the machine gets that time in
    # its environment (not a secret), so it can report it, and `silo doctor` can read it back from Fly.
    expires = "2026-03-08T12:00:00+00:00"
    record = silo_mocks.new_resource

    def with_expiry(args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        resource_id, outs = record(args)
        if args.typ.endswith(":R2TownCredentials"):
            outs["expires_at"] = expires
        return resource_id, outs

    monkeypatch.setattr(silo_mocks, "new_resource", with_expiry)
    town = TownConfig(name="alpha", user="u1")
    cfg = SiloConfig(
        client="acme", app="erp", fly_org="acme", site_url="https://erp.acme.dev", towns=[town],
        control_stack="acme/silo/control",
    )  # fmt: skip
    declare_town(cfg, town)

    [machine] = silo_mocks.of_type("Machine")
    assert flytoml.parse(machine.inputs["fly_toml"])["env"]["R2_CREDENTIALS_EXPIRE_AT"] == expires


# ---- backup and restore ----------------------------------------------------------------------------


def test_backup_then_restore_brings_the_town_back_working(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    town = sandbox.town
    town.start_dolt()
    before_doctor = {rig: doctor(town, town.root, rig) for rig in RIGS}
    before_town_doctor, _ = doctor_report(town, town.root)
    origin_main = run(
        ["git", "rev-parse", "refs/remotes/origin/main"], cwd=town.root / "backend" / ".repo.git", env=town.env
    ).strip()
    sync = sandbox.sync()  # with the Dolt server running, as in a live town

    [ts] = sandbox.snapshots()
    assert len(ts) == TS_LEN
    manifest_bytes = sandbox.bucket.get(f"{sandbox.prefix}/snapshots/{ts}/manifest.json")
    assert sandbox.latest() == {
        "timestamp": ts,
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "previous": [],
    }
    manifest = json.loads(manifest_bytes)
    assert manifest["format"] == 3 and manifest["gt_version"].startswith("gt version 1.0.1")
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
    restore = _restore_with_upstreams_gone(sandbox)
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

    # The restored town works: `gt doctor` passes (but for gt v1.0.1's own polecat Stop-hook conflict,
    # which the town had before the backup too), and a new polecat starts from origin/<default>.
    town.start_dolt()
    after_town_doctor, report = doctor_report(town, root)
    assert after_town_doctor == before_town_doctor
    assert [check for check, status in after_town_doctor.items() if status == "✖"] == [GT_101_POLECAT_STOP_HOOK]
    stale = re.findall(r"└─ (\S+/\.claude/settings\.json): (.+)", report)
    assert stale and all(
        path.endswith("/polecats/.claude/settings.json") and reason.strip() == "missing Stop hook"
        for path, reason in stale
    ), report
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


def _restore_after_losing_the_volume(sandbox: Sandbox) -> Path:
    """One snapshot of the live town, the volume lost, the restore with the upstreams unreachable;
    returns where the lost volume went. Asserts nothing about the snapshot's layout, so that a test
    built on it fails for what the restored town lacks, not for how the snapshot was written."""
    town = sandbox.town
    town.start_dolt()
    sandbox.sync()
    town.stop()
    lost = lose_volume(sandbox)
    restore = _restore_with_upstreams_gone(sandbox)
    assert restore.returncode == 0, restore.stderr
    return lost


def _restore_with_upstreams_gone(sandbox: Sandbox) -> subprocess.CompletedProcess:
    """The restore onto the town's (lost) volume while every upstream is unreachable: it must need
    nothing but the snapshot."""
    town = sandbox.town
    for upstream in town.upstreams.values():
        upstream.rename(upstream.with_name(upstream.name + ".gone"))
    try:
        return sandbox.restore(town.root)
    finally:
        for upstream in town.upstreams.values():
            upstream.with_name(upstream.name + ".gone").rename(upstream)


def _shared_repo_settings(town: GasTown, root: Path) -> dict[str, str]:
    """What gastown sets on each rig's .repo.git at clone time, and what `gt doctor --rig` checks."""
    out = {}
    for rig in RIGS:
        repo = root / rig / ".repo.git"
        for key in ("remote.origin.url", "remote.origin.fetch", "remote.origin.pushurl", "core.hooksPath"):
            out[f"{rig} {key}"] = run(["git", "config", "--get", key], cwd=repo, env=town.env, check=False).strip()
        out[f"{rig} refs/remotes/origin/main"] = run(
            ["git", "rev-parse", "-q", "--verify", "refs/remotes/origin/main"], cwd=repo, env=town.env, check=False
        ).strip()
    return out


def test_restored_shared_repos_keep_what_gastown_set_at_clone_time(sandbox: Sandbox) -> None:
    town = sandbox.town
    before = _shared_repo_settings(town, town.root)
    assert before["backend remote.origin.fetch"] == "+refs/heads/*:refs/remotes/origin/*"
    assert before["backend core.hooksPath"] == ".githooks"
    assert before["docs remote.origin.pushurl"] == f"file://{town.fork}"
    assert before["backend refs/remotes/origin/main"]

    _restore_after_losing_the_volume(sandbox)

    assert _shared_repo_settings(town, town.root) == before


def _clone_state(town: GasTown, root: Path) -> dict[str, object]:
    """Each mayor and crew clone: HEAD, its last commit's subject, and its working tree's changes."""
    out: dict[str, object] = {}
    for rel in ("webapp/mayor/rig", "backend/mayor/rig", "docs/mayor/rig", "backend/crew/alice"):
        clone = root / rel
        if not (clone / ".git").exists():
            out[rel] = None
            continue
        status = run(["git", "status", "--porcelain"], cwd=clone, env=town.env)
        out[rel] = (
            run(["git", "log", "-1", "--format=%H %s"], cwd=clone, env=town.env).strip(),
            sorted(status.splitlines()),
        )
    return out


def test_restored_town_has_the_mayor_and_crew_clones(sandbox: Sandbox) -> None:
    town = sandbox.town
    before = _clone_state(town, town.root)
    assert before["webapp/mayor/rig"][0].endswith(" mayor: plan not pushed yet")
    assert before["backend/crew/alice"][0].endswith(" alice: unpushed crew work")

    _restore_after_losing_the_volume(sandbox)

    assert _clone_state(town, town.root) == before
    assert (town.root / "webapp" / "mayor" / "rig" / "notes.md").read_text() == "draft\n"
    assert (town.root / "backend" / "crew" / "alice" / ".env").read_text() == "ALICE=1\n"


# Town state outside any repository's history (gap 4): ignored files in worktrees, rig overlays, setup
# hooks and name pool, rig beads settings, town formulas, town and rig plugins, dogs.
STATE_OUTSIDE_REPOS = (
    "backend/polecats/nux/backend/.env",
    "backend/.runtime/overlay/.env",
    "backend/.runtime/setup-hooks/10-hello.sh",
    "backend/.runtime/namepool-state.json",
    "backend/.beads/config.yaml",
    ".beads/formulas/acme-release.formula.toml",
    "plugins/hello/plugin.md",
    "backend/plugins/lint/plugin.md",
    "deacon/dogs/alpha/.dog.json",
)


def test_restored_town_keeps_its_state_outside_the_repositories(sandbox: Sandbox) -> None:
    root = sandbox.town.root

    def state() -> dict[str, tuple[int, bytes] | None]:
        return {
            rel: ((root / rel).stat().st_mode & 0o777, (root / rel).read_bytes()) if (root / rel).is_file() else None
            for rel in STATE_OUTSIDE_REPOS
        }

    before = state()
    assert None not in before.values(), before

    _restore_after_losing_the_volume(sandbox)

    assert state() == before


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


# ---- snapshots under load, odd rigs ----------------------------------------------------------------


def test_snapshots_tolerate_files_changing_while_they_are_read(sandbox: Sandbox) -> None:
    # Gastown rewrites nudge queues and heartbeats all the time and agents rewrite files in their
    # worktrees: a file changing under tar must not cost the snapshot (GNU tar exits 1 then).
    town = sandbox.town
    nux = town.root / "backend" / "polecats" / "nux" / "backend"
    big = nux / "notes" / "dataset.bin"
    queue = town.root / ".runtime" / "nudge_queue" / "hq-mayor"
    queue.mkdir(parents=True)
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            big.write_bytes(os.urandom(4 << 20))
            (queue / f"{n}.json").write_text(json.dumps({"n": n}))
            (queue / f"{n - 5}.json").unlink(missing_ok=True)
            (town.root / "settings" / "heartbeat.json").write_text(str(n))

    # An agent's log that grows all the time: tar finds it longer after reading it ("file changed as
    # we read it") on nearly every read, where the rewrites above only race tar's reads now and then.
    agent_log = nux / "notes" / "agent.log"
    agent_log.write_bytes(b"boot\n" * (2 << 20))

    def append() -> None:
        fd = os.open(agent_log, os.O_WRONLY | os.O_APPEND)
        try:
            n = 0
            while not stop.is_set():
                n += 1
                os.write(fd, b"tick %d\n" % n)
                if n % 20 == 0:
                    stop.wait(0.001)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=f, daemon=True) for f in (churn, append)]
    for thread in threads:
        thread.start()
    try:
        results = [sandbox.run("r2-sync.sh", "--immediate") for _ in range(3)]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr[-2000:] for r in results]
    snaps = sandbox.snapshots()
    assert len(snaps) == 3 and sandbox.latest()["timestamp"] == snaps[-1]
    for ts in snaps:
        assert "work/backend.tar" in {f["path"] for f in sandbox.manifest(ts)["files"]}


def test_partial_clone_rig_survives_an_unreachable_promisor(sandbox: Sandbox) -> None:
    # `gt rig add --filter` makes a partial clone; its missing blobs live only at the promisor
    # remote, so bundling everything needs that remote. A snapshot taken while it is unreachable
    # must still succeed, and carry the rig's own unpushed work.
    town = sandbox.town
    town.start_dolt()
    upstream = town.upstreams["webapp"]
    town.gt("rig", "add", "lazy", f"file://{upstream}", "--filter", "blob:none")
    town.gt("polecat", "add", "lazy", "slit")
    slit = town.root / "lazy" / "polecats" / "slit" / "lazy"
    _commit_file(town, slit, "src/slit.py", "# slit's work\n", "slit: unpushed on a partial clone")
    head = town.git("rev-parse", "HEAD", cwd=slit).strip()
    town.stop()

    upstream.rename(upstream.with_name("webapp.unreachable"))
    try:
        sync = sandbox.run("r2-sync.sh", "--immediate")
    finally:
        upstream.with_name("webapp.unreachable").rename(upstream)
    assert sync.returncode == 0, sync.stderr
    [ts] = sandbox.snapshots()
    lazy = next(r for r in sandbox.manifest(ts)["rigs"] if r["name"] == "lazy")
    bare = next(r for r in lazy["repos"] if r["bare"])
    assert bare["partial_filter"] == "blob:none" and bare["bundle"], sync.stderr

    lose_volume(sandbox)
    restore = sandbox.restore(town.root)  # the promisor is back: the partial clone is made again
    assert restore.returncode == 0, restore.stderr
    repo = town.root / "lazy" / ".repo.git"
    assert town.git("config", "remote.origin.partialclonefilter", cwd=repo).strip() == "blob:none"
    slit = town.root / "lazy" / "polecats" / "slit" / "lazy"
    assert town.git("rev-parse", "HEAD", cwd=slit).strip() == head
    assert (slit / "src" / "slit.py").read_text() == "# slit's work\n"


def test_old_style_rig_without_shared_repo_is_backed_up(sandbox: Sandbox) -> None:
    # Towns from before gastown's shared .repo.git keep full clones in refinery/rig and each polecat.
    town = sandbox.town
    rig = town.root / "legacy"
    upstream = town.upstreams["docs"]
    rig.mkdir()
    (rig / "config.json").write_text(
        json.dumps(
            {"type": "rig", "version": 1, "name": "legacy", "git_url": f"file://{upstream}", "default_branch": "main"}
        )
    )
    refinery = rig / "refinery" / "rig"
    polecat = rig / "polecats" / "slit" / "legacy"
    for clone in (refinery, polecat):
        town.git("clone", "-q", f"file://{upstream}", str(clone), cwd=town.root)
    _commit_file(town, refinery, "MERGED.md", "merged locally\n", "refinery: merge not pushed")
    town.git("checkout", "-q", "-b", "polecat/slit", cwd=polecat)
    _commit_file(town, polecat, "src/slit.py", "# slit\n", "slit: unpushed")
    (polecat / "WIP.md").write_text("dirty\n")

    sandbox.sync()
    [ts] = sandbox.snapshots()

    town.stop()
    lose_volume(sandbox)
    restore = sandbox.restore(town.root)
    assert restore.returncode == 0, restore.stderr
    restored = town.root / "legacy"
    for clone in ("refinery/rig", "polecats/slit/legacy"):
        assert (restored / clone / ".git").exists(), (clone, restore.stderr)
    assert town.git("log", "-1", "--format=%s", cwd=restored / "refinery" / "rig").strip() == (
        "refinery: merge not pushed"
    )
    assert (
        town.git("log", "-1", "--format=%s", "polecat/slit", cwd=restored / "polecats" / "slit" / "legacy").strip()
        == "slit: unpushed"
    )
    assert (restored / "polecats" / "slit" / "legacy" / "WIP.md").read_text() == "dirty\n"
    legacy = next(r for r in sandbox.manifest(ts)["rigs"] if r["name"] == "legacy")
    assert sorted((r["path"], r["bundle"] is not None) for r in legacy["repos"]) == [
        ("legacy/polecats/slit/legacy", True),
        ("legacy/refinery/rig", True),
    ]


def test_restored_databases_are_checked_whole(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    # A violation committed long ago (foreign_key_checks off) is in no working set: only
    # `dolt constraints verify --all` sees it.
    town = sandbox.town
    db = town.root / ".dolt-data" / "backend"
    queries = (
        "create table parents (id int primary key);"
        "create table children (id int primary key, parent int, foreign key (parent) references parents(id));"
        "insert into parents values (1); insert into children values (1, 1);"
    )
    run(["dolt", "sql", "-q", queries], cwd=db, env=town.env)
    run(["dolt", "add", "-A"], cwd=db, env=town.env)
    run(["dolt", "commit", "-m", "tables"], cwd=db, env=town.env)
    run(["dolt", "sql", "-q", "set foreign_key_checks = 0; insert into children values (2, 99);"], cwd=db, env=town.env)
    run(["dolt", "add", "-A"], cwd=db, env=town.env)
    run(["dolt", "commit", "--force", "-m", "an orphan, committed"], cwd=db, env=town.env)
    sandbox.sync()

    lose_volume(sandbox)
    restore = sandbox.restore(town.root)

    assert restore.returncode == 3, restore.stderr
    [beat] = heartbeats.events("r2_restore")
    assert beat["status"] == "restored_with_violations" and beat["constraint_violations"] == ["backend"]
    assert town.dolt_sql("backend", "select count(*) from children") == "count(*)\n2\n"


def test_a_damaged_database_backup_fails_the_restore(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    sandbox.sync()
    [ts] = sandbox.snapshots()
    key = f"{sandbox.prefix}/snapshots/{ts}/dolt/hq.tar"
    damaged = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(sandbox.bucket.get(key))) as old,
        tarfile.open(fileobj=damaged, mode="w") as new,
    ):
        members = old.getmembers()
        victim = max((m for m in members if m.isfile()), key=lambda m: m.size)
        for member in members:
            data = old.extractfile(member).read() if member.isfile() else None
            if member is victim:
                data = (
                    data[: len(data) // 2]
                    + bytes(b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 64])
                    + data[len(data) // 2 + 64 :]
                )
            member.size = len(data) if data is not None else 0
            new.addfile(member, io.BytesIO(data) if data is not None else None)
    body = damaged.getvalue()
    # The town itself wrote this (bit rot, a bug): its own manifest vouches for the damaged file.
    manifest = sandbox.manifest(ts)
    manifest["files"] = [f for f in manifest["files"] if f["path"] != "dolt/hq.tar"] + [
        {"path": "dolt/hq.tar", "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    ]
    manifest_bytes = json.dumps(manifest).encode()
    sandbox.bucket.put(key, body)
    sandbox.bucket.put(f"{sandbox.prefix}/snapshots/{ts}/manifest.json", manifest_bytes)
    sandbox.bucket.put(
        f"{sandbox.prefix}/latest.json",
        json.dumps({"timestamp": ts, "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest()}).encode(),
    )
    lose_volume(sandbox)

    restore = sandbox.restore(sandbox.town.root)

    assert restore.returncode == 1, restore.stderr
    assert "database hq" in restore.stderr or "Dolt database hq" in restore.stderr or "of database hq" in restore.stderr
    assert not sandbox.town.root.exists()
    [beat] = heartbeats.events("r2_restore")
    assert beat["status"] == "failed"


def test_the_sync_loop_keeps_its_schedule(sandbox: Sandbox) -> None:
    # Slots are start + n * interval: the time a snapshot takes comes off the wait, not on top of it.
    # A `sleep` stand-in records the waits the loop asks for and returns at once; the loop is
    # stopped after two snapshots.
    wrap = sandbox.tmp / "sleep-recorder"
    wrap.mkdir()
    record = sandbox.tmp / "sleeps.txt"
    (wrap / "sleep").write_text(
        "#!/usr/bin/env bash\n"
        f'if [[ $1 -ge 60 ]]; then echo "$1" >>{record}; n=$(wc -l <{record});'
        f" if ((n >= 2)); then kill -TERM $PPID; fi; exit 0; fi\n"
        f'exec {shutil.which("sleep")} "$@"\n'
    )
    (wrap / "sleep").chmod(0o755)
    env = {**sandbox.env, "PATH": f"{wrap}:{sandbox.env['PATH']}", "SYNC_INTERVAL_SECONDS": "3600"}
    result = subprocess.run(
        ["bash", str(sandbox.bin_dir / "r2-sync.sh")], env=env, capture_output=True, text=True, timeout=900
    )

    waits = [int(x) for x in record.read_text().split()] if record.exists() else []
    # The first wait is what is left of the interval once the first snapshot is done: never all of it.
    assert len(waits) == 2 and waits[0] < 3600, (waits, result.stderr[-2000:])
    assert result.returncode == 0, result.stderr
    start = re.search(r"syncing every 3600s from (\S+)", result.stderr).group(1)
    slots = re.findall(r"next snapshot at (\S+) \(slot (\d+)\)", result.stderr)
    t0 = datetime.datetime.fromisoformat(start.replace("Z", "+00:00"))
    assert [(datetime.datetime.fromisoformat(at.replace("Z", "+00:00")) - t0).total_seconds() for at, _ in slots] == [
        3600.0,
        7200.0,
    ]
    assert len(sandbox.snapshots()) == 2

    # Each wait runs to its slot (the stand-in returns at once, so the second snapshot starts early):
    # the time the snapshots took (at least a second each) came off the wait to slot n, never on top.
    def parse(at: str) -> datetime.datetime:
        return datetime.datetime.fromisoformat(at.replace("Z", "+00:00"))

    logged = re.findall(r"^(\S+) r2-sync: next snapshot at (\S+) ", result.stderr, re.M)
    assert len(waits) == len(logged) == 2, (waits, result.stderr)
    for n, (wait, (logged_at, slot_at)) in enumerate(zip(waits, logged, strict=True), start=1):
        assert wait < n * 3600, waits
        assert wait >= (parse(slot_at) - parse(logged_at)).total_seconds(), (waits, logged)


# ---- concurrency and retention -----------------------------------------------------------------------


def _race_wrapper(sandbox: Sandbox, trigger: str, match: str, body: bytes) -> dict[str, str]:
    """A wrapped `aws` that writes latest.json (a racing writer) right before the first `s3api TRIGGER`
    call mentioning MATCH."""
    done = sandbox.tmp / "race-done"
    (sandbox.tmp / "race-body.json").write_bytes(body)
    return sandbox.aws_wrapper(
        f'if [[ ! -e {done} && " $* " == *" {trigger} "* && "$*" == *"{match}"* ]]; then\n'
        f"  : >{done}\n"
        f'  {VENV_BIN / "aws"} --endpoint-url "$R2_ENDPOINT" s3api put-object --bucket "$R2_BUCKET" '
        f"--key {sandbox.prefix}/latest.json --body {sandbox.tmp / 'race-body.json'} >/dev/null\n"
        "fi"
    )


def test_concurrent_syncs_wait_for_the_lock_and_leave_complete_snapshots(sandbox: Sandbox) -> None:
    lock = open(sandbox.env["R2_SYNC_LOCK"], "a")  # noqa: SIM115 - held across the test body
    fcntl.flock(lock, fcntl.LOCK_EX)
    logs = [sandbox.tmp / f"sync-{n}.err" for n in (1, 2)]
    procs = []
    try:
        for log in logs:
            with open(log, "w") as err:
                procs.append(
                    subprocess.Popen(
                        ["bash", str(sandbox.bin_dir / "r2-sync.sh"), "--immediate"],
                        env=sandbox.env,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                )
        wait_for(lambda: all("waiting up to" in log.read_text() for log in logs), "both syncs to wait")
        assert sandbox.bucket.keys() == []  # nothing is uploaded while another sync holds the lock
        fcntl.flock(lock, fcntl.LOCK_UN)
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        lock.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], [log.read_text() for log in logs]
    snaps = sandbox.snapshots()
    assert len(snaps) == 2
    latest = sandbox.latest()
    assert latest["timestamp"] == snaps[-1]
    manifest = sandbox.bucket.get(f"{sandbox.prefix}/snapshots/{snaps[-1]}/manifest.json")
    assert latest["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    for ts in snaps:
        listed = {f["path"]: f for f in sandbox.manifest(ts)["files"]}
        base = f"{sandbox.prefix}/snapshots/{ts}/"
        assert {k[len(base) :] for k in sandbox.bucket.keys(base)} == set(listed) | {"manifest.json"}
    assert sandbox.bucket.keys(f"{sandbox.prefix}/staging/") == []


def test_racing_writer_with_a_newer_snapshot_is_not_overwritten(sandbox: Sandbox) -> None:
    theirs = b'{"timestamp": "29991231T235959Z", "manifest_sha256": "theirs"}'
    result = sandbox.sync(**_race_wrapper(sandbox, "put-object", "latest.json", theirs))
    assert (sandbox.tmp / "race-done").exists()
    assert "latest.json changed under us" in result.stderr
    assert sandbox.bucket.get(f"{sandbox.prefix}/latest.json") == theirs
    assert len(sandbox.snapshots()) == 1  # our snapshot stays available, just not the latest


def test_racing_writer_with_an_older_snapshot_loses_after_a_reread(sandbox: Sandbox) -> None:
    stale = b'{"timestamp": "20000101T000000Z", "manifest_sha256": "stale"}'
    result = sandbox.sync(**_race_wrapper(sandbox, "put-object", "latest.json", stale))
    assert "latest.json changed under us" in result.stderr  # the first PUT got 412
    [ours] = sandbox.snapshots()
    assert sandbox.latest()["timestamp"] == ours


def test_retention_keeps_the_last_three_and_never_the_latest_target(sandbox: Sandbox) -> None:
    old = ["20250101T000000Z", "20250102T000000Z", "20250103T000000Z"]
    for ts in old:
        sandbox.bucket.put(f"{sandbox.prefix}/snapshots/{ts}/manifest.json", b"{}")
        sandbox.bucket.put(f"{sandbox.prefix}/snapshots/{ts}/town.tar", b"old")
    sandbox.bucket.put(f"{sandbox.prefix}/staging/20240101T000000Z/town.tar", b"abandoned upload")

    sandbox.sync()
    snaps = sandbox.snapshots()
    assert snaps[:2] == old[1:] and len(snaps) == 3  # the oldest went, the newest three stay
    assert sandbox.bucket.keys(f"{sandbox.prefix}/staging/") == []

    # Another writer points latest.json at the oldest remaining snapshot just before our listing:
    # retention must keep it even though it is no longer among the newest three.
    pinned = {"timestamp": old[1], "manifest_sha256": "x"}
    sandbox.sync(**_race_wrapper(sandbox, "list-objects-v2", "snapshots/", json.dumps(pinned).encode()))
    snaps = sandbox.snapshots()
    assert old[1] in snaps and old[2] in snaps and len(snaps) == 4
    assert sandbox.latest() == pinned


def test_credentials_a_town_writes_into_its_remotes_never_reach_r2(sandbox: Sandbox) -> None:
    # Agent code can put a token into a remote URL; the snapshot keeps the URL without it.
    repo = sandbox.town.root / "docs" / ".repo.git"
    sandbox.town.git(
        "config", "remote.origin.pushurl", "https://bot:ghp_leaked-token@example.com/acme/docs.git", cwd=repo
    )
    sandbox.town.git("remote", "add", "mirror", "https://ghp_other-token@example.com/acme/docs.git", cwd=repo)
    sandbox.town.git("remote", "add", "backup", "ssh://git:ghp_ssh-password@example.com/acme/docs.git", cwd=repo)
    sandbox.town.git("remote", "add", "legacy", "git://ghp_git-token@example.com/acme/docs.git", cwd=repo)
    sandbox.sync()
    [ts] = sandbox.snapshots()
    for key in sandbox.bucket.keys(""):
        body = sandbox.bucket.get(key)
        for token in (b"ghp_leaked-token", b"ghp_other-token", b"ghp_ssh-password", b"ghp_git-token"):
            assert token not in body, key
    docs = next(r for r in sandbox.manifest(ts)["rigs"] if r["name"] == "docs")
    config = dict(map(tuple, next(r for r in docs["repos"] if r["bare"])["config"]))
    assert config["remote.origin.pushurl"] == "https://example.com/acme/docs.git"
    assert config["remote.mirror.url"] == "https://example.com/acme/docs.git"
    assert config["remote.backup.url"] == "ssh://git@example.com/acme/docs.git"  # ssh keeps its login name
    assert config["remote.legacy.url"] == "git://example.com/acme/docs.git"
