"""Restore treats a snapshot as hostile input (a town writes its own R2 prefix and runs agent code).

One real snapshot of the real town is taken per module; each test uploads it to a fresh bucket with
one attack applied, re-signs the manifest the way an attacker controlling the prefix could (the
checksum in latest.json is the town's own), and runs the real r2-restore.sh onto an empty volume.
A refused restore exits 1, says why, reports the failure, and leaves the volume exactly as it was:
no town root, no work directory, nothing written anywhere else.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.s3 import make_bucket
from tests.fixtures.sandbox import Heartbeats, Sandbox, build_sandbox
from tests.fixtures.town import GasTown, fresh_copy


@dataclass
class Snapshot:
    ts: str
    objects: dict[str, bytes]  # path under snapshots/<ts>/ → body

    def manifest(self) -> dict:
        return json.loads(self.objects["manifest.json"])


def _taken(sandbox: Sandbox) -> Snapshot:
    [ts] = sandbox.snapshots()
    base = f"{sandbox.prefix}/snapshots/{ts}/"
    return Snapshot(ts=ts, objects={key[len(base) :]: sandbox.bucket.get(key) for key in sandbox.bucket.keys(base)})


@pytest.fixture(scope="module")
def clean_snapshot(
    gastown_template: GasTown, moto_s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Snapshot:
    """One real snapshot of the real town, taken once for the module."""
    sandbox = build_sandbox(
        tmp_path_factory.mktemp("hostile"), make_bucket(moto_s3_endpoint), fresh_copy(gastown_template)
    )
    sandbox.sync()
    return _taken(sandbox)


@pytest.fixture
def snapshot(clean_snapshot: Snapshot, sandbox: Sandbox) -> Snapshot:
    return clean_snapshot


@dataclass
class Volume:
    path: Path  # the empty volume the town is restored onto
    outside: Path  # a directory outside the volume an attack aims at

    @property
    def root(self) -> Path:
        return self.path / "gt"

    def listing(self) -> list[str]:
        return sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*"))


@pytest.fixture
def volume(sandbox: Sandbox) -> Volume:
    path = sandbox.tmp / "new-volume"
    path.mkdir()
    outside = sandbox.tmp / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep me")
    return Volume(path=path, outside=outside)


def _entry(path: str, body: bytes) -> dict:
    return {"path": path, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def publish(
    sandbox: Sandbox,
    snap: Snapshot,
    *,
    manifest: Callable[[dict], None] | None = None,
    objects: dict[str, bytes] | None = None,
    list_objects: bool = True,
    sign: bool = True,
) -> None:
    """Uploads the snapshot with MANIFEST edited and OBJECTS replaced or added, re-listed (sizes and
    checksums) when LIST_OBJECTS, and latest.json re-signed when SIGN."""
    bodies = {**snap.objects, **(objects or {})}
    doc = snap.manifest()
    if list_objects:
        for path, body in (objects or {}).items():
            doc["files"] = [f for f in doc["files"] if f["path"] != path] + [_entry(path, body)]
    if manifest:
        manifest(doc)
    bodies["manifest.json"] = json.dumps(doc).encode()
    for path, body in bodies.items():
        sandbox.bucket.put(f"{sandbox.prefix}/snapshots/{snap.ts}/{path}", body)
    latest = {"timestamp": snap.ts}
    if sign:
        latest["manifest_sha256"] = hashlib.sha256(bodies["manifest.json"]).hexdigest()
    sandbox.bucket.put(f"{sandbox.prefix}/latest.json", json.dumps(latest).encode())


def tar_with(base: bytes | None, members: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A tar holding BASE's members (if any), then MEMBERS."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        if base is not None:
            with tarfile.open(fileobj=io.BytesIO(base)) as old:
                for member in old.getmembers():
                    tar.addfile(member, old.extractfile(member) if member.isfile() else None)
        for item in members:
            info, data = item if isinstance(item, tuple) else (item, b"")
            if info.isfile():
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out.getvalue()


def file_member(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def link_member(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def refused(sandbox: Sandbox, volume: Volume, heartbeats: Heartbeats, reason: str) -> None:
    before = volume.listing()
    result = sandbox.restore(volume.root)
    assert result.returncode == 1, result.stderr
    assert reason in result.stderr, result.stderr
    assert "the volume was left untouched" in result.stderr or "refusing" in result.stderr
    assert volume.listing() == before == []
    assert sorted(p.name for p in volume.outside.iterdir()) == ["victim"]
    assert (volume.outside / "victim").read_text() == "keep me"
    [beat] = heartbeats.events("r2_restore")
    assert beat["status"] == "failed" and reason.split(":")[0] in beat["error"]


def _backend(doc: dict) -> dict:
    return next(r for r in doc["rigs"] if r["name"] == "backend")


def _nux(doc: dict) -> dict:
    repo = next(r for r in _backend(doc)["repos"] if r["bare"])
    return next(w for w in repo["worktrees"] if w["path"].endswith("nux/backend"))


# ---- the manifest and its checksum -------------------------------------------------------------------


def test_a_manifest_without_its_checksum_is_refused(
    sandbox: Sandbox, snapshot: Snapshot, volume: Volume, heartbeats: Heartbeats
) -> None:
    publish(sandbox, snapshot, sign=False)
    refused(sandbox, volume, heartbeats, "carries no manifest_sha256")


def test_an_object_that_does_not_match_the_manifest_is_refused(
    sandbox: Sandbox, snapshot: Snapshot, volume: Volume, heartbeats: Heartbeats
) -> None:
    bundle = next(p for p in snapshot.objects if p.endswith(".bundle"))
    body = bytearray(snapshot.objects[bundle])
    body[len(body) // 2] ^= 0xFF  # same size, one flipped byte
    publish(sandbox, snapshot, objects={bundle: bytes(body)}, list_objects=False)
    refused(sandbox, volume, heartbeats, f"checksum mismatch for {bundle}")


def test_a_referenced_archive_missing_from_the_manifest_is_refused(
    sandbox: Sandbox, snapshot: Snapshot, volume: Volume, heartbeats: Heartbeats
) -> None:
    # The archive is uploaded but taken off the manifest's list: it must not be used unchecked.
    def unlist(doc: dict) -> None:
        doc["files"] = [f for f in doc["files"] if f["path"] != "town.tar"]

    planted = tar_with(snapshot.objects["town.tar"], [file_member("planted.txt", b"unchecked")])
    publish(sandbox, snapshot, objects={"town.tar": planted}, list_objects=False, manifest=unlist)
    refused(sandbox, volume, heartbeats, "town_tar is missing or not listed in files")


def test_objects_the_manifest_does_not_list_are_never_read(
    sandbox: Sandbox, snapshot: Snapshot, volume: Volume, heartbeats: Heartbeats
) -> None:
    extra = tar_with(None, [file_member("planted.txt", b"unchecked")])
    publish(sandbox, snapshot, objects={"config.tar": extra, "work/backend2.tar": extra}, list_objects=False)

    result = sandbox.restore(volume.root)

    assert result.returncode == 0, result.stderr
    assert "ignoring config.tar: snapshot" in result.stderr
    assert not list(volume.root.rglob("planted.txt"))


# ---- paths, links and special files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        # A file "deleted in the worktree" that is really outside the town.
        (
            lambda doc, o: _nux(doc).update(deleted=["../../../../../../" + str(o / "victim").lstrip("/")]),
            "lists a deleted path that leaves it",
        ),
        (lambda doc, o: _nux(doc).update(deleted=[str(o / "victim")]), "lists a deleted path that leaves it"),
        (lambda doc, o: _nux(doc).update(path="backend/../../outside"), "is not inside the rig"),
        (
            lambda doc, o: next(r for r in _backend(doc)["repos"] if not r["bare"]).update(path=str(o)),
            "is not inside the rig",
        ),
        (
            lambda doc, o: next(r for r in _backend(doc)["repos"] if r["bare"]).update(bundle="../latest.json"),
            "is not a listed git/backend/N.bundle",
        ),
        (lambda doc, o: _backend(doc).update(work_tar="work/../town.tar"), "is not work/backend.tar"),
        (lambda doc, o: doc["databases"].append("../../outside"), "unusable database name"),
        (lambda doc, o: doc["rigs"].append({**_backend(doc), "name": "../escape"}), "unusable rig name"),
    ],
)
def test_paths_that_leave_the_town_are_refused(
    sandbox: Sandbox,
    snapshot: Snapshot,
    volume: Volume,
    heartbeats: Heartbeats,
    attack: Callable[[dict, Path], None],
    reason: str,
) -> None:
    publish(sandbox, snapshot, manifest=lambda doc: attack(doc, volume.outside))
    refused(sandbox, volume, heartbeats, reason)


def test_a_link_planted_by_one_archive_cannot_carry_another_archives_writes_out(
    sandbox: Sandbox, snapshot: Snapshot, volume: Volume, heartbeats: Heartbeats
) -> None:
    # The work archive (unpacked first) plants a link in a worktree; town.tar then writes through it.
    escape = "backend/polecats/nux/backend/escape"
    work = tar_with(snapshot.objects["work/backend.tar"], [link_member(escape, str(volume.outside))])
    town_tar = tar_with(snapshot.objects["town.tar"], [file_member(f"{escape}/pwned", b"pwned")])
    publish(sandbox, snapshot, objects={"town.tar": town_tar, "work/backend.tar": work})
    refused(sandbox, volume, heartbeats, "holds a link that leaves the town")


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (
            lambda o: link_member("backend/polecats/nux/backend/up", "../../../../../.."),
            "holds a link that leaves the town",
        ),
        (lambda o: link_member("backend/polecats/nux/backend/abs", str(o)), "holds a link that leaves the town"),
        (
            lambda o: file_member("backend/.repo.git/hooks/post-checkout", b"#!/bin/sh\n", 0o755),
            "git or Dolt internals",
        ),
        (lambda o: file_member("webapp/refinery/rig/x", b"not this rig's"), "outside where it may write"),
        (lambda o: file_member("../../escape", b"x"), "unpacking backend.tar failed"),
    ],
)
def test_work_archive_tricks_are_refused(
    sandbox: Sandbox,
    snapshot: Snapshot,
    volume: Volume,
    heartbeats: Heartbeats,
    member: Callable[[Path], tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]],
    reason: str,
) -> None:
    work = tar_with(snapshot.objects["work/backend.tar"], [member(volume.outside)])
    publish(sandbox, snapshot, objects={"work/backend.tar": work})
    refused(sandbox, volume, heartbeats, reason)


def test_set_uid_bits_from_an_archive_are_dropped(sandbox: Sandbox, snapshot: Snapshot, volume: Volume) -> None:
    suid = "backend/polecats/nux/backend/suid"
    work = tar_with(snapshot.objects["work/backend.tar"], [file_member(suid, b"#!/bin/sh\n", 0o6755)])
    publish(sandbox, snapshot, objects={"work/backend.tar": work})
    result = sandbox.restore(volume.root)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((volume.root / suid).stat().st_mode) == 0o755


def test_a_fifo_or_device_in_an_archive_is_refused(
    sandbox: Sandbox, snapshot: Snapshot, volume: Volume, heartbeats: Heartbeats
) -> None:
    fifo = tarfile.TarInfo("settings/pipe")
    fifo.type = tarfile.FIFOTYPE
    publish(sandbox, snapshot, objects={"town.tar": tar_with(snapshot.objects["town.tar"], [fifo])})
    refused(sandbox, volume, heartbeats, "holds a device, pipe or socket")


def test_a_tracked_symlink_cannot_carry_uncommitted_files_out(
    sandbox: Sandbox, gastown: GasTown, volume: Volume, heartbeats: Heartbeats
) -> None:
    # A repository may track a symlink to anywhere; "uncommitted files" under it would be written
    # through it. Build that snapshot for real: commit the link, then tamper the work archive.
    nux = gastown.root / "backend" / "polecats" / "nux" / "backend"
    (nux / "docs").symlink_to(volume.outside)
    gastown.git("add", "docs", cwd=nux)
    gastown.git("commit", "-q", "-m", "a link to somewhere", cwd=nux)
    sandbox.sync()
    snap = _taken(sandbox)
    work = tar_with(snap.objects["work/backend.tar"], [file_member("backend/polecats/nux/backend/docs/pwned", b"x")])
    publish(sandbox, snap, objects={"work/backend.tar": work})
    refused(sandbox, volume, heartbeats, "would write through a link that leaves the town")


# ---- URLs and git settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda doc, m: _backend(doc).update(git_url=f"--upload-pack=touch {m}"), "git_url is not an acceptable URL"),
        (lambda doc, m: _backend(doc).update(git_url=f"ext::sh -c touch% {m}"), "git_url is not an acceptable URL"),
        (
            lambda doc, m: _backend(doc).update(git_url="https://user:token@example.com/a.git"),
            "git_url is not an acceptable URL",
        ),
        (
            lambda doc, m: next(r for r in _backend(doc)["repos"] if r["bare"])["config"].append(
                ["core.fsmonitor", f"touch {m}"]
            ),
            "carries a git setting that is not allowed",
        ),
        (
            lambda doc, m: next(r for r in _backend(doc)["repos"] if r["bare"])["config"].append(
                ["remote.origin.url", f"ext::sh -c touch% {m}"]
            ),
            "carries a git setting that is not allowed",
        ),
        (
            lambda doc, m: next(r for r in _backend(doc)["repos"] if r["bare"])["config"].append(
                ["core.hookspath", "/tmp"]
            ),
            "carries a git setting that is not allowed",
        ),
        (
            lambda doc, m: next(r for r in _backend(doc)["repos"] if r["bare"]).update(head="refs/heads/--output=x"),
            "has a bad HEAD",
        ),
        (lambda doc, m: _nux(doc).update(branch="-b"), "has a bad branch"),
    ],
)
def test_urls_branches_and_git_settings_are_validated(
    sandbox: Sandbox,
    snapshot: Snapshot,
    volume: Volume,
    heartbeats: Heartbeats,
    edit: Callable[[dict, Path], None],
    reason: str,
) -> None:
    marker = volume.outside / "ran"
    publish(sandbox, snapshot, manifest=lambda doc: edit(doc, marker))
    refused(sandbox, volume, heartbeats, reason)
    assert not marker.exists()


def test_a_clean_snapshot_restores_and_its_modes_are_kept(sandbox: Sandbox, snapshot: Snapshot, volume: Volume) -> None:
    # The checks above refuse tampering, not ordinary content: the same snapshot untouched restores.
    publish(sandbox, snapshot)
    result = sandbox.restore(volume.root)
    assert result.returncode == 0, result.stderr
    run_sh = volume.root / "backend" / "polecats" / "nux" / "backend" / "run.sh"
    assert stat.S_IMODE(run_sh.stat().st_mode) == 0o755
    assert stat.S_IMODE((volume.root / ".runtime" / "ca" / "ca.key").stat().st_mode) == 0o600
    assert not (volume.path / ".r2-work").exists() or list((volume.path / ".r2-work").iterdir()) == []
    shutil.rmtree(volume.root)
