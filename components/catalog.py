"""Image version catalog: which image each service may run, pinned by digest where known.

``catalog/images.yaml`` is loaded into a validated ``Catalog``; ``Catalog.resolve`` turns a
(service, tag) into the reference a Fly machine runs. Rules (fixing seed 003's review findings):
unknown or ``disabled`` tags are errors (so preview fails), ``deprecated`` tags are honoured with a
warning (the seed silently ignored such pins), and a tag without a digest deploys by tag with a
warning. ``sync_catalog`` writes the catalog into ``kiloclaw_available_versions`` in one locked
transaction, so a digest owned by another tag aborts with ``CatalogConflict`` instead of a raw
unique violation, even with concurrent syncs. Pins: ``pin_user`` / ``resolve_pin``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import psycopg
import pulumi
import yaml
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.dynamic import CONTROL_DSN_CONFIG_KEY, CONTROL_DSN_ENV, ControlDbProvider, DynamicResource

Service = Literal["pg", "rest", "auth", "storage", "meta", "studio", "kong", "town"]
Status = Literal["active", "deprecated", "disabled"]
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "catalog" / "images.yaml"
# Serialises catalog syncs and pins on one database (pg_advisory_xact_lock key).
SYNC_LOCK_KEY = 0x51_10_CA_7A  # "silo catalog"
DOCKER_HUB = "https://registry-1.docker.io"
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


class CatalogError(ValueError):
    """Bad catalog content or a tag that cannot be deployed/pinned; the message names the entry."""


class CatalogConflict(CatalogError):
    """The database already holds something that contradicts the catalog (nothing was written)."""


class ImageEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    service: Service
    repository: str = Field(min_length=1)
    tag: str = Field(min_length=1)
    digest: str | None = None
    status: Status = "active"
    default: bool = False
    source: str | None = None
    notes: str | None = None

    @field_validator("tag")
    @classmethod
    def _tag(cls, value: str) -> str:
        if value == "latest" or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", value):
            raise ValueError(f"must be a pinned image tag (got {value!r})")
        return value

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is not None and not DIGEST.match(value):
            raise ValueError(f'must be "sha256:" followed by 64 lowercase hex digits, or null (got {value!r})')
        return value

    @property
    def label(self) -> str:
        return f"{self.service} {self.repository}:{self.tag}"


@dataclass(frozen=True)
class ResolvedImage:
    service: str
    repository: str
    ref: str  # what to run: repository@digest when the digest is known, else repository:tag
    tag: str
    digest: str | None
    status: str
    warnings: tuple[str, ...] = ()


def _resolved(
    service: str, repository: str, tag: str, digest: str | None, status: str, warnings: Iterable[str] = ()
) -> ResolvedImage:
    notes = list(warnings)
    if status == "deprecated":
        notes.append(f"{service} image tag {tag} is deprecated: still deployed, but move to a current tag")
    if digest:
        ref = f"{repository}@{digest}"
    else:
        ref = f"{repository}:{tag}"
        notes.append(
            f"{service} image {repository}:{tag} has no digest in the catalog: deploying by tag, "
            "which the registry can change under us"
        )
    return ResolvedImage(service, repository, ref, tag, digest, status, tuple(notes))


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    images: list[ImageEntry]

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        tags: dict[str, ImageEntry] = {}
        digests: dict[str, ImageEntry] = {}
        defaults: dict[str, ImageEntry] = {}
        for entry in self.images:
            # image_tag is the deployable identity (unique in kiloclaw_available_versions).
            if entry.tag in tags:
                raise ValueError(f"duplicate tag {entry.tag!r}: entries {tags[entry.tag].label} and {entry.label}")
            tags[entry.tag] = entry
            if entry.digest:
                if entry.digest in digests:
                    raise ValueError(
                        f"digest {entry.digest} appears twice: entries {digests[entry.digest].label} "
                        f"and {entry.label} (one image cannot be two tags)"
                    )
                digests[entry.digest] = entry
            if entry.default:
                if entry.status != "active":
                    raise ValueError(f"entry {entry.label}: a default tag must be active (it is {entry.status})")
                if entry.service in defaults:
                    raise ValueError(
                        f"service {entry.service} has two default tags: {defaults[entry.service].tag} and {entry.tag}"
                    )
                defaults[entry.service] = entry
        return self

    def entry(self, service: str, tag: str) -> ImageEntry | None:
        return next((e for e in self.images if e.service == service and e.tag == tag), None)

    def default_tag(self, service: str) -> str:
        entry = next((e for e in self.images if e.service == service and e.default), None)
        if entry is None:
            raise CatalogError(f"silo:images.{service}: the catalog has no default tag for service {service}")
        return entry.tag

    def resolve(self, service: str, tag: str | None = None) -> ResolvedImage:
        """The image to run for ``service`` at ``tag`` (the catalog default when None)."""
        tag = tag or self.default_tag(service)
        entry = self.entry(service, tag)
        if entry is None:
            known = ", ".join(e.tag for e in self.images if e.service == service and e.status != "disabled")
            raise CatalogError(
                f"silo:images.{service}: tag {tag!r} is not in the image catalog (deployable tags: {known or 'none'})"
            )
        if entry.status == "disabled":
            raise CatalogError(
                f"silo:images.{service}: tag {tag!r} is disabled in the image catalog "
                f"({entry.notes or 'not deployable'}); pick another tag"
            )
        return _resolved(service, entry.repository, entry.tag, entry.digest, entry.status)


def load_catalog(path: str | Path = DEFAULT_CATALOG) -> Catalog:
    """Parse and validate a catalog file; errors name the entry (``images[3].digest: ...``)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"{path}: cannot read the image catalog: {exc}") from exc
    try:
        return Catalog.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "catalog"
            entry = _entry_label(raw, err["loc"])
            problems.append(f"{where}{entry}: {err['msg'].removeprefix('Value error, ')}")
        raise CatalogError(f"{path}: " + "; ".join(problems)) from None


