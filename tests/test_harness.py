"""Engine harness tests: the toy program (tests/harness_programs/toy) run through `python -m harness`,
with its dynamic provider called in the SDK's own provider host. The toy provider records every call
(method, resource name, pid, start/end) to a JSON-lines file so we can see exactly what the "engine" did."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import state as harness_state
from harness.builtins import (
    DIFF_NONE,
    LOWER,
    RandomPasswordProvider,
    RandomStringProvider,
    RandomUuidProvider,
)
from harness.engine import HarnessResult, run

pytestmark = pytest.mark.harness

REPO_ROOT = Path(__file__).resolve().parent.parent
TOY_DIR = REPO_ROOT / "tests" / "harness_programs" / "toy"
TOKEN = "tok-9f3a7c1e-very-secret"
THINGS = {"a", "b", "c", "s", "grp-child", "p"}
DIFFED = THINGS - {"p"}  # "p" has no diff(): the host answers DIFF_UNKNOWN
MUTATIONS = {"create", "update", "delete"}


class Toy:
    """One toy stack: its own state dir, config file and provider call record."""

    def __init__(self, root: Path, stack: str = "test") -> None:
        self.root = root
        self.stack = stack
        self.state_dir = root / "state"
        self.record = root / "calls.jsonl"
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def run(self, op: str, fail: str = "", secrets: dict[str, str] | None = None, **config: Any) -> HarnessResult:
        base = yaml.safe_load((TOY_DIR / "Pulumi.test.yaml").read_text())["config"]
        base.update({f"toy:{k}": v if isinstance(v, (dict, list)) else str(v) for k, v in config.items()})
        config_file = self.root / f"Pulumi.{self.stack}.yaml"
        config_file.write_text(yaml.safe_dump({"config": base}))
        self.record.unlink(missing_ok=True)
        return run(
            op,
            self.stack,
            TOY_DIR,
            self.state_dir,
            config_file=config_file,
            secrets={"toy:token": TOKEN} if secrets is None else secrets,
            env={"TOY_RECORD": str(self.record), "TOY_FAIL": fail},
            timeout=300,
        )

    def calls(self, method: str | None = None) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        rows = [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]
        return [r for r in rows if method is None or r["method"] == method]

    def names(self, method: str) -> list[str]:
        return [r["name"] for r in self.calls(method)]

    def load(self) -> harness_state.StackState:
        return harness_state.load(self.state_dir, self.stack)

    def raw_state(self) -> str:
        return (self.state_dir / f"{self.stack}.json").read_text()

    def custom_names(self) -> set[str]:
        return {r.name for r in self.load().resources.values() if r.custom}

    def copy_from(self, other: Toy) -> Toy:
        shutil.copytree(other.state_dir, self.state_dir, dirs_exist_ok=True)
        return self


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A stack brought up twice: the first up (with slow creates, to observe concurrency) and a no-op second."""
    toy = Toy(tmp_path_factory.mktemp("deployed"))
    first = toy.run("up", delay=0.5)
    first_calls = toy.calls()
    first_state = toy.load()
    second = toy.run("up", delay=0.5)
    return {"toy": toy, "first": first, "first_calls": first_calls, "first_state": first_state, "second": second}


@pytest.fixture
def toy(tmp_path: Path) -> Toy:
    return Toy(tmp_path)


def _overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_first_up_creates_everything_in_the_provider_host(deployed: dict[str, Any]) -> None:
    first: HarnessResult = deployed["first"]
    assert first.ok, first.error
    assert set(first.ops("create")) == THINGS | {"pw", "rid", "grp", "toy-test"}
    creates = [c for c in deployed["first_calls"] if c["method"] == "create"]
    assert sorted(c["name"] for c in creates) == sorted(THINGS)
    # Provider code ran in the SDK's provider host, not in the harness process that ran the program.
    host_pids = {c["pid"] for c in deployed["first_calls"]}
    assert len(host_pids) == 1
    assert int(first.outputs["harness_pid"]) not in host_pids
    # b consumed a's computed output; the component child got the engine-style URN.
    assert first.outputs["b_upstream"] == first.outputs["a_serial"]
    child_type = "toy:index:Group$pulumi-python:dynamic/toy:Thing"
    assert first.outputs["child_urn"] == f"urn:pulumi:test::toy::{child_type}::grp-child"
    assert first.outputs["tags"] == {"team": "infra", "tier": "dev"}
    assert "toy program warning" in first.warnings()


