"""engine/build.sh on a fake `go` (issue 25 item 6): progress while it downloads and compiles, a failed
compile fails the script with go's errors shown, a second run is a quiet no-op, and a `pulumi` on PATH
of the pinned version is copied instead of compiled.

The fake `go` prints what the real one does (`go mod download -x`'s `# get URL.zip: 200 OK` lines,
`go list -deps`'s stale packages, `go build -v`'s import paths), a little at a time; nothing is compiled
but the fake `pulumi` (a few lines of Go, built once with the real toolchain).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSION = "v3.274.1"
# A go.mod with the pin build.sh reads, two require forms, and one module already in the module cache
# (its path has capitals: the cache stores it case-escaped).
GO_MOD = f"""module silo.local/engine/cli

go 1.26.6

require (
	github.com/BurntSushi/toml v1.4.0 // indirect
	// a comment line
	github.com/pulumi/pulumi/pkg/v3 {VERSION}
	example.com/b v1.0.0
)

require example.com/c v1.2.0
"""
FAKE_GO = r"""#!/usr/bin/env bash
echo "go $*" >>"$FAKE_GO_LOG"
case "$1 $2" in
  "env GOMODCACHE") echo "$FAKE_MODCACHE" ;;
  "env GOPROXY") echo "https://proxy.example" ;;
  "mod download")
    url=https://proxy.example/example.com
    if [ -n "${FAKE_DOWNLOAD_FAIL:-}" ]; then
      echo "# get $url/b/@v/v1.0.0.zip" >&2
      echo "# get $url/b/@v/v1.0.0.zip: 403 Forbidden (0.010s)" >&2
      echo "go: example.com/b@v1.0.0: reading $url/b/@v/v1.0.0.zip: 403 Forbidden" >&2
      exit 1
    fi
    for i in $(seq "$FAKE_MODULES"); do
      echo "# get $url/m$i/@v/v1.0.0.mod: 200 OK (0.010s)" >&2
      echo "# get $url/m$i/@v/v1.0.0.zip" >&2
      sleep "$FAKE_MODULE_DELAY"
      echo "# get $url/m$i/@v/v1.0.0.zip: 200 OK (0.050s)" >&2
    done ;;
  "list "*)
    for _ in $(seq "$FAKE_PACKAGES"); do echo stale; echo; done ;;
  "build "*)
    out="" prev=""
    for arg; do [ "$prev" = -o ] && out=$arg; prev=$arg; done
    for i in $(seq "$FAKE_PACKAGES"); do
      echo "example.com/p$i/sub_pkg.v2" >&2
      sleep "$FAKE_DELAY"
      if [ "$i" = "${FAKE_FAIL_AT:-}" ]; then
        printf '# example.com/p%s/sub_pkg.v2\np.go:3:9: undefined: frobnicate\n' "$i" >&2
        exit 1
      fi
    done
    printf '#!/bin/sh\necho %s\n' "$FAKE_BUILT_VERSION" >"$out"
    chmod +x "$out" ;;
  *) echo "fake go: unexpected: $*" >&2; exit 3 ;;
esac
"""
FAKE_PULUMI_GO = """package main

import (
	"fmt"
	"os"
)

var version = "unset"

