"""The silo guardrails policy pack (PulumiPolicy.yaml): the rules are policy/rules.py.

Started by pulumi.policy's runner (`python -m pulumi.policy ENGINE_ADDRESS DIR`, through the language
host or policy/run-policy-pack), which runs this file with its directory first on sys.path: so `rules`
is the module beside it, published with the pack. The rules share the program's catalog, naming rules
and prices through the installed project package (`silo-infra`, pyproject.toml: `components` and the
image catalog), which the pack's virtualenv holds (policy/requirements.txt).
"""

from pulumi_policy import EnforcementLevel, PolicyPack
from rules import PACK_NAME, policies

PolicyPack(PACK_NAME, enforcement_level=EnforcementLevel.MANDATORY, policies=policies())
