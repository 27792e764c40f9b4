"""`silo doctor STACK_FILE` against the Fly and Cloudflare emulators and a real PostgreSQL (issue 14): one
line per check, exit 1 on any failure, and nothing written anywhere."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from components.cli.main import main
from components.domain.naming import sandbox_id
from components.providers.cloudflare.client import CloudflareClient
from components.providers.cloudflare.settings import resolve_cloudflare_settings
from components.providers.controldb import schema
from components.providers.controldb.dblogin import DatabaseLoginProvider
from components.providers.fly.client import FlyClient
from components.providers.fly.settings import FlySettings
from components.stacks.control import BACKEND_GRANTS
from emulators.cloudflare import CloudflareEmulator
from emulators.fly import FlyEmulator
from tests.fixtures.cloudflare import CF_ACCOUNT_ID, CF_PARENT_ACCESS_KEY_ID, CF_TOKEN

pytestmark = pytest.mark.db

REPO_ROOT = Path(__file__).resolve().parents[2]
FLY_TOKEN = "fly-doctor-token"
ORG = "acme-erp"
BUCKET = "acme-gastown-backups"
CHECKS = ["fly token", "app names", "region", "registry database", "R2 bucket", "town R2 credentials", "image catalog"]
TOWN = {"name": "alpha", "user": "user-1", "rigs": []}
BETA = {"name": "beta", "user": "user-1", "rigs": []}
GAMMA = {"name": "gamma", "user": "user-1", "rigs": []}


@dataclass
class World:
    fly: FlyEmulator
    cloudflare: CloudflareEmulator
    superuser_dsn: str
    backend_dsn: str  # the control stack's least-privileged login
    stacks: Path

    def stack_file(self, name: str = "dev", **config: object) -> Path:
        base = {
            "silo:client": "acme",
            "silo:app": "erp",
            "silo:flyOrg": ORG,
            "silo:region": "yul",
            "silo:siteUrl": "https://silo-acme-erp--prod.netlify.app",
            "silo:studio": "false",
            "silo:controlStack": "organization/silo/control",
            "silo:towns": json.dumps([TOWN]),
            "fly:apiUrl": self.fly.url,
        }
        path = self.stacks / f"Pulumi.{name}.yaml"
        path.write_text(yaml.safe_dump({"config": {**base, **config}}))
        return path


@pytest.fixture
def world(
    tmp_path: Path, pg_database: str, cloudflare_emulator: CloudflareEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """A registry with its tables and the backend login, the backup bucket, a Fly org with one of the
    silo's apps already in it, and the environment `silo doctor` reads its credentials from."""
    schema.apply(pg_database, REPO_ROOT / "migrations")
    role = f"silo_backend_{conninfo_to_dict(pg_database)['dbname']}"
    login = DatabaseLoginProvider()
    login._dsn = pg_database
    login.create({"role": role, "password": "backend-password-1", "grants": BACKEND_GRANTS})
    backend = make_conninfo(pg_database, user=role, password="backend-password-1")
    with CloudflareClient(resolve_cloudflare_settings(cloudflare_config(cloudflare_emulator), {})) as cf:
        cf.create_bucket(BUCKET)
    fly = FlyEmulator(token=FLY_TOKEN)
    fly.start()
    with FlyClient(FlySettings(fly.url, FLY_TOKEN, "env")) as client:
        client.create_app("devenv-acme-erp-pg", ORG)  # a retained data app from an earlier silo: ours
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "Pulumi.control.yaml").write_text(
        yaml.safe_dump({"config": {"silo:kind": "control", "silo:backupBucket": BUCKET}})
    )
    for key in ("FLY_API_HOSTNAME", "FLY_FLAPS_BASE_URL", "FLY_ACCESS_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FLY_API_TOKEN", FLY_TOKEN)
    monkeypatch.setenv("SILO_REGISTRY_DSN", backend)
    monkeypatch.setenv("CLOUDFLARE_API_URL", cloudflare_emulator.url)
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", CF_ACCOUNT_ID)
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", CF_TOKEN)
    monkeypatch.setenv("CLOUDFLARE_R2_PARENT_ACCESS_KEY_ID", CF_PARENT_ACCESS_KEY_ID)
    try:
        yield World(fly, cloudflare_emulator, pg_database, backend, stacks)
    finally:
        fly.stop()


