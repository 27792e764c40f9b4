"""Two silos never merge (issue 26, item 5), on the real Pulumi CLI.

Slugs may hold dashes, so client a-b + app c and client a + app b-c build the same Fly app names
(`devenv-a-b-c-*`); and a town's sandbox id is global (user + town name), so two silos that declare
the same town build the same app and registry row. The second stack must be refused at preview, naming
the clash, and its `up` must change nothing of the first's.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from emulators.fly import FlyEmulator
from tests.fixtures.program import TOWNS_SILO, SiloProgram, StackProgram, control_env, fly_env

pytestmark = pytest.mark.engine


def test_a_second_silo_whose_app_names_collide_is_refused_and_the_first_is_untouched(tmp_path: Path) -> None:
    emulator = FlyEmulator()
    emulator.start()
    try:
        first = SiloProgram(emulator, tmp_path / "first", client="a-b", app="c", studio="false")
        second = SiloProgram(emulator, tmp_path / "second", client="a", app="b-c", studio="false")
        first.up()
        before = emulator.snapshot()
        assert "devenv-a-b-c-pg" in before["apps"]

        preview = second.run("preview")
        assert not preview.ok
        assert "devenv-a-b-c-" in (preview.error or "") and "belongs to another stack" in (preview.error or "")
        assert "silo:client" in (preview.error or "")  # where the name comes from

        up = second.run("up")
        assert not up.ok and "belongs to another stack" in (up.error or "")
        after = emulator.snapshot()
        for part in ("apps", "machines", "volumes", "ips", "secrets"):
            assert after[part] == before[part], part

        # The first silo still owns and converges everything.
        again = first.run("preview")
        assert again.ok and again.changed() == {}, again.steps
    finally:
        emulator.stop()


@pytest.mark.db
def test_two_silos_declaring_the_same_town_do_not_share_it(
    tmp_path: Path, pg_database: str, fly_emulator: FlyEmulator, cloudflare_emulator
) -> None:
    env = {**fly_env(fly_emulator), **control_env(pg_database, cloudflare_emulator)}
    control = StackProgram(tmp_path, "control", env)
    assert control.run_config("up", {"silo:kind": "control", "silo:backupBucket": "acme-gastown-backups"}).ok
    town = {"name": "alpha", "user": "user-1", "rigs": []}
    erp = StackProgram(tmp_path, "erp", env)
    crm = StackProgram(tmp_path, "crm", env)
    first = erp.run_config("up", {**TOWNS_SILO, "silo:towns": [town]})
    assert first.ok, first.error
    before = fly_emulator.snapshot()

    clash = {**TOWNS_SILO, "silo:app": "crm", "silo:towns": [town]}
    preview = crm.run_config("preview", clash)
    assert not preview.ok
    assert "already registered by stack silo/erp/acme/erp" in (preview.error or "")

    up = crm.run_config("up", clash)
    assert not up.ok
    with psycopg.connect(pg_database) as conn:
        rows = conn.execute(
            "SELECT owner FROM gastown_towns WHERE town_name = 'alpha' AND destroyed_at IS NULL"
        ).fetchall()
    assert rows == [("silo/erp/acme/erp",)]
    sandbox = next(a for a in before["apps"] if a.startswith("gt-alpha-"))
    after = fly_emulator.snapshot()
    assert after["apps"][sandbox] == before["apps"][sandbox]
    assert {k: v for k, v in after["machines"].items() if v["app"] == sandbox} == {
        k: v for k, v in before["machines"].items() if v["app"] == sandbox
    }
