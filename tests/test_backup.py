"""Gas Town R2 disaster-recovery scripts, run for real.

The rendered bash scripts run against moto's S3 server over HTTP with the pinned AWS CLI, on real
git repositories (shallow bare ``.repo.git`` with worktrees, like ``gt rig add``), with real flock,
tar and curl. Two binaries are stand-ins because they cannot be installed here: the real ``dolt``
binary is absent (not on PyPI, npm or Debian), so ``tests/fixtures/bin/dolt`` implements ``backup
sync-url``/``backup restore``/``verify-constraints``/``version``; ``gt`` is a stand-in that records
``gt up``/``gt down``. The heartbeat endpoint is a small HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError

from components.render.town_scripts import TOWN_SCRIPT_MODE, TownScriptContext, render_town_scripts
from tests.fixtures.s3 import S3Bucket
from tests.fixtures.town import GIT_ENV, RIGS, Town, git, town_files, town_state

REPO = Path(__file__).resolve().parent.parent
STANDIN_BIN = REPO / "tests" / "fixtures" / "bin"
VENV_BIN = Path(sys.executable).parent  # the pinned awscli and shellcheck live here
TOWN_ID = "town-7f3a"
KILO_JWT = "kilo-jwt-secret-value"
TS_LEN = len("20260217T120000Z")


def _wait_for(condition: Callable[[], bool], what: str, deadline_s: float = 120.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


# ---- heartbeat endpoint -----------------------------------------------------------------------


@dataclass
class Heartbeats:
    url: str
    requests: list[dict] = field(default_factory=list)

    def events(self, event: str) -> list[dict]:
        return [r["body"] for r in self.requests if r["body"].get("event") == event]


@pytest.fixture
def heartbeats() -> Iterator[Heartbeats]:
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            received.append(
                {"path": self.path, "authorization": self.headers.get("Authorization"), "body": json.loads(body)}
            )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Heartbeats(url=f"http://127.0.0.1:{server.server_port}", requests=received)
    finally:
        server.shutdown()
        server.server_close()


# ---- a sandbox: rendered scripts + environment ----------------------------------------------------


@dataclass
class Sandbox:
    tmp: Path
    bin_dir: Path
    env: dict[str, str]
    bucket: S3Bucket
    town: Town

    @property
    def prefix(self) -> str:
        return f"gastown/{TOWN_ID}"

    def run(self, script: str, *args: str, root: Path | None = None, **extra: str) -> subprocess.CompletedProcess:
        env = {**self.env, **extra}
        if root is not None:
            env["GT_TOWN_ROOT"] = str(root)
        return subprocess.run([str(self.bin_dir / script), *args], env=env, capture_output=True, text=True, timeout=300)

    def sync(self, **extra: str) -> subprocess.CompletedProcess:
        result = self.run("r2-sync.sh", "--immediate", **extra)
        assert result.returncode == 0, result.stderr
        return result

    def latest(self) -> dict:
        return json.loads(self.bucket.get(f"{self.prefix}/latest.json"))

    def snapshots(self) -> list[str]:
        names = {k.split("/")[3] for k in self.bucket.keys(f"{self.prefix}/snapshots/")}
        return sorted(names)

    def tar_members(self, ts: str, name: str) -> dict[str, bytes]:
        """Regular files of snapshots/<ts>/<name> (a tar) → their bytes."""
        body = self.bucket.get(f"{self.prefix}/snapshots/{ts}/{name}")
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}

    def manifest(self, ts: str) -> dict:
        return json.loads(self.bucket.get(f"{self.prefix}/snapshots/{ts}/manifest.json"))

    def assert_complete(self, ts: str) -> None:
        """Every file the manifest lists is in R2 with its size and sha256, and nothing else."""
        manifest = self.manifest(ts)
        base = f"{self.prefix}/snapshots/{ts}/"
        listed = {f["path"] for f in manifest["files"]}
        assert {k[len(base) :] for k in self.bucket.keys(base)} == listed | {"manifest.json"}
        for entry in manifest["files"]:
            body = self.bucket.get(base + entry["path"])
            assert (len(body), hashlib.sha256(body).hexdigest()) == (entry["size"], entry["sha256"])

    def aws_wrapper(self, trigger: str, match: str, race_body: bytes) -> dict[str, str]:
        """A PATH entry whose `aws` writes latest.json (a racing writer) right before the first
        call of `s3api <trigger>` whose arguments mention <match>, then runs the real command."""
        wrap_dir = self.tmp / "race-bin"
        wrap_dir.mkdir(exist_ok=True)
        (self.tmp / "race-body.json").write_bytes(race_body)
        real = VENV_BIN / "aws"
        script = f"""#!/usr/bin/env bash