def cloudflare_config(emulator: CloudflareEmulator) -> dict[str, str]:
    return {"cloudflare:apiToken": CF_TOKEN, "cloudflare:accountId": CF_ACCOUNT_ID, "cloudflare:apiUrl": emulator.url}


def doctor(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, str]]:
    """Exit code, and each check's line by check name."""
    code = main(["doctor", str(path)])
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":", 1)[0].split(None, 1)[1] for line in out] == CHECKS, out
    return code, {line.split(":", 1)[0].split(None, 1)[1]: line for line in out}


def registry_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM gastown_towns").fetchone()[0]


def test_a_ready_silo_with_towns_passes_every_check_without_writing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.fly.clear_calls()
    code, lines = doctor(world.stack_file(), capsys)
    assert code == 0, lines
    assert all(line.startswith("ok ") for line in lines.values()), lines
    assert f"reaches organization '{ORG}'" in lines["fly token"]
    # pg, rest, auth, storage, meta, kong and the town's app; the pg app is already ours.
    assert "6 free, 1 already in 'acme-erp'" in lines["app names"]
    assert "can place machines in 'yul'" in lines["region"]
    assert f"reachable as silo_backend_{conninfo_to_dict(world.superuser_dsn)['dbname']}" in lines["registry database"]
    assert "least-privileged" in lines["registry database"]
    assert f"bucket '{BUCKET}' (Pulumi.control.yaml) is reachable" in lines["R2 bucket"]
    assert "alpha: not created yet" in lines["town R2 credentials"]
    assert "all 7 images resolve" in lines["image catalog"]
    # Read-only: the placement is a simulation; nothing was created anywhere.
    assert [c for c in world.fly.calls() if c["mutating"]] == []
    assert set(world.fly.snapshot()["apps"]) == {"devenv-acme-erp-pg"}
    assert registry_rows(world.superuser_dsn) == 0


