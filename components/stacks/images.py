"""Which image each service runs: silo:images pins resolved through the version catalog.

An unknown or disabled tag fails the program (so `pulumi preview` fails before anything changes);
a deprecated tag deploys with a warning, and one without a digest with the guardrails' advisory
(policy/rules.py images-by-digest). The resolution itself is
``components.domain.catalog.silo_images``, the same one ``silo render`` shows.
"""

from __future__ import annotations

import pulumi

from components.config.model import SiloConfig
from components.domain.catalog import Catalog, ResolvedImage, by_tag_note, silo_images


def resolve_images(
    cfg: SiloConfig, catalog: Catalog | None = None, *, towns: bool | None = None
) -> dict[str, ResolvedImage]:
    images = silo_images(cfg, catalog, towns=towns)
    for image in images.values():
        # An image by tag is the guardrails' images-by-digest rule to report, once per machine and with the
        # fix: said here as well, the CLI would show it three more times (live, last event, diagnostics).
        by_tag = by_tag_note(image.service, image.repository, image.tag) if not image.digest else None
        for warning in image.warnings:
            if warning != by_tag:
                pulumi.log.warn(f"silo:images.{image.service}: {warning}")
    return images
