"""Destroying the control stack while it is in use is refused before anything is removed (issue 25, "check
early": a destroy removed the backend's registry login, then failed on the protected bucket, and every town
had lost its registry login although the command "failed").

On the real CLI, a real PostgreSQL and the Cloudflare emulator: a town that is not destroyed, then the
protected bucket, each refuse the destroy with one line saying what to do, and the registry login, the
schema and the bucket are all still there; once the towns are gone and deletion is allowed, it removes
everything.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.fixtures.program import StackProgram, control_env

pytestmark = [pytest.mark.db, pytest.mark.engine]
BUCKET = "guarded-backups"
CONTROL = {"silo:kind": "control", "silo:backupBucket": BUCKET}


def buckets(cloudflare_emulator) -> set[str]:
    return {bucket["name"] for bucket in cloudflare_emulator.snapshot()["buckets"].values()}


def backend_role_exists(dsn: str) -> bool:
    role = f"silo_backend_{conninfo_to_dict(dsn)['dbname']}"[:63]
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def test_a_control_stack_in_use_is_not_half_destroyed(tmp_path: Path, pg_database: str, cloudflare_emulator) -> None:
    control = StackProgram(tmp_path, "control", control_env(pg_database, cloudflare_emulator))
    up = control.run_config("up", CONTROL)
    assert up.ok, up.error
    resources = sorted(control.state().resources)
    with psycopg.connect(pg_database) as conn:  # a town the API (or a silo stack) made and still runs
        conn.execute("INSERT INTO gastown_towns (user_id, town_name, sandbox_id) VALUES ('user-1', 'alpha', 'gt-a1')")

    def refused_and_nothing_removed(needle: str) -> None:
        destroyed = control.run_config("destroy", CONTROL)
        assert not destroyed.ok and needle in (destroyed.error or ""), destroyed.error
        assert "Traceback" not in (destroyed.error or "")
        assert destroyed.ops("delete") == ["control-in-use"], destroyed.ops("delete")  # tried first, alone
        assert sorted(control.state().resources) == resources
        assert backend_role_exists(pg_database)
        assert BUCKET in buckets(cloudflare_emulator)

    refused_and_nothing_removed("still serves 1 town(s) that are not destroyed: gt-a1 (user user-1)")

    with psycopg.connect(pg_database) as conn:  # the town is destroyed (soft-deleted, as the registry does)
        conn.execute("UPDATE gastown_towns SET status = 'destroyed', destroyed_at = now()")
    refused_and_nothing_removed("the backup bucket is protected (silo:allowDataDeletion is false)")

    allowed = {**CONTROL, "silo:allowDataDeletion": "true"}
    assert control.run_config("up", allowed).ok
    destroyed = control.run_config("destroy", allowed)
    assert destroyed.ok, destroyed.error
    assert control.state().resources == {}
    assert not backend_role_exists(pg_database)
    assert BUCKET not in buckets(cloudflare_emulator)
