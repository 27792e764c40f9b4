"""Restore treats a snapshot as hostile input (a town writes its own R2 prefix and runs agent code).

One real snapshot of the real town is taken per module; each test uploads it to a fresh bucket with
one attack applied, re-signs the manifest the way an attacker controlling the prefix could (the
checksum in latest.json is the town's own), and runs the real r2-restore.sh onto an empty volume.
A refused restore exits 1, says why, reports the failure, and leaves the volume exactly as it was:
no town root, no work directory, nothing written anywhere else.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import subprocess
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


def fifo_member(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    return info


def _octal(n: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, n)


def _base256(n: int) -> bytes:
    return bytes([0x80]) + n.to_bytes(11, "big")


def sparse_bomb(base: bytes, name: str, claimed: int) -> bytes:
    """BASE's members plus NAME, an old-GNU sparse member (type 'S') storing 512 bytes at the end of a
    file it says is CLAIMED bytes long: GNU tar extracts it as a sparse file of that size (tarfile
    reads such members but cannot write them, hence the hand-made header)."""
    header = bytearray(512)
    header[0 : len(name)] = name.encode()
    header[100:108] = _octal(0o644, 8)
    header[108:116] = _octal(0, 8)
    header[116:124] = _octal(0, 8)
    header[124:136] = _octal(512, 12)  # bytes stored in the archive
    header[136:148] = _octal(0, 12)
    header[156:157] = b"S"
    header[257:265] = b"ustar  \0"
    header[386:398] = _base256(claimed - 512)  # sp[0].offset
    header[398:410] = _octal(512, 12)  # sp[0].numbytes
    header[483:495] = _base256(claimed)  # realsize
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    with tarfile.open(fileobj=io.BytesIO(base)) as old:
        end = max(m.offset_data + -(-m.size // 512) * 512 for m in old.getmembers())
    return base[:end] + bytes(header) + b"x" * 512 + b"\0" * 1024


def sum_of_members(body: bytes) -> int:
    """What a tar expands to: the sum of its members' sizes (a sparse member's full size)."""
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return sum(m.size for m in tar.getmembers())


def expanded_size(snap: Snapshot) -> int:
    """What every archive of SNAP adds up to once unpacked."""
    return sum(sum_of_members(body) for path, body in snap.objects.items() if path.endswith(".tar"))


def git_no_hooks(town: GasTown, *args: str, cwd: Path) -> str:
    """The test's own git in the town, with the hooks a test plants kept from running."""
    return town.git("-c", "core.hooksPath=/dev/null", *args, cwd=cwd)


def refused(sandbox: Sandbox, volume: Volume, heartbeats: Heartbeats, reason: str) -> None:
    before = volume.listing()
    result = sandbox.restore(volume.root)
    assert result.returncode == 1, result.stderr
    # Nothing written anywhere, even by a restore that went on to fail.
    assert sorted(p.name for p in volume.outside.iterdir()) == ["victim"]
    assert (volume.outside / "victim").read_text() == "keep me"
    assert volume.listing() == before == []
    assert reason in result.stderr, result.stderr
    assert "the volume was left untouched" in result.stderr or "refusing" in result.stderr
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


def test_a_manifest_that_does_not_match_latest_json_is_refused(
    sandbox: Sandbox, snapshot: Snapshot, volume: Volume, heartbeats: Heartbeats
) -> None:
    # A well-formed checksum of some other manifest: only comparing it with manifest.json catches it.
    publish(sandbox, snapshot)
    other = hashlib.sha256(b"another manifest").hexdigest()
    sandbox.bucket.put(
        f"{sandbox.prefix}/latest.json", json.dumps({"timestamp": snapshot.ts, "manifest_sha256": other}).encode()
    )
    refused(sandbox, volume, heartbeats, f"checksum mismatch for manifest.json (latest.json expects {other}")


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


