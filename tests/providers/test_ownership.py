"""A stack takes over a Fly app found by name only when the app is provably its own.

Fly app names are global and a silo's are built from slugs that may hold dashes, so `devenv-a-b-c-pg`
is both client a-b + app c and client a + app b-c. The FlyApp provider marks every app it creates with
a secret named after its owner (components/domain/naming.py, "ownership"), adopts an existing app only
when it carries that mark (or is empty and unmarked: what a run that died before marking leaves), and
refuses everything else at preview (check) and again at create, naming the silo when it can.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pulumi.dynamic import Config as DynamicConfig
from pulumi.dynamic import ConfigureRequest

from components.cli import main as cli
from components.domain import naming
from components.providers.fly.apps import FlyAppProvider
from components.providers.fly.errors import FlyError
from emulators.fly import FlyEmulator
from tests.fixtures.fly import visible_app

ORG = "acme"
FIRST = naming.stack_owner("silo", "dev", "a-b", "c")
SECOND = naming.stack_owner("silo", "dev", "a", "b-c")
APP = "devenv-a-b-c-pg"  # both silos' pg app
IMAGE = "registry-1.docker.io/library/busybox:1.36"


@pytest.fixture(autouse=True)
def _no_rate_limits(fly_emulator: FlyEmulator) -> None:
    fly_emulator.set_rate_limits(False)


def provider(emulator: FlyEmulator) -> FlyAppProvider:
    p = FlyAppProvider()
    p.configure(ConfigureRequest(DynamicConfig({"fly:apiToken": "test", "fly:apiUrl": emulator.url}, "silo")))
    return p


def props(owner: str, name: str = APP) -> dict[str, Any]:
    return {"name": name, "org": ORG, "keep_volumes": True, "network": None, "owner": owner}


def secret_names(emulator: FlyEmulator, app: str = APP) -> set[str]:
    return set(emulator.snapshot()["secrets"].get(app, {}))


def test_a_created_app_carries_its_owners_mark_and_a_rerun_adopts_it(fly_emulator: FlyEmulator) -> None:
    p = provider(fly_emulator)
    created = p.create(props(FIRST))
    assert secret_names(fly_emulator) == {naming.owner_secret(FIRST)}

    # The create's answer lost (a crash before the state was written): the next run finds its own app.
    again = p.create(props(FIRST))
    assert again.id == created.id
    assert list(fly_emulator.snapshot()["apps"]) == [APP]
    assert p.check({}, props(FIRST)).failures == []


def test_another_silos_app_of_the_same_name_is_refused_at_preview_and_at_create(
    fly_emulator: FlyEmulator, fly_api: httpx.Client
) -> None:
    provider(fly_emulator).create(props(FIRST))
    machine = fly_api.post(
        f"/apps/{APP}/machines", json={"config": {"image": IMAGE, "metadata": {"silo_id": "a-b-c"}}}
    ).json()
    before = fly_emulator.snapshot()

    failures = provider(fly_emulator).check({}, props(SECOND)).failures
    assert [f.property for f in failures] == ["name"]
    assert "belongs to another stack" in failures[0].reason and "silo a-b-c" in failures[0].reason
    assert SECOND in failures[0].reason

    with pytest.raises(FlyError, match="belongs to another stack"):
        provider(fly_emulator).create(props(SECOND))
    after = fly_emulator.snapshot()
    assert after["secrets"] == before["secrets"] and after["machines"].keys() == {machine["id"]}


def test_an_unmarked_app_that_holds_something_is_refused_with_the_way_to_adopt_it(
    fly_emulator: FlyEmulator, fly_api: httpx.Client
) -> None:
    visible_app(fly_api, APP, ORG)
    fly_api.post(f"/apps/{APP}/volumes", json={"name": "pg_data", "region": "yul", "size_gb": 1})

    failures = provider(fly_emulator).check({}, props(FIRST)).failures
    assert len(failures) == 1 and "carries no ownership mark" in failures[0].reason
    assert "silo adopt" in failures[0].reason
    with pytest.raises(FlyError, match="carries no ownership mark"):
        provider(fly_emulator).create(props(FIRST))
    assert secret_names(fly_emulator) == set()


def test_an_empty_unmarked_app_is_what_a_crash_before_marking_leaves_and_is_claimed(
    fly_emulator: FlyEmulator, fly_api: httpx.Client
) -> None:
    visible_app(fly_api, APP, ORG)  # POST /apps went through; the run died before the mark

    assert provider(fly_emulator).check({}, props(FIRST)).failures == []
    provider(fly_emulator).create(props(FIRST))
    assert secret_names(fly_emulator) == {naming.owner_secret(FIRST)}
    # From now on it is the first stack's: the second is refused.
    assert provider(fly_emulator).check({}, props(SECOND)).failures


def test_an_app_in_state_from_before_marks_is_marked_by_its_next_update(fly_emulator: FlyEmulator) -> None:
    p = provider(fly_emulator)
    legacy = {**props(FIRST), "owner": None}
    p.create(legacy)  # an older program: no owner, no mark
    assert secret_names(fly_emulator) == set()

    assert p.diff(APP, legacy, props(FIRST)).changes
    p.update(APP, legacy, props(FIRST))
    assert secret_names(fly_emulator) == {naming.owner_secret(FIRST)}

    # A renamed stack moves the mark: the old owner's is removed in the same write.
    renamed = naming.stack_owner("silo", "dev2", "a-b", "c")
    p.update(APP, props(FIRST), props(renamed))
    assert secret_names(fly_emulator) == {naming.owner_secret(renamed)}


def test_delete_never_removes_an_app_another_stack_has_marked(fly_emulator: FlyEmulator) -> None:
    p = provider(fly_emulator)
    p.create({**props(FIRST), "keep_volumes": False})
    # Someone moved the app to another stack (silo adopt --owner, a state import elsewhere).
    provider(fly_emulator).update(APP, props(FIRST), props(SECOND))

    with pytest.raises(FlyError, match="another stack's ownership mark"):
        p.delete(APP, {**props(FIRST), "keep_volumes": False})
    assert APP in fly_emulator.snapshot()["apps"]


def test_silo_adopt_marks_unmarked_apps_and_leaves_other_stacks_apps_alone(
    fly_emulator: FlyEmulator, fly_api: httpx.Client, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "Pulumi.yaml").write_text("name: silo\nruntime: python\n")
    stack_file = tmp_path / "Pulumi.dev.yaml"
    stack_file.write_text(
        "config:\n"
        "  silo:client: a-b\n  silo:app: c\n  silo:flyOrg: acme\n"
        "  silo:siteUrl: https://a-b-c.netlify.app\n  silo:studio: 'false'\n"
        f"  fly:apiUrl: {fly_emulator.url}\n"
    )
    visible_app(fly_api, "devenv-a-b-c-pg", ORG)  # made by hand, unmarked
    visible_app(fly_api, "devenv-a-b-c-rest", ORG)
    provider(fly_emulator).create(props(SECOND, "devenv-a-b-c-rest"))  # ...and claimed by the other silo meanwhile

    code = cli.main(["adopt", str(stack_file)])

    out = capsys.readouterr().out
    assert code == cli.EXIT_FAILED  # not every app could be made this stack's
    assert f"devenv-a-b-c-pg: adopted by {FIRST}" in out
    assert "devenv-a-b-c-rest: marked by another stack" in out
    assert "devenv-a-b-c-kong: absent" in out
    assert secret_names(fly_emulator, "devenv-a-b-c-pg") == {naming.owner_secret(FIRST)}
    assert secret_names(fly_emulator, "devenv-a-b-c-rest") == {naming.owner_secret(SECOND)}
    # Adopted, the app is this stack's to create over (the next `up` takes it).
    assert provider(fly_emulator).check({}, props(FIRST, "devenv-a-b-c-pg")).failures == []
