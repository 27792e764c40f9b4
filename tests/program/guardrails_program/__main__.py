"""Registers the Fly resources listed in the stack config `fixture:resources`, in order:

    - {kind: App | Volume | Machine | IpAssignment, name: <logical name>, args: {...}, bypass: false}

`args` are the keyword arguments of the real resource classes (components/providers/fly/), whose
provider checks and diffs them as in the real program. With `bypass: true` the resource is registered
under the same type token by a provider whose `check` accepts anything: what a program change that
skipped the real providers' checks would register (an invalid name, an image on `latest`).
"""

from typing import Any

import pulumi
from pulumi.dynamic import CheckResult, CreateResult, DiffResult, ResourceProvider

from components.providers.base import DynamicResource
from components.providers.fly.apps import FlyApp
from components.providers.fly.ip_assignments import FlyIpAssignment
from components.providers.fly.machines import FlyMachine
from components.providers.fly.volumes import FlyVolume

REAL = {"App": FlyApp, "Volume": FlyVolume, "Machine": FlyMachine, "IpAssignment": FlyIpAssignment}


class AcceptingProvider(ResourceProvider):
    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        return CheckResult(news, [])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return DiffResult(changes=olds != news)

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(str(props.get("name") or "bypass"), props)


class BypassApp(DynamicResource, module="fly", name="App"):
    def __init__(self, name: str, args: dict[str, Any], opts: pulumi.ResourceOptions) -> None:
        super().__init__(AcceptingProvider(), name, {"keep_volumes": True, **args}, opts)


class BypassVolume(DynamicResource, module="fly", name="Volume"):
    def __init__(self, name: str, args: dict[str, Any], opts: pulumi.ResourceOptions) -> None:
        super().__init__(AcceptingProvider(), name, {"allow_delete": False, **args}, opts)


class BypassMachine(DynamicResource, module="fly", name="Machine"):
    def __init__(self, name: str, args: dict[str, Any], opts: pulumi.ResourceOptions) -> None:
        super().__init__(AcceptingProvider(), name, {"desired_state": "started", **args}, opts)


class BypassIpAssignment(DynamicResource, module="fly", name="IpAssignment"):
    def __init__(self, name: str, args: dict[str, Any], opts: pulumi.ResourceOptions) -> None:
        super().__init__(AcceptingProvider(), name, args, opts)


BYPASS = {"App": BypassApp, "Volume": BypassVolume, "Machine": BypassMachine, "IpAssignment": BypassIpAssignment}

# As in the real program, what lives in an app is created after the app (it names the app by a string
# here, so the dependency is explicit).
apps: dict[str, pulumi.Resource] = {}
for spec in pulumi.Config("fixture").require_object("resources"):
    args = dict(spec.get("args") or {})
    owner = apps.get(args.get("app", ""))
    opts = pulumi.ResourceOptions(depends_on=[owner] if owner is not None else [])
    if spec.get("bypass"):
        resource = BYPASS[spec["kind"]](spec["name"], args, opts)
    else:
        resource = REAL[spec["kind"]](spec["name"], **args, opts=opts)
    if spec["kind"] == "App":
        apps[args["name"]] = resource
