"""Toy program: independent and dependent dynamic resources, pulumi_random, a component, secrets,
structured config and an optional StackReference."""

import os

import pulumi
import pulumi_random as random
from toyprovider import Plain, Thing

cfg = pulumi.Config()  # namespace "toy" (the project name)
size = cfg.get_int("size") or 0
zone = cfg.get("zone") or "east"
delay = cfg.get_float("delay") or 0.0
dbr = cfg.get_bool("dbr") or False
token = cfg.get_secret("token")
tags = cfg.get_object("tags") or {}


class Group(pulumi.ComponentResource):
    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("toy:index:Group", name, None, opts)
        self.child = Thing(f"{name}-child", {"size": size, "tags": tags}, pulumi.ResourceOptions(parent=self))
        self.register_outputs({"child_serial": self.child.serial})


a = Thing("a", {"size": size, "zone": zone, "delay": delay})
b = Thing("b", {"size": size, "upstream": a.serial})
c = Thing("c", {"size": size, "zone": zone, "delay": delay, "dbr": dbr})
secretful = Thing("s", {"size": size, "delay": delay, **({"token": token} if token is not None else {})})
group = Group("grp")
Plain("p", {"size": size}, pulumi.ResourceOptions(depends_on=[a]))
if cfg.get_bool("extra"):
    Thing("extra", {"size": size}, pulumi.ResourceOptions(depends_on=[b]))
if cfg.get_bool("chain"):
    # Both take c's serial: into "zone" (a replacement key of the toy) for d, into "upstream" for e.
    Thing("d", {"size": size, "zone": c.serial})
    Thing("e", {"size": size, "upstream": c.serial})
if cfg.get_bool("kept"):
    Thing("kept", {"size": size}, pulumi.ResourceOptions(retain_on_delete=True))
if cfg.get_bool("guarded"):
    Thing("guarded", {"size": size, "zone": zone}, pulumi.ResourceOptions(protect=True))

# Randoms wait for `a` so a failing check on the Things leaves nothing created at all.
pw = random.RandomPassword(
    "pw", length=24, special=False, min_upper=3, min_numeric=3, opts=pulumi.ResourceOptions(depends_on=[a])
)
rid = random.RandomId("rid", byte_length=8, opts=pulumi.ResourceOptions(depends_on=[a]))

pulumi.log.warn("toy program warning")
if cfg.get_bool("explode"):
    raise ValueError("toy program exploded")

pulumi.export("a_serial", a.serial)
pulumi.export("b_upstream", b.upstream)
pulumi.export("child_urn", group.child.urn)
pulumi.export("password", pw.result)
pulumi.export("rid_hex", rid.hex)
pulumi.export("greeting", cfg.get("greeting"))
pulumi.export("tags", tags)
pulumi.export("harness_pid", os.getpid())
if token is not None:
    pulumi.export("token_out", token)
if cfg.get("peer"):
    peer = pulumi.StackReference(cfg.get("peer"))
    pulumi.export("peer_greeting", peer.get_output("greeting"))
    pulumi.export("peer_token", peer.get_output("token_out"))
