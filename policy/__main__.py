"""The silo guardrails policy pack (PulumiPolicy.yaml): the rules are policy/rules.py.

Run by the engine with this directory as the working directory and on sys.path (pulumi.policy's
runner, or the Python language host); the repository root goes on sys.path too, so the rules share
the program's catalog, naming rules and prices (components/) whether or not the virtualenv holds
the project itself.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import EnforcementLevel, PolicyPack
from rules import PACK_NAME, policies, use_engine_stack_config

use_engine_stack_config()
PolicyPack(PACK_NAME, enforcement_level=EnforcementLevel.MANDATORY, policies=policies())
