"""RLS modes applied by the real program through the Machines API `exec` on the pg machine.

The emulator's exec handler runs the SQL the program sent with psql against a real PostgreSQL
prepared like a Supabase database; only the connection target differs from the pg machine, where the
same command connects to 127.0.0.1 with the password from the machine's environment.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.db.test_rls import SUPABASE_SETUP, visible
from tests.fixtures.program import SiloProgram

pytestmark = [pytest.mark.db, pytest.mark.engine]


def test_rls_mode_switches_through_exec(tmp_path: Path, pg_database: str, postgres_server, fly_emulator) -> None:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(SUPABASE_SETUP)
        conn.execute("INSERT INTO public.projects (name) VALUES ('alice project'), ('bob project')")
    commands: list[list[str]] = []

    def exec_handler(app: str, machine_id: str, cmd: list[str]) -> dict:
        commands.append(cmd)
        # The deployed form: sh -c '<psql ... -c "$1">' psql <sql>, password from the machine's env.
        assert cmd[:2] == ["sh", "-c"] and '-c "$1"' in cmd[2] and "$POSTGRES_PASSWORD" in cmd[2]
        result = subprocess.run(
            [str(postgres_server.bindir / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-d", pg_database, "-c", cmd[-1]],
            capture_output=True,
            text=True,
            check=False,
        )
        return {"exit_code": result.returncode, "stdout": result.stdout, "stderr": result.stderr}

    fly_emulator.set_exec_handler(exec_handler)
    program = SiloProgram(fly_emulator, tmp_path, studio="false")

    def deploy(op: str, mode: str):
        return program.run(op, rlsMode=mode)

    assert deploy("up", "permissive").ok
    assert all(c[0] == "sh" for c in commands) and len(commands) == 1
    with psycopg.connect(pg_database) as conn:
        assert visible(conn, "anon") == ["alice project", "bob project"]

    preview = deploy("preview", "production")
    assert preview.ok, preview.error
    # One resource whatever the mode: a new mode is an update of it, run once.
    assert preview.changed() == {"devenv-acme-erp-pg-rls": "update"}

    assert deploy("up", "production").ok
    assert len(commands) == 2
    with psycopg.connect(pg_database) as conn:
        assert visible(conn, "anon") == []
        assert visible(conn, "service_role") == ["alice project", "bob project"]

    # Stopping and starting again runs nothing: the policies live in the database.
    assert program.run("up", rlsMode="production", state="stopped").ok
    assert program.run("up", rlsMode="production", state="running").ok
    assert len(commands) == 2

    # A new mode while stopped is recorded (the machine cannot run it) and runs at the next start.
    stopped = program.run("up", rlsMode="permissive", state="stopped")
    assert stopped.ok, stopped.error
    assert stopped.changed().get("devenv-acme-erp-pg-rls") == "update" and len(commands) == 2
    started = program.run("up", rlsMode="permissive", state="running")
    assert started.ok, started.error
    assert started.changed().get("devenv-acme-erp-pg-rls") == "update" and len(commands) == 3
    with psycopg.connect(pg_database) as conn:
        assert visible(conn, "anon") == ["alice project", "bob project"]
