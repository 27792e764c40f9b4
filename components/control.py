"""ControlPlane: the shared `control` stack — registry schema, image catalog sync, backup bucket.

Silo stacks read `backup_bucket` and `backup_s3_endpoint` from it through a StackReference
(`silo:controlStack`); the registry database DSN is each stack's secret `silo:registryDsn`.
"""

from __future__ import annotations

import os
from typing import Any

import pulumi
import pulumi_postgresql as postgresql
import pulumi_random as random
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from components.catalog import CatalogSync, load_catalog
from components.config import ControlConfig
from components.dynamic import CONTROL_DSN_CONFIG_KEY, CONTROL_DSN_ENV
from components.r2 import R2Bucket
from components.schema import PostgresSchema


class ControlPlane(pulumi.ComponentResource):
    def __init__(self, cfg: ControlConfig, opts: pulumi.ResourceOptions | None = None):
        super().__init__("silo:control:ControlPlane", "control", None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.schema = PostgresSchema("registry", users_table=cfg.users_table, opts=child)
        # The catalog rows are written only once the tables exist.
        self.catalog = CatalogSync(
            "image-catalog", load_catalog(), opts=pulumi.ResourceOptions(parent=self, depends_on=[self.schema])
        )
        self.backend_role, self.backend_dsn = self._backend_role(child)
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

    def _backend_role(self, child: pulumi.ResourceOptions) -> tuple[postgresql.Role, pulumi.Output[str]]:
        """A least-privileged login for the Kilo backend (reads the catalog, writes towns, rigs and pins),
        managed with pulumi-postgresql through an explicit provider on the control database."""
        dsn = pulumi.Config("silo").get_secret(CONTROL_DSN_CONFIG_KEY.split(":", 1)[1])
        if dsn is None:
            dsn = pulumi.Output.secret(os.environ.get(CONTROL_DSN_ENV, ""))
        parts = dsn.apply(lambda d: conninfo_to_dict(d) if d else {})

        def part(key: str, default: str = "") -> pulumi.Output[str]:
            return parts.apply(lambda p: str(p.get(key) or default))

        provider = postgresql.Provider(
            "registry-db",
            host=part("host", "localhost"),
            port=parts.apply(lambda p: int(p.get("port") or 5432)),
            username=part("user", "postgres"),
            password=pulumi.Output.secret(part("password")),
            database=part("dbname", "postgres"),
            sslmode=part("sslmode", "prefer"),
            superuser=False,
            opts=child,
        )
        with_db = pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[self.schema])
        password = random.RandomPassword("registry-backend-password", length=32, special=False, opts=child).result
        # Roles are cluster-wide: the database name keeps two registries on one server apart.
        role_name = part("dbname", "postgres").apply(lambda db: f"silo_backend_{db}"[:63])
        role = postgresql.Role("registry-backend", name=role_name, login=True, password=password, opts=with_db)
        on_role = pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[role, self.schema])
        grants = {
            "gastown_towns": ["SELECT", "INSERT", "UPDATE"],
            "gastown_rigs": ["SELECT", "INSERT", "UPDATE"],
            "kiloclaw_version_pins": ["SELECT", "INSERT", "UPDATE", "DELETE"],
            "kiloclaw_available_versions": ["SELECT"],
        }
        for table, privileges in grants.items():
            postgresql.Grant(
                f"registry-backend-{table}",
                database=part("dbname", "postgres"),
                role=role.name,
                schema="public",
                object_type="table",
                objects=[table],
                privileges=privileges,
                opts=on_role,
            )
        backend_dsn = pulumi.Output.all(parts, role.name, password).apply(
            lambda v: make_conninfo(
                **{k: str(val) for k, val in v[0].items() if k not in ("user", "password")}, user=v[1], password=v[2]
            )
        )
        return role, pulumi.Output.secret(backend_dsn)