def test_independent_resources_are_created_concurrently(deployed: dict[str, Any]) -> None:
    creates = {c["name"]: c for c in deployed["first_calls"] if c["method"] == "create"}
    independent = [creates[n] for n in ("a", "c", "s")]
    assert any(_overlaps(x, y) for i, x in enumerate(independent) for y in independent[i + 1 :])
    # b depends on a's output, so it can only start after a finished.
    assert creates["b"]["start"] >= creates["a"]["end"]


def test_configure_receives_the_namespaced_stack_config(deployed: dict[str, Any]) -> None:
    configures = [c for c in deployed["first_calls"] if c["method"] == "configure"]
    assert len(configures) == 1  # one blob, one host: configured once
    cfg = configures[0]
    assert cfg["greeting"] == "hello"
    assert cfg["greeting_unqualified"] == "hello"  # Config.get prefixes the project name
    assert json.loads(cfg["tags"]) == {"team": "infra", "tier": "dev"}  # structured config arrives as JSON
    assert cfg["token_present"] and cfg["token_length"] == len(TOKEN)  # secret config unwrapped


def test_second_up_changes_nothing(deployed: dict[str, Any]) -> None:
    second: HarnessResult = deployed["second"]
    toy: Toy = deployed["toy"]
    assert second.ok, second.error
    assert {s["op"] for s in second.steps} == {"same"}
    assert second.changes == {"same": len(THINGS) + 4}
    assert not [c for c in toy.calls() if c["method"] in MUTATIONS]
    assert sorted(toy.names("diff")) == sorted(DIFFED)


def test_random_password_is_secret_and_stable(deployed: dict[str, Any]) -> None:
    toy: Toy = deployed["toy"]
    before = next(r for r in deployed["first_state"].resources.values() if r.name == "pw")
    after = next(r for r in toy.load().resources.values() if r.name == "pw")
    password = after.outputs["result"]
    assert password == before.outputs["result"]
    assert len(password) == 24 and password.isalnum()
    assert sum(ch.isupper() for ch in password) >= 3 and sum(ch.isdigit() for ch in password) >= 3
    assert "result" in after.secret_outputs
    assert deployed["second"].outputs["password"] == "[secret]"
    assert password not in toy.raw_state()
    rid = next(r for r in toy.load().resources.values() if r.name == "rid")
    assert len(rid.outputs["hex"]) == 16 and rid.id == rid.outputs["b64Url"]


def test_secrets_are_encrypted_in_state_and_hidden_in_outputs(deployed: dict[str, Any]) -> None:
    toy: Toy = deployed["toy"]
    raw = toy.raw_state()
    assert TOKEN not in raw
    assert deployed["second"].outputs["token_out"] == "[secret]"
    st = toy.load()
    assert st.outputs["token_out"] == TOKEN and "token_out" in st.secret_outputs
    s = next(r for r in st.resources.values() if r.name == "s")
    # A secret input stays secret as the output of the same name (the engine's annotateSecrets).
    assert s.inputs["token"] == TOKEN and {"token", "__provider"} <= s.secret_inputs
    assert {"token", "__provider"} <= s.secret_outputs
    assert all("__provider" in r.secret_inputs for r in st.resources.values() if r.name in THINGS)
    # A wrong passphrase cannot read them.
    with pytest.raises(harness_state.StateError, match="PULUMI_CONFIG_PASSPHRASE"):
        harness_state.load(toy.state_dir, toy.stack, passphrase="not-the-passphrase")


