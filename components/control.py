"""ControlPlane: the shared `control` stack — registry schema, image catalog sync, backup bucket.

Silo stacks read `backup_bucket` and `backup_s3_endpoint` from it through a StackReference
(`silo:controlStack`); the registry database DSN is each stack's secret `silo:registryDsn`.
"""

from __future__ import annotations

from typing import Any

import pulumi

from components.catalog import CatalogSync, load_catalog
from components.config import ControlConfig
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
        }
        self.register_outputs({"backup_bucket": self.bucket.name})
