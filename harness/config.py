"""Project (`Pulumi.yaml`) and stack config (`Pulumi.<stack>.yaml`) loading, as the CLI hands them to the SDK."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SECRET_ENV = "HARNESS_SECRET_CONFIG"


class ConfigError(Exception):
    """Bad project or stack configuration; the message names the file and key."""


@dataclass
class Project:
    name: str
    directory: Path
    main: Path


def load_project(project_dir: Path) -> Project:
    path = Path(project_dir) / "Pulumi.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: no Pulumi.yaml in the project directory")
    doc = yaml.safe_load(path.read_text()) or {}
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: `name` is required")
    main = Path(project_dir) / str(doc.get("main") or "")
    if main.is_dir():
        main = main / "__main__.py"
    if not main.exists():
        raise ConfigError(f"{path}: program {main} does not exist")
    return Project(name=name, directory=Path(project_dir), main=main)


def _qualify(key: str, project: str) -> str:
    # `pulumi config set key v` stores un-namespaced keys under the project's namespace.
    return key if ":" in key else f"{project}:{key}"


def _as_config_string(where: str, value: Any) -> str:
    if isinstance(value, Mapping) and "secure" in value:
        raise ConfigError(
            f"{where}: encrypted `secure:` values are not supported by the harness; "
            f"pass the value with --secret KEY=VALUE or in {SECRET_ENV}"
        )
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if value is None:
        return ""
    # Structured config reaches the SDK as JSON text, as the engine sends it.
    return json.dumps(value)


def load_config(
    project: Project,
    config_file: Path | None,
    secrets: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Return (namespaced config, secret keys): project defaults < stack file < secrets."""
    config: dict[str, str] = {}
    env = os.environ if environ is None else environ
    project_doc = yaml.safe_load((project.directory / "Pulumi.yaml").read_text()) or {}
    for key, spec in (project_doc.get("config") or {}).items():
        value = spec.get("default", spec.get("value")) if isinstance(spec, Mapping) else spec
        if value is not None:
            config[_qualify(key, project.name)] = _as_config_string(f"Pulumi.yaml config {key}", value)

    if config_file is not None:
        if not Path(config_file).exists():
            raise ConfigError(f"{config_file}: stack config file does not exist")
        doc = yaml.safe_load(Path(config_file).read_text()) or {}
        if not isinstance(doc, Mapping):
            raise ConfigError(f"{config_file}: expected a mapping with a `config:` key")
        entries = doc.get("config") or {}
        if not isinstance(entries, Mapping):
            raise ConfigError(f"{config_file}: `config` must be a mapping of key: value")
        for key, value in entries.items():
            config[_qualify(str(key), project.name)] = _as_config_string(f"{config_file}: {key}", value)

    secret_values: dict[str, str] = {}
    raw_env = env.get(SECRET_ENV)
    if raw_env:
        try:
            parsed = json.loads(raw_env)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{SECRET_ENV}: not valid JSON ({exc.msg})") from None
        if not isinstance(parsed, Mapping):
            raise ConfigError(f"{SECRET_ENV}: expected a JSON object of key: value")
        secret_values.update({str(k): _as_config_string(f"{SECRET_ENV} {k}", v) for k, v in parsed.items()})
    secret_values.update(secrets or {})
    secret_keys = []
    for key, value in secret_values.items():
        qualified = _qualify(key, project.name)
        config[qualified] = value
        secret_keys.append(qualified)
    return config, sorted(secret_keys)


def parse_secret_args(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--secret {pair.split('=')[0]!r}: expected KEY=VALUE")
        out[key] = value
    return out
