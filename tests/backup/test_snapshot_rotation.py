"""Which snapshot a restore can count on (issue 22): snapshots stay consistent while the town changes under
them, a restore falls back through the kept snapshots when the latest cannot be restored, and the
rotation keeps three complete ones.

Run for real on the fixture town (tests/fixtures/town.py) with the installed scripts and moto's S3.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.fixtures.sandbox import Heartbeats, Sandbox, lose_volume, spawn_during_sync, wait_for
from tests.fixtures.town import repo_state

SPAWNED = "furiosa"


@pytest.mark.parametrize(
    "after_bundling",
    [
        # While its rig is being backed up: the new worktree's branch is not in the bundle.
        "backend/.repo.git",
        # Once every rig has been listed and bundled, before town.tar: its .git would go into town.tar.
        "webapp/mayor/rig/.git",
    ],
)
def test_a_polecat_spawned_during_a_snapshot_leaves_it_restorable(sandbox: Sandbox, after_bundling: str) -> None:
    town = sandbox.town
    root = town.root
    town.start_dolt()
    spawned = root / "backend" / "polecats" / SPAWNED / "backend"
    first = sandbox.sync(**spawn_during_sync(sandbox, after_bundling, "backend", SPAWNED))
    assert spawned.is_dir(), (sandbox.tmp / "spawn.log").read_text()
    [a] = sandbox.snapshots()
    # The next snapshot has it.
    sandbox.sync()
    b = sandbox.latest()["timestamp"]
    backend = next(r for r in sandbox.manifest(b)["rigs"] if r["name"] == "backend")
    shared = next(r for r in backend["repos"] if r["bare"])
    assert f"backend/polecats/{SPAWNED}/backend" in {w["path"] for w in shared["worktrees"]}
    # The snapshot taken mid-spawn is the one restored: it must hold up on its own.
    manifest = sandbox.bucket.get(f"{sandbox.prefix}/snapshots/{a}/manifest.json")
    sandbox.bucket.put(
        f"{sandbox.prefix}/latest.json",
        json.dumps({"timestamp": a, "manifest_sha256": hashlib.sha256(manifest).hexdigest()}).encode(),
    )
    town.stop()
    lose_volume(sandbox)

    restore = sandbox.restore(root)

    assert restore.returncode == 0, restore.stderr
    assert not (root / "backend" / "polecats" / SPAWNED).exists()
    worktrees = {w[0] for w in repo_state(root, root / "backend" / ".repo.git")["worktrees"]}
    assert worktrees == {"backend/polecats/nux/backend", "backend/polecats/toast/backend", "backend/refinery/rig"}
    nux = root / "backend" / "polecats" / "nux" / "backend"
    assert town.git("log", "-1", "--format=%s", cwd=nux).strip() == "nux: local work never pushed"
    said = f"backend/polecats/{SPAWNED}/backend is a git repository or worktree this snapshot did not record"
    assert said in first.stderr


def _two_snapshots(sandbox: Sandbox, marker: Path) -> tuple[str, str]:
    marker.write_text("first\n")
    sandbox.sync()
    [a] = sandbox.snapshots()
    marker.write_text("second\n")
    sandbox.sync()
    b = sandbox.latest()["timestamp"]
    return a, b


def test_a_broken_latest_falls_back_to_the_previous_snapshot_and_says_so(
    sandbox: Sandbox, heartbeats: Heartbeats
) -> None:
    town = sandbox.town
    marker = town.root / "settings" / "marker.txt"
    a, b = _two_snapshots(sandbox, marker)
    # The latest's town.tar rots in the bucket (same size, one byte flipped): its manifest no longer vouches.
    sandbox.rot(b, "town.tar")
    town.stop()
    lose_volume(sandbox)

    log = sandbox.tmp / "startup.log"
    proc = sandbox.start(log, SYNC_INTERVAL_SECONDS="3600")
    try:
        wait_for(lambda: _phase(sandbox) in ("ready", "degraded", "failed"), "the boot", deadline_s=600)
        status = json.loads(Path(sandbox.env["TOWN_STATUS_FILE"]).read_text())
    finally:
        assert sandbox.stop(proc) == 0, log.read_text()

    # Never degraded while an older good snapshot exists: the town runs, and says which one it has.
    assert status["phase"] == "ready", status
    assert f"restored snapshot {a}, not the latest ({b}: checksum mismatch for town.tar" in status["detail"]
    assert marker.read_text() == "first\n"
    text = log.read_text()
    assert f"restored snapshot {a}, an older one" in text
    assert "does not vouch for snapshot" not in text  # latest.json kept the previous one's checksum
    beat = heartbeats.events("r2_restore")[0]
    assert (beat["status"], beat["snapshot"], beat["latest"], beat["fallback"]) == ("restored", a, b, True)
    [skipped] = beat["skipped"]
    assert skipped["snapshot"] == b and skipped["error"].startswith("checksum mismatch for town.tar")


def _phase(sandbox: Sandbox) -> str:
    path = Path(sandbox.env["TOWN_STATUS_FILE"])
    return json.loads(path.read_text())["phase"] if path.exists() else ""


def test_a_lost_latest_json_restores_the_newest_complete_snapshot(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    # Without latest.json the bucket still holds the town: "no backup" would install an empty town
    # that the next sync publishes over it.
    sandbox.sync()
    [a] = sandbox.snapshots()
    sandbox.bucket.client.delete_object(Bucket=sandbox.bucket.name, Key=f"{sandbox.prefix}/latest.json")
    newer = "29990101T000000Z"  # an upload cut short: no manifest, so not a snapshot to restore
    sandbox.bucket.put(f"{sandbox.prefix}/snapshots/{newer}/town.tar", b"half an upload")
    sandbox.town.stop()
    lose_volume(sandbox)

    restore = sandbox.restore(sandbox.town.root)

    assert restore.returncode == 4, restore.stderr
    assert (sandbox.town.root / "mayor" / "town.json").is_file()
    assert "latest.json is absent" in restore.stderr
    [beat] = heartbeats.events("r2_restore")
    assert (beat["snapshot"], beat["latest"], beat["latest_problem"]) == (a, None, "latest.json is absent")


def test_retention_keeps_three_complete_snapshots_and_counts_no_incomplete_one(sandbox: Sandbox) -> None:
    complete = ["20250101T000000Z", "20250102T000000Z", "20250103T000000Z"]
    incomplete = ["20240101T000000Z", "20250104T000000Z", "20250105T000000Z"]  # uploads cut short
    for ts in complete:
        sandbox.bucket.put(f"{sandbox.prefix}/snapshots/{ts}/manifest.json", b"{}")
    for ts in complete + incomplete:
        sandbox.bucket.put(f"{sandbox.prefix}/snapshots/{ts}/town.tar", b"old")

    sandbox.sync()

    ours = sandbox.latest()["timestamp"]
    with_manifest = sorted(
        {k.split("/")[3] for k in sandbox.bucket.keys(f"{sandbox.prefix}/snapshots/") if k.endswith("/manifest.json")}
    )
    assert with_manifest == [*complete[1:], ours]
    # An incomplete snapshot older than every kept one is dropped; newer ones may be uploads in flight.
    assert set(sandbox.snapshots()) == {*complete[1:], *incomplete[1:], ours}
