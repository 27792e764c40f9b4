"""Migration runner and PostgresSchema provider against a real PostgreSQL (tests/fixtures/postgres.py)."""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

import psycopg
import pulumi
import pytest
from pulumi.dynamic import ConfigureRequest
from pulumi.dynamic.config import Config

from components.providers.controldb import schema
from components.providers.controldb.dsn import CONTROL_DSN_CONFIG_KEY
from components.providers.controldb.schema import MigrationDrift, MigrationError, PostgresSchemaProvider
from components.stacks.control import PostgresSchema

pytestmark = pytest.mark.db

REPO_MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A private copy of the repo's migrations, free to edit."""
    target = tmp_path / "migrations"
    shutil.copytree(REPO_MIGRATIONS, target)
    return target


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def recorded(dsn: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT version, name, checksum FROM schema_migrations ORDER BY version").fetchall()


def test_apply_runs_every_file_in_order_and_records_checksums(pg_database: str, folder: Path) -> None:
    expected = sorted(p.name for p in folder.glob("*.sql"))
    assert schema.plan(pg_database, folder).pending == expected

    assert schema.apply(pg_database, folder) == expected

    assert {
        "gastown_towns",
        "gastown_rigs",
        "kiloclaw_available_versions",
        "kiloclaw_version_pins",
        "schema_migrations",
    } <= tables(pg_database)
    rows = recorded(pg_database)
    assert [r[1] for r in rows] == expected
    assert [r[0] for r in rows] == [name[:4] for name in expected]
    assert all(r[2] == schema.checksum((folder / r[1]).read_text()) for r in rows)


def test_rerun_applies_nothing_and_new_files_apply_alone(pg_database: str, folder: Path) -> None:
    schema.apply(pg_database, folder)
    assert schema.apply(pg_database, folder) == []

    (folder / "0099_add_note.sql").write_text("ALTER TABLE gastown_towns ADD COLUMN note text;\n")
    assert schema.plan(pg_database, folder).pending == ["0099_add_note.sql"]
    assert schema.apply(pg_database, folder) == ["0099_add_note.sql"]
    with psycopg.connect(pg_database) as conn:
        conn.execute("SELECT note FROM gastown_towns")


def test_name_order_not_creation_order(pg_database: str, tmp_path: Path) -> None:
    # 0002 depends on 0001; written in reverse so directory order cannot accidentally be right.
    (tmp_path / "0002_second.sql").write_text("INSERT INTO steps VALUES ('second');")
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE steps (name text); INSERT INTO steps VALUES ('first');")
    assert schema.apply(pg_database, tmp_path) == ["0001_first.sql", "0002_second.sql"]
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT count(*) FROM steps").fetchone() == (2,)


def test_drift_is_refused_before_anything_is_applied(pg_database: str, folder: Path) -> None:
    schema.apply(pg_database, folder)
    edited = folder / "0002_gastown_rigs.sql"
    edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
    (folder / "0099_new.sql").write_text("CREATE TABLE should_not_exist (id int);")

    plan = schema.plan(pg_database, folder)
    assert [d.name for d in plan.drift] == ["0002_gastown_rigs.sql"]
    with pytest.raises(MigrationDrift, match=re.escape("0002_gastown_rigs.sql was changed after it was applied")):
        schema.apply(pg_database, folder)
    assert "should_not_exist" not in tables(pg_database)


def test_deleted_applied_file_is_drift(pg_database: str, folder: Path) -> None:
    schema.apply(pg_database, folder)
    (folder / "0002_gastown_rigs.sql").unlink()
    with pytest.raises(MigrationDrift, match=re.escape("0002_gastown_rigs.sql was applied but its file is missing")):
        schema.apply(pg_database, folder)


def test_failing_migration_rolls_back_alone(pg_database: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok (id int);")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE half (id int); SELECT no_such_function();")
    with pytest.raises(MigrationError, match=re.escape("0002_broken.sql failed")):
        schema.apply(pg_database, tmp_path)
    assert tables(pg_database) == {"ok", "schema_migrations"}  # `half` rolled back with its file
    assert [r[1] for r in recorded(pg_database)] == ["0001_ok.sql"]


@pytest.mark.parametrize("name", ["1_short.sql", "0001-dash.sql", "0001_Upper.sql"])
def test_badly_named_files_are_named_in_the_error(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=re.escape(name)):
        schema.load_migrations(tmp_path)


def test_duplicate_versions_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match="share version 0001"):
        schema.load_migrations(tmp_path)


