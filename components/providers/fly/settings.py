"""Where the Fly Machines API is and which token to use.

Resolved once per provider process in ``configure()`` (stack config) with the environment as the
fallback, so ``pulumi destroy`` keeps working after a token rotation (Pulumi docs, Dynamic providers).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.providers.http import is_loopback_url

DEFAULT_API_URL = "https://api.machines.dev"
# Where `silo emulator` (and the README's main job) serves the local Fly Machines API emulator:
# scripts/emulator.sh starts this checkout's own on SILO_EMULATOR_PORT, else on 4280.
EMULATOR_PORT_ENV = "SILO_EMULATOR_PORT"
DEFAULT_EMULATOR_PORT = 4280
LOCAL_EMULATOR_URL = f"http://127.0.0.1:{DEFAULT_EMULATOR_PORT}"
# Any bearer token is accepted by the emulator; this one says where it came from in its logs.
EMULATOR_TOKEN = "local-emulator"
# The stack config the Fly providers keep in configure() (the rest comes from the environment).
CONFIG_KEYS = ("fly:apiToken", "fly:apiUrl")

# fly-go sends macaroon tokens with the FlyV1 scheme and everything else as Bearer
# (fly-go tokens/tokens.go ``Parse``).
_MACAROON_PREFIXES = ("fm1r_", "fm1a_", "fm2_")


@dataclass(frozen=True)
class FlySettings:
    base_url: str  # without the /v1 suffix, which the client adds per request like flyctl
    token: str = field(repr=False)  # never in a repr: tracebacks and debug logs print settings
    source: str  # "config", "env" or "emulator": shown in errors so users know what was used
    # No token and no URL anywhere: the checkout's local emulator (SILO_EMULATOR_PORT), which only a
    # process this checkout started may serve (components/cli/local_emulator.py).
    local_default: bool = False

    @property
    def authorization(self) -> str:
        return authorization_header(self.token)

    @property
    def uses_emulator(self) -> bool:
        return self.source == "emulator"

    @property
    def target(self) -> str:
        """Which Fly a run reaches, in words (the stacks' `fly_target` output)."""
        if self.uses_emulator:
            return f"the local Fly emulator at {self.base_url} (no Fly token: nothing on a Fly account)"
        where = "stack config" if self.source == "config" else "the environment"
        return f"the Fly Machines API at {self.base_url} (token from {where})"


def local_emulator_url(env: Mapping[str, str] | None = None) -> str:
    """This checkout's emulator: SILO_EMULATOR_PORT (as scripts/emulator.sh reads it), else 4280."""
    env = os.environ if env is None else env
    return f"http://127.0.0.1:{env.get(EMULATOR_PORT_ENV) or DEFAULT_EMULATOR_PORT}"


def authorization_header(token: str) -> str:
    raw = token.strip()
    for scheme in ("Bearer ", "FlyV1 "):
        if raw.startswith(scheme):
            raw = raw[len(scheme) :].strip()
    if raw.startswith(_MACAROON_PREFIXES):
        return f"FlyV1 {raw}"
    return f"Bearer {raw}"


def resolve_fly_settings(
    config: Mapping[str, str | None] | None = None, env: Mapping[str, str] | None = None
) -> FlySettings:
    """Stack config (`fly:apiUrl`, `fly:apiToken`) first, then the environment.

    Base URL: `fly:apiUrl`, `FLY_API_HOSTNAME` (Fly's docs), `FLY_FLAPS_BASE_URL` (flyctl), else the
    public API. With no token anywhere and no URL, the local emulator is the default: a fresh checkout
    can run `pulumi up` without a Fly account.
    """
    config = config or {}
    env = os.environ if env is None else env
    token = config.get("fly:apiToken")
    source = "config"
    if not token:
        token = env.get("FLY_API_TOKEN") or env.get("FLY_ACCESS_TOKEN")
        source = "env"
    url = config.get("fly:apiUrl") or env.get("FLY_API_HOSTNAME") or env.get("FLY_FLAPS_BASE_URL")
    if not token:
        if url and not is_loopback_url(url):
            raise ValueError(
                f"no Fly API token for {url}: set it with `pulumi config set --secret fly:apiToken ...` "
                "or export FLY_API_TOKEN"
            )
        return FlySettings(
            base_url=(url or local_emulator_url(env)).rstrip("/"),
            token=EMULATOR_TOKEN,
            source="emulator",
            local_default=not url,
        )
    return FlySettings(base_url=(url or DEFAULT_API_URL).rstrip("/").removesuffix("/v1"), token=token, source=source)


def fly_config_map(raw: Mapping[str, Any]) -> dict[str, str]:
    """``fly:apiUrl`` / ``fly:apiToken`` of a stack file's raw ``config:`` map, as plain strings.

    An encrypted ``fly:apiToken`` (``{secure: ...}``) cannot be decrypted without the Pulumi engine,
    so it is left out and the token comes from ``FLY_API_TOKEN`` instead.
    """
    return {key: raw[key] for key in CONFIG_KEYS if isinstance(raw.get(key), str) and raw[key]}
