"""The names state written before the providers got a module per API family refers to.

A dynamic provider is pickled into state by module path (`components.providers.fly.resources.FlyMachineProvider`
in stacks made before the split); these re-exports let such state be read, refreshed and destroyed
(tests/program/test_recorded_state.py). New code imports from the family's own module.
"""

from components.providers.fly.app_secrets import FlySecrets, FlySecretsProvider
from components.providers.fly.apps import DEFAULT_NETWORK, FlyApp, FlyAppProvider
from components.providers.fly.exec import FlyExec, FlyExecProvider
from components.providers.fly.ip_assignments import FlyIpAssignment, FlyIpAssignmentProvider
from components.providers.fly.machines import CONFIG_DIGEST, FlyMachine, FlyMachineProvider
from components.providers.fly.provider import FlyProviderBase
from components.providers.fly.ready import FlyMachinesReady, FlyMachinesReadyProvider
from components.providers.fly.volumes import REPLACEMENT_KEY, FlyVolume, FlyVolumeProvider

__all__ = [
    "CONFIG_DIGEST",
    "DEFAULT_NETWORK",
    "REPLACEMENT_KEY",
    "FlyApp",
    "FlyAppProvider",
    "FlyExec",
    "FlyExecProvider",
    "FlyIpAssignment",
    "FlyIpAssignmentProvider",
    "FlyMachine",
    "FlyMachineProvider",
    "FlyMachinesReady",
    "FlyMachinesReadyProvider",
    "FlyProviderBase",
    "FlySecrets",
    "FlySecretsProvider",
    "FlyVolume",
    "FlyVolumeProvider",
]