def test_concurrent_applies_apply_each_file_once(pg_database: str, folder: Path) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        try:
            barrier.wait()
            results.append(schema.apply(pg_database, folder))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    applied = sorted(name for result in results for name in result)
    assert applied == sorted(p.name for p in folder.glob("*.sql"))  # each file exactly once, overall
    assert len(recorded(pg_database)) == len(applied)


# -- users FK (0004): configurable through the silo.users_table GUC ----------------------------------
def test_without_users_table_user_ids_are_free_text(pg_database: str, folder: Path) -> None:
    schema.apply(pg_database, folder)
    with psycopg.connect(pg_database) as conn:
        conn.execute(
            "INSERT INTO gastown_towns (user_id, town_name, sandbox_id, status) "
            "VALUES ('anyone', 't', 'sb-1', 'running')"
        )


def test_users_table_setting_adds_cascading_fk(pg_database: str, folder: Path) -> None:
    with psycopg.connect(pg_database) as conn:
        conn.execute("CREATE TABLE kilocode_users (id text PRIMARY KEY)")
        conn.execute("INSERT INTO kilocode_users VALUES ('u1')")
    schema.apply(pg_database, folder, settings={"silo.users_table": "public.kilocode_users"})
    with psycopg.connect(pg_database) as conn:
        conn.execute("INSERT INTO gastown_towns (user_id, town_name, sandbox_id) VALUES ('u1', 't', 'sb-1')")
        conn.commit()
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO gastown_towns (user_id, town_name, sandbox_id) VALUES ('ghost', 't', 'sb-2')")
        conn.rollback()
        conn.execute("DELETE FROM kilocode_users WHERE id = 'u1'")
        assert conn.execute("SELECT count(*) FROM gastown_towns").fetchone() == (0,)


def test_users_table_setting_naming_a_missing_table_fails_clearly(pg_database: str, folder: Path) -> None:
    message = "silo.users_table is set to public.nope, but that table does not exist"
    with pytest.raises(MigrationError, match=re.escape(message)):
        schema.apply(pg_database, folder, settings={"silo.users_table": "public.nope"})
    assert [r[1] for r in recorded(pg_database)] == [
        "0001_gastown_towns.sql",
        "0002_gastown_rigs.sql",
        "0003_kiloclaw_versions.sql",
    ]


def test_settings_must_be_silo_gucs(pg_database: str, folder: Path) -> None:
    with pytest.raises(MigrationError, match="'search_path'"):
        schema.apply(pg_database, folder, settings={"search_path": "evil"})


# -- PostgresSchema provider ------------------------------------------------------------------------
def inputs(dsn: str, folder: Path) -> dict:
    return {"dsn": dsn, "folder": str(folder), "migrations": schema.migration_checksums(folder), "settings": {}}