@pytest.mark.parametrize("path", ["one copy", "ranged reads"])
def test_only_the_files_the_manifest_lists_are_downloaded(
    sandbox: Sandbox, snapshot: Snapshot, volume: Volume, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    # The town writes its own prefix: whatever else it put under a snapshot (64 MiB here) must neither
    # fill the volume nor be read. The manifest comes first, then each file it lists: in one copy when
    # every file at the largest listed size would fit, else one ranged read per file (forced here by
    # a restore budget smaller than that).
    planted = b"\0" * (32 << 20)
    publish(sandbox, snapshot, objects={"planted.bin": planted, "git/backend/99.bundle": planted}, list_objects=False)
    extra = {}
    if path == "ranged reads":
        sizes = [len(body) for name, body in snapshot.objects.items() if name != "manifest.json"]
        extra["R2_RESTORE_MAX_BYTES"] = str(2 * expanded_size(snapshot))
        assert len(sizes) * max(sizes) > 2 * expanded_size(snapshot) >= sum(sizes)
    caplog.set_level(logging.INFO, logger="werkzeug")  # moto's server, in this process: every request R2 saw

    result = sandbox.restore(volume.root, **extra)

    assert result.returncode == 0, result.stderr
    fetched = [m.group(1) for r in caplog.records if (m := re.search(r"GET (\S*/snapshots/\S*)", r.getMessage()))]
    assert any(key.endswith("/town.tar") for key in fetched), fetched
    assert not [key for key in fetched if key.endswith(("/planted.bin", "/99.bundle"))]
    assert "ignoring planted.bin: snapshot" in result.stderr and "not downloaded" in result.stderr
    shutil.rmtree(volume.root)


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
        (lambda o: file_member("../../escape", b"x"), "unpacking work/backend.tar failed"),
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


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (lambda o: link_member("./oldgen/escape", str(o)), "dolt/backend.tar holds a link"),
        (lambda o: link_member("./manifest.old", "manifest"), "dolt/backend.tar holds a link"),
        (lambda o: fifo_member("./pipe"), "dolt/backend.tar holds a device, pipe or socket"),
    ],
)
def test_dolt_archives_are_checked_before_dolt_reads_them(
    sandbox: Sandbox,
    snapshot: Snapshot,
    volume: Volume,
    heartbeats: Heartbeats,
    member: Callable[[Path], tarfile.TarInfo],
    reason: str,
) -> None:
    db = "dolt/backend.tar"
    publish(sandbox, snapshot, objects={db: tar_with(snapshot.objects[db], [member(volume.outside)])})
    refused(sandbox, volume, heartbeats, reason)


@pytest.mark.parametrize("archive", ["town.tar", "dolt/hq.tar", "work/backend.tar"])
def test_a_compressed_archive_is_refused(
    sandbox: Sandbox, snapshot: Snapshot, volume: Volume, heartbeats: Heartbeats, archive: str
) -> None:
    # The manifest's size and checksum are those of the compressed bytes: what it expands to is unknown.
    publish(sandbox, snapshot, objects={archive: gzip.compress(snapshot.objects[archive])})
    refused(sandbox, volume, heartbeats, f"{archive} is compressed")


def test_an_archive_that_expands_beyond_the_volume_is_refused(
    sandbox: Sandbox, snapshot: Snapshot, volume: Volume, heartbeats: Heartbeats
) -> None:
    # 2 KiB in the snapshot, 8 TiB once unpacked: a sparse member claims its size, tar believes it.
    bomb = sparse_bomb(snapshot.objects["town.tar"], "settings/bomb", 8 << 40)
    assert len(bomb) - len(snapshot.objects["town.tar"]) < 4096
    publish(sandbox, snapshot, objects={"town.tar": bomb})
    refused(sandbox, volume, heartbeats, f"town.tar expands to {sum_of_members(bomb)} bytes, more than the volume")


def test_archives_may_expand_to_at_most_r2_restore_max_bytes(
    sandbox: Sandbox, snapshot: Snapshot, volume: Volume, heartbeats: Heartbeats
) -> None:
    # The cap counts the whole snapshot: the clean one fits exactly, one more MiB does not.
    town_tar = tar_with(snapshot.objects["town.tar"], [file_member("settings/big", b"\0" * (1 << 20))])
    publish(sandbox, snapshot, objects={"town.tar": town_tar})
    before = volume.listing()
    result = sandbox.restore(volume.root, R2_RESTORE_MAX_BYTES=str(expanded_size(snapshot)))
    assert result.returncode == 1, result.stderr
    assert "town.tar expands to" in result.stderr and "beyond R2_RESTORE_MAX_BYTES" in result.stderr
    assert volume.listing() == before == []
    [beat] = heartbeats.events("r2_restore")
    assert beat["status"] == "failed" and "R2_RESTORE_MAX_BYTES" in beat["error"]


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
    refused(sandbox, volume, heartbeats, "would write through a link")


