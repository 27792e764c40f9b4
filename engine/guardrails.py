"""The silo guardrails (policy/) on this engine: which pack `make preview` / `make up` run, with which
per-stack config, and what they print about it before the CLI starts.

The pack is passed as its launcher, policy/run-policy-pack (an executable: this engine has no Python
language host to run the directory; see that file). Enforcement levels are configured per stack the
standard way, a `--policy-pack-config` JSON file: policy/config/<stack>.json when it exists, e.g.
``{"images-by-digest": "disabled", "autostop-on": {"enforcementLevel": "mandatory"}}`` ("all" sets
every rule; Pulumi docs, "Configuring policy packs").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.workspace import REPO_ROOT

POLICY_DIR = REPO_ROOT / "policy"
LAUNCHER = POLICY_DIR / "run-policy-pack"
CONFIG_DIR = POLICY_DIR / "config"
LEVELS = ("advisory", "mandatory", "remediate", "disabled")


def config_file(stack: str, config_dir: Path = CONFIG_DIR) -> Path | None:
    path = config_dir / f"{stack}.json"
    return path if path.is_file() else None


def policy_args(stack: str, config_dir: Path = CONFIG_DIR) -> dict[str, list[str]]:
    """The Automation API arguments (`policy_packs`, `policy_pack_configs`) of an up or preview."""
    args = {"policy_packs": [str(LAUNCHER)]}
    config = config_file(stack, config_dir)
    if config is not None:
        args["policy_pack_configs"] = [str(config)]
    return args


def effective_levels(config: dict[str, Any] | None) -> dict[str, str]:
    """Each rule's enforcement level: its default, then "all", then its own entry (how the CLI reconciles
    a pack's config, pkg/resource/analyzer/config.go ReconcilePolicyPackConfig)."""
    from policy.rules import RULES

    config = config or {}

    def level(entry: Any) -> str | None:
        value = entry.get("enforcementLevel") if isinstance(entry, dict) else entry
        return value if value in LEVELS else None

    levels = {}
    for rule in RULES:
        levels[rule.name] = level(config.get(rule.name)) or level(config.get("all")) or rule.level.value
    return levels


def describe(stack: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """What `make preview` prints before the CLI runs: the pack, where its config comes from, its rules."""
    from policy.rules import PACK_NAME, RULES

    path = config_file(stack, config_dir)
    config = json.loads(path.read_text()) if path is not None else None
    levels = effective_levels(config)
    if path is not None:
        where = f"levels from {_shown(path)}"
    else:
        where = f"default levels; per-stack levels go in {_shown(config_dir / f'{stack}.json')}"
    width = max(len(rule.name) for rule in RULES)
    lines = [f"policy pack {PACK_NAME} ({_shown(POLICY_DIR)}/, {len(RULES)} rules, {where}):"]
    lines += [f"  {levels[rule.name]:<9}  {rule.name:<{width}}  {rule.why}" for rule in RULES]
    return lines


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)