func main() {
	if len(os.Args) == 2 && os.Args[1] == "version" {
		fmt.Println(version)
		return
	}
	os.Exit(2)
}
"""
COLD_TIME = "(a cold build takes 9-19 min on 2 cores)"
PROGRESS_BUILD = re.compile(
    rf"^engine: compiling the pulumi CLI {VERSION}: (\d+)/120 packages, \d+ s {re.escape(COLD_TIME)}$"
)
PROGRESS_DOWNLOAD = re.compile(rf"^engine: downloading Go modules for pulumi {VERSION}: (\d+)/(\d+) modules, \d+ s$")


@pytest.fixture(scope="module")
def fake_pulumi_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real executable (not a script: build.sh will not copy a script) that prints what -X sets."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("the Go toolchain builds the fake pulumi (make test needs Go anyway)")
    src = tmp_path_factory.mktemp("fake-pulumi") / "main.go"
    src.write_text(FAKE_PULUMI_GO)
    return src


def fake_pulumi(src: Path, directory: Path, version: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / "pulumi"
    subprocess.run(
        [shutil.which("go") or "go", "build", "-ldflags", f"-X main.version={version}", "-o", str(out), str(src)],
        cwd=src.parent,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """engine/build.sh and its launchers in a checkout of their own, with the go.mod above."""
    root = tmp_path / "checkout"
    (root / "engine" / "cli").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "engine" / "build.sh", root / "engine" / "build.sh")
    shutil.copytree(REPO_ROOT / "engine" / "bin", root / "engine" / "bin")
    (root / "engine" / "cli" / "go.mod").write_text(GO_MOD)
    (root / "engine" / "cli" / "go.sum").write_text("")
    cached = tmp_path / "modcache" / "cache" / "download" / "github.com" / "!burnt!sushi" / "toml" / "@v"
    cached.mkdir(parents=True)
    (cached / "v1.4.0.zip").write_text("")
    fake_bin = tmp_path / "fake-go"
    fake_bin.mkdir()
    (fake_bin / "go").write_text(FAKE_GO)
    (fake_bin / "go").chmod(0o755)
    return root


def run_build(root: Path, path: list[Path] | None = None, **fake: str) -> subprocess.CompletedProcess[str]:
    tmp = root.parent
    env = {
        "PATH": os.pathsep.join([*(str(p) for p in (path or [])), str(tmp / "fake-go"), "/usr/bin", "/bin"]),
        "HOME": str(tmp),
        "SILO_ENGINE_PROGRESS_EVERY": "1",
        "FAKE_GO_LOG": str(tmp / "go.log"),
        "FAKE_MODCACHE": str(tmp / "modcache"),
        "FAKE_MODULES": "3",
        "FAKE_PACKAGES": "120",
        "FAKE_DELAY": "0",
        "FAKE_MODULE_DELAY": "0",
        "FAKE_BUILT_VERSION": VERSION,
        **fake,
    }
    return subprocess.run(
        [str(root / "engine" / "build.sh")], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def go_calls(root: Path) -> list[str]:
    log = root.parent / "go.log"
    return log.read_text().splitlines() if log.exists() else []


def leftovers(root: Path) -> list[str]:
    engine = root / ".engine"
    return sorted(p.name for p in engine.iterdir() if ".tmp." in p.name) if engine.exists() else []


def test_progress_while_downloading_and_compiling_then_a_quiet_no_op(checkout: Path) -> None:
    result = run_build(checkout, FAKE_MODULE_DELAY="0.7", FAKE_DELAY="0.04")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()

    # Download: modules fetched of the three go.mod requires that are not in the cache (toml is).
    downloads = [PROGRESS_DOWNLOAD.match(line) for line in lines]
    counts = [(int(m[1]), int(m[2])) for m in downloads if m]
    assert counts, result.stdout
    assert all(total == 3 and 0 < done <= 3 for done, total in counts), counts
    assert [done for done, _ in counts] == sorted(done for done, _ in counts)

    # Compile: packages compiled of the 120 stale ones, at least every second, counting up.
    built = [int(m[1]) for m in map(PROGRESS_BUILD.match, lines) if m]
    assert len(built) >= 2, result.stdout
    assert built == sorted(built) and built[0] > 0 and built[-1] <= 120
    hints = [line for line in lines if "To skip it, put the official pulumi" in line]
    assert hints == [
        f"engine: 120 packages to compile; a cold build takes 9-19 min on 2 cores. To skip it, put the official "
        f"pulumi {VERSION} on PATH (e.g. curl -fsSL https://get.pulumi.com | sh -s -- --version 3.274.1) and run "
        "make engine again: it is copied instead (docs/engine.md)"
    ]
    assert lines.index(hints[0]) < lines.index(next(line for line in lines if PROGRESS_BUILD.match(line)))
    assert re.match(rf"^engine: pulumi {VERSION} built in \d+ s \(.*/\.engine/pulumi-{VERSION}-\w+\)$", lines[-1])
    assert result.stderr == ""  # every line go printed was counted, none passed on as an error
    current = checkout / ".engine" / "current" / "bin"
    assert sorted(p.name for p in current.iterdir()) == [
        "pulumi",
        "pulumi-language-python",
        "pulumi-resource-pulumi-python",
    ]
    assert leftovers(checkout) == []

    calls = len(go_calls(checkout))
    again = run_build(checkout, FAKE_DELAY="0.04")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"engine: pulumi {VERSION} is built ({(current / '..').resolve()})"]
    assert again.stderr == ""
    assert len(go_calls(checkout)) == calls  # go not run at all


def test_a_failed_compile_fails_with_gos_errors(checkout: Path) -> None:
    result = run_build(checkout, FAKE_FAIL_AT="40", FAKE_DELAY="0.03")
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [
        "# example.com/p40/sub_pkg.v2",
        "p.go:3:9: undefined: frobnicate",
        f"engine: compiling the pulumi CLI {VERSION} failed (go build's errors above)",
    ]
    assert any(PROGRESS_BUILD.match(line) for line in result.stdout.splitlines()), result.stdout
    assert not (checkout / ".engine" / "current").exists()
    assert leftovers(checkout) == []


def test_a_failed_download_says_why_in_one_line(checkout: Path) -> None:
    result = run_build(checkout, FAKE_DOWNLOAD_FAIL="1")
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [
        "engine: cannot download the Go modules from https://proxy.example: go: example.com/b@v1.0.0: reading "
        "https://proxy.example/example.com/b/@v/v1.0.0.zip: 403 Forbidden"
    ]
    assert not any(call.startswith("go build") for call in go_calls(checkout))


def test_the_pinned_pulumi_on_path_is_copied_not_compiled(checkout: Path, fake_pulumi_source: Path) -> None:
    on_path = fake_pulumi(fake_pulumi_source, checkout.parent / "official" / "bin", VERSION)
    # The project's own wrapper (scripts/bin/pulumi) comes first on PATH after `source scripts/env.sh`:
    # it is skipped even when it answers with the pinned version.
    wrapper = fake_pulumi(fake_pulumi_source, checkout / "scripts" / "bin", VERSION)
    result = run_build(checkout, path=[wrapper.parent, on_path.parent], FAKE_DELAY="0.04")
    assert result.returncode == 0, result.stderr
    built = checkout / ".engine" / "current"
    assert result.stdout.splitlines() == [
        f"engine: using the pulumi {VERSION} on PATH ({on_path}), copied to {built.resolve()}: nothing to compile"
    ]
    assert go_calls(checkout) == []
    copy = built / "bin" / "pulumi"
    assert not copy.is_symlink() and copy.read_bytes() == on_path.read_bytes()
    assert (built / "bin" / "pulumi-resource-pulumi-python").read_bytes() == (
        REPO_ROOT / "engine" / "bin" / "pulumi-resource-pulumi-python"
    ).read_bytes()
    assert (built / "bin" / "pulumi-language-python").exists()

    # Built now: later runs are the usual no-op, with or without that pulumi on PATH.
    again = run_build(checkout)
    assert again.stdout.splitlines() == [
        f"engine: pulumi {VERSION} is built ({built.resolve()}, copied from {on_path})"
    ]
    assert go_calls(checkout) == []


def test_another_version_or_a_script_on_path_is_compiled_instead(checkout: Path, fake_pulumi_source: Path) -> None:
    older = fake_pulumi(fake_pulumi_source, checkout.parent / "older" / "bin", "v3.200.0")
    result = run_build(checkout, path=[older.parent])
    assert result.returncode == 0, result.stderr
    assert any(call.startswith("go build") for call in go_calls(checkout))
    assert f"; the pulumi on PATH ({older}) is v3.200.0, not the pinned {VERSION}" in result.stdout
    assert f"engine: using the pulumi {VERSION} on PATH" not in result.stdout

    shutil.rmtree(checkout / ".engine")
    shim = checkout.parent / "shims" / "pulumi"
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\necho {VERSION}\n")
    shim.chmod(0o755)
    result = run_build(checkout, path=[shim.parent])
    assert result.returncode == 0, result.stderr
    assert (
        f"; the pulumi on PATH ({shim}) is a script (a version manager's shim?), not the CLI itself: put the "
        "directory of the pulumi binary first on PATH"
    ) in result.stdout
    assert f"engine: using the pulumi {VERSION} on PATH" not in result.stdout


def test_no_go_and_no_pulumi_says_both_ways(checkout: Path, tmp_path: Path) -> None:
    (tmp_path / "fake-go" / "go").unlink()
    result = run_build(checkout)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "engine: the Go toolchain is missing (go not on PATH); install Go >= 1.26.6 to build the Pulumi CLI, "
        f"or put the official pulumi {VERSION} on PATH"
    ]
