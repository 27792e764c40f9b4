"""The silo guardrails (policy/) under the real Pulumi CLI (issue 14): each mandatory rule fails a preview
naming the rule and the resource's URN, and passes once the resource is fixed; each advisory shows as a
warning; the real stacks (Pulumi.dev.yaml, the control stack, a silo with towns) pass with no
mandatory violation; enforcement levels are set per stack with a `--policy-pack-config` file, and so are
the waivers of mandatory rules (issue 25 item 9): the stack's own config (silo:allowDataDeletion,
silo:pgPublic) waives nothing, the policy config does. The pack imports the project as an installed
package and patches nothing of pulumi_policy, so it can be published as it is.

Most mandatory rules cannot be broken through valid config, because the config model and the providers
refuse first. Those are broken by tests/program/guardrails_program, a Pulumi program that registers the
offending Fly resources itself (through the real resource classes where their providers accept them, or
under the same type token with an accepting provider where they do not), run by the real CLI like the
real program; that is what a program change bypassing the program's own checks would look like.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from components.domain.naming import sandbox_id
from emulators.fly import FlyEmulator
from engine.guardrails import PR_SILOS_CONFIG, config_file, describe, policy_args
from engine.runner import RunResult
from policy.rules import RULES, WAIVERS
from tests.fixtures.program import TOWNS_SILO, SiloProgram, StackProgram, control_env, fly_env

pytestmark = pytest.mark.engine

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICY_DIR = REPO_ROOT / "policy"
FIXTURE_PROJECT = Path(__file__).resolve().parent / "guardrails_program"
FIXTURE_NAME = "guardrails-fixture"
STACK = "guardrails"
MANDATORY = [r.name for r in RULES if r.level.value == "mandatory"]
ADVISORY = [r.name for r in RULES if r.level.value == "advisory"]
TOWN = sandbox_id("user-1", "alpha")
PG_DIGEST = "supabase/postgres@sha256:af083ef64d0408c8f098ee6f5c364a59b26f36fbc0f3a334a62c5c1d57362e9b"
SILO = {"silo:client": "acme", "silo:app": "erp", "silo:allowDataDeletion": "false"}
# What the stack author can say in the stack's config; it waives no mandatory rule.
STACK_WAIVES = {"silo:allowDataDeletion": "true", "silo:pgPublic": "true"}
# What the organisation says in the stack's policy config (policy/config/<stack>.json) to waive them.
ALLOW_DATA_DELETION = {"data-volumes-kept": {"allowDataDeletion": True}}
ALLOW_PUBLIC_PG = {"pg-private-or-tls": {"pgPublic": True}}
NETWORK = "devenv-acme-erp"  # the silo's own network
PRIVATE_KEY = (
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC-secret-key-material\n-----END PRIVATE KEY-----\n"
)


def app(service: str) -> str:
    return f"devenv-acme-erp-{service}"


def fly_toml(
    app_name: str,
    *,
    port: int,
    env: dict[str, str] | None = None,
    handlers: list[str] | None = None,
    files: dict[str, str] | None = None,
) -> str:
    """A minimal fly.toml the machine provider accepts: one service, autostop on; `files` (guest path →
    text) as `[[files]] raw_value`, which the fly.toml carries as plain text."""
    env_lines = "".join(f"  {k} = {json.dumps(v)}\n" for k, v in (env or {}).items())
    handler_line = f"    handlers = {json.dumps(handlers)}\n" if handlers else ""
    file_lines = "".join(
        f"\n[[files]]\n  guest_path = {json.dumps(path)}\n  raw_value = {json.dumps(text)}\n"
        for path, text in (files or {}).items()
    )
    return (
        f'app = "{app_name}"\nprimary_region = "yul"\n\n[env]\n{env_lines}\n'
        f'[[services]]\n  protocol = "tcp"\n  internal_port = {port}\n  auto_stop_machines = "stop"\n'
        f"  auto_start_machines = true\n\n  [[services.ports]]\n    port = {port}\n{handler_line}\n"
        f'[[vm]]\n  size = "shared-cpu-1x"\n  memory = "256mb"\n{file_lines}'
    )


def machine(name: str, service: str, image: str, *, bypass: bool = False, **toml: Any) -> dict[str, Any]:
    args = {
        "app": app(service),
        "name": service,
        "region": "yul",
        "image": image,
        "fly_toml": fly_toml(app(service), **toml),
        "metadata": {"silo_service": service},
    }
    return {"kind": "Machine", "name": name, "args": args, "bypass": bypass}


def res(kind: str, logical: str, /, bypass: bool = False, **args: Any) -> dict[str, Any]:
    return {"kind": kind, "name": logical, "args": args, "bypass": bypass}


def urn(kind: str, name: str) -> str:
    return f"urn:pulumi:{STACK}::{FIXTURE_NAME}::pulumi-python:dynamic/fly:{kind}::{name}"


# Each mandatory rule broken, one resource at a time: (rule, the offending resource's URN). The broken stack
# runs with STACK_WAIVES in its config: the pg app's public IP and the deletable volume and app are refused
# all the same, because only the policy config waives a mandatory rule.
BROKEN = [
    ("data-volumes-kept", urn("App", "pg-app")),
    ("data-volumes-kept", urn("Volume", "pg-data")),
    ("pg-private-or-tls", urn("IpAssignment", "pg-ip-v4")),
    ("studio-meta-private", urn("IpAssignment", "studio-ip")),
    ("studio-meta-private", urn("IpAssignment", "meta-ip")),
    ("no-secrets-in-env", urn("Machine", "auth-url-with-password")),
    ("no-secrets-in-env", urn("Machine", "auth-secret-named-env")),
    ("no-secrets-in-env", urn("Machine", "storage-key-in-file")),
    ("images-pinned", urn("Machine", "rest-untagged")),
    ("images-pinned", urn("Machine", "rest-disabled-tag")),
    ("images-pinned", urn("Machine", "kong-latest")),
    ("fly-names-valid", urn("App", "long-app")),
    ("fly-names-valid", urn("Volume", "bad-volume")),
    ("towns-on-own-network", urn("App", "town-app")),
    ("towns-on-own-network", urn("App", "town-app-no-network")),
    ("silos-on-own-network", urn("App", "rest-app-no-network")),
    ("silos-on-own-network", urn("App", "kong-app-other-silo")),
    ("silos-on-own-network", urn("App", "meta-app-town-network")),
]
BAD_RESOURCES = [
    res("App", "pg-app", name=app("pg"), org="acme", network=NETWORK, keep_volumes=False),
    res("Volume", "pg-data", app=app("pg"), name="pg_data", region="yul", size_gb=10, allow_delete=True),
    res("IpAssignment", "pg-ip-v4", app=app("pg"), type="v4"),
    res("IpAssignment", "studio-ip", app=app("studio"), type="shared_v4"),
    res("IpAssignment", "meta-ip", app=app("meta"), type="v6"),
    # A non-secret name holding a connection string with its password: the provider lets it through.
    machine(
        "auth-url-with-password",
        "auth",
        "supabase/gotrue:v2.186.0",
        port=9999,
        env={"SUPABASE_DB_CONNECTION": "postgres://supabase_admin:hunter2@devenv-acme-erp-pg.flycast:5432/postgres"},
    ),
    # A secret-named variable: the provider's fly.toml check refuses it, a bypassing program would not.
    machine(
        "auth-secret-named-env",
        "auth",
        "supabase/gotrue:v2.186.0",
        port=9999,
        env={"GOTRUE_JWT_SECRET": "super-secret-jwt-signing-key-of-the-silo"},
        bypass=True,
    ),
    # A private key shipped inline as a machine file: the fly.toml and the machine config hold it in clear.
    machine(
        "storage-key-in-file",
        "storage",
        "supabase/storage-api:v1.44.2",
        port=5000,
        files={"/etc/storage/tls.key": PRIVATE_KEY},
    ),
    machine("rest-untagged", "rest", "postgrest/postgrest", port=3000),
    machine("rest-disabled-tag", "rest", "postgrest/postgrest:v12.2.12", port=3000),
    machine("kong-latest", "kong", "kong:latest", port=8000, bypass=True),
    res("App", "long-app", bypass=True, name="devenv-" + "x" * 60, org="acme"),
    res("Volume", "bad-volume", bypass=True, app=app("storage"), name="Storage-Data", region="yul", size_gb=5),
    res("App", "town-app", name=TOWN, org="acme", network=NETWORK),
    # No network at all: Fly puts the app on the org's default network, shared with every such app.
    res("App", "town-app-no-network", name=sandbox_id("user-2", "beta"), org="acme"),
    res("App", "rest-app-no-network", name=app("rest"), org="acme"),
    res("App", "kong-app-other-silo", name=app("kong"), org="acme", network="devenv-acme-crm"),
    res("App", "meta-app-town-network", name=app("meta"), org="acme", network=TOWN),
]
# The same resources, fixed; the pg app is public here, so the pg_tls half of its rule is in play.
GOOD_RESOURCES = [
    res("App", "pg-app", name=app("pg"), org="acme", network=NETWORK),
    res("Volume", "pg-data", app=app("pg"), name="pg_data", region="yul", size_gb=10),
    res("IpAssignment", "pg-ip-v4", app=app("pg"), type="v4"),
    machine("pg-machine", "pg", PG_DIGEST, port=5432, handlers=["pg_tls"]),
    res("IpAssignment", "studio-ip", app=app("studio"), type="private_v6"),
    res("IpAssignment", "meta-ip", app=app("meta"), type="private_v6"),
    machine(
        "auth-plain-env",
        "auth",
        "supabase/gotrue:v2.186.0",
        port=9999,
        env={"GOTRUE_JWT_EXP": "3600", "API_EXTERNAL_URL": "https://devenv-acme-erp-kong.fly.dev"},
    ),
    machine(
        "storage-plain-file",
        "storage",
        "supabase/storage-api:v1.44.2",
        port=5000,
        files={"/etc/storage/limits.conf": "file_size_limit = 52428800\nkey_file = /run/secrets/tls.key\n"},
    ),
    machine("rest-pinned", "rest", "postgrest/postgrest:v14.5", port=3000),
    res("App", "rest-app", name=app("rest"), org="acme", network=NETWORK),
    res("App", "town-app", name=TOWN, org="acme", network=TOWN),
]
# silo:pgPublic with a pg machine that serves its port without pg_tls.
CLEAR_PG = [
    res("IpAssignment", "pg-ip-v4", app=app("pg"), type="v4"),
    machine("pg-machine", "pg", PG_DIGEST, port=5432),
]


def mandatory(result: RunResult) -> list[tuple[str, str]]:
    return sorted((v["policy"], v["urn"]) for v in result.policy_violations if v["level"] == "mandatory")


def advisories(result: RunResult, rule: str) -> list[dict[str, str]]:
    return [v for v in result.policy_violations if v["policy"] == rule and v["level"] == "advisory"]


def policy_config_dir(where: Path, stack: str, config: dict[str, Any]) -> Path:
    """A policy config directory holding `config` as <stack>.json, the way policy/config/ holds it."""
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{stack}.json").write_text(json.dumps(config))
    return where


class Fixture(StackProgram):
    """The guardrails test program, one stack, against `emulator`."""

    def __init__(self, emulator: FlyEmulator, root: Path) -> None:
        super().__init__(root, STACK, fly_env(emulator), project=FIXTURE_PROJECT)

    def run(
        self,
        op: str,
        resources: list[dict[str, Any]],
        *,
        config_dir: Path | None = None,
        policy_config: dict[str, Any] | None = None,
        **config: Any,
    ) -> RunResult:
        """`op` on `resources` with the stack's `config`; the policy config from `config_dir`, or
        `policy_config` written as this stack's file, else none."""
        stack_config = {**SILO, **config, "fixture:resources": resources}
        if policy_config is not None:
            config_dir = policy_config_dir(self.root / "policy-config", STACK, policy_config)
        args = policy_args(STACK, config_dir) if config_dir else policy_args(STACK, self.root / "no-config")
        return self.run_config(op, stack_config, **args)


