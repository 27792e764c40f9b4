"""Which image each service runs: silo:images pins resolved through the version catalog.

An unknown or disabled tag fails the program (so `pulumi preview` fails before anything changes);
a deprecated tag, or one without a digest, deploys with a warning. The resolution itself is
``components.domain.catalog.silo_images``, the same one ``silo render`` shows.
"""

from __future__ import annotations

import pulumi

from components.config.model import SiloConfig
from components.domain.catalog import Catalog, ResolvedImage, silo_images


def resolve_images(
    cfg: SiloConfig, catalog: Catalog | None = None, *, towns: bool | None = None
) -> dict[str, ResolvedImage]:
    images = silo_images(cfg, catalog, towns=towns)
    for image in images.values():
        for warning in image.warnings:
            pulumi.log.warn(f"silo:images.{image.service}: {warning}")
    return images