def _entry_label(raw: Any, loc: Sequence[Any]) -> str:
    if len(loc) >= 2 and loc[0] == "images" and isinstance(loc[1], int) and isinstance(raw, dict):
        try:
            item = raw["images"][loc[1]]
            return f" ({item.get('service')} {item.get('repository')}:{item.get('tag')})"
        except (IndexError, KeyError, TypeError, AttributeError):
            return ""
    return ""


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


# -- per-user pins -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pin:
    user_id: str
    service: str
    tag: str
    warnings: tuple[str, ...] = ()


def pin_user(dsn: str, user_id: str, tag: str, *, pinned_by: str | None = None, reason: str | None = None) -> Pin:
    """Pin ``user_id`` to ``tag`` (for the tag's service). Unknown or disabled tags are refused;
    deprecated tags are accepted with a warning, and resolve_pin honours them the same way."""
    if not user_id:
        raise CatalogError("user_id: required")
    with psycopg.connect(dsn, row_factory=dict_row) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SYNC_LOCK_KEY,))
        row = conn.execute(
            "SELECT service, status FROM kiloclaw_available_versions WHERE image_tag = %s FOR SHARE", (tag,)
        ).fetchone()
        if row is None:
            raise CatalogError(f"tag: {tag!r} is not in kiloclaw_available_versions; sync the catalog first")
        if row["status"] == "disabled":
            raise CatalogError(f"tag: {tag!r} ({row['service']}) is disabled and cannot be pinned")
        conn.execute(
            "INSERT INTO kiloclaw_version_pins (user_id, service, image_tag, pinned_by, reason) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (user_id, service) DO UPDATE SET "
            "image_tag = EXCLUDED.image_tag, pinned_by = EXCLUDED.pinned_by, reason = EXCLUDED.reason, "
            "updated_at = now()",
            (user_id, row["service"], tag, pinned_by, reason),
        )
    warnings = (
        (f"tag {tag} is deprecated: the pin is honoured, but move the user to a current tag",)
        if row["status"] == "deprecated"
        else ()
    )
    return Pin(user_id, row["service"], tag, warnings)


def resolve_pin(dsn: str, user_id: str, service: str) -> ResolvedImage | None:
    """The pinned image for ``user_id``'s ``service``, or None when the user has no pin.

    Deprecated pins are honoured with a warning; a pin whose tag was disabled after pinning is an
    error (never a silent fallback to another version).
    """
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT v.service, v.repository, v.image_tag, v.image_digest, v.status "
            "FROM kiloclaw_version_pins p JOIN kiloclaw_available_versions v ON v.image_tag = p.image_tag "
            "WHERE p.user_id = %s AND p.service = %s",
            (user_id, service),
        ).fetchone()
    if row is None:
        return None
    if row["status"] == "disabled":
        raise CatalogError(
            f"user {user_id} is pinned to {service} tag {row['image_tag']}, which is now "
            "disabled: re-pin the user or remove the pin"
        )
    return _resolved(
        row["service"],
        row["repository"],
        row["image_tag"],
        row["image_digest"],
        row["status"],
        [f"user {user_id} is pinned to {service} tag {row['image_tag']}"],
    )


