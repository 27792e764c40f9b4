"""What a destroy leaves on purpose: the resources marked ``retain_on_delete`` (data volumes and the apps
that hold them, unless silo:allowDataDeletion), which the engine drops from the state without deleting.

The CLI's summary counts them among the deleted ("- 40 deleted"), so a user could believe the data
gone, or forget it is still billed. `make destroy` and the raw `pulumi destroy` (scripts/bin/pulumi) read
them from the state before the run and name them after it: ``python -m engine.retained < export.json``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any


def retained(resources: Iterable[Mapping[str, Any]]) -> list[str]:
    """One phrase per retained resource of a state's ``resources``: its kind, name and Fly id."""
    kept = []
    for resource in resources:
        if not resource.get("retainOnDelete") or resource.get("delete"):
            continue
        kind = str(resource.get("type", "")).rsplit(":", 1)[-1].lower()
        outputs = resource.get("outputs") or {}
        if kind == "volume":
            kept.append(f"volume {outputs.get('name')} ({resource.get('id')}) of app {outputs.get('app')}")
        elif kind == "app":
            kept.append(f"app {resource.get('id')}")
        else:
            kept.append(f"{kind} {resource.get('id')}")
    return kept


def summary(resources: Iterable[Mapping[str, Any]]) -> str | None:
    """The line printed after a successful destroy, or None when nothing was retained."""
    kept = retained(resources)
    if not kept:
        return None
    return (
        f"Retained, not deleted ({len(kept)}; retain_on_delete, now outside this stack's state): {'; '.join(kept)}. "
        "Their data stays on Fly, and so does their cost: a later `up` of this stack adopts them again; "
        "`fly apps destroy APP` deletes one for good; to delete them with the stack, allow it first "
        "(silo:allowDataDeletion and the guardrails' waiver, then `up`: docs/config.md)"
    )


def main() -> int:
    """Reads a `pulumi stack export` from stdin and prints the summary, if any."""
    try:
        state = json.load(sys.stdin)
    except ValueError:
        return 0  # no readable state before the run: nothing to name
    line = summary((state.get("deployment") or {}).get("resources") or [])
    if line:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