def test_a_bad_token_fails_and_the_checks_that_need_it_are_skipped(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLY_API_TOKEN", "revoked-token")
    code, lines = doctor(world.stack_file(), capsys)
    assert code == 1
    assert lines["fly token"].startswith("FAIL") and "rejected the token (from env)" in lines["fly token"]
    assert "revoked-token" not in lines["fly token"]
    assert lines["app names"].startswith("skip") and lines["region"].startswith("skip")
    assert lines["town R2 credentials"].startswith("skip")
    assert lines["registry database"].startswith("ok") and lines["image catalog"].startswith("ok")


def test_each_failing_check_says_what_is_wrong(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    world.fly.add_foreign_app("devenv-acme-erp-kong", "someone-else")  # a name another organization holds
    world.fly.set_org_regions(ORG, ["yyz", "ewr"])
    monkeypatch.setenv("SILO_REGISTRY_DSN", world.superuser_dsn)  # works, but is not least-privileged
    (world.stacks / "Pulumi.control.yaml").write_text(
        yaml.safe_dump({"config": {"silo:kind": "control", "silo:backupBucket": "never-created"}})
    )
    code, lines = doctor(world.stack_file(**{"silo:images": json.dumps({"rest": "v12.2.12"})}), capsys)
    assert code == 1
    assert lines["fly token"].startswith("ok")
    assert lines["app names"].startswith("FAIL")
    assert "devenv-acme-erp-kong is taken by another organization" in lines["app names"]
    assert sandbox_id("user-1", "alpha") not in lines["app names"]  # free names are not reported
    assert lines["region"].startswith("FAIL") and "cannot place machines in 'yul'" in lines["region"]
    assert (
        lines["registry database"].startswith("FAIL")
        and "not least-privileged (SUPERUSER" in lines["registry database"]
    )
    assert (
        lines["R2 bucket"].startswith("FAIL")
        and "'never-created' (Pulumi.control.yaml) does not exist" in lines["R2 bucket"]
    )
    assert lines["image catalog"].startswith("FAIL") and "tag 'v12.2.12' is disabled" in lines["image catalog"]


def test_towns_without_the_r2_parent_access_key_fail_naming_it(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each town's temporary R2 credentials are minted from it: without it the town's `up` would fail after
    its registry row and Fly app exist, so the doctor (and the preview) say so first."""
    monkeypatch.delenv("CLOUDFLARE_R2_PARENT_ACCESS_KEY_ID")
    code, lines = doctor(world.stack_file(), capsys)
    assert code == 1
    assert lines["R2 bucket"].startswith("FAIL") and "cloudflare:r2ParentAccessKeyId" in lines["R2 bucket"]
    control = world.stacks / "Pulumi.control.yaml"  # the control stack mints nothing: not needed there
    monkeypatch.setenv("SILO_REGISTRY_DSN", world.superuser_dsn)
    assert doctor(control, capsys)[1]["R2 bucket"].startswith("ok")


def test_a_login_that_cannot_write_towns_fails(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg.connect(world.superuser_dsn, autocommit=True) as conn:
        role = f"silo_backend_{conninfo_to_dict(world.superuser_dsn)['dbname']}"
        conn.execute(f'REVOKE INSERT ON gastown_rigs FROM "{role}"')
    code, lines = doctor(world.stack_file(), capsys)
    assert code == 1
    assert "lacks INSERT on gastown_rigs, which towns need" in lines["registry database"]


def test_the_control_stack_before_its_first_up(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SILO_REGISTRY_DSN", world.superuser_dsn)  # the control stack owns the schema
    path = world.stacks / "Pulumi.control.yaml"
    path.write_text(yaml.safe_dump({"config": {"silo:kind": "control", "silo:backupBucket": "new-backups"}}))
    code, lines = doctor(path, capsys)
    assert code == 0, lines
    assert [lines[c].split()[0] for c in ("fly token", "app names", "region", "town R2 credentials")] == ["skip"] * 4
    assert lines["registry database"].startswith("ok")
    assert "bucket 'new-backups' (silo:backupBucket) does not exist yet, up creates it" in lines["R2 bucket"]


def test_an_invalid_stack_file_prints_its_errors_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(yaml.safe_dump({"config": {"silo:client": "Acme_Corp"}}))
    assert main(["doctor", str(path)]) == 2
    assert "silo:client: must be a slug" in capsys.readouterr().err


def _town_machine(world: World, town: dict, expire_at: dt.datetime | None) -> None:
    """The town's app and machine as a `pulumi up` leaves them, told when its R2 credentials expire."""
    app = sandbox_id(town["user"], town["name"])
    env = {"TOWN_ID": "t-1"} | (
        {"R2_CREDENTIALS_EXPIRE_AT": expire_at.isoformat(timespec="seconds")} if expire_at else {}
    )
    with FlyClient(FlySettings(world.fly.url, FLY_TOKEN, "env")) as client:
        client.create_app(app, ORG)
        client.create_machine(app, {"name": "town", "region": "yul", "config": {"image": "gastown:1", "env": env}})


def test_the_towns_r2_credentials_are_shown_and_an_expired_one_fails(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    # Temporary R2 credentials lapse unless a `pulumi up` renews them; the town's backups stop then.
    now = dt.datetime.now(dt.UTC)
    _town_machine(world, TOWN, now + dt.timedelta(days=6))
    _town_machine(world, BETA, now + dt.timedelta(hours=30))
    stack = world.stack_file(**{"silo:towns": json.dumps([TOWN, BETA, GAMMA])})
    world.fly.clear_calls()

    code, lines = doctor(stack, capsys)

    assert code == 0, lines
    line = lines["town R2 credentials"]
    assert line.startswith("ok ") and "alpha: R2 credentials valid until" in line
    assert "beta: R2 credentials expire in 1 day 5 h" in line and "the next `pulumi up` renews them" in line
    assert "gamma: not created yet" in line
    assert [c for c in world.fly.calls() if c["mutating"]] == []

    _town_machine(world, GAMMA, now - dt.timedelta(hours=1))
    code, lines = doctor(stack, capsys)
    assert code == 1
    line = lines["town R2 credentials"]
    assert line.startswith("FAIL") and "gamma: R2 credentials expired at" in line
    assert "its backups have stopped" in line