@pytest.mark.parametrize("kind", ["repository", "worktree", "submodule"])
def test_a_repository_path_through_a_tracked_symlink_creates_nothing_outside(
    sandbox: Sandbox, gastown: GasTown, volume: Volume, heartbeats: Heartbeats, kind: str
) -> None:
    # A checkout restored first tracks a link to outside the town; a repository (or worktree) listed
    # after it lies "inside" that link. Its directories must not be created, not even for a moment.
    backend = gastown.root / "backend"
    holder = backend / "crew" / "alice" if kind != "worktree" else backend / "polecats" / "nux" / "backend"
    (holder / "escape").symlink_to(volume.outside)
    git_no_hooks(gastown, "add", "escape", cwd=holder)
    git_no_hooks(gastown, "commit", "-q", "-m", "a link to somewhere", cwd=holder)
    sandbox.sync()
    snap = _taken(sandbox)
    through = f"{holder.relative_to(gastown.root)}/escape/made/{kind}"

    def plant(doc: dict) -> None:
        if kind == "repository":
            _backend(doc)["repos"].append({"path": through, "bare": False, "config": [], "worktrees": []})
        elif kind == "submodule":
            # A submodule of alice's clone, at a path under the link her checkout brought back.
            alice = next(r for r in _backend(doc)["repos"] if r["path"] == "backend/crew/alice")
            alice["submodules"] = [{"path": "escape/made/submodule", "name": "made", "bundle": None, "config": []}]
        else:
            bare = next(r for r in _backend(doc)["repos"] if r["bare"])
            bare["worktrees"].append({**_nux(doc), "path": through, "branch": None, "deleted": []})

    publish(sandbox, snap, manifest=plant)
    refused(sandbox, volume, heartbeats, "goes through a link: " + f"{holder.relative_to(gastown.root)}/escape")


# ---- URLs and git settings ---------------------------------------------------------------------------


def refused_and_nothing_ran(
    sandbox: Sandbox,
    snapshot: Snapshot,
    volume: Volume,
    heartbeats: Heartbeats,
    edit: Callable[[dict, Path], None],
    reason: str,
) -> None:
    """A manifest edited by `edit` (which may name a marker file a hostile value would create) is refused
    for `reason`, and nothing it carried ran."""
    marker = volume.outside / "ran"
    publish(sandbox, snapshot, manifest=lambda doc: edit(doc, marker))
    refused(sandbox, volume, heartbeats, reason)
    assert not marker.exists()


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
    refused_and_nothing_ran(sandbox, snapshot, volume, heartbeats, edit, reason)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        # Values a town could plant to have the restore, or the restored town's git, run its code.
        ("core.hookspath", "hooks"),
        ("core.hookspath", "src"),
        ("core.sshcommand", "touch {m}"),
        ("core.pager", "touch {m}"),
        ("core.editor", "touch {m}"),
        ("filter.lfs.smudge", "touch {m}"),
        ("diff.bin.textconv", "touch {m}"),
        ("diff.external", "touch {m}"),
        ("include.path", "{m}"),
        ("includeif.gitdir:/.path", "{m}"),
        ("credential.helper", "!touch {m}"),
        ("remote.origin.uploadpack", "touch {m}"),
        ("remote.origin.receivepack", "touch {m}"),
        ("uploadpack.packobjectshook", "touch {m}"),
        ("alias.st", "!touch {m}"),
    ],
)
def test_only_the_git_settings_the_sync_writes_are_accepted(
    sandbox: Sandbox, snapshot: Snapshot, volume: Volume, heartbeats: Heartbeats, key: str, value: str
) -> None:
    marker = volume.outside / "ran"

    def add(doc: dict) -> None:
        next(r for r in _backend(doc)["repos"] if not r["bare"])["config"].append([key, value.format(m=marker)])

    publish(sandbox, snapshot, manifest=add)
    refused(sandbox, volume, heartbeats, "carries a git setting that is not allowed")
    assert not marker.exists()


