"""State a team shares: the real CLI's PostgreSQL and S3 (R2) backends, through the real program (issue 23).

For each backend (PostgreSQL on the test server, S3 on moto reached as R2 is) one deployment is made and
shared by the tests of that backend, in order: the control stack and a silo with a town that reads the
control stack through a StackReference, then
- preview, refresh and the stack reference, reading only;
- two `up`s of one stack at once: the second is refused by the backend's lock with the CLI's message
  (and one line from `silo fleet`), `silo recover` refuses the live run's lock; then the first is killed
  mid-update (SIGKILL), `silo recover` removes its lock (read from the backend: PostgreSQL row, S3
  object) and pending operations, and `up` converges with nothing orphaned;
- destroy.
Then the documented migration from a file backend to PostgreSQL: `pulumi stack export`, `stack init` and
`stack import`, the secrets still readable, a no-change preview.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from emulators.cloudflare import CloudflareEmulator
from emulators.fly import FlyEmulator
from tests.fixtures.cloudflare import CF_ACCOUNT_ID, CF_PARENT_ACCESS_KEY_ID, CF_TOKEN
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.team import StateBackend, TeamCli, postgres_state, s3_state
from tests.program.test_crash_recovery import assert_nothing_orphaned

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.engine, pytest.mark.db]

SILO = {
    "silo:client": "team",
    "silo:app": "erp",
    "silo:flyOrg": "team",
    "silo:siteUrl": "https://team-erp.example",
    "silo:studio": "false",
    "silo:controlStack": "organization/silo/control",
    "silo:towns": [{"name": "alpha", "user": "user-1", "rigs": []}],
}
CONTROL = {"silo:kind": "control", "silo:backupBucket": "team-backups"}


@dataclass
class Deployment:
    backend: StateBackend
    cli: TeamCli
    emulator: FlyEmulator


@pytest.fixture(
    scope="module",
    params=[
        # One worker per backend (make test runs --dist loadgroup): the tests of a backend share its deployment.
        pytest.param("postgres", marks=pytest.mark.xdist_group("team-state-postgres")),
        pytest.param("s3", marks=pytest.mark.xdist_group("team-state-s3")),
    ],
)
def deployment(
    request: pytest.FixtureRequest,
    postgres_server: PostgresServer,
    moto_s3_endpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """The control stack and a silo with a town, made with the raw CLI on the backend."""
    backend = postgres_state(postgres_server) if request.param == "postgres" else s3_state(moto_s3_endpoint)
    fly, cloudflare = FlyEmulator(), CloudflareEmulator(token=CF_TOKEN)
    fly.start()
    cloudflare.start()
    registry = postgres_server.dsn(postgres_server.create_database())
    env = {
        **backend.env,
        "FLY_API_HOSTNAME": fly.url,
        "SILO_REGISTRY_DSN": registry,
        "CLOUDFLARE_API_URL": cloudflare.url,
        "CLOUDFLARE_API_TOKEN": CF_TOKEN,
        "CLOUDFLARE_ACCOUNT_ID": CF_ACCOUNT_ID,
        "CLOUDFLARE_R2_PARENT_ACCESS_KEY_ID": CF_PARENT_ACCESS_KEY_ID,
    }
    cli = TeamCli(tmp_path_factory.mktemp(f"team-{request.param}"), backend.url, env)
    try:
        cli.init("control", CONTROL)
        cli.run("up", "--yes", "--skip-preview", "--stack", "control")
        cli.init("dev", SILO)
        cli.run("up", "--yes", "--skip-preview", "--stack", "dev")
        yield Deployment(backend, cli, fly)
    finally:
        fly.release()
        fly.stop()
        cloudflare.stop()


def test_state_preview_refresh_and_stack_reference_on_the_shared_backend(deployment: Deployment) -> None:
    cli, backend = deployment.cli, deployment.backend
    # The state is in the backend (keys under the URL's path: the database name for PostgreSQL), not on disk.
    keys = list(backend.blobs())
    assert [k for k in keys if k.endswith(".pulumi/stacks/silo/dev.json")], keys
    assert [k for k in keys if k.endswith(".pulumi/stacks/silo/control.json")], keys
    listed = cli.run("stack", "ls")
    assert "control" in listed.stdout and "dev" in listed.stdout
    # No secret in plain text in what the backend stores.
    secrets = {**cli.secrets("dev"), **{f"control {k}": v for k, v in cli.secrets("control").items()}}
    assert secrets
    stored = backend.text()
    assert [label for label, value in secrets.items() if value in stored] == []

    for stack in ("control", "dev"):
        preview = cli.run("preview", "--expect-no-changes", "--stack", stack)
        assert "unchanged" in preview.stdout
        refreshed = cli.run("refresh", "--yes", "--skip-preview", "--stack", stack)
        assert "unchanged" in refreshed.stdout, refreshed.stdout[-2000:]
    # The town got the backup bucket the control stack publishes, through the StackReference.
    bucket = cli.run("stack", "output", "backup_bucket", "--stack", "control").stdout.strip()
    assert bucket == "team-backups"
    towns = [m for m in deployment.emulator.snapshot()["machines"].values() if m["app"].startswith("gt-")]
    assert len(towns) == 1 and towns[0]["config"]["env"]["R2_BUCKET"] == bucket


def wait_until_held(proc, emulator: FlyEmulator) -> None:
    deadline = time.monotonic() + 300
    while not emulator.held():
        assert proc.poll() is None, "the run ended before reaching the call it is held in"
        assert time.monotonic() < deadline, "the run never reached the call it is held in"
        time.sleep(0.05)


def test_a_second_up_is_refused_by_the_lock_and_a_killed_up_is_recovered(deployment: Deployment) -> None:
    cli, emulator = deployment.cli, deployment.emulator
    # A change that updates machines (Fly's proxy no longer stops them); the first machine update is made,
    # and its answer held back.
    cli.write_config("dev", {**SILO, "silo:autoStopMinutes": "0"})
    emulator.hold("POST", "/v1/apps/{app}/machines/{machine_id}")
    first = cli.popen("up", "--yes", "--skip-preview", "--stack", "dev")
    try:
        wait_until_held(first, emulator)

        second = cli.run("up", "--yes", "--skip-preview", "--stack", "dev", check=False)
        said = second.stdout + second.stderr
        assert second.returncode != 0
        assert "error: the stack is currently locked by 1 lock(s)" in said and "Traceback" not in said
        assert f"(pid {first.pid})" in said  # the wrapper execs the CLI: the holder is the first run

        fleet = cli.silo("fleet", "up", "--only", "dev")
        assert fleet.returncode == 1, fleet.stdout + fleet.stderr
        [line] = [line for line in fleet.stdout.splitlines() if line.startswith("locked: dev: ")]
        assert "locked by " in line and "`silo recover dev`" in line
        assert "Traceback" not in fleet.stdout + fleet.stderr

        refused = cli.silo("recover", "dev")
        assert refused.returncode == 1 and "still going" in refused.stderr, refused.stdout + refused.stderr
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)  # the run dies mid-update, holding the lock
        first.wait()
        emulator.release()

    assert cli.run("up", "--yes", "--skip-preview", "--stack", "dev", check=False).returncode != 0  # still locked
    assert cli.state("dev").get("pending_operations")
    recovered = cli.silo("recover", "dev")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert "removed the stale lock of " in recovered.stdout and "dropped the pending" in recovered.stdout

    cli.run("up", "--yes", "--skip-preview", "--stack", "dev")
    assert "unchanged" in cli.run("preview", "--expect-no-changes", "--stack", "dev").stdout
    assert_nothing_orphaned(SimpleNamespace(state=lambda: cli.state("dev")), emulator)  # type: ignore[arg-type]


def test_destroy_on_the_shared_backend(deployment: Deployment) -> None:
    cli = deployment.cli
    cli.write_config("dev", {**SILO, "silo:allowDataDeletion": "true"})
    # Deletion allowed in state first; the guardrails' data-volumes-kept rule waived in the stack's policy
    # config (docs/guardrails.md "Waivers": the stack file alone cannot waive a mandatory rule).
    waiver = cli.root / "dev-policy.json"
    waiver.write_text(json.dumps({"data-volumes-kept": {"allowDataDeletion": True}}))
    cli.run(
        "up", "--yes", "--skip-preview", "--stack", "dev",
        "--policy-pack", str(REPO_ROOT / "policy"), "--policy-pack-config", str(waiver),
    )  # fmt: skip
    destroyed = cli.run("destroy", "--yes", "--skip-preview", "--stack", "dev")
    assert "deleted" in destroyed.stdout
    assert cli.state("dev").get("resources") in (None, [])
    snap = deployment.emulator.snapshot()
    assert snap["apps"] == {} and snap["volumes"] == {} and snap["machines"] == {}
    assert json.loads(cli.run("stack", "ls", "--json").stdout)  # the stacks remain, empty


def test_migrate_from_a_file_backend_to_postgres(postgres_server: PostgresServer, tmp_path: Path) -> None:
    fly = FlyEmulator()
    fly.start()
    try:
        file_backend = tmp_path / "file-backend"
        file_backend.mkdir()
        cli = TeamCli(tmp_path, file_backend.as_uri(), {"FLY_API_HOSTNAME": fly.url})
        config = {k: v for k, v in SILO.items() if k not in ("silo:controlStack", "silo:towns")}
        cli.init("dev", config)
        cli.run("config", "set", "--secret", "silo:smtpPassword", "smtp-secret-0123", "--stack", "dev")
        cli.run("up", "--yes", "--skip-preview", "--stack", "dev")
        before = cli.secrets("dev")

        # docs/team.md, "Moving a stack from the file backend": export (secrets stay encrypted), then init
        # and import on the new backend with the same stack file (its salt) and passphrase.
        exported = tmp_path / "dev.json"
        cli.run("stack", "export", "--stack", "dev", "--file", str(exported))
        assert "smtp-secret-0123" not in exported.read_text()
        assert not [v for v in before.values() if v in exported.read_text()]
        target = postgres_state(postgres_server)
        cli.env["PULUMI_BACKEND_URL"] = target.url
        cli.run("stack", "init", "dev")
        cli.run("stack", "import", "--stack", "dev", "--file", str(exported))

        assert cli.run("config", "get", "silo:smtpPassword", "--stack", "dev").stdout.strip() == "smtp-secret-0123"
        assert cli.secrets("dev") == before
        assert "unchanged" in cli.run("preview", "--expect-no-changes", "--stack", "dev").stdout
        stored = target.text()
        assert ".pulumi/stacks/silo/dev.json" in "\n".join(target.blobs())
        assert [k for k, v in before.items() if v in stored] == []
    finally:
        fly.stop()