def test_config_change_updates_in_place(deployed: dict[str, Any], toy: Toy) -> None:
    toy.copy_from(deployed["toy"])
    result = toy.run("up", size=3)
    assert result.ok, result.error
    assert sorted(result.ops("update")) == sorted(THINGS)
    assert sorted(toy.names("update")) == sorted(THINGS)
    assert not toy.calls("create") and not toy.calls("delete")
    a = next(r for r in toy.load().resources.values() if r.name == "a")
    assert a.outputs["size"] == 3 and a.outputs["serial"] == deployed["second"].outputs["a_serial"]


def test_replacement_creates_before_deleting_by_default(deployed: dict[str, Any], toy: Toy) -> None:
    toy.copy_from(deployed["toy"])
    result = toy.run("up", zone="west")
    assert result.ok, result.error
    assert sorted(result.ops("replace")) == ["a", "c"]
    assert "b" in result.ops("update")  # its input (a's serial) changed
    calls = toy.calls()
    order = [(c["method"], c["name"]) for c in calls if c["method"] in MUTATIONS]
    for name in ("a", "c"):
        assert order.index(("create", name)) < order.index(("delete", name))
    deleted = {c["name"]: c for c in toy.calls("delete")}
    assert deleted["a"]["zone"] == "east"  # the old object was deleted
    st = toy.load()
    assert not st.pending_deletions
    assert next(r for r in st.resources.values() if r.name == "a").outputs["zone"] == "west"


def test_delete_before_replace_deletes_first(deployed: dict[str, Any], toy: Toy) -> None:
    toy.copy_from(deployed["toy"])
    result = toy.run("up", zone="west", dbr="true")
    assert result.ok, result.error
    order = [(c["method"], c["name"]) for c in toy.calls() if c["method"] in MUTATIONS]
    assert order.index(("delete", "c")) < order.index(("create", "c"))  # c asked for delete-before-replace
    assert order.index(("create", "a")) < order.index(("delete", "a"))  # a did not


def test_delete_before_replace_deletes_the_dependents_it_replaces_first(toy: Toy) -> None:
    """As the engine does: a dependent whose provider says it must be replaced once its input from the
    delete-before-replace resource is unknown (d) is deleted before that resource and recreated after it;
    one that only updates (e) is left alone until it is updated."""
    assert toy.run("up", chain="true", dbr="true").ok
    result = toy.run("up", chain="true", dbr="true", zone="west")
    assert result.ok, result.error
    order = [(c["method"], c["name"]) for c in toy.calls() if c["method"] in MUTATIONS]
    assert order.index(("delete", "d")) < order.index(("delete", "c")) < order.index(("create", "c"))
    assert order.index(("create", "c")) < order.index(("create", "d"))
    assert ("delete", "e") not in order and ("update", "e") in order
    assert {"c", "d"} <= set(result.ops("replace")) and "e" in result.ops("update")
    st = toy.load()
    by_name = {r.name: r for r in st.resources.values()}
    assert by_name["d"].outputs["zone"] == by_name["c"].outputs["serial"] == by_name["e"].outputs["upstream"]
    assert not st.pending_deletions
    assert set(toy.run("up", chain="true", dbr="true", zone="west").changes) == {"same"}


def test_removed_resource_is_deleted_and_retained_one_is_forgotten(toy: Toy) -> None:
    assert toy.run("up", extra="true", kept="true").ok
    result = toy.run("up")
    assert result.ok, result.error
    assert sorted(result.ops("delete")) == ["extra", "kept"]
    assert toy.names("delete") == ["extra"]  # retainOnDelete: dropped from state, provider not called
    assert toy.custom_names() == THINGS | {"pw", "rid"}


