"""Where the Cloudflare providers find their API: stack config first, then the environment.

``configure()`` keeps the stack config values named in ``CONFIG_KEYS`` (Pulumi docs, Dynamic providers); each
call falls back to the environment (``CLOUDFLARE_API_TOKEN``, ``CLOUDFLARE_ACCOUNT_ID``,
``CLOUDFLARE_API_URL``, ``CLOUDFLARE_R2_PARENT_ACCESS_KEY_ID``), so a rotated token works for
``pulumi destroy`` too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from components.providers.http import is_loopback_url

DEFAULT_API_URL = "https://api.cloudflare.com/client/v4"
API_PATH = "/client/v4"
EMULATOR_TOKEN = "local-emulator"
CONFIG_KEYS = (
    "cloudflare:apiToken",
    "cloudflare:accountId",
    "cloudflare:apiUrl",
    "cloudflare:r2ParentAccessKeyId",
)
PARENT_ACCESS_KEY_CONFIG = "cloudflare:r2ParentAccessKeyId"
PARENT_ACCESS_KEY_ENV = "CLOUDFLARE_R2_PARENT_ACCESS_KEY_ID"
ACCOUNT_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class CloudflareSettings:
    api_url: str  # ends with /client/v4
    account_id: str
    token: str = field(repr=False)
    parent_access_key_id: str | None = None
    source: str = "config"  # "config", "env" or "emulator": named in errors


def resolve_cloudflare_settings(
    config: Mapping[str, str | None] | None = None, env: Mapping[str, str] | None = None
) -> CloudflareSettings:
    """Stack config first, then the environment; errors name the config key to set."""
    config = config or {}
    env = os.environ if env is None else env
    token = config.get("cloudflare:apiToken")
    source = "config"
    if not token:
        token, source = env.get("CLOUDFLARE_API_TOKEN"), "env"
    url = config.get("cloudflare:apiUrl") or env.get("CLOUDFLARE_API_URL") or DEFAULT_API_URL
    url = url.rstrip("/")
    if not url.endswith(API_PATH):
        url += API_PATH
    if not token:
        if not is_loopback_url(url):
            raise ValueError(
                f"cloudflare:apiToken: no Cloudflare API token for {url}: set it with "
                "`pulumi config set --secret cloudflare:apiToken ...` or export CLOUDFLARE_API_TOKEN"
            )
        token, source = EMULATOR_TOKEN, "emulator"
    if urlsplit(url).scheme != "https" and not is_loopback_url(url):
        # The token is a bearer token: over plain http it would cross the network readable by anyone.
        raise ValueError(
            f"cloudflare:apiUrl: {url} is not https and not on this machine, so the token would cross the "
            "network in clear; use https (only a loopback emulator may be reached over http)"
        )
    account_id = config.get("cloudflare:accountId") or env.get("CLOUDFLARE_ACCOUNT_ID") or ""
    if not ACCOUNT_ID.match(account_id):
        raise ValueError(
            "cloudflare:accountId: the Cloudflare account id (32 lowercase hex characters) is "
            f"required; set cloudflare:accountId or CLOUDFLARE_ACCOUNT_ID (got {account_id!r})"
        )
    parent = config.get(PARENT_ACCESS_KEY_CONFIG) or env.get(PARENT_ACCESS_KEY_ENV)
    return CloudflareSettings(
        api_url=url, account_id=account_id, token=token, parent_access_key_id=parent or None, source=source
    )


def s3_endpoint(account_id: str, jurisdiction: str = "default") -> str:
    """The S3 endpoint of an account's buckets in a jurisdiction (Cloudflare docs, r2/api/tokens)."""
    if jurisdiction == "default":
        return f"https://{account_id}.r2.cloudflarestorage.com"
    return f"https://{account_id}.{jurisdiction}.r2.cloudflarestorage.com"


def require_parent_access_key(settings: CloudflareSettings) -> str:
    """The parent access key a town's temporary R2 credentials are derived from; its absence is said
    naming the key, by preview (components/stacks/town.py), `silo doctor` and the credentials' create."""
    if not settings.parent_access_key_id:
        raise ValueError(
            f"{PARENT_ACCESS_KEY_CONFIG}: temporary R2 credentials are derived from a parent access key (the "
            f"id of an R2 API token); set {PARENT_ACCESS_KEY_CONFIG} or {PARENT_ACCESS_KEY_ENV}"
        )
    return settings.parent_access_key_id