def _with(where: Callable[[dict], dict], **fields: object) -> Callable[[dict, Path], None]:
    return lambda doc, m: where(doc).update(fields)


def _alice(doc: dict) -> dict:
    return next(r for r in _backend(doc)["repos"] if r["path"] == "backend/crew/alice")


def _submodule(**fields: object) -> dict:
    return {"path": "vendor/lib", "name": "vendor/lib", "bundle": None, "config": [], **fields}


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        # What format 3 adds is held to the same shapes: Dolt remotes, submodules, stash lists, the
        # town's repository, dogs' worktrees.
        (
            lambda doc, m: doc.update(
                database_remotes={"backend": [{"name": "origin", "url": f"ext::sh -c touch% {m}"}]}
            ),
            "database backend: a Dolt remote is not acceptable",
        ),
        (
            lambda doc, m: doc.update(
                database_remotes={"backend": [{"name": "origin", "url": "https://u:t@x.example/db"}]}
            ),
            "database backend: a Dolt remote is not acceptable",
        ),
        (
            lambda doc, m: doc.update(database_remotes={"../x": [{"name": "origin", "url": "https://x.example/db"}]}),
            "database_remotes names a database the snapshot lacks",
        ),
        (_with(_alice, submodules=[_submodule(path="../../outside")]), "is not inside its working tree"),
        (_with(_alice, submodules=[_submodule(path="vendor/.git/hooks")]), "is not inside its working tree"),
        (_with(_alice, submodules=[_submodule(name="../../../x")]), "has a bad name"),
        (
            _with(_alice, submodules=[_submodule(config=[["core.fsmonitor", "touch {m}"]])]),
            "carries a git setting that is not allowed",
        ),
        (
            _with(_alice, config=[["submodule.lib.url", "ext::sh -c touch% x"]]),
            "carries a git setting that is not allowed",
        ),
        (_with(_alice, config=[["submodule.lib.update", "!touch x"]]), "carries a git setting that is not allowed"),
        (_with(_alice, config=[["user.name", "x\ny"]]), "carries a git setting that is not allowed"),
        (
            _with(_alice, config=[["extensions.worktreeconfig", "yes please"]]),
            "carries a git setting that is not allowed",
        ),
        (_with(_alice, stash=[{"commit": "--output=x", "message": "wip"}]), "has a bad stash list"),
        (_with(_alice, sparse_checkout="a\u0000b"), "has a bad info/sparse-checkout"),
        (
            lambda doc, m: doc.update(town_repo={"bundle": "git/_town/../../latest.json", "config": []}),
            "is not a listed git/_town/N.bundle",
        ),
        (
            lambda doc, m: doc.update(town_repo={"bundle": None, "config": [["core.hookspath", "/tmp"]]}),
            "the town's repository carries a git setting that is not allowed",
        ),
        (lambda doc, m: _nux(doc).update(path="deacon/dogs/alpha/webapp"), "is not inside the rig"),
        (lambda doc, m: _nux(doc).update(path="deacon/dogs/../backend"), "is not inside the rig"),
    ],
)
def test_what_format_3_adds_is_validated_like_the_rest(
    sandbox: Sandbox,
    snapshot: Snapshot,
    volume: Volume,
    heartbeats: Heartbeats,
    edit: Callable[[dict, Path], None],
    reason: str,
) -> None:
    refused_and_nothing_ran(sandbox, snapshot, volume, heartbeats, edit, reason)


# ---- nothing in a snapshot runs as code ------------------------------------------------------------

HOOKS = ("post-checkout", "post-index-change", "reference-transaction", "post-merge", "pre-auto-gc")


