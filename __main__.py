"""Silo infrastructure: one Pulumi stack per silo (or the shared `control` stack).

Pulumi.<stack>.yaml ─► SiloConfig ─► images from the version catalog ─► DevEnvStack (+ towns)
                                                                     └► stack outputs
"""

import pulumi

from components.config import from_pulumi_config
from components.images import resolve_images

cfg = from_pulumi_config()

if cfg.kind == "control":
    from components.control import ControlPlane

    outputs = ControlPlane(cfg).outputs
else:
    from components.devenv import DevEnvStack
    from components.outputs import silo_outputs

    images = resolve_images(cfg)
    devenv = DevEnvStack(cfg, images)
    outputs = silo_outputs(cfg, devenv)
    if cfg.towns:
        from components.town import ControlPlaneRef, town_sandboxes

        control = ControlPlaneRef(cfg.control_stack)
        towns = town_sandboxes(cfg, images["town"], control)
        outputs["towns"] = {sandbox.town.name: sandbox.outputs for sandbox in towns}
        # Secret, and apart: one secret value would hide the whole towns map.
        outputs["town_internal_api_keys"] = pulumi.Output.secret(
            {sandbox.town.name: sandbox.internal_api_key for sandbox in towns}
        )

for key, value in outputs.items():
    pulumi.export(key, value)
