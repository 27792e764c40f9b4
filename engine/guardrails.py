"""The silo guardrails (policy/) on this engine: which pack `make preview` / `make up` run, with which
per-stack config, and what they print about it before the CLI starts.

The pack is passed as its launcher, policy/run-policy-pack (an executable: this engine has no Python
language host to run the directory; see that file). Each stack's policy config is the standard
`--policy-pack-config` JSON file: policy/config/<stack>.json when it exists (a PR silo `pr-<number>`
without one of its own: its group's, policy/config/groups/pr-silos.json). It sets enforcement levels, e.g.
``{"images-by-digest": "disabled", "autostop-on": {"enforcementLevel": "mandatory"}}`` ("all" sets
every rule; Pulumi docs, "Configuring policy packs"), and the rules' own config: the waivers of
mandatory rules, e.g. ``{"data-volumes-kept": {"allowDataDeletion": true}}``, and the monthly budget
(policy/rules.py CONFIG_SCHEMAS; docs/guardrails.md "Waivers").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.workspace import REPO_ROOT

POLICY_DIR = REPO_ROOT / "policy"
LAUNCHER = POLICY_DIR / "run-policy-pack"
CONFIG_DIR = POLICY_DIR / "config"
# The policy config of every PR silo (`silo pr up`: throwaway data, so it waives data-volumes-kept) unless
# one has a file of its own; in a subdirectory, so that no stack's name makes it that stack's own file. (A
# policy group, in Pulumi Cloud's words: stacks that share a pack's config.)
PR_SILOS_CONFIG = Path("groups") / "pr-silos.json"
LEVELS = ("advisory", "mandatory", "remediate", "disabled")


def config_file(stack: str, config_dir: Path = CONFIG_DIR) -> Path | None:
    own = config_dir / f"{stack}.json"
    if own.is_file():
        return own
    from components.cli.pr import STACK as PR_STACK

    shared = config_dir / PR_SILOS_CONFIG
    return shared if PR_STACK.match(stack) and shared.is_file() else None


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
    settings = rule_settings(config)
    lines += [
        f"  {'config':<9}  {rule:<{width}}  {', '.join(f'{k}={json.dumps(v)}' for k, v in props.items())}"
        for rule, props in settings
    ]
    return lines


def rule_settings(config: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """The rules' own settings in a policy config (a waiver, the budget), besides their levels."""
    from policy.rules import RULE

    found = []
    for name, entry in (config or {}).items():
        if name in RULE and isinstance(entry, dict):
            props = {k: v for k, v in entry.items() if k != "enforcementLevel"}
            if props:
                found.append((name, props))
    return found


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)
