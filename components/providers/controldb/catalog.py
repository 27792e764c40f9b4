"""The image catalog in the control database: ``sync_catalog`` and the ``CatalogSync`` resource.

``sync_catalog`` writes the catalog (``components.domain.catalog``) into ``kiloclaw_available_versions``
in one locked transaction, so a digest owned by another tag aborts with ``CatalogConflict`` instead of a
raw unique violation, even with concurrent syncs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pulumi
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    UpdateResult,
)
from pulumi.output import Unknown
from pydantic import ValidationError

from components.domain.catalog import Catalog, CatalogError, ImageEntry, load_catalog
from components.providers.base import DynamicResource
from components.providers.controldb.dsn import CONTROL_DSN_CONFIG_KEY, CONTROL_DSN_ENV, ControlDbProvider

# Serialises catalog syncs and pins on one database (pg_advisory_xact_lock key).
SYNC_LOCK_KEY = 0x51_10_CA_7A  # "silo catalog"


class CatalogConflict(CatalogError):
    """The database already holds something that contradicts the catalog (nothing was written)."""


# -- database sync ------------------------------------------------------------------------------------
@dataclass
class SyncResult:
    inserted: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


_COLUMNS = ("service", "repository", "image_tag", "image_digest", "status", "notes")


def _row(entry: ImageEntry) -> dict[str, Any]:
    return {
        "service": entry.service,
        "repository": entry.repository,
        "image_tag": entry.tag,
        "image_digest": entry.digest,
        "status": entry.status,
        "notes": entry.notes,
    }


def sync_catalog(dsn: str, catalog: Catalog) -> SyncResult:
    """Upsert every catalog entry into kiloclaw_available_versions, all or nothing.

    Under a transaction advisory lock (concurrent syncs queue) and with the affected rows locked
    FOR UPDATE in id order (concurrent admin edits wait), conflicts are checked before any write:
    a digest recorded for another tag, a tag recorded with a different digest, or a tag recorded for
    another service/repository raise CatalogConflict naming both sides. Rows not in the catalog are
    left alone (pins may reference them).
    """
    result = SyncResult()
    tags = [e.tag for e in catalog.images]
    digests = [e.digest for e in catalog.images if e.digest]
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SYNC_LOCK_KEY,))
                rows = conn.execute(
                    "SELECT id, service, repository, image_tag, image_digest, status, notes "
                    "FROM kiloclaw_available_versions WHERE image_tag = ANY(%s) OR image_digest = ANY(%s) "
                    "ORDER BY id FOR UPDATE",
                    (tags, digests),
                ).fetchall()
                by_tag = {r["image_tag"]: r for r in rows}
                by_digest = {r["image_digest"]: r for r in rows if r["image_digest"]}
                conflicts = _conflicts(catalog.images, by_tag, by_digest)
                if conflicts:
                    raise CatalogConflict("; ".join(conflicts) + " (nothing was written)")
                for entry in catalog.images:
                    row, current = _row(entry), by_tag.get(entry.tag)
                    if current is None:
                        conn.execute(
                            "INSERT INTO kiloclaw_available_versions "
                            "(service, repository, image_tag, image_digest, status, notes) "
                            "VALUES (%(service)s, %(repository)s, %(image_tag)s, %(image_digest)s, "
                            "%(status)s, %(notes)s)",
                            row,
                        )
                        result.inserted.append(entry.tag)
                    elif any(current[c] != row[c] for c in _COLUMNS):
                        conn.execute(
                            "UPDATE kiloclaw_available_versions SET image_digest = %(image_digest)s, "
                            "status = %(status)s, notes = %(notes)s, updated_at = now() "
                            "WHERE image_tag = %(image_tag)s",
                            row,
                        )
                        result.updated.append(entry.tag)
                    else:
                        result.unchanged.append(entry.tag)
        except pg_errors.UniqueViolation as exc:
            # Only a writer that bypasses the lock (manual SQL) can get here; still no raw error.
            detail = exc.diag.message_detail or str(exc)
            raise CatalogConflict(
                f"the catalog conflicts with a row written concurrently: {detail} (nothing was written)"
            ) from None
    return result


def _conflicts(
    entries: Iterable[ImageEntry], by_tag: dict[str, dict[str, Any]], by_digest: dict[str, dict[str, Any]]
) -> list[str]:
    problems = []
    for entry in entries:
        owner = by_digest.get(entry.digest) if entry.digest else None
        if owner is not None and owner["image_tag"] != entry.tag:
            problems.append(
                f"digest {entry.digest} of tag {entry.tag} ({entry.service}) already belongs to "
                f"tag {owner['image_tag']} ({owner['service']}) in the database"
            )
        current = by_tag.get(entry.tag)
        if current is None:
            continue
        if current["image_digest"] and current["image_digest"] != entry.digest:
            problems.append(
                f"tag {entry.tag} ({entry.service}) is recorded with digest "
                f"{current['image_digest']} but the catalog says {entry.digest}: "
                "a published tag's content must not change; publish a new tag"
            )
        if (current["service"], current["repository"]) != (entry.service, entry.repository):
            problems.append(
                f"tag {entry.tag} is recorded for {current['service']} {current['repository']} "
                f"but the catalog lists it for {entry.service} {entry.repository}"
            )
    return problems


class CatalogSyncProvider(ControlDbProvider):
    """Keeps kiloclaw_available_versions in step with the catalog; plain data only (pickled by reference)."""

    def _dsn_for(self, props: Mapping[str, Any]) -> str:
        dsn = self.control_dsn(props)
        if not dsn:
            raise CatalogError(
                f"dsn: the control database is not configured ({CONTROL_DSN_CONFIG_KEY} or {CONTROL_DSN_ENV})"
            )
        return str(dsn)

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        images = news.get("images")
        if isinstance(images, Unknown):
            return CheckResult(news, [])
        try:
            Catalog.model_validate({"images": images})
        except ValidationError as exc:
            reasons = [
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
            ]
            return CheckResult(news, [CheckFailure("images", "; ".join(reasons))])
        return CheckResult(news, [])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return DiffResult(
            changes=olds.get("images") != news.get("images") or olds.get("dsn") != news.get("dsn"), replaces=[]
        )

    def _sync(self, props: Mapping[str, Any]) -> dict[str, Any]:
        dsn = self._dsn_for(props)
        with self.database_errors(dsn):
            result = sync_catalog(dsn, Catalog.model_validate({"images": props["images"]}))
        return {
            "tags": sorted(e["tag"] for e in props["images"]),
            "inserted": result.inserted,
            "updated": result.updated,
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult("image-catalog", {**props, **self._sync(props)})

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult({**news, **self._sync(news)})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        dsn = self._dsn_for(props)
        with self.database_errors(dsn), psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "SELECT image_tag FROM kiloclaw_available_versions WHERE image_tag = ANY(%s)",
                (props.get("tags") or [],),
            ).fetchall()
        return ReadResult(id_, {**props, "tags": sorted(r[0] for r in rows)})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        # Pins reference these rows (FK), and other stacks may deploy them: never delete versions.
        print(f"CatalogSync {id_}: removed from the stack; kiloclaw_available_versions rows are kept")


class CatalogSync(DynamicResource, module="catalog", name="Sync"):
    """Writes the image catalog into the control database on every ``pulumi up`` that changes it."""

    tags: pulumi.Output[list[str]]

    def __init__(
        self,
        name: str,
        catalog: Catalog | None = None,
        *,
        dsn: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        catalog = catalog or load_catalog()
        props = {
            "tags": None,
            "images": [e.model_dump() for e in catalog.images],
            "dsn": pulumi.Output.secret(dsn) if dsn is not None else None,
        }
        super().__init__(CatalogSyncProvider(), name, props, opts)
