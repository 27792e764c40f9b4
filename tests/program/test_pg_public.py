"""silo:pgPublic: Postgres reachable from outside Fly only through TLS (Fly's pg_tls handler)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.config.model import SiloConfig
from components.domain import services as svc
from components.providers.fly import flytoml
from components.render.files import render_fly_toml, secret_env
from engine.guardrails import policy_args
from tests.fixtures.program import SiloProgram

SECRETS = svc.SiloSecrets(
    jwt_secret="j" * 48,
    postgres_password="Pw0rdLettersAndDigits",
    dashboard_username="supabase",
    dashboard_password="d" * 24,
    pg_meta_crypto_key="m" * 40,
    anon_key="a",
    service_role_key="s",
)


def silo(**overrides) -> SiloConfig:
    return SiloConfig(client="acme", app="erp", fly_org="acme-erp", site_url="https://acme.example", **overrides)


def pg_ports(cfg: SiloConfig) -> list[dict]:
    config = flytoml.to_machine_config(flytoml.parse(render_fly_toml(cfg, "pg")), image="supabase/postgres:15.8.1.085")
    return [(s.get("autostop"), p) for s in config["services"] for p in s["ports"]]


def test_private_by_default_through_flycast() -> None:
    cfg = silo()
    [(autostop, port)] = pg_ports(cfg)
    assert port["port"] == 5432 and not port.get("handlers") and autostop in (True, "stop")
    assert "devenv-acme-erp-pg.flycast" in secret_env(cfg, "rest", SECRETS)["PGRST_DB_URI"]


def test_public_postgres_is_tls_only_and_services_use_6pn() -> None:
    cfg = silo(pg_public=True)
    assert flytoml.validate(flytoml.parse(render_fly_toml(cfg, "pg"))) == []
    [(autostop, port)] = pg_ports(cfg)
    assert port["port"] == 5432 and port.get("handlers") == ["pg_tls"]
    assert autostop in (False, "off")  # .internal only resolves started machines
    for name, key in (("rest", "PGRST_DB_URI"), ("auth", "GOTRUE_DB_DATABASE_URL"), ("storage", "DATABASE_URL")):
        assert "@devenv-acme-erp-pg.internal:5432/" in secret_env(cfg, name, SECRETS)[key]
    assert svc.public_env(cfg, "meta")["PG_META_DB_HOST"] == "devenv-acme-erp-pg.internal"


@pytest.mark.engine
def test_public_pg_gets_public_ips_and_a_tls_connection_string(tmp_path: Path, fly_emulator) -> None:
    program = SiloProgram(fly_emulator, tmp_path, studio="false", pgPublic="true")
    result = program.up()
    kinds = sorted(
        ip.get("type") or ("private_v6" if ip["ip"].startswith("fdaa:") else "v6" if ":" in ip["ip"] else "v4")
        for ip in fly_emulator.snapshot()["ips"]["devenv-acme-erp-pg"]
    )
    assert kinds == ["private_v6", "v4", "v6"]
    assert result.outputs["db_public_connection_string"] == "[secret]"
    # The public login is its own role with its own password, a secret of the pg app alone.
    public_dsn = program.state().outputs["db_public_connection_string"]
    assert public_dsn.startswith("postgres://silo_public:") and "sslmode=require" in public_dsn
    secrets = fly_emulator.snapshot()["secrets"]
    assert "SILO_PUBLIC_DB_PASSWORD" in secrets["devenv-acme-erp-pg"]
    assert not [
        app for app, names in secrets.items() if app != "devenv-acme-erp-pg" and "SILO_PUBLIC_DB_PASSWORD" in names
    ]


@pytest.mark.engine
def test_public_pg_needs_the_policy_waiver_not_just_the_stack_config(tmp_path: Path, fly_emulator) -> None:
    # The guardrails (pg-private-or-tls, mandatory): silo:pgPublic in the stack's config makes the program
    # give the pg app public IPs, which the pack refuses unless the stack's policy config allows a public pg
    # (docs/guardrails.md "Waivers"); with the waiver the program's pg is TLS-only, so it passes.
    waiver = tmp_path / "policy-config"
    waiver.mkdir()
    (waiver / "dev.json").write_text(json.dumps({"pg-private-or-tls": {"pgPublic": True}}))
    program = SiloProgram(fly_emulator, tmp_path / "stack", studio="false", pgPublic="true")

    refused = program.run("preview", engine_args=policy_args("dev", tmp_path / "no-policy-config"))
    assert not refused.ok
    violations = {
        (v["policy"], v["urn"].rsplit("::", 1)[1]) for v in refused.policy_violations if v["level"] == "mandatory"
    }
    assert violations == {
        ("pg-private-or-tls", "devenv-acme-erp-pg-ip-v4"),
        ("pg-private-or-tls", "devenv-acme-erp-pg-ip-v6"),
    }, refused.policy_violations
    assert "policy violation (mandatory) pg-private-or-tls" in (refused.error or "")

    allowed = program.run("preview", engine_args=policy_args("dev", waiver))
    assert allowed.ok, allowed.error
    assert not [v for v in allowed.policy_violations if v["level"] == "mandatory"]
    # The public pg never auto-stops (.internal cannot wake it): the autostop advisory knows it from its
    # TLS-only ports, not from the stack's config.
    assert not [v for v in allowed.policy_violations if v["policy"] == "autostop-on"]
