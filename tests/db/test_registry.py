"""Registry tables (towns, rigs, versions, pins): every constraint proven with real inserts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from components.providers.controldb import schema

pytestmark = pytest.mark.db

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


@pytest.fixture
def db(pg_database: str) -> Iterator[psycopg.Connection]:
    schema.apply(pg_database, MIGRATIONS)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        yield conn


def town(
    conn: psycopg.Connection,
    user: str = "u1",
    name: str = "alpha",
    sandbox: str = "gt-alpha",
    status: str = "provisioning",
    **extra: object,
) -> str:
    cols = {"user_id": user, "town_name": name, "sandbox_id": sandbox, "fly_app": sandbox, "status": status, **extra}
    placeholders = ", ".join(["%s"] * len(cols))
    row = conn.execute(
        f"INSERT INTO gastown_towns ({', '.join(cols)}) VALUES ({placeholders}) RETURNING id", list(cols.values())
    ).fetchone()
    return str(row[0])


def destroy(conn: psycopg.Connection, town_id: str) -> None:
    conn.execute("UPDATE gastown_towns SET status = 'destroyed', destroyed_at = now() WHERE id = %s", (town_id,))


def rig(conn: psycopg.Connection, town_id: str, name: str = "api", status: str = "active") -> str:
    row = conn.execute(
        "INSERT INTO gastown_rigs (town_id, rig_name, repo_url, status) VALUES (%s, %s, %s, %s) RETURNING id",
        (town_id, name, f"https://git.example/{name}.git", status),
    ).fetchone()
    return str(row[0])


# -- towns ----------------------------------------------------------------------------------------
def test_town_defaults(db: psycopg.Connection) -> None:
    town_id = town(db)
    row = db.execute(
        "SELECT status, fly_region, config, created_at IS NOT NULL, destroyed_at FROM gastown_towns WHERE id = %s",
        (town_id,),
    ).fetchone()
    assert row == ("provisioning", "iad", {}, True, None)


def test_one_active_town_per_user_and_name(db: psycopg.Connection) -> None:
    town(db)
    with pytest.raises(errors.UniqueViolation, match="uq_gastown_towns_active_user_name"):
        town(db, sandbox="gt-other")
    town(db, user="u2", sandbox="gt-u2")  # same name, other user: fine


def test_destroyed_town_can_be_recreated_with_same_name_and_sandbox_id(db: psycopg.Connection) -> None:
    first = town(db, status="running")
    destroy(db, first)
    second = town(db, status="provisioning")  # same user, name, sandbox id and Fly app name
    assert second != first
    rows = db.execute(
        "SELECT status FROM gastown_towns WHERE sandbox_id = 'gt-alpha' ORDER BY created_at, status"
    ).fetchall()
    assert sorted(r[0] for r in rows) == ["destroyed", "provisioning"]


def test_sandbox_id_unique_among_active_towns(db: psycopg.Connection) -> None:
    town(db)
    with pytest.raises(errors.UniqueViolation, match="uq_gastown_towns_active_sandbox_id"):
        town(db, user="u2", name="beta", sandbox="gt-alpha")


@pytest.mark.parametrize("status", ["provisioning", "running", "stopped"])
def test_allowed_live_statuses(db: psycopg.Connection, status: str) -> None:
    town(db, status=status)


@pytest.mark.parametrize("status", ["error", "Running", ""])
def test_unknown_town_status_rejected(db: psycopg.Connection, status: str) -> None:
    with pytest.raises(errors.CheckViolation, match="gastown_towns_status_check"):
        town(db, status=status)


def test_destroyed_status_and_destroyed_at_go_together(db: psycopg.Connection) -> None:
    with pytest.raises(errors.CheckViolation, match="gastown_towns_destroyed_consistent"):
        town(db, status="destroyed")
    town_id = town(db)
    with pytest.raises(errors.CheckViolation, match="gastown_towns_destroyed_consistent"):
        db.execute("UPDATE gastown_towns SET destroyed_at = now() WHERE id = %s", (town_id,))


def test_sandbox_id_fits_a_fly_app_name(db: psycopg.Connection) -> None:
    with pytest.raises(errors.CheckViolation):
        town(db, sandbox="x" * 64)


def test_config_holds_rigs_as_an_object(db: psycopg.Connection) -> None:
    config = psycopg.types.json.Jsonb({"rigs": [{"name": "api"}], "max_polecats": 3})
    town_id = town(db, config=config)
    assert db.execute("SELECT config->'rigs'->0->>'name' FROM gastown_towns WHERE id = %s", (town_id,)).fetchone() == (
        "api",
    )
    with pytest.raises(errors.CheckViolation):
        town(db, user="u2", sandbox="gt-2", config=psycopg.types.json.Jsonb(["not", "an", "object"]))


# -- rigs -------------------------------------------------------------------------------------------
def test_rig_name_unique_per_active_town_only(db: psycopg.Connection) -> None:
    town_id = town(db)
    first = rig(db, town_id)
    with pytest.raises(errors.UniqueViolation, match="uq_gastown_rigs_active_town_rig"):
        rig(db, town_id)
    db.execute("UPDATE gastown_rigs SET status = 'removed' WHERE id = %s", (first,))
    rig(db, town_id)  # the name is free again once the old rig is removed
    rig(db, town(db, user="u2", sandbox="gt-u2"))  # same rig name in another town


def test_rig_status_check(db: psycopg.Connection) -> None:
    town_id = town(db)
    with pytest.raises(errors.CheckViolation, match="gastown_rigs_status_check"):
        rig(db, town_id, status="paused")


def test_rig_needs_an_existing_town_and_cascades_on_delete(db: psycopg.Connection) -> None:
    with pytest.raises(errors.ForeignKeyViolation):
        rig(db, "00000000-0000-0000-0000-000000000000")
    town_id = town(db)
    rig(db, town_id, "api")
    rig(db, town_id, "web")
    db.execute("DELETE FROM gastown_towns WHERE id = %s", (town_id,))
    assert db.execute("SELECT count(*) FROM gastown_rigs").fetchone() == (0,)


def test_rig_defaults(db: psycopg.Connection) -> None:
    rig_id = rig(db, town(db))
    assert db.execute("SELECT branch, status, config FROM gastown_rigs WHERE id = %s", (rig_id,)).fetchone() == (
        "main",
        "active",
        {},
    )


# -- versions and pins --------------------------------------------------------------------------------
def version(
    conn: psycopg.Connection, tag: str, digest: str | None = None, status: str = "active", service: str = "town"
) -> None:
    conn.execute(
        "INSERT INTO kiloclaw_available_versions (service, repository, image_tag, image_digest, status) "
        "VALUES (%s, 'example/image', %s, %s, %s)",
        (service, tag, digest, status),
    )


def test_version_tag_unique(db: psycopg.Connection) -> None:
    version(db, "v1")
    with pytest.raises(errors.UniqueViolation, match="uq_kiloclaw_versions_image_tag"):
        version(db, "v1", service="pg")


def test_version_digest_unique_when_present(db: psycopg.Connection) -> None:
    version(db, "v1", DIGEST_A)
    with pytest.raises(errors.UniqueViolation, match="uq_kiloclaw_versions_image_digest"):
        version(db, "v2", DIGEST_A)
    version(db, "v3")  # several tags without a digest are fine
    version(db, "v4")


@pytest.mark.parametrize("digest", ["sha256:" + "A" * 64, "sha256:" + "a" * 63, "md5:" + "a" * 64, "a" * 64])
def test_version_digest_format(db: psycopg.Connection, digest: str) -> None:
    with pytest.raises(errors.CheckViolation, match="kiloclaw_versions_digest_format"):
        version(db, "v1", digest)


def test_version_status_and_service_checks(db: psycopg.Connection) -> None:
    with pytest.raises(errors.CheckViolation, match="kiloclaw_versions_status_check"):
        version(db, "v1", status="retired")
    with pytest.raises(errors.CheckViolation):
        version(db, "v2", service="redis")


def test_pin_must_name_an_existing_tag_and_is_unique_per_user(db: psycopg.Connection) -> None:
    version(db, "v1")
    version(db, "v2")
    with pytest.raises(errors.ForeignKeyViolation):
        db.execute("INSERT INTO kiloclaw_version_pins (user_id, image_tag) VALUES ('u1', 'nope')")
    db.execute("INSERT INTO kiloclaw_version_pins (user_id, image_tag) VALUES ('u1', 'v1')")
    with pytest.raises(errors.UniqueViolation, match="uq_kiloclaw_version_pins_user_service"):
        db.execute("INSERT INTO kiloclaw_version_pins (user_id, image_tag) VALUES ('u1', 'v2')")
    # A pinned tag cannot disappear from the catalog underneath the pin.
    with pytest.raises(errors.ForeignKeyViolation):
        db.execute("DELETE FROM kiloclaw_available_versions WHERE image_tag = 'v1'")
