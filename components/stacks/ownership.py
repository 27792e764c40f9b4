"""The owner of everything this stack creates by name for its silo (naming.stack_owner).

Written as each Fly app's ownership mark and as each town's registry row owner; checked before anything
found by name is taken over (providers/fly/ownership.py, providers/controldb/registry.py).
"""

from __future__ import annotations

import pulumi

from components.config.model import SiloConfig, TownStackConfig
from components.domain import naming


def stack_owner(cfg: SiloConfig | TownStackConfig) -> str:
    return naming.stack_owner(pulumi.get_project(), pulumi.get_stack(), *cfg.owner_parts)
