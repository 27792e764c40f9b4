"""`silo adopt STACK_FILE`: mark the silo's existing Fly apps as this stack's, after checking whose they are.

A stack takes over an app found by name only when the app carries the stack's ownership mark
(components/providers/fly/ownership.py). An app made by hand, by another tool, or by a version of this
program from before the marks has none, and `pulumi up` refuses it rather than guess. This command is
the explicit "yes, these are mine": it marks every app of the stack file's silo and towns that exists
in the silo's Fly org and carries no mark; an app marked by another stack is never touched.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from components.config.model import SiloConfig
from components.domain import naming
from components.providers.fly import ownership
from components.providers.fly.client import FlyClient
from components.providers.fly.settings import FlySettings


def stack_identity(stack_file: Path, cfg: SiloConfig) -> str:
    """The owner (naming.stack_owner) of a ``Pulumi.<stack>.yaml``: the project's name from the Pulumi.yaml
    beside it, the stack's from the file's name."""
    name = stack_file.name
    if not (name.startswith("Pulumi.") and name.endswith((".yaml", ".yml"))):
        raise ValueError(f"{stack_file}: a stack file is named Pulumi.<stack>.yaml")
    stack = name[len("Pulumi.") :].rsplit(".", 1)[0]
    project_file = stack_file.resolve().parent / "Pulumi.yaml"
    try:
        project = (yaml.safe_load(project_file.read_text()) or {}).get("name")
    except OSError as exc:
        raise ValueError(f"{project_file}: cannot read the project file ({exc.strerror})") from None
    if not project:
        raise ValueError(f"{project_file}: the project has no name")
    return naming.stack_owner(str(project), stack, *cfg.owner_parts)


def adopt(cfg: SiloConfig, settings: FlySettings, owner: str) -> tuple[list[str], bool]:
    """One line per app (what was done, or why not) and whether every app could be made this stack's."""
    apps = [cfg.app_name(s) for s in cfg.services] + [t.sandbox_id for t in cfg.towns]
    lines: list[str] = []
    ok = True
    with FlyClient(settings) as fly:
        for name in apps:
            app = fly.get_app(name)
            if app is None:
                lines.append(f"{name}: absent (`pulumi up` creates it)")
                continue
            org = (app.get("organization") or {}).get("slug")
            if org and org != cfg.fly_org:
                lines.append(f"{name}: in organization {org}, not {cfg.fly_org}: not adopted")
                ok = False
                continue
            marks = ownership.owner_marks(fly, name)
            if naming.owner_secret(owner) in marks:
                lines.append(f"{name}: already {owner}'s")
            elif marks:
                lines.append(f"{name}: marked by another stack: not adopted (remove it from that stack first)")
                ok = False
            else:
                ownership.mark(fly, name, owner)
                lines.append(f"{name}: adopted by {owner}")
    return lines, ok
