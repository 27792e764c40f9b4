"""A `town` stack (silo:kind town): one town outside any silo, the unit the provisioning API runs, on the
real CLI with the control stack, a real PostgreSQL and the Fly and Cloudflare emulators."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from components.domain.naming import sandbox_id
from tests.fixtures.program import CONTROL_STACK_REF, StackProgram, control_env, fly_env

pytestmark = [pytest.mark.db, pytest.mark.engine]


def test_a_town_stack_holds_one_town_and_previews_clean(
    tmp_path: Path, pg_database: str, fly_emulator, cloudflare_emulator
) -> None:
    env = {**fly_env(fly_emulator), **control_env(pg_database, cloudflare_emulator)}
    control = StackProgram(tmp_path, "control", env)
    assert control.run_config("up", {"silo:kind": "control", "silo:backupBucket": "acme-gastown-backups"}).ok
    sid = sandbox_id("user-7", "alpha")
    stack = StackProgram(tmp_path, f"town-{sid}", env)
    config = {
        "silo:kind": "town",
        "silo:flyOrg": "acme-erp",
        "silo:region": "yul",
        "silo:controlStack": CONTROL_STACK_REF,
        "silo:town": {
            "name": "alpha",
            "user": "user-7",
            "rigs": [{"name": "web", "url": "https://github.com/acme/web.git"}],
        },
    }

    up = stack.run_config("up", config)
    assert up.ok, up.error
    assert up.outputs["town"]["sandbox_id"] == sid
    snap = fly_emulator.snapshot()
    assert [m["app"] for m in snap["machines"].values()] == [sid]
    assert not any(app.startswith("devenv-") for app in snap["apps"])  # no Supabase services
    with psycopg.connect(pg_database) as conn:
        rows = conn.execute("SELECT status, owner FROM gastown_towns WHERE sandbox_id = %s", (sid,)).fetchall()
    assert rows == [("running", f"silo/town-{sid}/town/{sid}")]

    again = stack.run_config("preview", config)
    assert again.ok and again.changed() == {}, again.steps

    # A silo key means nothing to a town stack: refused naming it, like a control key in a silo.
    wrong = stack.run_config("preview", {**config, "silo:client": "acme"})
    assert not wrong.ok and "silo:client: is not used by a town stack" in (wrong.error or "")

    gone = stack.run_config("destroy", {**config, "silo:allowDataDeletion": "true"})
    assert gone.ok, gone.error
