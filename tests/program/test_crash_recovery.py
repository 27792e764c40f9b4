"""A `pulumi up` killed at any instant is recovered with one documented command (issue 25, "Safe by default").

The raw CLI (scripts/bin/pulumi, as a user runs it after `source scripts/env.sh`) runs `up` until the
emulator has taken one chosen call and is holding its answer back (`FlyEmulator.hold`); then the whole
process group is SIGKILLed: the CLI, the program and the provider host die in the middle of that
call, its effect made and its answer never seen. The stack is left locked, with pending operations.
`silo recover dev` clears both; after it the next `up` converges, a preview shows no change, and the
emulator holds nothing that is not in the state (nothing orphaned, nothing duplicated).

The kill lands in a silo's first `up` (its first secrets, a machine create) and in the `up` that gives a
deployed silo its first town (its volume's create, its machine's create): there, the registry, Fly and
Cloudflare end up holding one of everything for the town, the ids the state holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.domain.naming import is_owner_secret
from emulators.fly import FlyEmulator
from engine.workspace import CLI_STACK_FILE_KEYS, program_project
from tests.fixtures.program import STACK, control_env
from tests.fixtures.town_world import (
    SID,
    TOWN_SECRETS,
    World,
    assert_converged,
    assert_no_duplicates,
    registry_rows,
    silo_config,
    town_objects,
)

pytestmark = pytest.mark.engine

REPO_ROOT = Path(__file__).resolve().parents[2]
WRAPPER = REPO_ROOT / "scripts" / "bin" / "pulumi"
SILO = REPO_ROOT / "venv" / "bin" / "silo"
CONFIG = {
    "silo:client": "acme",
    "silo:app": "erp",
    "silo:flyOrg": "acme-erp",
    "silo:region": "yul",
    "silo:siteUrl": "https://silo-acme-erp--prod.netlify.app",
    "silo:studio": "false",
}


class RawCli:
    """The project as a user has it, in a directory of its own: the wrapper with its own state, or with
    `state`, the state directory (backend/ and passphrase) of stacks a StackProgram made; `env` is added
    to the environment (the registry and Cloudflare of a silo with towns)."""

    def __init__(
        self, root: Path, emulator: FlyEmulator, *, state: Path | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        # This repository's program and virtualenv, run from another directory.
        self.project = program_project(root / "project")
        if state is None:
            state = root
            (root / "passphrase").write_text("crash-test-passphrase\n")
            (root / "backend").mkdir()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "FLY_", "SILO_"))},
            "PULUMI_BACKEND_URL": (state / "backend").resolve().as_uri(),
            "PULUMI_HOME": str(root / "home"),
            "PULUMI_CONFIG_PASSPHRASE_FILE": str(state / "passphrase"),
            "FLY_API_HOSTNAME": emulator.url,
            **(env or {}),
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(WRAPPER), *args], cwd=self.project, env=self.env, capture_output=True, text=True, timeout=600
        )
        if check:
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    def silo(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SILO), *args], cwd=self.project, env=self.env, capture_output=True, text=True, timeout=600
        )

    def init(self, config: dict[str, Any]) -> None:
        self.run("stack", "init", "dev")
        stack_file = self.project / "Pulumi.dev.yaml"
        doc = yaml.safe_load(stack_file.read_text()) or {}
        doc["config"] = {**(doc.get("config") or {}), **config}
        stack_file.write_text(yaml.safe_dump(doc))

    def take_over(self, stack: str, stack_file: Path, config: Mapping[str, Any]) -> None:
        """Run on `stack`, which exists in the backend: its stack file (`stack_file`, whose passphrase salt
        the CLI needs) with `config` as its config."""
        old = yaml.safe_load(stack_file.read_text()) or {}
        doc = {key: value for key, value in old.items() if key in CLI_STACK_FILE_KEYS}
        doc["config"] = dict(config)
        (self.project / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump(doc))
        self.run("stack", "select", stack)

    def state(self) -> dict[str, Any]:
        return json.loads(self.run("stack", "export").stdout)["deployment"]


@pytest.fixture
def emulator() -> Iterator[FlyEmulator]:
    fly = FlyEmulator()
    fly.start()
    try:
        yield fly
    finally:
        fly.release()
        fly.stop()


def kill_when_held(cli: RawCli, emulator: FlyEmulator, *args: str, also: Callable[[], bool] = lambda: True) -> None:
    """Run the wrapper with ARGS until the emulator holds a call (and `also()` is true), then SIGKILL
    everything it started."""
    proc = subprocess.Popen(
        [str(WRAPPER), *args],
        cwd=cli.project,
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the CLI and every plugin it starts
    )
    deadline = time.monotonic() + 300
    while not (emulator.held() and also()):
        assert proc.poll() is None, "the run ended before reaching the call to crash in"
        assert time.monotonic() < deadline, "the run never reached the call to crash in"
        time.sleep(0.05)
    # The plugins the CLI started (the wrapper execs it: its pid is the CLI's), each in a process group
    # of its own, which the kill below does not reach.
    plugins = children(proc.pid)
    assert plugins, "the CLI had started no plugin"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    emulator.release()
    # Nothing of the run outlives it: each plugin leaves once its engine is gone (engine/orphans.py).
    deadline = time.monotonic() + 30
    while (alive := [pid for pid in plugins if running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"plugins outlived the killed CLI: {alive}"


def children(pid: int) -> list[int]:
    listed = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False)
    return [int(word) for word in listed.stdout.split()]


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited child its parent has not reaped yet)."""
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True, check=False)
    return state.returncode == 0 and not state.stdout.strip().startswith("Z")


