"""DevEnvStack: one silo's Supabase dev environment, one Fly app per service.

Per service: FlyApp → FlyIpAssignment(s) → FlySecrets → FlyVolume (pg, storage) → FlyMachine, the
machine config coming from the service's rendered fly.toml. Names depend only on silo:client,
silo:app and the service, so stopping, starting or re-running never changes a URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from components.config.model import APP_CONFIG_KEYS, EXEC_CONFIG_KEYS, VOLUME_CONFIG_KEYS, SiloConfig
from components.domain import services as svc
from components.domain.catalog import ResolvedImage as Image
from components.domain.costs import estimate
from components.domain.keys import supabase_keys
from components.providers.fly import flytoml
from components.providers.fly.app_secrets import FlySecrets
from components.providers.fly.apps import FlyApp
from components.providers.fly.exec import FlyExec
from components.providers.fly.ip_assignments import FlyIpAssignment
from components.providers.fly.machines import FlyMachine
from components.providers.fly.ready import FlyMachinesReady
from components.providers.fly.volumes import FlyVolume
from components.providers.generated import GeneratedSecret
from components.render.files import render_fly_toml, rls_sql, secret_env
from components.stacks.ownership import stack_owner

# The anon/service keys are signed with this fixed `iat` so they are identical on every run (a new
# `iat` would mean a diff on every preview). Rotating keys is a config change: silo:keyGeneration.
KEYS_ISSUED_AT = 1767225600  # 2026-01-01T00:00:00Z
KEYS_VALID_YEARS = 10


@dataclass
class ServiceResources:
    app: FlyApp
    secrets: FlySecrets
    machine: FlyMachine
    volume: FlyVolume | None
    ips: list[FlyIpAssignment]


class DevEnvStack(pulumi.ComponentResource):
    """All Fly resources of one silo; see the module docstring for the graph."""

    def __init__(self, cfg: SiloConfig, images: Mapping[str, Image], opts: pulumi.ResourceOptions | None = None):
        super().__init__("silo:devenv:DevEnvStack", f"devenv-{cfg.silo_id}", None, opts)
        self.cfg = cfg
        child = pulumi.ResourceOptions(parent=self)
        keepers = {"generation": str(cfg.key_generation)}

        def password(name: str, length: int) -> GeneratedSecret:
            return GeneratedSecret(f"devenv-{cfg.silo_id}-{name}", length=length, keepers=keepers, opts=child)

        self.jwt_secret = password("jwt-secret", 48).result
        self.db_password = password("db-password", 32).result
        dashboard_password = password("dashboard-password", 24).result
        meta_crypto_key = password("pg-meta-crypto-key", 40).result
        # silo:pgPublic: the internet-facing login's own password, held by the pg app alone.
        self.public_db_password: pulumi.Output[str] | None = (
            password("db-public-password", 32).result if cfg.pg_public else None
        )
        # GoTrue's SMTP password: a stack secret, only ever a Fly secret of the auth app.
        smtp_password = pulumi.Config("silo").get_secret("smtpPassword")
        if smtp_password is not None and cfg.smtp is None:
            pulumi.log.warn("silo:smtpPassword is set but silo:smtp is not: GoTrue sends no mail without silo:smtp")
        elif cfg.smtp is not None and cfg.smtp.user and smtp_password is None:
            pulumi.log.warn("silo:smtp.user is set without silo:smtpPassword: GoTrue cannot log in to the SMTP server")
        if cfg.monthly_budget is not None:
            pulumi.log.warn(
                "silo:monthlyBudget is no longer read: the guardrails take the budget from the stack's policy "
                f'config, policy/config/<stack>.json {{"monthly-budget": {{"monthlyBudget": {cfg.monthly_budget:g}}}}}'
            )
        keys = self.jwt_secret.apply(lambda s: supabase_keys(s, issued_at=KEYS_ISSUED_AT, years=KEYS_VALID_YEARS))
        self.anon_key: pulumi.Output[str] = pulumi.Output.unsecret(keys.apply(lambda k: k.anon_key))
        self.service_role_key: pulumi.Output[str] = pulumi.Output.secret(keys.apply(lambda k: k.service_role_key))
        secrets = pulumi.Output.all(
            self.jwt_secret,
            self.db_password,
            dashboard_password,
            meta_crypto_key,
            self.anon_key,
            self.service_role_key,
            self.public_db_password,
            smtp_password if smtp_password is not None else "",
        ).apply(
            lambda v: svc.SiloSecrets(
                jwt_secret=v[0],
                postgres_password=v[1],
                dashboard_username="supabase",
                dashboard_password=v[2],
                pg_meta_crypto_key=v[3],
                anon_key=v[4],
                service_role_key=v[5],
                public_db_password=v[6],
                smtp_password=v[7] or None,
            )
        )

        desired = "started" if cfg.state == "running" else "stopped"
        self.services: dict[str, ServiceResources] = {}
        # Per service whose health another service needs at boot: the gate that waits for it.
        self.boot_gates: dict[str, FlyMachinesReady] = {}
        for name in cfg.services:  # dependency order: what a service boots after comes first
            after = [self._boot_gate(cfg, u, desired) for u in svc.SERVICES[name].boot_after if u in self.services]
            self.services[name] = self._service(cfg, name, images[name], secrets, desired, after)
        machines = [res.machine for res in self.services.values()]
        # `up` is done when every machine is (and fails naming those that are not).
        self.ready = FlyMachinesReady(
            f"devenv-{cfg.silo_id}-ready",
            machines=machines,
            timeout_s=cfg.ready_timeout_seconds,
            opts=pulumi.ResourceOptions(parent=self, depends_on=machines),
        )

        pg = self.services["pg"]
        # One resource whatever the mode (a new mode is an update, run once), kept through stops and starts:
        # the policies live in the database on the volume.
        self.rls = FlyExec(
            f"{cfg.app_name('pg')}-rls",
            app=pg.app.name,
            machine_id=pg.machine.machine_id,
            command=psql_command(rls_sql(cfg.rls_mode)),
            description=f"RLS mode {cfg.rls_mode}",
            run=cfg.state == "running",
            # SQL needs Postgres up and answering: after its gate, not just its machine.
            config_keys=EXEC_CONFIG_KEYS,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self._boot_gate(cfg, "pg", desired)]),
        )

        self.cost = estimate(
            [self._guest(cfg, n, images[n]) for n in cfg.services],
            [svc.SERVICES[n].volume.size_gb for n in cfg.services if svc.SERVICES[n].volume],
        )
        self.register_outputs({"supabase_url": cfg.kong_url})

    def _boot_gate(self, cfg: SiloConfig, name: str, desired: str) -> FlyMachinesReady:
        """The gate that is done once `name`'s machine runs and passes its checks (made once)."""
        if name not in self.boot_gates:
            machine = self.services[name].machine
            self.boot_gates[name] = FlyMachinesReady(
                f"{cfg.app_name(name)}-ready",
                machines=[machine],
                timeout_s=cfg.ready_timeout_seconds,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[machine]),
            )
        return self.boot_gates[name]

    def machine_state(self, name: str) -> pulumi.Output[str]:
        """The state `name`'s machine was found in once ready (started or stopped)."""
        return pulumi.Output.all(self.ready.states, self.services[name].machine.machine_id).apply(
            lambda v: (v[0] or {}).get(v[1], "unknown")
        )

    # -- one service ------------------------------------------------------------------------------
    def _service(
        self,
        cfg: SiloConfig,
        name: str,
        image: Image,
        secrets: pulumi.Output[svc.SiloSecrets],
        desired: str,
        boot_after: list[FlyMachinesReady],
    ) -> ServiceResources:
        spec = svc.SERVICES[name]
        app_name = cfg.app_name(name)
        keeps_data = spec.volume is not None and not cfg.allow_data_deletion
        # A data-holding app is retained on destroy: deleting a Fly app deletes its volumes.
        # Every app of the silo on the silo's own network: Flycast names (meta, Studio, pg...) resolve only
        # for the silo's apps, never for towns or other silos. Kong's public IPs are the way in.
        app = FlyApp(
            app_name,
            name=app_name,
            org=cfg.fly_org,
            keep_volumes=not cfg.allow_data_deletion,
            network=cfg.network,
            allow_network_change=cfg.network_migration,
            owner=stack_owner(cfg),
            config_keys=APP_CONFIG_KEYS,
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=keeps_data),
        )
        on_app = pulumi.ResourceOptions(parent=self, depends_on=[app])
        ip_types = ["v6", "shared_v4"] if spec.public else ["private_v6"]
        if name == "pg" and cfg.pg_public:
            # Raw TCP (pg_tls on 5432) cannot be routed on a shared IPv4: flyctl's rule gives it a
            # dedicated (billed) IPv4.
            ip_types = ["private_v6", "v6", "v4"]
        ips = [
            FlyIpAssignment(f"{app_name}-ip-{t.replace('_', '-')}", app=app.name, type=t, opts=on_app) for t in ip_types
        ]
        fly_secrets = FlySecrets(
            f"{app_name}-secrets",
            app=app.name,
            values=secrets.apply(lambda s, n=name: secret_env(cfg, n, s)),
            opts=on_app,
        )
        volume = None
        if spec.volume is not None:
            volume = FlyVolume(
                f"{app_name}-{spec.volume.name.replace('_', '-')}",
                app=app.name,
                name=spec.volume.name,
                region=cfg.region,
                size_gb=spec.volume.size_gb,
                allow_delete=cfg.allow_data_deletion,
                allow_region_change=cfg.region_migration,
                config_keys=VOLUME_CONFIG_KEYS,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[app], retain_on_delete=keeps_data),
            )
        machine = FlyMachine(
            f"{app_name}-machine",
            app=app.name,
            name=name,
            region=cfg.region,
            fly_toml=render_fly_toml(cfg, name, image.ref),
            image=image.ref,
            desired_state=desired,
            volume_id=volume.volume_id if volume else None,
            min_secrets_version=fly_secrets.version,
            metadata={"silo_id": cfg.silo_id, "silo_service": name, "silo_image_tag": image.tag},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*ips, fly_secrets, *boot_after]),
        )
        return ServiceResources(app=app, secrets=fly_secrets, machine=machine, volume=volume, ips=ips)

    @staticmethod
    def _guest(cfg: SiloConfig, name: str, image: Image) -> dict[str, Any]:
        config = flytoml.to_machine_config(flytoml.parse(render_fly_toml(cfg, name, image.ref)), image=image.ref)
        return config.get("guest") or {}


def psql_command(sql: str) -> list[str]:
    """psql on the pg machine itself; the password comes from the machine's env, never the command."""
    script = (
        'PGPASSWORD="$POSTGRES_PASSWORD" exec psql -h 127.0.0.1 -U supabase_admin -d postgres '
        '-v ON_ERROR_STOP=1 -c "$1"'
    )
    return ["sh", "-c", script, "psql", sql]
