"""What the silo and town components declare, under Pulumi mocks (no engine, no harness).

The resources' inputs are what the engine would store in state and hand to the providers, so these
tests see where a credential travels (a Fly secret, never the fly.toml or the registry row) and on
which Fly network each app is created.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import config as runtime_config

from components.config.model import SiloConfig, TownConfig
from tests.fixtures.pulumi_mocks import RecordingMocks, declare_silo, declare_town, is_secret, plain

CREDENTIALS = "https://x-access-token:ghp_SECRET123@github.com\n"


def silo(**overrides: Any) -> SiloConfig:
    base: dict[str, Any] = dict(
        client="acme", app="erp", fly_org="acme-erp", site_url="https://acme.example", studio=False,
        control_stack="acme/silo/control",
    )  # fmt: skip
    return SiloConfig(**{**base, **overrides})


def test_git_credentials_reach_the_town_only_as_a_secret(silo_mocks: RecordingMocks) -> None:
    runtime_config.set_all_config({"silo:gitCredentials": CREDENTIALS}, secret_keys=["silo:gitCredentials"])
    rigs = [{"name": "web", "url": "https://github.com/acme/private-web.git"}]
    town = TownConfig(name="alpha", user="u1", rigs=rigs)
    cfg = silo(towns=[town])
    declare_town(cfg, town)

    [secrets] = silo_mocks.of_type("Secrets")
    assert is_secret(secrets.inputs["values"])  # encrypted in state
    assert plain(secrets.inputs["values"])["GIT_CREDENTIALS"] == CREDENTIALS
    # Nowhere else: not the fly.toml (rigs.json, env), the machine, the registry rows, any other input.
    for resource in silo_mocks.resources:
        if resource is secrets:
            continue
        assert "ghp_SECRET123" not in repr(resource.inputs), resource.name
    [machine] = silo_mocks.of_type("Machine")
    assert "https://github.com/acme/private-web.git" in machine.inputs["fly_toml"]


def test_without_git_credentials_the_town_gets_no_such_secret(silo_mocks: RecordingMocks) -> None:
    town = TownConfig(name="alpha", user="u1")
    declare_town(silo(towns=[town]), town)
    [secrets] = silo_mocks.of_type("Secrets")
    assert "GIT_CREDENTIALS" not in plain(secrets.inputs["values"])


def test_public_postgres_gets_its_own_login_password(silo_mocks: RecordingMocks) -> None:
    from components.domain import services as svc
    from components.stacks.outputs import silo_outputs

    cfg = silo(pg_public=True)
    stack = declare_silo(cfg)
    pg_secrets = next(r for r in silo_mocks.of_type("Secrets") if r.name == "devenv-acme-erp-pg-secrets")
    values = plain(pg_secrets.inputs["values"])
    assert values[svc.PUBLIC_DB_PASSWORD_SECRET] not in ("", values["POSTGRES_PASSWORD"])
    for other in silo_mocks.of_type("Secrets"):  # no other app holds it
        if other is not pg_secrets:
            assert values[svc.PUBLIC_DB_PASSWORD_SECRET] not in repr(other.inputs), other.name
    seen: dict[str, str] = {}

    @pulumi.runtime.test
    def outputs() -> pulumi.Output:
        return silo_outputs(cfg, stack)["db_public_connection_string"].apply(lambda v: seen.update(url=v))

    outputs()
    assert seen["url"].startswith(f"postgres://{svc.PUBLIC_DB_ROLE}:{values[svc.PUBLIC_DB_PASSWORD_SECRET]}@")
    assert seen["url"].endswith("@devenv-acme-erp-pg.fly.dev:5432/postgres?sslmode=require")


def test_silo_render_writes_the_fly_toml_up_deploys(silo_mocks: RecordingMocks, tmp_path: Path) -> None:
    """`silo render` is the review copy of a deploy: each app's fly.toml is the one its machine gets, image
    included (the catalog's reference, by digest where it has one), for default and overridden tags."""
    from components.cli.main import main
    from components.config.model import load_stack_file

    stack = tmp_path / "Pulumi.test.yaml"
    config = {
        "silo:client": "acme", "silo:app": "erp", "silo:flyOrg": "acme-erp", "silo:region": "yul",
        "silo:siteUrl": "https://acme.example", "silo:studio": True,
        "silo:images": {"storage": "v1.33.5", "pg": "15.8.1.060"},  # deprecated tags: deployed with a warning
    }  # fmt: skip
    stack.write_text(yaml.safe_dump({"config": config}))
    cfg = load_stack_file(stack)
    assert main(["render", str(stack), "--out", str(tmp_path / "out")]) == 0
    declare_silo(cfg)

    machines = {m.inputs["name"]: m.inputs for m in silo_mocks.of_type("Machine")}
    assert sorted(machines) == sorted(cfg.services)
    for name, machine in machines.items():
        rendered = (tmp_path / "out" / cfg.app_name(name) / "fly.toml").read_text()
        assert tomllib.loads(rendered)["build"]["image"] == machine["image"], name
        assert rendered == machine["fly_toml"], name
    assert machines["pg"]["image"].startswith("supabase/postgres@sha256:")  # the catalog's digest, not a tag
