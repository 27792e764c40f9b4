"""`silo:images` pins end to end, through the real program on the real Pulumi CLI (issue: "Pinning:
active, deprecated (warning) and disabled (preview fails) each tested end to end").

Pins use the real catalog (catalog/images.yaml); the module checks each entry's status first, so a
catalog edit that removes a case fails here with a clear message instead of testing something else.
The catalog has exactly one active tag per service (the default), so the active cases pin it
explicitly, and moving a deprecated pin to the active tag is tested as a change on a running silo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from components.domain.catalog import ImageEntry, load_catalog
from emulators.fly import FlyEmulator
from engine.runner import RunResult
from tests.fixtures.program import Baseline, SiloProgram, assert_state_matches_emulator

pytestmark = pytest.mark.engine

CATALOG = load_catalog()
# service → (pinned tag, the status the test relies on, whether the catalog has its digest)
PINS: dict[str, tuple[str, str, bool]] = {
    "kong": ("2.8.1", "active", True),
    "auth": ("v2.186.0", "active", False),
    "pg": ("15.8.1.060", "deprecated", True),
    "storage": ("v1.33.5", "deprecated", False),
}
IMAGES = {service: tag for service, (tag, _, _) in PINS.items()}
SETTINGS = {"studio": "false", "images": IMAGES}


def entry(service: str, tag: str) -> ImageEntry:
    found = CATALOG.entry(service, tag)
    assert found is not None, f"catalog/images.yaml no longer has {service} {tag}"
    return found


def expected_ref(service: str, tag: str) -> str:
    e = entry(service, tag)
    return f"{e.repository}@{e.digest}" if e.digest else f"{e.repository}:{tag}"


@dataclass
class Pinned:
    program: SiloProgram
    preview: RunResult
    up: RunResult
    baseline: Baseline


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pinned]:
    """A silo deployed with every pin of PINS (preview first, then up) on an empty emulator."""
    for service, (tag, status, has_digest) in PINS.items():
        e = entry(service, tag)
        assert (e.status, bool(e.digest)) == (status, has_digest), f"catalog entry {service} {tag} changed"
        # The real catalog has one active tag per service (its default), so active pins name it
        # explicitly; a deprecated pin must differ from the default or it would prove nothing.
        assert status == "active" or not e.default, f"{service} {tag} is the default"
    root = tmp_path_factory.mktemp("pinned")
    emulator = FlyEmulator(state_file=root / "fly-emulator.json")
    emulator.start()
    try:
        program = SiloProgram(emulator, root, **SETTINGS)
        preview = program.run("preview")
        assert preview.ok, preview.error
        assert [c for c in emulator.calls() if c["mutating"]] == []
        up = program.up()
        yield Pinned(program, preview, up, Baseline(root / "fly-emulator.json", root, SETTINGS))
    finally:
        emulator.stop()


def machines_by_service(program: SiloProgram) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in program.emulator.snapshot()["machines"].values()}


def recorded(program: SiloProgram) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every custom resource's id and outputs, and the stack outputs, as the state holds them (decrypted;
    the file itself is re-encrypted with fresh nonces on every write)."""
    st = program.state()
    resources = {urn: (r.id, r.outputs) for urn, r in st.resources.items() if r.custom}
    return resources, st.outputs


def warnings_about(result: RunResult, service: str) -> list[str]:
    return [w for w in result.warnings() if w.startswith(f"silo:images.{service}:")]


# -- (a) active tags ------------------------------------------------------------------------------------
def test_active_pin_with_digest_runs_the_digest_and_records_the_tag(pinned: Pinned) -> None:
    program = pinned.program
    kong = machines_by_service(program)["kong"]
    tag = IMAGES["kong"]
    assert kong["config"]["image"] == expected_ref("kong", tag) == f"kong@{entry('kong', tag).digest}"
    assert kong["config"]["metadata"]["silo_image_tag"] == tag
    assert program.resource("devenv-acme-erp-kong-machine").outputs["metadata"]["silo_image_tag"] == tag
    # Immutable and current: nothing to warn about.
    assert warnings_about(pinned.preview, "kong") == [] and warnings_about(pinned.up, "kong") == []


def test_active_pin_without_digest_runs_the_tag_and_the_guardrails_say_so(pinned: Pinned) -> None:
    """Deployed by tag; said once, by the guardrails' images-by-digest advisory per machine (test_policy.py),
    not by the program as well: the CLI shows a program warning three times (issue 25, "each warning once")."""
    program = pinned.program
    auth = machines_by_service(program)["auth"]
    tag = IMAGES["auth"]
    assert auth["config"]["image"] == f"supabase/gotrue:{tag}"
    assert auth["config"]["metadata"]["silo_image_tag"] == tag
    for result in (pinned.preview, pinned.up):
        assert warnings_about(result, "auth") == []


