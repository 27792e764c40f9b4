"""Registry digests for ``catalog/images.yaml``: the Docker registry HTTP API, and a small command line.

``python -m components.cli.digests resolve REPOSITORY TAG`` prints the digest to write into the catalog
(digests are looked up, never made up); ``check [FILE]`` validates a catalog and prints what each
default resolves to. Only people run this, where the registry is reachable: ``up`` and ``silo render``
read the catalog file and never call a registry.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

import httpx

from components.domain.catalog import DEFAULT_CATALOG, DIGEST, CatalogError, load_catalog

DOCKER_HUB = "https://registry-1.docker.io"
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


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
    """``python -m components.cli.digests {resolve REPO TAG | check [FILE]}``."""
    parser = argparse.ArgumentParser(prog="python -m components.cli.digests")
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
