"""What the silo and town components declare, under Pulumi mocks (no engine, no harness).

The resources' inputs are what the engine would store in state and hand to the providers, so these
tests see where a credential travels (a Fly secret, never the fly.toml or the registry row) and on
which Fly network each app is created.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pulumi
import pytest
from pulumi.runtime import config as runtime_config
from pulumi.runtime import rpc

from components.catalog import load_catalog
from components.config import SiloConfig, TownConfig
from components.images import resolve_images
from components.town import ControlPlaneRef, TownSandbox

FLY = "pulumi-python:dynamic/fly:"
CREDENTIALS = "https://x-access-token:ghp_SECRET123@github.com\n"


@dataclass
class Registered:
    typ: str
    name: str
    inputs: dict[str, Any]


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[Registered] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        self.resources.append(Registered(args.typ, args.name, dict(args.inputs)))
        outs = dict(args.inputs)
        if args.typ == "pulumi:pulumi:StackReference":
            outs["outputs"] = {"backup_bucket": "silo-gastown-backups", "backup_s3_endpoint": "https://r2.example"}
        if args.typ.startswith("random:"):
            outs["result"] = f"{args.name}-value"
        if args.typ.endswith(":TownRegistration"):
            outs["town_id"] = "11111111-1111-1111-1111-111111111111"
        if args.typ.endswith(":Machine"):
            outs["machine_id"] = f"{args.name}-id"
        if args.typ.endswith(":Volume"):
            outs["volume_id"] = f"vol-{args.name}"
        if args.typ.endswith(":Secrets"):
            outs["version"] = 1
        return (f"{args.name}-id" if args.custom else None), outs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
        return {}

    def of_type(self, suffix: str) -> list[Registered]:
        return [r for r in self.resources if r.typ == FLY + suffix or r.typ.endswith(":" + suffix)]


@pytest.fixture
def mocks() -> Iterator[RecordingMocks]:
    loop = asyncio.new_event_loop()  # asyncio.run() elsewhere leaves no current loop
    asyncio.set_event_loop(loop)
    recording = RecordingMocks()
    pulumi.runtime.set_mocks(recording, project="silo-infra", stack="acme-erp", preview=False)
    try:
        yield recording
    finally:
        runtime_config.set_all_config({}, secret_keys=[])
        asyncio.set_event_loop(None)
        loop.close()


def silo(**overrides: Any) -> SiloConfig:
    base: dict[str, Any] = dict(
        client="acme", app="erp", fly_org="acme-erp", site_url="https://acme.example", studio=False,
        control_stack="acme/silo/control",
    )  # fmt: skip
    return SiloConfig(**{**base, **overrides})


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


def plain(value: Any) -> Any:
    return value["value"] if is_secret(value) else value


def declare_town(cfg: SiloConfig, town: TownConfig) -> TownSandbox:
    images = resolve_images(cfg, load_catalog(), towns=True)
    holder: dict[str, TownSandbox] = {}

    @pulumi.runtime.test
    def program() -> pulumi.Output:
        sandbox = TownSandbox(cfg, town, images["town"], ControlPlaneRef(cfg.control_stack or ""))
        holder["town"] = sandbox
        return pulumi.Output.all(sandbox.machine.machine_id, sandbox.record.urn)

    program()
    return holder["town"]


def test_git_credentials_reach_the_town_only_as_a_secret(mocks: RecordingMocks) -> None:
    runtime_config.set_all_config({"silo:gitCredentials": CREDENTIALS}, secret_keys=["silo:gitCredentials"])
    rigs = [{"name": "web", "url": "https://github.com/acme/private-web.git"}]
    town = TownConfig(name="alpha", user="u1", rigs=rigs)
    cfg = silo(towns=[town])
    declare_town(cfg, town)

    [secrets] = mocks.of_type("Secrets")
    assert is_secret(secrets.inputs["values"])  # encrypted in state
    assert plain(secrets.inputs["values"])["GIT_CREDENTIALS"] == CREDENTIALS
    # Nowhere else: not the fly.toml (rigs.json, env), the machine, the registry rows, any other input.
    for resource in mocks.resources:
        if resource is secrets:
            continue
        assert "ghp_SECRET123" not in repr(resource.inputs), resource.name
    [machine] = mocks.of_type("Machine")
    assert "https://github.com/acme/private-web.git" in machine.inputs["fly_toml"]


def test_without_git_credentials_the_town_gets_no_such_secret(mocks: RecordingMocks) -> None:
    town = TownConfig(name="alpha", user="u1")
    declare_town(silo(towns=[town]), town)
    [secrets] = mocks.of_type("Secrets")
    assert "GIT_CREDENTIALS" not in plain(secrets.inputs["values"])
