"""ControlInUse: the control stack's first resource to be deleted, which refuses while anything depends on it.

A `pulumi destroy` of the control stack deletes in reverse dependency order, several at once, and stops
at the first refusal; what was deleted before it stays deleted. The protected backup bucket refused
last, so the run "failed" after the backend's registry login was gone, and every town had lost its
registry login (issue 25: "check early"). This resource depends on every other resource of the control
stack, so the engine deletes it first, alone, and its delete decides before anything is removed:

- a town that is not destroyed (a row of `gastown_towns` with no `destroyed_at`: a silo stack's town or
  one the API made) still uses the registry, its login and the bucket: refused, naming the towns;
- the backup bucket is protected (silo:allowDataDeletion false): the bucket's delete would be refused
  after the rest was removed: refused now instead.

Nothing remote is created; create and update only record the inputs.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, UpdateResult

from components.errors import UserError
from components.providers.base import DynamicResource, diff_result, strip_provider
from components.providers.controldb.registry import RegistryProviderBase

GUARD_ID = "control-in-use"
SHOWN = 10  # live towns named in the refusal; the rest counted


class ControlInUseError(UserError, RuntimeError):
    """The control stack cannot be destroyed yet; the message says why and what to do first."""


class ControlInUseProvider(RegistryProviderBase):
    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(GUARD_ID, strip_provider(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_result(olds, news, compare=("bucket_protected",), replace_on=(), delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(strip_provider(news))

    def live_towns(self) -> list[str]:
        """The towns not destroyed, as ``sandbox_id (user user_id)``; none when the schema was never made."""
        with self.connect() as conn:
            if conn.execute("SELECT to_regclass('gastown_towns')").fetchone() == (None,):
                return []
            rows = conn.execute(
                "SELECT sandbox_id, user_id FROM gastown_towns WHERE destroyed_at IS NULL ORDER BY created_at"
            ).fetchall()
        return [f"{sandbox} (user {user})" for sandbox, user in rows]

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        towns = self.live_towns()
        if towns:
            shown = ", ".join(towns[:SHOWN]) + (f" and {len(towns) - SHOWN} more" if len(towns) > SHOWN else "")
            raise ControlInUseError(
                f"the control stack still serves {len(towns)} town(s) that are not destroyed: {shown}; destroy "
                "them first (their silo stacks' `pulumi destroy`, or the API's DELETE /v1/towns/{id}); nothing "
                "of the control stack was removed"
            )
        if props.get("bucket_protected"):
            raise ControlInUseError(
                "the backup bucket is protected (silo:allowDataDeletion is false) and holds every town's backups, "
                "so the destroy would stop at it after removing the rest; nothing was removed. To remove the "
                "control stack, set silo:allowDataDeletion=true and run `pulumi up` first"
            )


class ControlInUse(DynamicResource, module="controldb", name="ControlInUse"):
    """See ControlInUseProvider; ``opts.depends_on`` must list every other resource of the control stack."""

    def __init__(self, resource_name: str, *, bucket_protected: bool, opts: pulumi.ResourceOptions | None = None):
        super().__init__(ControlInUseProvider(), resource_name, {"bucket_protected": bucket_protected}, opts)
