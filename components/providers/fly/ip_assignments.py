"""FlyIpAssignment: one IP address of an app (the API's ip_assignments family).

See components/providers/fly/provider.py for the contract every provider here keeps.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
)

from components.providers.base import (
    DynamicResource,
    diff_result,
)
from components.providers.fly.answers import ip_kind
from components.providers.fly.errors import FlyError
from components.providers.fly.provider import FlyProviderBase

IP_TYPES = ("v6", "shared_v4", "private_v6", "v4")


class FlyIpAssignmentProvider(FlyProviderBase):
    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        if news.get("type") not in IP_TYPES:
            failures.append(CheckFailure("type", f"must be one of {', '.join(IP_TYPES)} (got {news.get('type')!r})"))
        if not news.get("app"):
            failures.append(CheckFailure("app", "the Fly app name is required"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = ("app", "type", "region")
        # An IP assignment has no name to collide on, so create the new one before releasing the old.
        return diff_result(olds, news, compare=keys, replace_on=keys, delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> CreateResult:
        app, kind = props["app"], props["type"]
        with self.client() as fly:
            ip = fly.allocate_ip(app, kind, props.get("region"))
            address = ip.get("ip") or ip.get("address")
            if not address:
                # The address is the id, and an empty id fails the whole `up` ("plugin returned empty
                # resource.ID"): an answer without it is looked up in the app's list.
                ip = next((i for i in fly.list_ips(app) if ip_kind(i) == kind and i.get("ip")), ip)
                address = ip.get("ip")
        if not address:
            raise FlyError(f"Fly allocated a {kind} IP for app {app} but reported no address; run `up` again")
        return CreateResult(address, {**props, "address": address, "shared": bool(ip.get("shared"))})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.client() as fly:
            ips = fly.list_ips(props["app"])
        match = next((ip for ip in ips if ip.get("ip") == id_), None)
        if match is None:
            return ReadResult("", {})
        outs = {**props, "address": id_, "type": ip_kind(match)}
        return ReadResult(id_, outs, inputs={k: outs[k] for k in ("app", "type", "region") if k in outs})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        with self.client() as fly:
            fly.release_ip(props["app"], id_)


class FlyIpAssignment(DynamicResource, module="fly", name="IpAssignment"):
    address: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        app: pulumi.Input[str],
        type: str,
        region: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__(
            FlyIpAssignmentProvider(),
            resource_name,
            {"app": app, "type": type, "region": region, "address": None, "shared": None},
            opts,
        )
