"""The README's main job, `make up`, on a fresh copy of the repository with no Fly token anywhere: it
starts the local Fly emulator itself and runs the real `pulumi up` (the CLI `make engine` built) on a
file backend under `.silo/`, with a generated passphrase; a second run changes nothing, a preview shows
no changes, a refresh finds no drift, and destroy keeps only the data apps. No run reaches the network:
every HTTP(S) request that is not to loopback goes to a proxy that only counts them."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.providers.fly.client import FlyClient
from components.providers.fly.settings import FlySettings
from policy.rules import RULES

pytestmark = pytest.mark.engine

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("pg", "rest", "auth", "storage", "meta", "studio", "kong")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CountingProxy:
    """Accepts connections and drops them, counting: where HTTP(S)_PROXY points, any attempt to reach
    the network (an update check, a plugin download) shows up here."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.connections = 0
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()


@pytest.fixture
def fresh_checkout(tmp_path: Path) -> Iterator[Path]:
    """The tracked files only (what a clone has), with this test run's virtualenv as its venv/ and the
    engine this test run built as its .engine/ (so `make up` finds both already made)."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    root = tmp_path / "silo"
    for name in filter(None, files):
        source, target = REPO_ROOT / name, root / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)
            # The clone's files are no newer than the virtualenv made from them (make would rebuild it).
            os.utime(target, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns))
    (root / "venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    (root / ".engine").symlink_to(REPO_ROOT / ".engine", target_is_directory=True)
    yield root
    pid_file = root / ".silo" / "fly-emulator.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


def test_make_up_runs_the_real_cli_on_the_emulator_and_a_second_up_changes_nothing(fresh_checkout: Path) -> None:
    port = _free_port()
    proxy = CountingProxy()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLY_", "PULUMI_", "CLOUDFLARE_")) and k not in ("SILO_REGISTRY_DSN", "MAKEFLAGS")
    }
    env.update(
        SILO_EMULATOR_PORT=str(port),
        HTTP_PROXY=proxy.url,
        HTTPS_PROXY=proxy.url,
        http_proxy=proxy.url,
        https_proxy=proxy.url,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )

    def make(target: str, *variables: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["make", "--no-print-directory", target, *variables], cwd=fresh_checkout, env=env, capture_output=True,
            text=True, timeout=900,
        )  # fmt: skip
        # Every run says which Fly it targets (issue 25: "know where you are").
        target_line = f"fly: the local Fly emulator at http://127.0.0.1:{port} (no Fly token configured"
        assert target_line in done.stderr, done.stderr[-2000:]
        return done

    up = make("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"starting the local Fly emulator on 127.0.0.1:{port}" in up.stderr
    # ... and so do the stack's outputs, though its URLs look like fly.dev ones.
    assert re.search(rf'fly_target\s*: "the local Fly emulator at http://127\.0\.0\.1:{port} ', up.stdout)
    # The real CLI's summary and outputs: secrets masked, the URL in the clear.
    assert re.search(r"Resources:\s+\+ 40 created", up.stdout), up.stdout[-2000:]
    assert re.search(r"Duration: \d+", up.stdout)
    assert re.search(r'supabase_url\s*: "https://devenv-acme-erp-kong\.fly\.dev"', up.stdout)
    assert re.search(r"service_role_key\s*: \[secret\]", up.stdout)
    # A file-backend checkpoint under .silo/, its secrets under a generated passphrase only its owner reads.
    checkpoint = fresh_checkout / ".silo" / "backend" / ".pulumi" / "stacks" / "silo" / "dev.json"
    assert checkpoint.exists()
    passphrase = fresh_checkout / ".silo" / "passphrase"
    assert stat.S_IMODE(passphrase.stat().st_mode) == 0o600 and len(passphrase.read_text().strip()) >= 32
    assert str(passphrase) in up.stdout
    with FlyClient(FlySettings(f"http://127.0.0.1:{port}", "local", "env")) as fly:
        for service in SERVICES:
            machines = fly.list_machines(f"devenv-acme-erp-{service}")
            assert [m["state"] for m in machines] == ["started"], service

    again = make("up")  # the emulator from the first run is reused, and the silo is unchanged
    assert again.returncode == 0, again.stdout + again.stderr
    assert "starting the local Fly emulator" not in again.stdout + again.stderr
    assert re.search(r"Resources:\s+40 unchanged", again.stdout), again.stdout[-1500:]

    # `silo status` reads this checkout's emulator on SILO_EMULATOR_PORT, and refuses another process there.
    def status(port_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "components.cli.main", "status", "Pulumi.dev.yaml"], cwd=fresh_checkout,
            env={**env, "SILO_EMULATOR_PORT": str(port_)}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    ours = status(port)
    assert ours.returncode == 0 and "devenv-acme-erp-kong" in ours.stdout, ours.stdout + ours.stderr
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        foreign = status(other.getsockname()[1])
    assert (
        foreign.returncode == 2 and "is served by another process, not this checkout's Fly emulator" in foreign.stderr
    )
    assert "Traceback" not in foreign.stderr

    preview = make("preview", "VERBOSE=1")
    assert preview.returncode == 0, preview.stdout + preview.stderr
    assert re.search(r"Resources:\s+40 unchanged", preview.stdout), preview.stdout[-1500:]
    # The guardrails ran with up and preview: their rules are listed first, then the CLI reports the pack.
    # Quiet by default: `make up` names the pack in one line; VERBOSE=1 lists its rules.
    assert all(not re.search(rf"^  (mandatory|advisory) +{r.name} ", up.stdout, re.M) for r in RULES)
    assert "(`make up VERBOSE=1` lists them)" in up.stdout
    assert all(re.search(rf"^  (mandatory|advisory) +{r.name} ", preview.stdout, re.M) for r in RULES)
    # Each warning once: an image deployed by tag is the advisory rule's to report, once per machine.
    assert again.stdout.count("storage-api:v1.44.2 by tag") == 1, again.stdout
    for run in (up, preview):
        assert f"policy pack silo-guardrails (policy/, {len(RULES)} rules" in run.stdout, run.stdout[:2000]
        # `up` ends with the CLI's "Policies:" block, `preview --diff` with its "Policy Packs run:" table.
        ran = r"silo-guardrails(@v1\.0\.0 \(local: \S*|\|local\|\S*)policy/run-policy-pack(\)|\s+1\.0\.0)"
        assert re.search(ran, run.stdout), run.stdout[-2000:]
    refresh = make("refresh")
    assert refresh.returncode == 0, refresh.stdout + refresh.stderr
    assert re.search(r"Resources:\s+40 unchanged", refresh.stdout), refresh.stdout[-1500:]

    destroyed = make("destroy")
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    with FlyClient(FlySettings(f"http://127.0.0.1:{port}", "local", "env")) as fly:
        kept = {f"devenv-acme-erp-{s}" for s in SERVICES if fly.get_app(f"devenv-acme-erp-{s}") is not None}
    assert kept == {"devenv-acme-erp-pg", "devenv-acme-erp-storage"}  # data apps are retained by default
    # The CLI counts them among the deleted; the run names them after its summary.
    named = re.search(r"^Retained, not deleted \(4;.*$", destroyed.stdout, re.M)
    assert named, destroyed.stdout[-2000:]
    assert all(f"app devenv-acme-erp-{s}" in named.group(0) for s in ("pg", "storage"))
    assert proxy.connections == 0, "a run tried to reach the network"
