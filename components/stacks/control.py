"""ControlPlane: the shared `control` stack — registry schema, image catalog sync, backup bucket.

Silo stacks read `backup_bucket` and `backup_s3_endpoint` from it through a StackReference
(`silo:controlStack`); the registry database DSN is each stack's secret `silo:registryDsn`.
"""

from __future__ import annotations

import os
from typing import Any

import pulumi
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from components.config.model import ControlConfig
from components.domain.catalog import load_catalog
from components.providers.cloudflare.r2 import R2Bucket
from components.providers.controldb.catalog import CatalogSync
from components.providers.controldb.dblogin import DatabaseLogin
from components.providers.controldb.dsn import CONTROL_DSN_CONFIG_KEY, CONTROL_DSN_ENV
from components.providers.controldb.schema import PostgresSchema
from components.providers.generated import GeneratedSecret

# The Kilo backend's login (and the towns' registry login): reads the catalog, writes towns, rigs and pins.
BACKEND_GRANTS: dict[str, list[str]] = {
    "gastown_towns": ["SELECT", "INSERT", "UPDATE"],
    "gastown_rigs": ["SELECT", "INSERT", "UPDATE"],
    "kiloclaw_version_pins": ["SELECT", "INSERT", "UPDATE", "DELETE"],
    "kiloclaw_available_versions": ["SELECT"],
}


class ControlPlane(pulumi.ComponentResource):
    def __init__(self, cfg: ControlConfig, opts: pulumi.ResourceOptions | None = None):
        super().__init__("silo:control:ControlPlane", "control", None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.schema = PostgresSchema("registry", users_table=cfg.users_table, opts=child)
        # The catalog rows are written only once the tables exist.
        self.catalog = CatalogSync(
            "image-catalog", load_catalog(), opts=pulumi.ResourceOptions(parent=self, depends_on=[self.schema])
        )
        self.backend_login, self.backend_dsn = self._backend_login(child)
        self.bucket = R2Bucket(
            "backups",
            bucket_name=cfg.backup_bucket,
            location_hint=cfg.backup_location_hint,
            allow_delete=cfg.allow_data_deletion,
            opts=pulumi.ResourceOptions(parent=self, protect=not cfg.allow_data_deletion),
        )
        self.outputs: dict[str, Any] = {
            "backup_bucket": self.bucket.name,
            "backup_s3_endpoint": self.bucket.s3_endpoint,
            "applied_migrations": self.schema.applied,
            "registry_backend_dsn": self.backend_dsn,
        }
        self.register_outputs({"backup_bucket": self.bucket.name})

    def _backend_login(self, child: pulumi.ResourceOptions) -> tuple[DatabaseLogin, pulumi.Output[str]]:
        """A least-privileged login for the Kilo backend: reads the catalog, writes towns, rigs and pins."""
        dsn = pulumi.Config("silo").get_secret(CONTROL_DSN_CONFIG_KEY.split(":", 1)[1])
        if dsn is None:
            dsn = pulumi.Output.secret(os.environ.get(CONTROL_DSN_ENV, ""))
        parts = dsn.apply(lambda d: conninfo_to_dict(d) if d else {})
        password = GeneratedSecret("registry-backend-password", length=32, opts=child).result
        # Roles are cluster-wide: the database name keeps two registries on one server apart. It is
        # not secret, even though it comes from the (secret) DSN.
        role_name = pulumi.Output.unsecret(parts.apply(lambda p: f"silo_backend_{p.get('dbname') or 'postgres'}"[:63]))
        login = DatabaseLogin(
            "registry-backend",
            role=role_name,
            password=password,
            grants=BACKEND_GRANTS,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.schema]),
        )
        backend_dsn = pulumi.Output.all(parts, login.role, password).apply(
            lambda v: make_conninfo(
                **{k: str(val) for k, val in v[0].items() if k not in ("user", "password")}, user=v[1], password=v[2]
            )
        )
        return login, pulumi.Output.secret(backend_dsn)