@pytest.fixture(scope="module")
def emulator(fly_emulator_module: FlyEmulator) -> FlyEmulator:
    return fly_emulator_module


@pytest.fixture(scope="module")
def bad_preview(emulator: FlyEmulator, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return Fixture(emulator, tmp_path_factory.mktemp("bad")).run("preview", BAD_RESOURCES, **STACK_WAIVES)


@pytest.fixture(scope="module")
def good_preview(emulator: FlyEmulator, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return Fixture(emulator, tmp_path_factory.mktemp("good")).run(
        "preview", GOOD_RESOURCES, policy_config=ALLOW_PUBLIC_PG
    )


# -- every mandatory rule fails a preview, naming the rule and the resource --------------------------------
@pytest.mark.parametrize(("rule", "resource"), BROKEN, ids=[f"{r}-{u.rsplit('::', 1)[1]}" for r, u in BROKEN])
def test_a_broken_rule_fails_the_preview_naming_rule_and_urn(bad_preview: RunResult, rule: str, resource: str) -> None:
    assert not bad_preview.ok
    assert (rule, resource) in mandatory(bad_preview), mandatory(bad_preview)
    # What the user reads: the CLI's policy summary names the rule; the run's error names rule and URN.
    assert re.search(rf"\[mandatory\]\s+{re.escape(rule)}\b", bad_preview.stdout), bad_preview.stdout[-3000:]
    assert f"{rule}: {resource}" in (bad_preview.error or "")
    assert resource in bad_preview.stdout


def test_the_broken_stack_reports_exactly_the_broken_resources(bad_preview: RunResult) -> None:
    assert mandatory(bad_preview) == sorted(set(BROKEN))
    # The stack's config said silo:allowDataDeletion and silo:pgPublic; the messages say where the waiver is.
    messages = {v["urn"]: v["message"] for v in bad_preview.policy_violations if v["level"] == "mandatory"}
    waiver = 'policy/config/guardrails.json {"data-volumes-kept": {"allowDataDeletion": true}}'
    assert waiver in messages[urn("Volume", "pg-data")] and waiver in messages[urn("App", "pg-app")]
    assert (
        'policy/config/guardrails.json {"pg-private-or-tls": {"pgPublic": true}}'
        in messages[urn("IpAssignment", "pg-ip-v4")]
    )
    # Nothing is created or deleted by a failed preview, and no secret value is quoted back.
    assert "hunter2" not in bad_preview.text and "super-secret-jwt" not in bad_preview.text
    assert "secret-key-material" not in bad_preview.text


def test_the_fixed_resources_pass_with_no_mandatory_violation(good_preview: RunResult) -> None:
    assert good_preview.ok, good_preview.error
    assert mandatory(good_preview) == []
    assert "silo-guardrails@v1.0.0" in good_preview.stdout  # the pack ran
    # Each rule the broken stack fails is applied to its fixed resource here (not skipped as unknown).
    assert not [v for v in good_preview.policy_violations if "can't run policy" in v["message"]]


def test_pg_public_without_pg_tls_fails(emulator: FlyEmulator, tmp_path: Path) -> None:
    result = Fixture(emulator, tmp_path).run("preview", CLEAR_PG, policy_config=ALLOW_PUBLIC_PG)
    assert not result.ok
    assert mandatory(result) == [("pg-private-or-tls", urn("Machine", "pg-machine"))]
    [violation] = [v for v in result.policy_violations if v["level"] == "mandatory"]
    assert "5432" in violation["message"] and "pg_tls" in violation["message"]


def test_enforcement_levels_are_set_per_stack_with_a_policy_pack_config(emulator: FlyEmulator, tmp_path: Path) -> None:
    config_dir = tmp_path / "policy-config"
    config_dir.mkdir()
    (config_dir / f"{STACK}.json").write_text(json.dumps({"all": "advisory", "no-secrets-in-env": "disabled"}))
    result = Fixture(emulator, tmp_path / "stack").run("preview", BAD_RESOURCES, config_dir=config_dir)
    assert result.ok, result.error
    assert mandatory(result) == []
    reported = {(v["policy"], v["urn"]) for v in result.policy_violations if v["level"] == "advisory"}
    assert {b for b in BROKEN if b[0] != "no-secrets-in-env"} <= reported
    assert not [v for v in result.policy_violations if v["policy"] == "no-secrets-in-env"]


def test_a_waiver_of_the_wrong_type_is_refused_by_the_cli(emulator: FlyEmulator, tmp_path: Path) -> None:
    # The rules' config schemas reach the CLI (the pack's GetAnalyzerInfo), which checks the file against
    # them before anything runs: "yes" is not a boolean, so it waives nothing and says so.
    result = Fixture(emulator, tmp_path).run(
        "preview", BAD_RESOURCES[:2], policy_config={"data-volumes-kept": {"allowDataDeletion": "yes"}}
    )
    assert not result.ok
    assert (
        "data-volumes-kept: allowDataDeletion: Invalid type. Expected: boolean, given: string"
        in (result.error or "") + result.stdout + result.stderr
    ), (result.error, result.stdout[-2000:], result.stderr[-2000:])


# -- a data volume's replacement, which the policy sees through the provider's check ----------------------------
def test_replacing_a_data_volume_fails_unless_the_policy_config_allows_data_deletion(
    fly_emulator: FlyEmulator, tmp_path: Path
) -> None:
    # Its own emulator: the app this `up` creates must not be in the world the real program previews.
    stack = Fixture(fly_emulator, tmp_path)
    volume = {"app": app("storage"), "name": "storage_data", "region": "yul", "size_gb": 5}
    deployed = [
        res("App", "storage-app", name=app("storage"), org="acme", network=NETWORK),
        res("Volume", "storage-data", **volume),
    ]
    up = stack.run("up", deployed)
    assert up.ok, up.error
    assert mandatory(up) == []

    renamed = [deployed[0], res("Volume", "storage-data", **{**volume, "name": "storage_files"})]
    refused = stack.run("preview", renamed)
    assert not refused.ok
    assert mandatory(refused) == [("data-volumes-kept", urn("Volume", "storage-data"))]
    assert "replaces data volume storage_files" in refused.error and "it changes name" in refused.error

    # The stack's own config does not waive the rule: only its policy config does.
    stack_says = stack.run("preview", renamed, **{"silo:allowDataDeletion": "true"})
    assert not stack_says.ok
    assert mandatory(stack_says) == [("data-volumes-kept", urn("Volume", "storage-data"))]
    allowed = stack.run("preview", renamed, policy_config=ALLOW_DATA_DELETION, **{"silo:allowDataDeletion": "true"})
    assert allowed.ok, allowed.error
    assert mandatory(allowed) == []
    assert allowed.changed() == {"storage-data": "replace"}
    # A region move under silo:regionMigration is the documented migration (the old volume is kept).
    moved = [deployed[0], res("Volume", "storage-data", **{**volume, "region": "yyz", "allow_region_change": True})]
    migration = stack.run("preview", moved)
    assert migration.ok, migration.error
    assert migration.changed() == {"storage-data": "replace"} and mandatory(migration) == []


# -- the real program ---------------------------------------------------------------------------------------
@dataclass
class Previews:
    dev: RunResult
    advised: RunResult
    deletable: RunResult


@pytest.fixture(scope="module")
def real_previews(emulator: FlyEmulator, tmp_path_factory: pytest.TempPathFactory) -> Previews:
    dev = SiloProgram(emulator, tmp_path_factory.mktemp("dev")).run("preview", engine_args=policy_args("dev"))
    # The budget is policy config; so is the waiver that lets this stack's config allow data deletion.
    root = tmp_path_factory.mktemp("advised")
    config_dir = policy_config_dir(
        root / "policy", "dev", {**ALLOW_DATA_DELETION, "monthly-budget": {"monthlyBudget": 15}}
    )
    advised = SiloProgram(emulator, root).run(
        "preview", engine_args=policy_args("dev", config_dir), autoStopMinutes="0", allowDataDeletion="true"
    )
    # The same stack config without the waiver.
    deletable = SiloProgram(emulator, tmp_path_factory.mktemp("deletable")).run(
        "preview", engine_args=policy_args("dev", root / "none"), allowDataDeletion="true"
    )
    return Previews(dev, advised, deletable)


def test_the_dev_stack_passes_and_images_by_tag_are_advisories(real_previews: Previews) -> None:
    dev = real_previews.dev
    assert dev.ok, dev.error
    assert mandatory(dev) == []
    # The catalog has no digest for these services' default tags (catalog/images.yaml).
    by_tag = {v["urn"].rsplit("::", 1)[1] for v in advisories(dev, "images-by-digest")}
    assert by_tag == {f"{app(s)}-machine" for s in ("auth", "storage", "meta", "studio")}
    assert re.search(r"\[advisory\]\s+images-by-digest", dev.stdout)
    assert not advisories(dev, "autostop-on") and not advisories(dev, "monthly-budget")


def test_autostop_off_and_a_budget_below_the_estimate_are_advisories(real_previews: Previews) -> None:
    advised = real_previews.advised
    assert advised.ok, advised.error
    assert mandatory(advised) == []
    stopped_never = {v["urn"].rsplit("::", 1)[1] for v in advisories(advised, "autostop-on")}
    assert stopped_never == {f"{app(s)}-machine" for s in ("pg", "rest", "auth", "storage", "meta", "studio", "kong")}
    [budget] = advisories(advised, "monthly-budget")
    assert "above the monthlyBudget $15.00 of the stack's policy config" in budget["message"]
    assert budget["urn"].endswith("pulumi:pulumi:Stack::silo-dev")
    assert not advisories(real_previews.dev, "monthly-budget")  # no budget in its policy config


def test_the_real_program_deletes_data_only_with_the_policy_waiver(real_previews: Previews) -> None:
    # silo:allowDataDeletion=true in the stack's config: the program registers the data volumes deletable
    # (allow_delete) and every app without keep_volumes; refused at preview unless the policy config allows it.
    refused = real_previews.deletable
    assert not refused.ok
    kept = {(rule, u.rsplit("::", 1)[1]) for rule, u in mandatory(refused)}
    apps = {app(s) for s in ("pg", "rest", "auth", "storage", "meta", "studio", "kong")}
    volumes = {f"{app('pg')}-pg-data", f"{app('storage')}-storage-data"}
    assert kept == {("data-volumes-kept", name) for name in apps | volumes}, mandatory(refused)
    assert "policy violation (mandatory) data-volumes-kept" in (refused.error or "")
    # With the waiver (real_previews.advised), the same stack config passes.
    assert real_previews.advised.ok and mandatory(real_previews.advised) == []


@pytest.mark.db
def test_the_control_stack_and_a_silo_with_towns_pass(
    tmp_path: Path, pg_database: str, fly_emulator: FlyEmulator, cloudflare_emulator: Any
) -> None:
    env = {**fly_env(fly_emulator), **control_env(pg_database, cloudflare_emulator)}
    control = StackProgram(tmp_path, "control", env)
    silo = StackProgram(tmp_path, "dev", env)
    towns = [{"name": "alpha", "user": "user-1", "rigs": []}, {"name": "beta", "user": "user-2", "rigs": []}]
    control_up = control.run_config(
        "up", {"silo:kind": "control", "silo:backupBucket": "acme-gastown-backups"}, **policy_args("control")
    )
    assert control_up.ok, control_up.error
    assert mandatory(control_up) == []
    silo_up = silo.run_config("up", {**TOWNS_SILO, "silo:towns": json.dumps(towns)}, **policy_args("dev"))
    assert silo_up.ok, silo_up.error
    assert mandatory(silo_up) == []
    # The town machines were checked too: the catalog has no digest for the sandbox image yet.
    town_machines = {s.urn for s in silo_up.steps if s.type.endswith("fly:Machine") and "::gt-" in s.urn}
    assert len(town_machines) == 2
    assert town_machines <= {v["urn"] for v in advisories(silo_up, "images-by-digest")}


def test_pr_silos_get_the_shared_waiver_unless_they_have_their_own_file(tmp_path: Path) -> None:
    # `silo pr up` makes throwaway silos with silo:allowDataDeletion (components/cli/pr.py): the repository's
    # policy config allows it for every pr-<number> stack, and for no other stack.
    shared = POLICY_DIR / "config" / PR_SILOS_CONFIG
    assert json.loads(shared.read_text()) == ALLOW_DATA_DELETION
    assert config_file("pr-42") == shared and config_file("dev") is None and config_file("pr-silos") is None
    own = policy_config_dir(tmp_path, "pr-7", {"all": "advisory"}) / "pr-7.json"
    assert config_file("pr-7", tmp_path) == own
    # What `make preview` prints first shows the waiver.
    assert re.search(r"^  config\s+data-volumes-kept\s+allowDataDeletion=true$", "\n".join(describe("pr-42")), re.M)


def test_the_pack_imports_the_installed_project_and_patches_nothing(tmp_path: Path) -> None:
    # As the runner starts it (its directory first on sys.path) but from elsewhere, isolated (-I: no
    # PYTHONPATH, no current directory): `components` is the installed silo-infra, not a path added by hand.
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import rules, components, json; "
        "print(json.dumps({'components': components.__file__, 'rules': rules.__file__, "
        "'schemas': {p.name: dict(p.config_schema.properties) for p in rules.policies() if p.config_schema}}))"
    )
    done = subprocess.run(
        [str(REPO_ROOT / "venv" / "bin" / "python"), "-I", "-c", probe, str(POLICY_DIR)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["rules"] == str(POLICY_DIR / "rules.py")
    assert Path(found["components"]).parent.name == "components"
    schemas = found["schemas"]
    for rule, (prop, _) in WAIVERS.items():
        assert schemas[rule][prop]["type"] == "boolean" and schemas[rule][prop]["default"] is False
    assert schemas["monthly-budget"]["monthlyBudget"]["type"] == "number"
    # Nothing private of pulumi_policy, no sys.path edits, no stack config read by the pack.
    source = "\n".join(p.read_text() for p in sorted(POLICY_DIR.glob("*.py")))
    for forbidden in ("_PolicyAnalyzerServicer", "sys.path.", "pulumi.Config(", "ConfigureStack =", "set_config("):
        assert forbidden not in source, forbidden


def test_the_documented_guardrails_table_is_the_pack_s_rules() -> None:
    doc = (REPO_ROOT / "docs" / "guardrails.md").read_text()
    section = doc[doc.index("## Guardrails") : doc.index("## Drift check")]
    rows = re.findall(r"^\| `([a-z-]+)` \| (mandatory|advisory) \| (.+) \|$", section, re.M)
    assert rows == [(r.name, r.level.value, r.why) for r in RULES]


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("SUPABASE_ANON", "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ", "a JSON Web Token"),
        ("TLS_KEY_PEM", "-----BEGIN RSA PRIVATE KEY-----\nMIIE...", "a private key"),
        ("BACKUP_ID", "AKIAIOSFODNN7EXAMPLE", "an AWS access key id"),
        ("UPSTREAM", "https://deploy:s3cr3t@git.example.com/repo.git", "a URL with a password"),
        ("GOTRUE_JWT_SECRET", "anything-at-all", "is named like a secret"),
        ("GOTRUE_JWT_SECRET_IS_BASE64", "false", None),  # a switch, not a secret
        ("DB_PASSWORD_FILE", "/run/secrets/db", None),  # a path to a secret mounted as a file
        ("API_EXTERNAL_URL", "https://devenv-acme-erp-kong.fly.dev", None),
        ("GOTRUE_JWT_EXP", "3600", None),
    ],
)
def test_what_looks_like_a_secret_in_env(name: str, value: str, reason: str | None) -> None:
    from policy.rules import secret_reason

    found = secret_reason(name, value)
    assert (found is None) if reason is None else (found is not None and reason in found), found
    assert value not in (found or "")  # a violation never quotes the value
