"""What every Fly Machines API provider shares, one module per API family beside it (as fly-go's
`flaps` has one file per family): apps.py, ip_assignments.py, app_secrets.py, volumes.py, machines.py (and ready.py,
the readiness gate over many machines), exec.py.

Provider classes live in importable modules (pickled by reference, no import-time side effects).
Each method builds its own FlyClient; credentials come from ``configure()`` (stack config) or env.
Contract (Pulumi docs, Dynamic providers): explicit ``diff`` that ignores ``__provider`` and normalises what
the API echoes back, ``replaces`` for immutable fields with ``delete_before_replace`` for named
objects, ``outs = {**inputs, **computed}``, idempotent create (adopt by name, only what provably is
this stack's) or rollback, 404 on delete means done.
"""

from __future__ import annotations

from components.providers.base import ApiProvider
from components.providers.fly.client import FlyClient
from components.providers.fly.settings import CONFIG_KEYS as FLY_CONFIG_KEYS
from components.providers.fly.settings import FlySettings, resolve_fly_settings


class FlyProviderBase(ApiProvider):
    """The Fly Machines API's providers: `fly:apiToken` and `fly:apiUrl` from the stack, else the environment."""

    STACK_CONFIG_KEYS = FLY_CONFIG_KEYS

    def settings(self) -> FlySettings:
        return resolve_fly_settings(self.stack_config())

    def client(self) -> FlyClient:
        return FlyClient(self.settings())