def test_hooks_a_snapshot_carries_never_run_during_the_restore(
    sandbox: Sandbox, gastown: GasTown, volume: Volume
) -> None:
    # gastown's hooks path (.githooks) is relative to each working tree, whose content the bundles
    # bring: a crew clone's checkout (reset) and a polecat worktree's (worktree add) would run them.
    ran = volume.outside / "ran"
    hook = f'#!/bin/sh\n{{ echo "$0 in $PWD"; env; }} >>"{ran}"\n'
    backend = gastown.root / "backend"
    for clone in (backend / "crew" / "alice", backend / "polecats" / "nux" / "backend"):
        for name in HOOKS:
            (clone / ".githooks" / name).write_text(hook)
            (clone / ".githooks" / name).chmod(0o755)
        git_no_hooks(gastown, "add", ".githooks", cwd=clone)
        git_no_hooks(gastown, "commit", "-q", "-m", "hooks of our own", cwd=clone)
    sandbox.sync()
    ran.unlink(missing_ok=True)  # the town's own git (the sync's diff) may run them: that is the town's

    result = sandbox.restore(volume.root)

    assert result.returncode == 0, result.stderr
    assert not ran.exists(), ran.read_text()[:3000]
    # The town gets gastown's hooks path back, with the hooks it committed, for its own later use.
    for repo in (volume.root / "backend" / "crew" / "alice", volume.root / "backend" / ".repo.git"):
        hooks_path = subprocess.run(
            ["git", "config", "--get", "core.hooksPath"], cwd=repo, env=gastown.env, capture_output=True, text=True
        )
        assert hooks_path.stdout == ".githooks\n", repo
    assert os.access(volume.root / "backend" / "crew" / "alice" / ".githooks" / "post-checkout", os.X_OK)


def test_tools_that_read_the_snapshot_never_see_the_secrets(
    sandbox: Sandbox, snapshot: Snapshot, volume: Volume
) -> None:
    # git, tar and dolt read what the snapshot holds: each records the environment it was given.
    publish(sandbox, snapshot)
    seen = sandbox.tmp / "environments"
    spies = sandbox.tmp / "spies"
    spies.mkdir()
    for tool in ("git", "tar", "dolt"):
        real = shutil.which(tool, path=sandbox.env["PATH"])
        (spies / tool).write_text(f'#!/bin/sh\n{{ echo "== {tool}"; env; }} >>"{seen}"\nexec "{real}" "$@"\n')
        (spies / tool).chmod(0o755)

    result = sandbox.restore(volume.root, PATH=f"{spies}:{sandbox.env['PATH']}")

    assert result.returncode == 0, result.stderr
    environments = seen.read_text()
    assert {"== git", "== tar", "== dolt"} <= set(environments.splitlines())
    for secret in (sandbox.bucket.secret_key, sandbox.bucket.access_key, sandbox.env["KILO_JWT"]):
        assert secret not in environments
    shutil.rmtree(volume.root)


def test_a_hooks_path_other_than_gastowns_stays_out_of_the_snapshot(sandbox: Sandbox, gastown: GasTown) -> None:
    # The restore accepts gastown's .githooks only: the sync must not write a snapshot it would refuse.
    alice = gastown.root / "backend" / "crew" / "alice"
    gastown.git("config", "core.hooksPath", "my-hooks", cwd=alice)

    result = sandbox.sync()

    [ts] = sandbox.snapshots()
    repo = next(r for r in _backend(sandbox.manifest(ts))["repos"] if r["path"] == "backend/crew/alice")
    assert [k for k, _ in repo["config"] if k == "core.hookspath"] == []
    assert "core.hooksPath 'my-hooks' of" in result.stderr


def test_a_format_2_snapshot_still_restores(sandbox: Sandbox, snapshot: Snapshot, volume: Volume) -> None:
    # Backups taken before format 3 stay restorable: the same town written as the format-2 sync wrote it
    # (no town repository, submodules, stash lists, sparse checkouts or Dolt remotes; a bare latest.json).
    def downgrade(doc: dict) -> None:
        doc["format"] = 2
        for key in ("town_repo", "database_remotes"):
            del doc[key]
        for rig in doc["rigs"]:
            for repo in rig["repos"]:
                for key in ("stash", "sparse_checkout", "submodules"):
                    del repo[key]
                for worktree in repo["worktrees"]:
                    del worktree["submodules"]

    publish(sandbox, snapshot, manifest=downgrade)
    assert set(json.loads(sandbox.bucket.get(f"{sandbox.prefix}/latest.json"))) == {"timestamp", "manifest_sha256"}

    result = sandbox.restore(volume.root)

    assert result.returncode == 0, result.stderr
    nux = volume.root / "backend" / "polecats" / "nux" / "backend"
    assert (nux / ".git").is_file() and (nux / "notes" / "scratch.txt").read_text() == "untracked thoughts\n"
    shutil.rmtree(volume.root)


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
