"""ControlPlane: the shared `control` stack — registry schema, image catalog sync, backup bucket.

PostgresSchema and R2Bucket are the components it is made of; the dynamic resources they wrap are the
providers' (components/providers/controldb/schema.py, components/providers/cloudflare/r2.py).

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
from components.providers.cloudflare.r2 import (
    DEFAULT_SNAPSHOT_MAX_AGE_DAYS,
    R2BucketLifecycle,
    R2BucketResource,
    backup_lifecycle_rules,
)
from components.providers.controldb.catalog import CatalogSync
from components.providers.controldb.dblogin import DatabaseLogin
from components.providers.controldb.dsn import CONTROL_DSN_CONFIG_KEY, CONTROL_DSN_ENV
from components.providers.controldb.in_use import ControlInUse
from components.providers.controldb.schema import PostgresSchemaResource
from components.providers.generated import GeneratedSecret

# The Kilo backend's login (and the towns' registry login): reads the catalog, writes towns, rigs and pins.
BACKEND_GRANTS: dict[str, list[str]] = {
    "gastown_towns": ["SELECT", "INSERT", "UPDATE"],
    "gastown_rigs": ["SELECT", "INSERT", "UPDATE"],
    "kiloclaw_version_pins": ["SELECT", "INSERT", "UPDATE", "DELETE"],
    "kiloclaw_available_versions": ["SELECT"],
}


class PostgresSchema(pulumi.ComponentResource):
    """Control-plane schema: applies ``migrations/`` to the database at ``dsn`` (secret)."""

    applied: pulumi.Output[list[str]]

    def __init__(
        self,
        name: str,
        *,
        folder: str = "migrations",
        dsn: pulumi.Input[str] | None = None,
        users_table: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("silo:control:PostgresSchema", name, None, opts)
        settings = {"silo.users_table": users_table} if users_table else {}
        self.schema = PostgresSchemaResource(
            f"{name}-migrations", folder=folder, dsn=dsn, settings=settings, opts=pulumi.ResourceOptions(parent=self)
        )
        self.applied = self.schema.applied
        self.register_outputs({"applied": self.applied})


class R2Bucket(pulumi.ComponentResource):
    """The backup bucket plus its lifecycle rules (each town's credentials are its own TownSandbox's)."""

    name: pulumi.Output[str]
    s3_endpoint: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        bucket_name: str,
        location_hint: str | None = None,
        jurisdiction: str = "default",
        allow_delete: bool = False,
        abort_multipart_days: int = 1,
        snapshot_max_age_days: int = DEFAULT_SNAPSHOT_MAX_AGE_DAYS,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("silo:storage:R2Bucket", resource_name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.bucket = R2BucketResource(
            resource_name,
            name=bucket_name,
            location_hint=location_hint,
            jurisdiction=jurisdiction,
            allow_delete=allow_delete,
            opts=child,
        )
        self.lifecycle = R2BucketLifecycle(
            f"{resource_name}-lifecycle",
            bucket=self.bucket.name,
            jurisdiction=jurisdiction,
            rules=backup_lifecycle_rules(
                abort_multipart_days=abort_multipart_days, snapshot_max_age_days=snapshot_max_age_days
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.bucket]),
        )
        self.name = self.bucket.name
        self.s3_endpoint = self.bucket.s3_endpoint
        self.register_outputs({"name": self.name, "s3_endpoint": self.s3_endpoint})


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
        # Deleted first (it depends on everything above): a destroy is refused while towns still use the
        # registry or the bucket is protected, before anything is removed (components/providers/controldb/in_use.py).
        self.in_use = ControlInUse(
            "control-in-use",
            bucket_protected=not cfg.allow_data_deletion,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.schema, self.catalog, self.backend_login, self.bucket],
            ),
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
