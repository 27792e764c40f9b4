"""Every dynamic resource of the program goes through components.providers.base.DynamicResource, which keeps a
big `up` (a silo with 100 towns is over 900 dynamic resources) from dying in the SDK's provider
serialisation with RecursionError."""

from __future__ import annotations

import importlib
import pkgutil

import pulumi
import pulumi.dynamic

import components
from components.providers.base import DynamicResource
from components.providers.fly.apps import FlyApp


class _Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        return f"{args.name}-id", args.inputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        return {}, None


def _all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


def test_every_dynamic_resource_class_uses_the_shared_base() -> None:
    for module in pkgutil.walk_packages(components.__path__, "components."):
        importlib.import_module(module.name)
    classes = {c for c in _all_subclasses(pulumi.dynamic.Resource) if c.__module__.startswith("components.")}
    assert classes, "no dynamic resources found"
    assert {c.__qualname__ for c in classes if not issubclass(c, DynamicResource)} == set()


def test_a_program_can_declare_thousands_of_dynamic_resources(mock_event_loop: object) -> None:
    pulumi.runtime.set_mocks(_Mocks(), project="silo", stack="scale", preview=False)
    try:
        # Providers with instance state (FlyApp's keeps its resolved config) are the ones whose
        # pickling goes through the patched method.
        for i in range(1500):
            FlyApp(f"app-{i}", name=f"app-{i}", org="acme")
    finally:
        pulumi.runtime.settings.reset_options()
