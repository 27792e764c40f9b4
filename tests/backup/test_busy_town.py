"""The real-tool round trip on a busy town (issue 22): a town built the way one looks after weeks of use
(tests/fixtures/busy_town.py: `gt install --git`, a rig with a submodule, a sparse mayor clone, a dog, a
cross-rig worktree, stashes, a Dolt remote), snapshotted while a polecat is spawned, lost, and restored.
"""

from __future__ import annotations

from tests.fixtures.busy_town import POLECAT, busy_state
from tests.fixtures.sandbox import Heartbeats, Sandbox, lose_volume, spawn_during_sync
from tests.fixtures.town import doctor_report, town_state

SPAWNED = "furiosa"


def test_a_busy_town_comes_back_whole_and_a_broken_latest_falls_back(
    busy_sandbox: Sandbox, heartbeats: Heartbeats
) -> None:
    sandbox = busy_sandbox
    town = sandbox.town
    root = town.root
    town.start_dolt()
    doctor_before, _ = doctor_report(town, root)
    sandbox.sync()
    [good] = sandbox.snapshots()
    town.stop()
    original = town_state(root, town.env)
    original_busy = busy_state(root, town.env)
    trees = original_busy["trees"]
    # What the town holds, as built (the comparison below would pass on two empty towns otherwise).
    assert trees["."]["branch"] == "refs/heads/main" and original_busy["branch_protection"]
    assert trees["deacon/dogs/alpha/app"]["is_worktree"] and trees["app/crew/tools-joe"]["author"] == "tools/crew/joe"
    assert trees[f"app/polecats/{POLECAT}/app/vendor/lib"]["branch"] == "refs/heads/nux-lib-fix"
    assert len(trees["app/mayor/rig"]["stash"].splitlines()) == 2 and trees["tools/mayor/rig"]["sparse"][0] == "true"
    assert "origin" in original_busy["dolt_remotes"]["app"]

    # A second snapshot, taken while an agent spawns a polecat in app.
    town.start_dolt()
    sandbox.sync(**spawn_during_sync(sandbox, "app/.repo.git", "app", SPAWNED))
    assert (root / "app" / "polecats" / SPAWNED / "app").is_dir(), (sandbox.tmp / "spawn.log").read_text()
    latest = sandbox.latest()["timestamp"]
    town.stop()

    # Lost: the latest (mid-spawn) snapshot restores, every repository as it was, without the newcomer.
    lose_volume(sandbox)
    restored = sandbox.restore(root)
    assert restored.returncode == 0, restored.stderr
    assert busy_state(root, town.env)["trees"] == trees
    assert not (root / "app" / "polecats" / SPAWNED).exists()

    # Lost again, and the latest snapshot has rotted in the bucket: the previous one comes back, whole.
    sandbox.rot(latest, "town.tar", at=1 / 3)
    town.stop()
    lose_volume(sandbox)
    fallback = sandbox.restore(root)
    assert fallback.returncode == 4, fallback.stderr
    assert f"restored snapshot {good}, an older one" in fallback.stderr
    assert busy_state(root, town.env) == original_busy
    after = town_state(root, town.env)
    assert after["dolt"] == original["dolt"] and after["repos"] == original["repos"]
    events = ".events.jsonl"  # gastown's activity log grew after the snapshot
    assert {k: v for k, v in after["files"].items() if k != events} == {
        k: v for k, v in original["files"].items() if k != events
    }
    town.start_dolt()
    doctor_after, report = doctor_report(town, root)
    assert doctor_after == doctor_before, report
    beat = heartbeats.events("r2_restore")[-1]
    assert (beat["snapshot"], beat["latest"], beat["fallback"]) == (good, latest, True)
