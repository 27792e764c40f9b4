"""Which image each service runs: silo:images pins resolved through the version catalog.

An unknown or disabled tag fails the program (so `pulumi preview` fails before anything changes);
a deprecated tag, or one without a digest, deploys with a warning.
"""

from __future__ import annotations

import pulumi

from components.config.model import SiloConfig
from components.providers.controldb.catalog import Catalog, ResolvedImage, load_catalog


def resolve_images(
    cfg: SiloConfig, catalog: Catalog | None = None, *, towns: bool | None = None
) -> dict[str, ResolvedImage]:
    catalog = catalog or load_catalog()
    services = list(cfg.services)
    if towns if towns is not None else bool(cfg.towns):
        services.append("town")
    images = {name: catalog.resolve(name, cfg.images.get(name)) for name in services}
    for image in images.values():
        for warning in image.warnings:
            pulumi.log.warn(f"silo:images.{image.service}: {warning}")
    return images
