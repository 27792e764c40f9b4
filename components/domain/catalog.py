"""Image version catalog: which image each service may run, pinned by digest where known.

``catalog/images.yaml`` is loaded into a validated ``Catalog``; ``Catalog.resolve`` turns a
(service, tag) into the reference a Fly machine runs. It is the only place default images and tags are
written: ``up`` (``components.stacks.images``) and ``silo render`` both resolve through ``silo_images``,
so the fly.toml rendered for review names the image that gets deployed. Rules (fixing seed 003's review
findings): unknown or ``disabled`` tags are errors (so preview fails), ``deprecated`` tags are honoured
with a warning (the seed silently ignored such pins), and a tag without a digest deploys by tag with a
warning. Pure: the database sync is ``components.providers.controldb.catalog``, the registry client
``components.cli.digests``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.domain import naming
from components.errors import UserError
from components.paths import CATALOG_FILE

if TYPE_CHECKING:
    from components.config.model import SiloConfig

# The Gastown sandbox image of a silo's towns, catalogued beside the Supabase services.
TOWN_SERVICE = "town"
CATALOG_SERVICES: tuple[str, ...] = (*naming.SERVICES, TOWN_SERVICE)
CatalogService = Literal[CATALOG_SERVICES]  # type: ignore[valid-type]
Status = Literal["active", "deprecated", "disabled"]
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
DEFAULT_CATALOG = CATALOG_FILE


class CatalogError(UserError, ValueError):
    """Bad catalog content or a tag that cannot be deployed/pinned; the message names the entry."""


class ImageEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    service: CatalogService  # type: ignore[valid-type]
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
        if value == "latest" or not naming.is_image_tag(value):
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


def by_tag_note(service: str, repository: str, tag: str) -> str:
    return (
        f"{service} image {repository}:{tag} has no digest in the catalog: deploying by tag, "
        "which the registry can change under us"
    )


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
        notes.append(by_tag_note(service, repository, tag))
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


def silo_images(
    cfg: SiloConfig, catalog: Catalog | None = None, *, towns: bool | None = None
) -> dict[str, ResolvedImage]:
    """The image of every service a silo runs (the town image too when it has towns), through the catalog.

    The one resolution both ``up`` and ``silo render`` use; warnings stay on the results for the caller
    to report its own way (the Pulumi log, the terminal).
    """
    catalog = catalog or load_catalog()
    services = list(cfg.services)
    if towns if towns is not None else bool(cfg.towns):
        services.append(TOWN_SERVICE)
    return {name: silo_image(cfg, name, catalog) for name in services}


def silo_image(cfg: SiloConfig, service: str, catalog: Catalog | None = None) -> ResolvedImage:
    """One service's image: its ``silo:images`` tag, else the catalog default, resolved by the catalog."""
    return (catalog or load_catalog()).resolve(service, cfg.images.get(service))