# -- CatalogSync dynamic resource (control stack) -------------------------------------------------
# The control database's DSN, shared with components/registry.py and components/schema.py.
DSN_CONFIG_KEY, DSN_ENV = CONTROL_DSN_CONFIG_KEY, CONTROL_DSN_ENV


class CatalogSyncProvider(ControlDbProvider):
    """Keeps kiloclaw_available_versions in step with the catalog; plain data only (pickled by reference)."""

    def _dsn_for(self, props: Mapping[str, Any]) -> str:
        dsn = self.control_dsn(props)
        if not dsn:
            raise CatalogError(f"dsn: the control database is not configured ({DSN_CONFIG_KEY} or {DSN_ENV})")
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


# -- registry digests -------------------------------------------------------------------------------
def _challenge(header: str) -> dict[str, str]:
    scheme, _, params = header.partition(" ")
    if scheme.lower() != "bearer":
        return {}
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


def resolve_digest(repository: str, tag: str, *, registry: str = DOCKER_HUB, timeout: float = 20.0) -> str:
    """The registry's content digest for repository:tag (HEAD on the manifest, ``Docker-Content-Digest``).

    Follows the registry's Bearer challenge (Docker Hub: anonymous token from auth.docker.io) and
    asks for the multi-arch index first, so the digest is the one ``docker pull`` and Fly resolve.
    """
    name = repository if "/" in repository else f"library/{repository}"
    url = f"{registry.rstrip('/')}/v2/{name}/manifests/{tag}"
    headers = {"Accept": MANIFEST_TYPES}
    with httpx.Client(timeout=timeout, follow_redirects=True) as client:
        response = client.head(url, headers=headers)
        if response.status_code == 401:
            params = _challenge(response.headers.get("WWW-Authenticate", ""))
            if "realm" not in params:
                raise CatalogError(f"{repository}:{tag}: the registry wants credentials we do not have")
            query = {k: v for k, v in params.items() if k in ("service", "scope")}
            query.setdefault("scope", f"repository:{name}:pull")
            token_response = client.get(params["realm"], params=query)
            token_response.raise_for_status()
            body = token_response.json()
            token = body.get("token") or body.get("access_token")
            if not token:
                raise CatalogError(f"{repository}:{tag}: the registry's token endpoint returned no token")
            response = client.head(url, headers={**headers, "Authorization": f"Bearer {token}"})
        if response.status_code == 404:
            raise CatalogError(f"{repository}:{tag}: no such tag in the registry")
        if response.status_code != 200:
            raise CatalogError(f"{repository}:{tag}: the registry answered HTTP {response.status_code}")
        digest = response.headers.get("Docker-Content-Digest", "")
    if not DIGEST.match(digest):
        raise CatalogError(
            f"{repository}:{tag}: the registry returned no usable Docker-Content-Digest (got {digest!r})"
        )
    return digest


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m components.catalog {resolve REPO TAG | check [FILE]}``."""
    parser = argparse.ArgumentParser(prog="python -m components.catalog")
    sub = parser.add_subparsers(dest="command", required=True)
    resolve = sub.add_parser("resolve", help="print the registry digest of REPOSITORY:TAG")
    resolve.add_argument("repository")
    resolve.add_argument("tag")
    resolve.add_argument("--registry", default=DOCKER_HUB)
    check = sub.add_parser("check", help="validate a catalog and print what each default resolves to")
    check.add_argument("file", nargs="?", default=str(DEFAULT_CATALOG))
    args = parser.parse_args(argv)
    try:
        if args.command == "resolve":
            print(resolve_digest(args.repository, args.tag, registry=args.registry))
        else:
            catalog = load_catalog(args.file)
            for service in dict.fromkeys(e.service for e in catalog.images):
                image = catalog.resolve(service)
                print(f"{service}: {image.ref}")
                for warning in image.warnings:
                    print(f"  warning: {warning}")
    except (CatalogError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