def recover_and_converge(cli: RawCli, emulator: FlyEmulator) -> str:
    """After a killed `up` of stack dev: refused while locked, `silo recover dev`, then an `up` that
    converges and a preview with nothing to do, on the engine's side and on Fly's. Returns what
    `silo recover` said."""
    # What the crash left: a lock that refuses every update, and the steps that were in flight. When the
    # kill lands while the file backend rewrites a blob's metadata file (gocloud fileblob truncates it
    # first), that file is left empty and the CLI cannot read the stack at all until `silo recover`.
    locked = cli.run("up", "--yes", "--skip-preview", check=False)
    said = locked.stdout + locked.stderr
    assert locked.returncode != 0 and ("locked" in said or "failed to load checkpoint: EOF" in said), said
    if "locked" in said:
        assert cli.state().get("pending_operations")

    recovered = cli.silo("recover", "dev")
    assert recovered.returncode == 0, recovered.stderr
    assert "removed the stale lock" in recovered.stdout and "dropped the pending" in recovered.stdout

    cli.run("up", "--yes", "--skip-preview")
    emulator.clear_calls()
    preview = cli.run("preview", "--expect-no-changes")
    assert "unchanged" in preview.stdout
    assert [c for c in emulator.calls() if c["mutating"]] == [], "a preview changed something on Fly"
    return recovered.stdout


def assert_nothing_orphaned(cli: RawCli, emulator: FlyEmulator) -> None:
    """Every Fly object in the emulator is in the state, once (and the other way round)."""
    state = cli.state()
    assert not state.get("pending_operations")
    resources = state["resources"]

    def ids(kind: str) -> list[str]:
        return sorted(r["id"] for r in resources if r["type"] == f"pulumi-python:dynamic/fly:{kind}")

    snap = emulator.snapshot()
    assert ids("App") == sorted(snap["apps"])
    assert ids("Machine") == sorted(snap["machines"])
    assert ids("Volume") == sorted(snap["volumes"])
    assert ids("IpAssignment") == sorted(ip["ip"] for ips in snap["ips"].values() for ip in ips)
    managed = {
        r["id"]: sorted(r["outputs"]["names"]) for r in resources if r["type"] == "pulumi-python:dynamic/fly:Secrets"
    }
    live = {app: sorted(k for k in names if not is_owner_secret(k)) for app, names in snap["secrets"].items()}
    assert managed == {app: names for app, names in live.items() if names}


@pytest.mark.parametrize(
    ("method", "route", "nth"),
    [
        # The first secrets of the silo, made from the generated passwords, reach Fly; the run dies.
        pytest.param("POST", "/v1/apps/{app}/secrets", 1, id="first-secrets"),
        # A machine is created on Fly; the run dies before it learns the machine's id.
        pytest.param("POST", "/v1/apps/{app}/machines", 3, id="mid-machine-create"),
    ],
)
def test_a_killed_up_is_recovered_with_silo_recover(
    method: str, route: str, nth: int, tmp_path: Path, emulator: FlyEmulator
) -> None:
    cli = RawCli(tmp_path, emulator)
    cli.init(CONFIG)
    emulator.hold(method, route, nth=nth)

    kill_when_held(cli, emulator, "up", "--yes", "--skip-preview")

    recover_and_converge(cli, emulator)
    assert_nothing_orphaned(cli, emulator)