def test_destroy_deletes_dependents_first(deployed: dict[str, Any], toy: Toy) -> None:
    toy.copy_from(deployed["toy"])
    result = toy.run("destroy")
    assert result.ok, result.error
    deletes = {c["name"]: c for c in toy.calls("delete")}
    assert set(deletes) == THINGS
    assert deletes["b"]["end"] <= deletes["a"]["start"]  # b depends on a
    steps = [s["name"] for s in result.steps]
    assert steps.index("b") < steps.index("a")
    assert steps.index("pw") < steps.index("a")  # depends_on=[a]
    assert steps.index("grp-child") < steps.index("grp") < steps.index("toy-test")  # children before parents
    st = toy.load()
    assert st.resources == {} and st.outputs == {}


def test_protected_resource_blocks_replacement(toy: Toy) -> None:
    assert toy.run("up", guarded="true").ok
    result = toy.run("up", guarded="true", zone="west")
    assert not result.ok
    assert "guarded" in result.error and "protect" in result.error
    assert ("delete", "guarded") not in [(c["method"], c["name"]) for c in toy.calls()]

    removed = toy.run("up")  # dropping it from the program must not delete it either
    assert not removed.ok and "guarded" in removed.error and "protected" in removed.error
    assert not toy.calls("delete") and "guarded" in toy.custom_names()


def test_check_failure_names_the_property_and_creates_nothing(toy: Toy) -> None:
    result = toy.run("up", size=0)
    assert not result.ok and result.returncode != 0
    assert "check failed" in result.error and "size" in result.error and "at least 1" in result.error
    assert not toy.calls("create")
    assert toy.custom_names() == set()


def test_preview_plans_without_mutating(deployed: dict[str, Any], toy: Toy) -> None:
    fresh = toy.run("preview")
    assert fresh.ok, fresh.error
    assert set(fresh.ops("create")) >= THINGS | {"pw", "rid"}
    assert fresh.outputs["greeting"] == "hello"
    assert fresh.outputs["a_serial"] == "[unknown]"  # computed output: unknown until created
    assert toy.calls("check") and not [c for c in toy.calls() if c["method"] in MUTATIONS]
    assert not (toy.state_dir / "test.json").exists()

    toy.copy_from(deployed["toy"])
    before = toy.raw_state()
    changed = toy.run("preview", size=5, zone="west")
    assert changed.ok, changed.error
    assert sorted(changed.ops("replace")) == ["a", "c"]
    assert set(changed.ops("update")) == {"b", "s", "grp-child", "p"}
    assert toy.calls("diff") and not [c for c in toy.calls() if c["method"] in MUTATIONS]
    assert toy.raw_state() == before


def test_provider_failure_keeps_progress_and_next_up_converges(toy: Toy) -> None:
    failed = toy.run("up", fail="create:b")
    assert not failed.ok and failed.returncode != 0
    assert "toy create failed for b" in failed.error
    assert "b" not in toy.custom_names() and {"a", "c", "s"} <= toy.custom_names()
    # Registrations still queued when b failed are not started (which ones depends on timing).
    missing = (THINGS | {"pw", "rid"}) - toy.custom_names()

    healed = toy.run("up")
    assert healed.ok, healed.error
    created = set(toy.names("create"))
    assert "b" in created and created <= missing
    assert not toy.calls("delete") and not toy.calls("update")
    assert toy.custom_names() == THINGS | {"pw", "rid"}


def test_stack_reference_reads_another_stacks_outputs(deployed: dict[str, Any], tmp_path: Path) -> None:
    peer = Toy(tmp_path, stack="peer")
    shutil.copy(deployed["toy"].state_dir / "test.json", peer.state_dir / "peer.json")
    main = Toy(tmp_path, stack="main")
    result = main.run("up", peer="organization/toy/peer", greeting="from-main")
    assert result.ok, result.error
    assert result.outputs["peer_greeting"] == "hello"
    assert result.outputs["peer_token"] == "[secret]"  # secret in the peer, secret here
    st = main.load()
    assert st.outputs["peer_token"] == TOKEN and "peer_token" in st.secret_outputs
    assert "StackReference" in {s["type"].rsplit(":", 1)[-1] for s in result.steps if s["op"] == "read"}


