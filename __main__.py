"""Silo infrastructure: one Pulumi stack per silo (or the shared `control` stack, or one `town`).

Pulumi.<stack>.yaml ─► SiloConfig ─► images from the version catalog ─► DevEnvStack (+ towns)
                                                                     └► stack outputs
A `town` stack (TownStackConfig) is one town outside any silo: how the provisioning API runs towns.
"""

import pulumi

from components.config.program import from_pulumi_config
from components.stacks.images import resolve_images

cfg = from_pulumi_config()
if cfg.kind != "control" and cfg.towns:
    from components.stacks.town import require_town_credentials

    require_town_credentials()  # a missing credential fails the preview, before anything is declared

if cfg.kind == "control":
    from components.stacks.control import ControlPlane

    outputs = ControlPlane(cfg).outputs
elif cfg.kind == "town":
    from components.stacks.town import ControlPlaneRef, town_sandboxes

    [sandbox] = town_sandboxes(cfg, resolve_images(cfg)["town"], ControlPlaneRef(cfg.control_stack))
    outputs = {"town": sandbox.outputs, "town_internal_api_key": pulumi.Output.secret(sandbox.internal_api_key)}
else:
    from components.stacks.devenv import DevEnvStack
    from components.stacks.outputs import silo_outputs

    images = resolve_images(cfg)
    devenv = DevEnvStack(cfg, images)
    outputs = silo_outputs(cfg, devenv)
    if cfg.towns:
        from components.stacks.town import ControlPlaneRef, town_sandboxes

        control = ControlPlaneRef(cfg.control_stack)
        towns = town_sandboxes(cfg, images["town"], control)
        outputs["towns"] = {sandbox.town.name: sandbox.outputs for sandbox in towns}
        # Secret, and apart: one secret value would hide the whole towns map.
        outputs["town_internal_api_keys"] = pulumi.Output.secret(
            {sandbox.town.name: sandbox.internal_api_key for sandbox in towns}
        )

if cfg.kind != "control":
    from components.stacks.outputs import fly_target

    outputs["fly_target"] = fly_target()

for key, value in outputs.items():
    pulumi.export(key, value)
