"""Where the service finds the registry, the state and the stacks, and what the towns it makes get.

Read from a YAML file (`silo serve --config FILE`; `make serve` writes `.silo/serve/config.yaml`) with
`SILO_SERVE_*` environment variables on top. Secrets (the registry DSN, tokens, Fly and Cloudflare
credentials) come from the environment only, never from the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.config.model import ConfigError, TownStackConfig
from components.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(UserError):
    pass


class ServiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    registry_dsn: str = Field(repr=False)  # the registry PostgreSQL: towns, operations, the queue
    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)
    # Where the town stacks' files live (Pulumi.yaml + Pulumi.town-<sandbox id>.yaml), and the silo stacks'.
    towns_project_dir: Path = REPO_ROOT / ".silo" / "serve" / "towns"
    silos_project_dir: Path = REPO_ROOT
    # engine/workspace.py's state directory: the passphrase and the default file backend, unless
    # PULUMI_BACKEND_URL / PULUMI_CONFIG_PASSPHRASE(_FILE) are set (a team's shared backend: docs/team.md).
    state_dir: Path = REPO_ROOT / ".silo"
    tokens_file: Path = REPO_ROOT / ".silo" / "serve" / "tokens.json"
    # What every town the API makes gets (the same keys as a `town` stack: TownStackConfig).
    fly_org: str
    region: str = "yul"
    control_stack: str
    kilo_api_url: str  # where towns send their heartbeats: this service's public URL
    allow_town_data_deletion: bool = False  # DELETE /v1/towns/{id} removes the volume too
    images: dict[str, str] = Field(default_factory=dict)
    # Stack operations running at once in the worker process (each is a CLI run).
    workers: int = Field(20, ge=1, le=64)
    # Renewing the towns' temporary R2 credentials (a week at most): every `renew_check_s`, each API town
    # whose credentials lapse within `renew_before_s` gets an `up`, which re-mints them (the provider
    # re-mints in their last two days: components/providers/cloudflare/r2.py).
    renew_check_s: float = Field(600.0, gt=0)
    renew_before_s: float = Field(2 * 24 * 3600.0, gt=0)
    # `?wait=true`: how long a mutation waits for its operation before answering 202.
    wait_timeout_s: float = Field(120.0, gt=0, le=3600)
    # Extra environment for the CLI and the providers (FLY_API_HOSTNAME, CLOUDFLARE_*, ...).
    env: dict[str, str] = Field(default_factory=dict, repr=False)

    def town_stack_config(self, town: dict[str, Any]) -> dict[str, Any]:
        """A town stack's `config:` map (checked by the same model `pulumi preview` checks it with)."""
        config = {
            "silo:kind": "town",
            "silo:flyOrg": self.fly_org,
            "silo:region": self.region,
            "silo:controlStack": self.control_stack,
            "silo:kiloApiUrl": self.kilo_api_url,
            "silo:town": town,
        }
        if self.allow_town_data_deletion:
            config["silo:allowDataDeletion"] = "true"
        if self.images:
            config["silo:images"] = dict(self.images)
        return config

    def check(self) -> ServiceSettings:
        """Fail at start, naming the setting, if a town made with these settings could not be previewed."""
        from components.config.model import from_mapping

        probe = {"name": "probe", "user": "probe", "rigs": []}
        try:
            from_mapping(self.town_stack_config(probe))
        except ConfigError as exc:
            raise SettingsError(f"service settings: {exc}") from None
        return self


ENV_PREFIX = "SILO_SERVE_"


def load_settings(path: Path | None = None, overrides: dict[str, Any] | None = None) -> ServiceSettings:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"service settings: cannot read {path}: {exc}") from None
    for key, value in os.environ.items():
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "CONFIG":
            data[key[len(ENV_PREFIX) :].lower()] = value
    data.setdefault("registry_dsn", os.environ.get("SILO_REGISTRY_DSN", ""))
    data.update(overrides or {})
    if not data.get("registry_dsn"):
        raise SettingsError("service settings: no registry database: export SILO_REGISTRY_DSN")
    try:
        return ServiceSettings(**data).check()
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise SettingsError(f"service settings: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


__all__ = ["ServiceSettings", "SettingsError", "TownStackConfig", "load_settings"]