def test_failed_delete_of_replaced_object_is_retried_next_up(deployed: dict[str, Any], toy: Toy) -> None:
    toy.copy_from(deployed["toy"])
    failed = toy.run("up", zone="west", fail="delete:a")
    assert not failed.ok and "toy delete failed for a" in failed.error
    st = toy.load()
    assert [(p.name, p.outputs["zone"]) for p in st.pending_deletions] == [("a", "east")]
    assert next(r for r in st.resources.values() if r.name == "a").outputs["zone"] == "west"

    healed = toy.run("up", zone="west")
    assert healed.ok, healed.error
    assert toy.names("delete") == ["a"] and healed.ops("delete") == ["a"]
    assert not toy.calls("create") and not toy.calls("update")
    assert toy.load().pending_deletions == []


def test_program_error_fails_the_run_without_deleting_anything(deployed: dict[str, Any], toy: Toy) -> None:
    toy.copy_from(deployed["toy"])
    result = toy.run("up", explode="true")
    assert not result.ok and result.returncode != 0
    assert "toy program exploded" in result.error
    assert not toy.calls("delete") and not result.ops("delete")
    assert toy.custom_names() == THINGS | {"pw", "rid"}


def test_cli_prints_steps_and_hides_secrets(toy: Toy) -> None:
    config_file = toy.root / "Pulumi.test.yaml"
    config_file.write_text((TOY_DIR / "Pulumi.test.yaml").read_text())
    cmd = [sys.executable, "-m", "harness", "up", "--stack", "test", "--project-dir", str(TOY_DIR)]
    cmd += ["--state-dir", str(toy.state_dir), "--config-file", str(config_file), "--secret", f"toy:token={TOKEN}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "+  create   pulumi-python:dynamic/toy:Thing  b" in proc.stdout
    assert 'token_out: "[secret]"' in proc.stdout and 'greeting: "hello"' in proc.stdout
    assert TOKEN not in proc.stdout + proc.stderr


def test_encrypted_stack_config_is_refused_with_the_key_named(toy: Toy) -> None:
    config_file = toy.root / "Pulumi.test.yaml"
    config_file.write_text(yaml.safe_dump({"config": {"toy:size": "1", "toy:token": {"secure": "v1:AAAA"}}}))
    result = run("up", "test", TOY_DIR, toy.state_dir, config_file=config_file)
    assert not result.ok
    assert "toy:token" in result.error and "--secret" in result.error
    assert not (toy.state_dir / "test.json").exists()


def test_random_builtins_follow_the_upstream_rules() -> None:
    urn = "urn:pulumi:test::toy::random:index/randomPassword:RandomPassword::pw"
    password = RandomPasswordProvider()
    inputs, failures = password.check(urn, {}, {"length": 12, "upper": False, "numeric": False, "overrideSpecial": "#"})
    assert failures == []
    _, outs = password.create(urn, inputs)
    assert len(outs["result"]) == 12 and set(outs["result"]) <= set(LOWER + "#")
    _, failures = password.check(urn, {}, {"length": 4, "minLower": 3, "minUpper": 3})
    assert [prop for prop, _ in failures] == ["length"]
    assert password.diff(urn, "none", outs, {**inputs, "length": 13}, inputs).replaces == ["length"]
    assert password.diff(urn, "none", outs, inputs, inputs).changes == DIFF_NONE

    id_, outs = RandomStringProvider().create(urn, RandomStringProvider().check(urn, {}, {"length": 8})[0])
    assert id_ == outs["result"] and len(id_) == 8
    id_, outs = RandomUuidProvider().create(urn, {})
    assert str(uuid.UUID(id_)) == outs["result"]