@pytest.mark.db
@pytest.mark.parametrize(
    ("route", "made", "machines"),
    [
        # The town's registry row, app and R2 credentials exist; its volume is made on Fly and the run dies
        # before it learns the volume's id, so nothing of the machine exists yet.
        pytest.param("/v1/apps/{app}/volumes", "Volume", 0, id="mid-town-volume-create"),
        # The town's machine is made on Fly, on its volume, and the run dies before it learns the machine's
        # id: the boot gate and the registry's record of the Fly ids never ran.
        pytest.param("/v1/apps/{app}/machines", "Machine", 1, id="mid-town-machine-create"),
    ],
)
def test_an_up_killed_while_it_creates_a_town_is_recovered_with_silo_recover(
    route: str, made: str, machines: int, tmp_path: Path, town_world: World
) -> None:
    # A deployed silo (and the control stack) gets its first town; only the town's objects are created, so
    # the first create of `route` is the town's.
    world = town_world
    cli = RawCli(tmp_path / "raw", world.fly, state=world.root / "state", env=control_env(world.dsn, world.cf))
    cli.take_over(STACK, world.root / "project" / f"Pulumi.{STACK}.yaml", silo_config())
    world.fly.hold("POST", route)

    # Killed once the town's secrets are on Fly too: they carry its R2 credentials, so those are in the
    # state and the kill cannot fall into their mint (a lost mint is test_program_town_faults' case).
    kill_when_held(
        cli, world.fly, "up", "--yes", "--skip-preview", also=lambda: town_objects(world.fly)["secrets"] >= TOWN_SECRETS
    )

    # The instant of the kill: the row (still `provisioning`, no Fly ids) and the app exist, the volume too,
    # the machine only when the kill came in its create.
    [row] = registry_rows(world.dsn)
    assert (row["status"], row["machine"], row["volume"], row["destroyed"]) == ("provisioning", None, None, False)
    leftover = assert_no_duplicates(world.fly)
    assert leftover["app"] and len(leftover["volumes"]) == 1 and len(leftover["machines"]) == machines, leftover

    recovered = recover_and_converge(cli, world.fly)
    # The state never learnt the id of what the held call made: its create was pending, and was dropped.
    assert f"creating of urn:pulumi:{STACK}::silo::silo:town:TownSandbox$pulumi-python:dynamic/fly:{made}::" in (
        recovered
    ), recovered

    # The town runs on the volume and machine the killed run made (adopted, not made again), with one
    # registry row carrying their ids, and the state and Fly agree both ways.
    assert_converged(world, leftover, check_preview=False)
    # Cloudflare issued the town one set of R2 credentials, the one the state holds: temporary credentials
    # cannot be listed or revoked, so one minted again would be live and unknown until it lapsed.
    [row] = registry_rows(world.dsn)
    issued = [
        c["accessKeyId"] for c in world.cf.snapshot()["temp_credentials"] if c["prefixes"] == [f"gastown/{row['id']}/"]
    ]
    assert issued == [world.program.resource(f"{SID}-r2-credentials").outputs["access_key_id"]]


def test_recover_repairs_a_metadata_file_a_kill_left_empty(tmp_path: Path, emulator: FlyEmulator) -> None:
    # gocloud's fileblob truncates `<blob>.attrs` before writing it: a kill at that instant leaves it empty,
    # and every command on the stack then fails. `silo recover` removes it (a missing one means "no metadata").
    cli = RawCli(tmp_path, emulator)
    cli.init(CONFIG)
    attrs = list((tmp_path / "backend" / ".pulumi" / "stacks").rglob("dev.json.attrs"))
    assert attrs, "the file backend keeps a metadata file beside the checkpoint"
    attrs[0].write_text("")
    broken = cli.run("preview", check=False)
    assert broken.returncode != 0 and "failed to load checkpoint: EOF" in broken.stderr

    recovered = cli.silo("recover", "dev")
    assert recovered.returncode == 0, recovered.stderr
    assert "removed the unreadable metadata file" in recovered.stdout
    assert not attrs[0].exists()
    cli.run("preview")


def test_recover_refuses_while_the_run_holding_the_lock_still_goes(tmp_path: Path, emulator: FlyEmulator) -> None:
    cli = RawCli(tmp_path, emulator)
    cli.init(CONFIG)
    emulator.hold("POST", "/v1/apps/{app}/machines")
    proc = subprocess.Popen(
        [str(WRAPPER), "up", "--yes", "--skip-preview"],
        cwd=cli.project,
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while not emulator.held():
            assert proc.poll() is None
            time.sleep(0.05)
        refused = cli.silo("recover", "dev")
        assert refused.returncode != 0
        assert "still going" in refused.stderr and "Traceback" not in refused.stderr
    finally:
        emulator.release()
        assert proc.wait(timeout=600) == 0  # the live run finishes untouched
    assert_nothing_orphaned(cli, emulator)