set -euo pipefail
if [[ ! -e {self.tmp}/race-done && " $* " == *" {trigger} "* && "$*" == *"{match}"* ]]; then
  : >{self.tmp}/race-done
  {real} --endpoint-url "$R2_ENDPOINT" s3api put-object --bucket "$R2_BUCKET" \\
    --key {self.prefix}/latest.json --body {self.tmp}/race-body.json >/dev/null
fi
exec {real} "$@"
"""
        (wrap_dir / "aws").write_text(script)
        (wrap_dir / "aws").chmod(0o755)
        return {"PATH": f"{wrap_dir}:{self.env['PATH']}"}

    def race_happened(self) -> bool:
        return (self.tmp / "race-done").exists()


def _render(bin_dir: Path, **ctx: object) -> dict[str, str]:
    scripts = render_town_scripts(TownScriptContext(bin_dir=str(bin_dir), **ctx))
    bin_dir.mkdir(parents=True, exist_ok=True)
    for path, text in scripts.items():
        Path(path).write_text(text)
        Path(path).chmod(TOWN_SCRIPT_MODE)
    return scripts


@pytest.fixture
def sandbox(tmp_path: Path, s3_bucket: S3Bucket, gastown_town: Town, heartbeats: Heartbeats) -> Sandbox:
    town = gastown_town
    bin_dir = tmp_path / "bin"
    _render(bin_dir)
    (tmp_path / "work").mkdir()
    env = {
        **os.environ,
        **GIT_ENV,
        **s3_bucket.r2_env(),
        "PATH": f"{STANDIN_BIN}:{VENV_BIN}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path / "work"),
        "TOWN_ID": TOWN_ID,
        "GT_TOWN_ROOT": str(town.root),
        "R2_SYNC_LOCK": str(tmp_path / "r2-sync.lock"),
        "KILO_API_URL": heartbeats.url,
        "KILO_JWT": KILO_JWT,
        "GT_STANDIN_LOG": str(tmp_path / "gt-calls.log"),
        "DOLT_STANDIN_LOG": str(tmp_path / "dolt-calls.log"),
    }
    return Sandbox(tmp=tmp_path, bin_dir=bin_dir, env=env, bucket=s3_bucket, town=town)


# ---- rendering ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ctx",
    [{}, {"town_root": "/data/town", "sync_interval_seconds": 60, "keep_snapshots": 5, "key_prefix": "dr/gastown"}],
)
def test_rendered_scripts_are_shellcheck_clean(tmp_path: Path, ctx: dict) -> None:
    bin_dir = tmp_path / "bin"
    scripts = _render(bin_dir, **ctx)
    assert sorted(scripts) == [str(bin_dir / n) for n in ("r2-restore.sh", "r2-sync.sh", "startup.sh")]
    result = subprocess.run(
        [str(VENV_BIN / "shellcheck"), "--severity=style", *scripts], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
    sync = scripts[str(bin_dir / "r2-sync.sh")]
    expected = TownScriptContext(**ctx)
    assert f'GT_TOWN_ROOT="${{GT_TOWN_ROOT:-{expected.town_root}}}"' in sync
    assert f'SYNC_INTERVAL_SECONDS="${{SYNC_INTERVAL_SECONDS:-{expected.sync_interval_seconds}}}"' in sync
    assert f'PREFIX="{expected.key_prefix}/$TOWN_ID"' in sync
    assert f"BIN_DIR={bin_dir}" in scripts[str(bin_dir / "startup.sh")]


@pytest.mark.parametrize(
    ("bad", "field_name"),
    [
        ({"town_root": "data/gt"}, "town_root"),
        ({"bin_dir": "/usr/bin;rm -rf /"}, "bin_dir"),
        ({"keep_snapshots": 0}, "keep_snapshots"),
        ({"key_prefix": "/abs"}, "key_prefix"),
        ({"sync_interval": 5}, "sync_interval"),
    ],
)
def test_bad_script_context_names_the_field(bad: dict, field_name: str) -> None:
    with pytest.raises(ValidationError, match=field_name):
        TownScriptContext(**bad)


def test_missing_r2_setting_is_named(sandbox: Sandbox) -> None:
    env = {k: v for k, v in sandbox.env.items() if k != "R2_BUCKET"}
    result = subprocess.run(
        [str(sandbox.bin_dir / "r2-sync.sh"), "--immediate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "R2_BUCKET is required" in result.stderr
    assert sandbox.bucket.keys() == []


# ---- backup and restore ----------------------------------------------------------------------------


def test_backup_then_restore_reproduces_the_town(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    original = town_state(sandbox.town.root)
    sync = sandbox.sync()

    [ts] = sandbox.snapshots()
    assert len(ts) == TS_LEN
    assert sandbox.bucket.keys(f"{sandbox.prefix}/staging/") == []
    sandbox.assert_complete(ts)
    manifest_bytes = sandbox.bucket.get(f"{sandbox.prefix}/snapshots/{ts}/manifest.json")
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    assert sandbox.latest() == {"timestamp": ts, "manifest_sha256": manifest_sha}
    manifest = json.loads(manifest_bytes)
    assert manifest["gt_version"] == "gt version 0.12.1-standin"
    assert sorted(manifest["databases"]) == sorted(["hq", *RIGS])  # the town's hq database too
    assert {f["path"] for f in manifest["files"]} >= {
        "config.tar",
        "runtime.tar",
        "dolt/hq.tar",
        "git/webapp.bundle",
        "worktrees/webapp.tar",
    }
    webapp = next(r for r in manifest["rigs"] if r["name"] == "webapp")
    assert webapp["git_url"] == sandbox.town.git_url("webapp")
    assert webapp["default_branch"] == "main"
    assert {(w["path"], w["branch"]) for w in webapp["worktrees"]} == {
        ("webapp/refinery/rig", "main"),
        ("webapp/polecats/nux/webapp", sandbox.town.polecat_branch("nux")),
        ("webapp/polecats/toast/webapp", sandbox.town.polecat_branch("toast")),
    }
    runtime_names = set(sandbox.tar_members(ts, "runtime.tar"))
    assert ".runtime/ca/ca.key" in runtime_names
    assert not {n for n in runtime_names if n.endswith((".pid", ".lock", ".sock")) or "/locks/" in n}

    [beat] = heartbeats.events("r2_sync")
    assert beat["status"] == "ok" and beat["snapshot"] == ts and beat["town_id"] == TOWN_ID
    assert heartbeats.requests[0]["path"] == "/api/gastown/heartbeat"
    assert heartbeats.requests[0]["authorization"] == f"Bearer {KILO_JWT}"

    target = sandbox.tmp / "restored-volume" / "gt"
    restore = sandbox.run("r2-restore.sh", root=target)
    assert restore.returncode == 0, restore.stderr

    restored = town_state(target)
    assert restored["files"] == original["files"]  # config, Dolt dbs, worktree files incl. dirty work
    assert restored["repos"] == original["repos"]  # branches, tags, HEAD, origin, worktrees
    for rig in RIGS:
        repo = target / rig / ".repo.git"
        git("fsck", "--no-progress", cwd=repo)
        assert set((sandbox.town.root / rig / ".repo.git" / "shallow").read_text().split()) <= set(
            (repo / "shallow").read_text().split()
        )
        # Polecat branches only ever existed in the town: they came back from the bundle.
        assert git("log", "-1", "--format=%s", sandbox.town.polecat_branch("nux"), cwd=repo).strip() == (
            "nux: local work never pushed"
        )
    assert "v0.3" not in git("tag", cwd=target / "webapp" / ".repo.git")  # upstream's later tag: not ours
    nux = target / "webapp" / "polecats" / "nux" / "webapp"
    assert git("status", "--porcelain", cwd=nux).splitlines() == sorted(
        [" D docs/guide.md", " M src/app.py", "?? .beads/", "?? notes/", "?? run.sh", "?? src/staged.py"]
    )
    assert not (target / ".r2-restore-partial").exists()

    dolt_calls = (sandbox.tmp / "dolt-calls.log").read_text().splitlines()
    verified = {Path(ln.split("\t")[0]).name for ln in dolt_calls if ln.endswith("\tverify-constraints")}
    assert verified == {"hq", *RIGS}
    [beat] = heartbeats.events("r2_restore")
    assert beat["status"] == "restored" and beat["snapshot"] == ts
    for output in (sync.stderr, restore.stderr):
        assert KILO_JWT not in output and sandbox.bucket.secret_key not in output


def test_restore_from_bundles_alone_when_upstream_is_gone(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    (sandbox.town.root / ".dolt-data" / "api" / ".violations").write_text("fk_issue_parent: 1 row\n")
    original = town_state(sandbox.town.root)
    sandbox.sync()
    for upstream in sandbox.town.upstreams.values():
        shutil.move(upstream, upstream.with_name(upstream.name + ".gone"))

    target = sandbox.tmp / "restored"
    restore = sandbox.run("r2-restore.sh", root=target)

    assert restore.returncode == 3, restore.stderr  # restored, with the constraint violation reported
    assert "restoring from the bundle alone" in restore.stderr
    assert town_state(target) == original
    [beat] = heartbeats.events("r2_restore")
    assert beat["status"] == "restored_with_violations"
    assert beat["constraint_violations"] == ["api"]


def test_corrupted_object_aborts_before_touching_the_town(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    sandbox.sync()
    [ts] = sandbox.snapshots()
    key = f"{sandbox.prefix}/snapshots/{ts}/git/webapp.bundle"
    body = bytearray(sandbox.bucket.get(key))
    body[len(body) // 2] ^= 0xFF  # same size, one flipped byte
    sandbox.bucket.put(key, bytes(body))
    target = sandbox.tmp / "empty-volume"
    target.mkdir()

    restore = sandbox.run("r2-restore.sh", root=target)

    assert restore.returncode == 1
    assert "checksum mismatch for git/webapp.bundle" in restore.stderr
    assert list(target.iterdir()) == []
    assert not (sandbox.tmp / "dolt-calls.log").read_text().count("backup restore")
    [beat] = heartbeats.events("r2_restore")
    assert beat["status"] == "failed" and "git/webapp.bundle" in beat["error"]


def test_restore_refuses_unknown_data_but_retries_its_own_leftovers(sandbox: Sandbox) -> None:
    original = town_state(sandbox.town.root)
    sandbox.sync()
    stray = sandbox.tmp / "stray"
    (stray / "notes").mkdir(parents=True)
    (stray / "notes" / "keep.txt").write_text("not ours")

    refused = sandbox.run("r2-restore.sh", root=stray)

    assert refused.returncode == 1
    assert "refusing to restore over unknown data" in refused.stderr
    assert sorted(str(p.relative_to(stray)) for p in stray.rglob("*")) == ["notes", "notes/keep.txt"]

    # Leftovers of an interrupted restore (marker present, no mayor/town.json) are replaced.
    partial = sandbox.tmp / "partial"
    (partial / "webapp" / ".repo.git").mkdir(parents=True)
    (partial / "webapp" / ".repo.git" / "HEAD").write_text("half-written")
    (partial / ".r2-restore-partial").touch()

    retried = sandbox.run("r2-restore.sh", root=partial)

    assert retried.returncode == 0, retried.stderr
    assert town_state(partial) == original


def test_failed_sync_is_reported(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    result = sandbox.run("r2-sync.sh", "--immediate", R2_BUCKET="no-such-bucket-here")
    assert result.returncode != 0
    [beat] = heartbeats.events("r2_sync")
    assert beat["status"] == "failed"


def test_restore_skips_when_the_volume_has_a_town(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    before = town_files(sandbox.town.root)
    restore = sandbox.run("r2-restore.sh")
    assert restore.returncode == 0, restore.stderr
    assert "skipping the restore" in restore.stderr
    assert town_files(sandbox.town.root) == before
    [beat] = heartbeats.events("r2_restore")
    assert beat["status"] == "skipped"


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


# ---- concurrency -----------------------------------------------------------------------------------


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
                        [str(sandbox.bin_dir / "r2-sync.sh"), "--immediate"],
                        env=sandbox.env,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                )
        _wait_for(lambda: all("waiting up to" in log.read_text() for log in logs), "both syncs to wait")
        assert sandbox.bucket.keys() == []  # nothing is uploaded while another sync holds the lock
        fcntl.flock(lock, fcntl.LOCK_UN)
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        lock.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], [log.read_text() for log in logs]

    snaps = sandbox.snapshots()
    assert len(snaps) == 2
    for ts in snaps:
        sandbox.assert_complete(ts)
    latest = sandbox.latest()
    assert latest["timestamp"] == snaps[-1]
    manifest = sandbox.bucket.get(f"{sandbox.prefix}/snapshots/{snaps[-1]}/manifest.json")
    assert latest["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert sandbox.bucket.keys(f"{sandbox.prefix}/staging/") == []


def test_racing_writer_with_a_newer_snapshot_is_not_overwritten(sandbox: Sandbox) -> None:
    theirs = b'{"timestamp": "29991231T235959Z", "manifest_sha256": "theirs"}'
    race = sandbox.aws_wrapper("put-object", "latest.json", theirs)

    result = sandbox.sync(**race)

    assert sandbox.race_happened()
    assert "latest.json changed under us" in result.stderr
    assert sandbox.bucket.get(f"{sandbox.prefix}/latest.json") == theirs
    [ours] = sandbox.snapshots()
    sandbox.assert_complete(ours)  # our snapshot stays available, just not the latest


def test_racing_writer_with_an_older_snapshot_loses_after_a_reread(sandbox: Sandbox) -> None:
    stale = b'{"timestamp": "20000101T000000Z", "manifest_sha256": "stale"}'
    race = sandbox.aws_wrapper("put-object", "latest.json", stale)

    result = sandbox.sync(**race)

    assert sandbox.race_happened()
    assert "latest.json changed under us" in result.stderr  # the first PUT got 412
    [ours] = sandbox.snapshots()
    assert sandbox.latest()["timestamp"] == ours


def test_retention_keeps_the_last_three_and_never_the_latest_target(sandbox: Sandbox) -> None:
    old = ["20250101T000000Z", "20250102T000000Z", "20250103T000000Z"]
    for ts in old:
        sandbox.bucket.put(f"{sandbox.prefix}/snapshots/{ts}/manifest.json", b"{}")
        sandbox.bucket.put(f"{sandbox.prefix}/snapshots/{ts}/config.tar", b"old")
    sandbox.bucket.put(f"{sandbox.prefix}/staging/20240101T000000Z/config.tar", b"abandoned upload")

    sandbox.sync()
    snaps = sandbox.snapshots()
    assert snaps[:2] == old[1:] and len(snaps) == 3  # the oldest went, the newest three stay
    assert sandbox.bucket.keys(f"{sandbox.prefix}/staging/") == []

    # Another writer points latest.json at the oldest remaining snapshot just before our listing:
    # retention must keep it even though it is no longer among the newest three.
    pinned = {"timestamp": old[1], "manifest_sha256": "x"}
    race = sandbox.aws_wrapper("list-objects-v2", "snapshots/", json.dumps(pinned).encode())
    sandbox.sync(**race)
    assert sandbox.race_happened()
    snaps = sandbox.snapshots()
    assert old[1] in snaps and old[2] in snaps and len(snaps) == 4
    assert sandbox.latest() == pinned


# ---- startup.sh ------------------------------------------------------------------------------------


def test_sigterm_flushes_a_snapshot_then_stops_gt(sandbox: Sandbox, heartbeats: Heartbeats) -> None:
    out = sandbox.tmp / "startup.log"
    env = {**sandbox.env, "SYNC_INTERVAL_SECONDS": "3600"}
    with open(out, "w") as log:
        proc = subprocess.Popen(
            [str(sandbox.bin_dir / "startup.sh")], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_for(lambda: sandbox.bucket.keys(f"{sandbox.prefix}/latest.json") != [], "the first sync")
        [first] = sandbox.snapshots()
        settings = sandbox.town.root / "settings" / "config.json"
        settings.write_text('{"default_agent": "claude"}\n')  # work done after the last periodic sync

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    log_text = out.read_text()
    snaps = sandbox.snapshots()
    assert len(snaps) == 2 and snaps[0] == first
    flushed = snaps[1]
    assert sandbox.latest()["timestamp"] == flushed
    config = sandbox.tar_members(flushed, "config.tar")
    assert config["settings/config.json"] == b'{"default_agent": "claude"}\n'
    calls = [line.split("\t") for line in (sandbox.tmp / "gt-calls.log").read_text().splitlines()]
    assert [c[0] for c in calls] == ["up", "down"]
    assert Path(calls[0][1]) == sandbox.town.root  # gt up runs inside the town
    assert log_text.index(f"published snapshot {flushed}") < log_text.index("gt down: ok")
    assert [b["status"] for b in heartbeats.events("r2_restore")] == ["skipped"]
    assert [b["snapshot"] for b in heartbeats.events("r2_sync")] == [first, flushed]