# -- (b) deprecated tags: honoured (the seed silently ignored them), with a warning ------------------------
def test_deprecated_pin_is_deployed_with_a_warning_naming_the_tag(pinned: Pinned) -> None:
    program = pinned.program
    machines = machines_by_service(program)
    for service in ("pg", "storage"):
        tag = IMAGES[service]
        default = CATALOG.resolve(service)
        machine = machines[service]
        assert machine["state"] == "started"
        assert machine["config"]["image"] == expected_ref(service, tag) != default.ref, service
        assert machine["config"]["metadata"]["silo_image_tag"] == tag
        assert program.resource(f"devenv-acme-erp-{service}-machine").outputs["metadata"]["silo_image_tag"] == tag
        for result in (pinned.preview, pinned.up):
            assert any(tag in w and "deprecated" in w for w in warnings_about(result, service)), result.warnings()
    # The data volume is mounted as usual on the deprecated pg image.
    volumes = program.emulator.snapshot()["volumes"]
    assert [volumes[m["volume"]]["name"] for m in machines["pg"]["config"]["mounts"]] == ["pg_data"]
    assert_state_matches_emulator(program)


# -- (c) disabled and (d) unknown tags: preview fails before anything is created ---------------------------
REFUSED = [
    pytest.param("rest", "v12.2.12", "disabled", id="disabled-rest"),
    pytest.param("auth", "v2.177.0", "disabled", id="disabled-auth"),
    pytest.param("meta", "v0.91.0", "disabled", id="disabled-meta"),
    pytest.param("pg", "15.9.9.999", "not in the image catalog", id="unknown-tag"),
    pytest.param("kong", "15.8.1.085", "not in the image catalog", id="another-services-tag"),
]


@pytest.mark.parametrize(("service", "tag", "reason"), REFUSED)
def test_refused_pin_fails_preview_on_an_empty_account_before_anything_is_created(
    service: str, tag: str, reason: str, silo_program: SiloProgram
) -> None:
    if reason == "disabled":
        assert entry(service, tag).status == "disabled"
    else:
        assert CATALOG.entry(service, tag) is None

    result = silo_program.run("preview", studio="false", images={service: tag})

    assert not result.ok
    assert result.error is not None
    assert f"silo:images.{service}: tag {tag!r}" in result.error and reason in result.error, result.error
    assert silo_program.emulator.calls() == []
    assert silo_program.state().resources == {}


@pytest.mark.parametrize(("service", "tag", "reason"), [REFUSED[0], REFUSED[3]])
def test_refused_pin_on_a_running_silo_fails_preview_and_up_without_touching_it(
    service: str, tag: str, reason: str, pinned: Pinned, clone_baseline: Callable[[Baseline], SiloProgram]
) -> None:
    program = clone_baseline(pinned.baseline)
    before, state_before = program.emulator.snapshot(), recorded(program)
    program.emulator.clear_calls()
    for op in ("preview", "up"):
        result = program.run(op, images={**IMAGES, service: tag})
        assert not result.ok, op
        assert result.error is not None
        assert f"silo:images.{service}" in result.error and reason in result.error, result.error
    assert [c for c in program.emulator.calls() if c["mutating"]] == []
    assert program.emulator.snapshot() == before
    assert recorded(program) == state_before


# -- changing a pin ------------------------------------------------------------------------------------------
def test_changing_a_pin_on_a_running_silo_updates_exactly_that_machine(
    pinned: Pinned, clone_baseline: Callable[[Baseline], SiloProgram]
) -> None:
    program = clone_baseline(pinned.baseline)
    current = CATALOG.resolve("storage")  # the active default, moving off the deprecated pin
    images = {**IMAGES, "storage": current.tag}
    before = machines_by_service(program)
    program.emulator.clear_calls()

    preview = program.run("preview", images=images)
    assert preview.ok, preview.error
    # The machine, and the gate that waits for its new version.
    assert preview.changed() == {"devenv-acme-erp-storage-machine": "update", "devenv-acme-erp-ready": "update"}
    assert [c for c in program.emulator.calls() if c["mutating"]] == []

    up = program.up(images=images)
    assert up.changed() == {"devenv-acme-erp-storage-machine": "update", "devenv-acme-erp-ready": "update"}
    after = machines_by_service(program)
    assert set(after) == set(before)
    storage = after["storage"]
    assert storage["id"] == before["storage"]["id"], "updated in place, not replaced"
    assert storage["config"]["image"] == current.ref and storage["config"]["metadata"]["silo_image_tag"] == current.tag
    assert storage["config"]["mounts"] == before["storage"]["config"]["mounts"], "same data volume"
    assert storage["state"] == "started"
    for service, machine in after.items():
        if service != "storage":
            assert machine["instance_id"] == before[service]["instance_id"], f"{service} was touched"
    assert [w for w in warnings_about(up, "storage") if "deprecated" in w] == []
    assert_state_matches_emulator(program)