def test_provider_lifecycle(pg_database: str, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    provider = PostgresSchemaProvider()
    news = inputs(pg_database, folder)
    assert provider.check({}, news).failures == []

    created = provider.create(news)
    all_files = sorted(p.name for p in folder.glob("*.sql"))
    assert created.outs["applied"] == all_files
    assert created.outs["dsn"] == pg_database  # same key as the secret input: stays secret in state
    assert provider.diff(created.id, created.outs, news).changes is False

    # A new file shows up as a change in preview (the migrations input differs) and update applies it.
    (folder / "0099_more.sql").write_text("CREATE TABLE more (id int);")
    news2 = inputs(pg_database, folder)
    assert provider.check(created.outs, news2).failures == []
    assert provider.diff(created.id, created.outs, news2).changes is True
    updated = provider.update(created.id, created.outs, news2)
    assert updated.outs["last_applied"] == ["0099_more.sql"]
    assert updated.outs["applied"] == [*all_files, "0099_more.sql"]

    read = provider.read(created.id, updated.outs)
    assert read.outs["applied"] == updated.outs["applied"]
    assert read.inputs["migrations"] == news2["migrations"]

    provider.delete(created.id, updated.outs)
    assert "tables and data are left in place" in capsys.readouterr().out
    assert "more" in tables(pg_database)


def test_provider_check_and_diff_fail_on_drift_naming_the_file(pg_database: str, folder: Path) -> None:
    provider = PostgresSchemaProvider()
    created = provider.create(inputs(pg_database, folder))
    path = folder / "0001_gastown_towns.sql"
    path.write_text(path.read_text().replace("'iad'", "'yul'"))
    news = inputs(pg_database, folder)
    with pytest.raises(MigrationDrift, match=re.escape("0001_gastown_towns.sql")):
        provider.check(created.outs, news)
    # Against the database too (e.g. a fresh stack pointed at an already-migrated database).
    with pytest.raises(MigrationDrift, match=re.escape("0001_gastown_towns.sql")):
        provider.diff(created.id, {}, news)


def test_provider_check_reports_bad_inputs_by_property(tmp_path: Path) -> None:
    failures = (
        PostgresSchemaProvider()
        .check(
            {},
            {
                "dsn": "host=127.0.0.1 port=notanumber = password=hunter2",
                "folder": str(tmp_path / "missing"),
                "migrations": {"bad.sql": "xyz"},
                "settings": {"work_mem": "1GB"},
            },
        )
        .failures
    )
    by_property = {f.property: f.reason for f in failures}
    assert set(by_property) == {"dsn", "folder", "migrations", "settings"}
    assert "hunter2" not in by_property["dsn"]
    assert "missing" in by_property["folder"]
    assert "bad.sql" in by_property["migrations"]


def test_provider_reads_dsn_from_stack_config(pg_database: str, folder: Path) -> None:
    provider = PostgresSchemaProvider()
    provider.configure(ConfigureRequest(Config({CONTROL_DSN_CONFIG_KEY: pg_database}, "silo")))
    news = {k: v for k, v in inputs(pg_database, folder).items() if k != "dsn"}
    created = provider.create(news)
    assert "dsn" not in created.outs
    assert created.outs["applied"] == sorted(p.name for p in folder.glob("*.sql"))


def test_provider_refuses_folder_edited_after_preview(pg_database: str, folder: Path) -> None:
    news = inputs(pg_database, folder)
    (folder / "0099_sneaky.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=re.escape("0099_sneaky.sql")):
        PostgresSchemaProvider().create(news)
    assert "schema_migrations" not in tables(pg_database)


# -- the component as the program declares it (Pulumi mocks, no engine) ------------------------------
class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        self.resources.append(args)
        # Stand-in for the provider's create: every migration of the input map is applied.
        return f"{args.name}-id", {**args.inputs, "applied": sorted(args.inputs.get("migrations") or {})}

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
        return {}


def test_component_declares_secret_dsn_and_migration_checksums(folder: Path, mock_event_loop: object) -> None:
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, preview=False)
    component = PostgresSchema(
        "control", folder=str(folder), dsn="host=db password=s3cret", users_table="public.kilocode_users"
    )
    seen: dict[str, list[str]] = {}

    @pulumi.runtime.test
    def resolve() -> pulumi.Output[None]:
        return component.applied.apply(lambda applied: seen.update(applied=applied))

    resolve()
    dynamic = next(r for r in mocks.resources if r.typ == "pulumi-python:dynamic/postgres:Schema")
    assert dynamic.inputs["migrations"] == schema.migration_checksums(folder)  # what preview diffs on
    assert dynamic.inputs["settings"] == {"silo.users_table": "public.kilocode_users"}
    dsn = dynamic.inputs["dsn"]
    assert isinstance(dsn, dict) and dsn["value"] == "host=db password=s3cret"
    assert pulumi.runtime.rpc._special_secret_sig in dsn.values()  # registered as a secret
    assert seen["applied"] == sorted(p.name for p in folder.glob("*.sql"))


def test_missing_postgresql_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fixtures import postgres as fixture

    monkeypatch.setattr(fixture.glob, "glob", lambda _pattern: [])
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FileNotFoundError, match=r"`\.ci/run` installs the Debian package `postgresql`"):
        fixture.find_bindir()


def test_newest_installed_major_is_used() -> None:
    from tests.fixtures import postgres as fixture

    bindir = fixture.find_bindir()
    majors = [
        int(p.parent.parent.name)
        for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if p.parent.parent.name.isdigit()
    ]
    if majors:
        assert bindir == Path(f"/usr/lib/postgresql/{max(majors)}/bin")
    assert (bindir / "pg_ctl").exists() and (bindir / "postgres").exists()
