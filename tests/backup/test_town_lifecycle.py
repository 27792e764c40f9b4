"""The town machine's entrypoint (startup.sh), run for real: boot, health endpoint, rigs, shutdown.

Each test starts the installed startup.sh (tests/fixtures/sandbox.py) on a real town volume with
real gt/bd/dolt and moto's S3 server; the agents are the idle stand-in of tests/fixtures/town.py.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import urllib.error
from pathlib import Path

from components.stacks.town import FLUSH_COMMAND
from tests.fixtures.git_http import GIT_TOKEN, GitHost
from tests.fixtures.sandbox import Heartbeats, Sandbox, free_port, lose_volume, wait_for


def _phase(sandbox: Sandbox) -> str:
    path = Path(sandbox.env["TOWN_STATUS_FILE"])
    return json.loads(path.read_text())["phase"] if path.exists() else ""


def _detail_once_listening(sandbox: Sandbox) -> str:
    """The health endpoint's detail, or "" while town-status.js is still starting: startup.sh starts it in
    the background and goes on, so under load the boot can reach its restore before node listens (Fly
    asks only after the check's 30 s grace period)."""
    try:
        return str(sandbox.status()[1]["detail"])
    except urllib.error.URLError:
        return ""


def _booted(sandbox: Sandbox) -> bool:
    return _phase(sandbox) in ("ready", "degraded")


def _started(sandbox: Sandbox, log: Path) -> bool:
    """The boot got as far as the periodic sync, whether or not a health endpoint says so (the tests of
    rigs, flushes and tool checks must not fail merely because there is no health endpoint)."""
    return _booted(sandbox) or "R2 sync loop running" in log.read_text()


def _published(sandbox: Sandbox) -> int:
    """How many snapshots exist, once latest.json points at the newest (0 before that)."""
    if not sandbox.bucket.keys(f"{sandbox.prefix}/latest.json"):
        return 0
    snaps = sandbox.snapshots()
    return len(snaps) if sandbox.latest()["timestamp"] == snaps[-1] else 0


def _dolt_running(root: Path) -> bool:
    pid_file = root / "daemon" / "dolt.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except (ProcessLookupError, ValueError):
        return False
    return True


def test_tools_too_old_fail_the_boot_visibly(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    # An AWS CLI from before conditional writes would swap latest.json unsafely: the boot stops and
    # the health check names why, before anything touches the town or R2.
    old = sandbox.tmp / "old-aws"
    old.mkdir()
    (old / "aws").write_text(
        "#!/usr/bin/env bash\n"
        'if [[ $1 == --version ]]; then echo "aws-cli/1.33.0 Python/3.11 botocore/1.34.100"; exit 0; fi\n'
        'if [[ " $* " == *" --if-match "* ]]; then\n'
        '  echo "Unknown options: --if-match, probe, --if-none-match, *" >&2; exit 252; fi\n'
        "exit 0\n"
    )
    (old / "aws").chmod(0o755)
    log = sandbox.tmp / "startup.log"
    proc = sandbox.start(log, PATH=f"{old}:{sandbox.env['PATH']}")
    try:
        wait_for(
            lambda: _phase(sandbox) == "failed" or _dolt_running(sandbox.town.root) or _started(sandbox, log),
            "the boot to fail or to start the town",
        )
        assert not _dolt_running(sandbox.town.root), "gt up ran with an AWS CLI that cannot make conditional writes"
        code, status = sandbox.status()
        assert code == 503, status
        assert "aws-cli/1.33.0 cannot make conditional writes" in status["detail"]
        assert "1.36.10" in status["detail"]
        assert sandbox.status("/ready")[0] == 503
    finally:
        assert sandbox.stop(proc) == 0, log.read_text()
    assert not _dolt_running(sandbox.town.root)  # gt up never ran
    assert sandbox.bucket.keys() == []
    assert "nothing to stop or flush" in log.read_text()


def test_a_long_restore_shows_on_the_health_check_instead_of_failing_it(sandbox: Sandbox) -> None:
    sandbox.sync()
    sandbox.town.stop()
    lose_volume(sandbox)
    gate = sandbox.tmp / "release-download"
    # The snapshot download waits until the test lets it go: a restore that takes its time.
    slow = sandbox.aws_wrapper(
        f'if [[ " $* " == *" get-object "* && "$*" == *"/snapshots/"*"/manifest.json "* ]]; then\n'
        f"  while [[ ! -e {gate} ]]; do sleep 0.2; done\nfi"
    )
    log = sandbox.tmp / "startup.log"
    proc = sandbox.start(log, **slow)
    try:
        wait_for(
            lambda: _phase(sandbox) == "restoring" and "downloading" in _detail_once_listening(sandbox),
            "the restore to start",
        )
        code, status = sandbox.status()
        assert code == 200 and status["phase"] == "restoring"
        assert re.search(r"snapshot \d{8}T\d{6}Z: downloading", status["detail"])
        assert sandbox.status("/ready")[0] == 503
        gate.touch()
        wait_for(lambda: _booted(sandbox), "the boot to finish", deadline_s=600)
        code, status = sandbox.status()
        assert code == 200
        assert sandbox.status("/ready")[0] == (200 if status["phase"] == "ready" else 503)
        assert (sandbox.town.root / "mayor" / "town.json").exists()
    finally:
        assert sandbox.stop(proc) == 0, log.read_text()


def test_a_new_town_is_created_and_configured_rigs_are_added_on_every_boot(
    sandbox: Sandbox, heartbeats: Heartbeats, private_git_host: GitHost
) -> None:
    town = sandbox.town
    # A private rig: its host wants the credentials the town gets as the Fly secret GIT_CREDENTIALS.
    private = private_git_host.root / "secret.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(town.upstreams["backend"]), str(private)], check=True)
    webapp = {"name": "webapp", "url": town.git_url("webapp"), "branch": "main"}
    secret = {"name": "secret", "url": private_git_host.repo_url("secret"), "branch": "main"}
    docs = {"name": "docs", "url": town.git_url("docs"), "branch": "main"}
    backend = {"name": "backend", "url": town.git_url("backend"), "branch": "main"}
    env = {"SYNC_INTERVAL_SECONDS": "3600", "GIT_CREDENTIALS": private_git_host.credentials}

    def boot(rigs: list[dict], name: str) -> str:
        sandbox.write_rigs(rigs)
        sandbox.env["TOWN_STATUS_PORT"] = str(free_port())
        log = sandbox.tmp / f"{name}.log"
        proc = sandbox.start(log, **env)
        try:
            wait_for(lambda: _started(sandbox, log), f"boot {name}", deadline_s=600)
        finally:
            assert sandbox.stop(proc) == 0, log.read_text()
        return log.read_text()

    def rigs_of(root: Path) -> set[str]:
        return set(json.loads((root / "mayor" / "rigs.json").read_text())["rigs"])

    # 1. An empty volume and no backup in R2: gt install, gt up, then the configured rigs.
    town.stop()
    shutil.rmtree(town.volume)
    town.volume.mkdir()
    first = boot([webapp, secret], "first")
    assert (town.root / "mayor" / "town.json").is_file(), first
    assert json.loads((town.root / "mayor" / "town.json").read_text())["name"] == "acme"
    assert rigs_of(town.root) == {"webapp", "secret"}
    assert "no backup of town" in first and "creating a new town with gt install" in first
    assert "town-bot" in private_git_host.users  # cloned with the credentials, not anonymously
    assert first.index("gt up") < first.index("adding rig webapp")  # rig add needs the Dolt server
    final = sandbox.latest()["timestamp"]
    assert {r["name"] for r in sandbox.manifest(final)["rigs"]} == {"webapp", "secret"}

    # 2. The volume is lost; the new one is restored, and a rig configured since is added after it.
    town.stop()
    lose_volume(sandbox)
    second = boot([webapp, secret, docs], "second")
    assert f"restored snapshot {final}" in second
    assert rigs_of(town.root) == {"webapp", "secret", "docs"}
    assert "adding rig webapp" not in second and "adding rig docs" in second

    # 3. The same volume boots again with one more rig configured: only that one is added.
    third = boot([webapp, secret, docs, backend], "third")
    assert "the volume has a town" in third and "no restore" in third
    assert "adding rig backend" in third and "adding rig docs" not in third
    assert rigs_of(town.root) == {"webapp", "secret", "docs", "backend"}
    assert [b["added"] for b in heartbeats.events("rigs")] == [["webapp", "secret"], ["docs"], ["backend"]]

    # The private rig's token went nowhere but the credential file outside the town.
    everything = [sandbox.bucket.get(k) for k in sandbox.bucket.keys("")]
    assert not any(GIT_TOKEN.encode() in body for body in everything)
    for text in (first, second, third, Path(sandbox.env["GT_RIGS_FILE"]).read_text()):
        assert GIT_TOKEN not in text
    for path in town.volume.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert GIT_TOKEN.encode() not in path.read_bytes(), path


def test_destroy_takes_one_final_snapshot_through_the_installed_flush_command(
    sandbox: Sandbox, heartbeats: Heartbeats
) -> None:
    # A destroy runs the machine's pre-stop exec (FLUSH_COMMAND, as installed by the town's
    # fly.toml), then stops it with SIGTERM: one final snapshot, after `gt down`.
    log = sandbox.tmp / "startup.log"
    proc = sandbox.start(log, SYNC_INTERVAL_SECONDS="3600")
    try:
        wait_for(
            lambda: _started(sandbox, log) and _published(sandbox) == 1 and heartbeats.events("r2_sync"),
            "the first periodic snapshot",
            600,
        )
        [first] = sandbox.snapshots()
        (sandbox.town.root / "settings" / "last-words.txt").write_text("written before the destroy\n")
        flush = subprocess.run(
            sandbox.machine_command(FLUSH_COMMAND), env=sandbox.env, capture_output=True, text=True, timeout=400
        )
        assert flush.returncode == 0, flush.stderr
        assert not _dolt_running(sandbox.town.root)  # gt down ran: nothing writes after the snapshot
        snaps = sandbox.snapshots()
        assert len(snaps) == 2 and sandbox.latest()["timestamp"] == snaps[1]
    finally:
        assert sandbox.stop(proc) == 0, log.read_text()
    assert sandbox.snapshots() == snaps  # SIGTERM found the town flushed: no second final snapshot
    assert "no second snapshot" in log.read_text()
    final = snaps[1]
    town_tar = sandbox.bucket.get(f"{sandbox.prefix}/snapshots/{final}/town.tar")
    assert b"written before the destroy" in town_tar
    assert [(b["snapshot"], b.get("final")) for b in heartbeats.events("r2_sync")] == [(first, False), (final, True)]


def test_shutdown_flush_keeps_within_the_kill_timeout(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    hang = sandbox.tmp / "hang-r2"
    # Once `hang` exists, writing latest.json never returns (R2 unreachable mid-shutdown).
    stuck = sandbox.aws_wrapper(f'if [[ -e {hang} && " $* " == *" put-object "* ]]; then sleep 3600; fi')
    log = sandbox.tmp / "startup.log"
    proc = sandbox.start(
        log, SYNC_INTERVAL_SECONDS="3600", SHUTDOWN_TIMEOUT_SECONDS="60", GT_DOWN_TIMEOUT_SECONDS="20", **stuck
    )
    try:
        wait_for(lambda: _started(sandbox, log) and _published(sandbox) == 1, "the first periodic snapshot", 600)
        [first] = sandbox.snapshots()
        hang.touch()
    finally:
        # The safety net of this wait is far above the budget; a flush without a limit never ends.
        assert sandbox.stop(proc, timeout=240) == 0, log.read_text()
    text = log.read_text()
    assert text.index("gt down") < text.index("the final R2 snapshot did not finish within")
    assert not _dolt_running(sandbox.town.root)
    assert sandbox.latest()["timestamp"] == first  # R2 keeps the last published snapshot
    assert [b["status"] for b in heartbeats.events("r2_sync")][-1] == "failed"
    assert heartbeats.events("r2_sync")[-1]["reason"] == "final snapshot cut short at shutdown"


def test_the_town_says_when_its_r2_credentials_run_out(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    # Per-town R2 credentials are temporary (a week at most) and renewed only by a `pulumi up`: the
    # town says so as they near their end, and once they have lapsed, rather than failing unexplained.
    now = datetime.datetime.now(datetime.UTC)
    soon = (now + datetime.timedelta(days=1)).isoformat(timespec="seconds")
    past = (now - datetime.timedelta(hours=1)).isoformat(timespec="seconds")

    expiring = sandbox.sync(R2_CREDENTIALS_EXPIRE_AT=soon)
    assert f"the town's R2 credentials expire at {soon}" in expiring.stderr
    [beat] = heartbeats.events("r2_sync")
    assert beat["status"] == "ok"
    assert beat["r2_credentials"]["expires_at"] == soon and beat["r2_credentials"]["state"] == "expiring"

    expired = sandbox.run("r2-sync.sh", "--immediate", R2_CREDENTIALS_EXPIRE_AT=past)
    assert expired.returncode == 1
    assert f"the town's R2 credentials expired at {past}: no snapshot until a `pulumi up` renews them" in expired.stderr
    assert len(sandbox.snapshots()) == 1
    beat = heartbeats.events("r2_sync")[-1]
    assert (beat["status"], beat["reason"], beat["r2_credentials"]["state"]) == (
        "failed",
        "R2 credentials expired",
        "expired",
    )

    # The health endpoint says it too, from the machine's environment, as time passes.
    for expire_at, state in ((soon, "expiring"), (past, "expired")):
        port = free_port()
        Path(sandbox.env["TOWN_STATUS_FILE"]).write_text('{"phase": "ready", "detail": "town is up"}')
        env = {**sandbox.env, "TOWN_STATUS_PORT": str(port), "R2_CREDENTIALS_EXPIRE_AT": expire_at}
        server = subprocess.Popen(["node", str(sandbox.bin_dir / "town-status.js")], env=env, stderr=subprocess.DEVNULL)
        try:
            sandbox.env["TOWN_STATUS_PORT"] = str(port)
            wait_for(lambda: _detail_once_listening(sandbox) != "", "town-status.js to listen", deadline_s=60)
            code, status = sandbox.status()
        finally:
            server.terminate()
            server.wait(timeout=30)
        assert code == 200 and status["phase"] == "ready"  # the town itself runs on
        assert status["r2_credentials"]["state"] == state and status["r2_credentials"]["expires_at"] == expire_at


def test_a_final_flush_without_a_town_publishes_nothing_and_says_so(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    # A volume with no town yet (its town root empty, or absent after a failed restore): the destroy's
    # flush must not claim a final snapshot.
    sandbox.town.stop()
    shutil.rmtree(sandbox.town.root)
    sandbox.town.root.mkdir()

    final = sandbox.run("r2-sync.sh", "--final")

    assert final.returncode == 2, final.stderr
    assert "no final snapshot: the volume holds no town" in final.stderr
    assert sandbox.bucket.keys() == []
    [beat] = heartbeats.events("r2_sync")
    assert (beat["status"], beat["final"]) == ("skipped", True)

    stop = subprocess.run(
        sandbox.machine_command(FLUSH_COMMAND), env=sandbox.env, capture_output=True, text=True, timeout=400
    )
    assert stop.returncode == 0, stop.stderr
    marker = Path(sandbox.env["TOWN_STOPPED_MARKER"]).read_text()
    assert marker.startswith("no final snapshot (the volume held no town)")
    assert "final snapshot published" not in marker + stop.stdout + stop.stderr
    assert sandbox.bucket.keys() == []
    sandbox.town.root.rmdir()
    assert sandbox.run("r2-sync.sh", "--final").returncode == 2
