"""FlyApp: a Fly app (the Machines API's apps family: create, read, delete), its network fixed at creation.

See components/providers/fly/provider.py for the contract every provider here keeps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    UpdateResult,
)
from pulumi.output import Unknown

from components.domain import naming
from components.providers.base import (
    CONFIG_KEYS,
    DynamicResource,
    diff_result,
    setting,
    strip_provider,
)
from components.providers.fly import ownership
from components.providers.fly.client import FlyClient
from components.providers.fly.errors import FlyError, FlyNameTaken
from components.providers.fly.provider import FlyProviderBase

# Fly network names: letters, digits and dashes, starting with a letter (custom-private-networks docs).
NETWORK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
DEFAULT_NETWORK = "default"  # where an app created without `network` lives (what GET /apps/{app} says)
# What a user runs to mark an existing, unmarked app as their stack's (components/cli/adopt.py).
ADOPT_HINT = "if it is this stack's, run `silo adopt Pulumi.<stack>.yaml` to mark it, then `pulumi up` again"


class FlyAppProvider(FlyProviderBase):
    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        name = news.get("name")
        if not isinstance(name, Unknown) and not (isinstance(name, str) and naming.is_dns_label(name)):
            failures.append(
                CheckFailure(
                    "name",
                    f"Fly app names are DNS labels: lowercase letters, digits and "
                    f"dashes, at most 63 characters (got {name!r})",
                )
            )
        if not news.get("org"):
            failures.append(
                CheckFailure("org", f"the Fly organization slug is required ({setting(news, 'org', 'org')})")
            )
        network = news.get("network")
        if network is not None and not isinstance(network, Unknown) and not NETWORK_NAME.match(str(network)):
            failures.append(
                CheckFailure(
                    "network",
                    f"Fly network names are letters, digits and dashes, starting with a letter (got {network!r})",
                )
            )
        failures += self._network_change_failures(olds, news)
        if not olds and not failures:
            failures += self._ownership_failures(news)
        return CheckResult(news, failures)

    def _ownership_failures(self, news: dict[str, Any]) -> list[CheckFailure]:
        """At preview, for an app this stack does not hold yet: refuse a name another stack's app has.

        One look-up per new app (nothing for the apps already in state, so a no-change preview makes no
        call). It only warns early: `create` decides again. When the API cannot be asked (no token in a
        review job, no emulator running) nothing is said here.
        """
        name, owner = news.get("name"), news.get("owner")
        if not (isinstance(name, str) and isinstance(owner, str) and owner):
            return []
        try:
            with FlyClient(self.settings(), attempts=1, timeout=15.0) as fly:
                found = ownership.inspect_app(fly, name)
        except (FlyError, ValueError):
            return []
        if found is None or found.claimable_by(owner):
            return []
        return [CheckFailure("name", found.refusal(owner, ADOPT_HINT) + self._where(news))]

    @staticmethod
    def _where(props: Mapping[str, Any]) -> str:
        where = setting(props, "name", "")
        return f" (the name comes from {where})" if where else ""

    @staticmethod
    def _network_change_failures(olds: dict[str, Any], news: dict[str, Any]) -> list[CheckFailure]:
        """Refuse, at preview, to move an existing app to another network without the explicit override.

        Fly cannot change an app's network (custom-private-networks: "You can't add an existing app to a
        custom 6PN or change an app's 6PN"), so it is a replacement: the app is deleted, its machines and
        volumes with it, and created again under the same name on the new network.
        """
        if not olds or isinstance(news.get("network"), Unknown):
            return []
        old, new = olds.get("network") or DEFAULT_NETWORK, news.get("network") or DEFAULT_NETWORK
        if old == new:
            return []
        move = f"moving Fly app {news.get('name')} from network {old} to {new}"
        if not news.get("allow_network_change"):
            reason = (
                f"{move} replaces it: Fly cannot move an app between networks, so the app is deleted (with its "
                "machines and volumes) and created again. Set "
                f"{setting(news, 'allow_network_change', 'allow_network_change=true')} to do it"
            )
            return [CheckFailure("network", reason)]
        if news.get("keep_volumes", True):
            reason = (
                f"{move} deletes the app and its volumes, which keeping data forbids: back the data up, then set "
                f"{setting(news, 'keep_volumes', 'keep_volumes=false')} for the migration"
            )
            return [CheckFailure("network", reason)]
        return []

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # A new owner (an app made before ownership marks, a renamed stack) is an update: it writes the mark.
        keys = ("name", "org", "network", "keep_volumes", "owner")
        return diff_result(olds, news, compare=keys, replace_on=("name", "org", "network"))

    def create(self, props: dict[str, Any]) -> CreateResult:
        wanted = props.get("network") or DEFAULT_NETWORK
        with self.client() as fly:
            try:
                app, created = fly.create_or_find_app(props["name"], props["org"], props.get("network"))
            except FlyNameTaken as exc:
                where = setting(props, "name", "")
                if not where:
                    raise
                # The same error (status, request id, call), its message saying where the name is set.
                raise FlyNameTaken(
                    f"{exc.message} (the name comes from {where})",
                    status=exc.status,
                    request_id=exc.request_id,
                    method=exc.method,
                    path=exc.path,
                ) from None
            actual = app.get("network") or DEFAULT_NETWORK
            if actual != wanted:
                # create_app adopts an existing app of ours (a retained data app, a half-made one); one on
                # another network cannot be used: its Flycast names would not resolve for the silo's apps.
                raise FlyError(
                    f"Fly app {props['name']} already exists on network {actual}, not {wanted}, and Fly cannot "
                    "move an app between networks: delete the app (its volumes with it, back them up first) or "
                    "keep it out of this stack"
                )
            if props.get("owner") and created:
                ownership.mark(fly, props["name"], props["owner"])
            elif props.get("owner"):
                # An app of that name was already there: only this stack's may be used.
                self._claim(fly, props["name"], props["owner"], props)
        return CreateResult(props["name"], {**props, "app_id": app.get("id", ""), "status": app.get("status", "")})

    @classmethod
    def _claim(cls, fly: FlyClient, name: str, owner: str, props: Mapping[str, Any]) -> None:
        """Use the app only if it is ``owner``'s (its mark), or unmarked and empty (then mark it now)."""
        found = ownership.inspect_app(fly, name)
        if found is None:
            raise FlyError(f"Fly app {name} was created but is not visible; run `pulumi up` again")
        if found.belongs_to(owner):
            return
        if not found.claimable_by(owner):
            raise FlyError(found.refusal(owner, ADOPT_HINT) + cls._where(props))
        ownership.mark(fly, name, owner)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # keep_volumes is a local safety switch; a new owner is written as the app's mark (the app is in this
        # stack's state, which proves it is this stack's: made before marks existed, or the stack renamed).
        owner = news.get("owner")
        if owner and owner != olds.get("owner"):
            with self.client() as fly:
                ownership.mark(fly, news["name"], owner, previous=olds.get("owner"))
        return UpdateResult({**strip_provider(olds), **news})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.client() as fly:
            app = fly.get_app(id_)
        if app is None:
            return ReadResult("", {})
        outs = {**props, "app_id": app.get("id", ""), "status": app.get("status", "")}
        actual = app.get("network")
        if actual and actual != (props.get("network") or DEFAULT_NETWORK):
            outs["network"] = actual  # a refresh records where the app really is; the next diff replaces
        return ReadResult(
            id_, outs, inputs={k: outs[k] for k in ("name", "org", "network", "keep_volumes", "owner") if k in outs}
        )

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        with self.client() as fly:
            owner = props.get("owner")
            if owner and fly.get_app(id_) is not None:
                marks = ownership.owner_marks(fly, id_)
                if marks and naming.owner_secret(owner) not in marks:
                    # Another stack marked it since: deleting it would delete that stack's silo.
                    raise FlyError(
                        f"refusing to delete Fly app {id_}: it now carries another stack's ownership mark, "
                        f"not {owner}'s; remove it from this stack's state with `pulumi state delete` instead"
                    )
            if props.get("keep_volumes", True):
                # Deleting an app deletes its volumes: never do that to data silently.
                volumes = fly.list_volumes(id_) if fly.get_app(id_) else []
                if volumes:
                    names = ", ".join(f"{v.get('name')} ({v.get('id')})" for v in volumes)
                    raise FlyError(
                        f"refusing to delete Fly app {id_}: it still holds data volumes {names}. "
                        f"Set {setting(props, 'keep_volumes', 'keep_volumes=false')} to delete the data, "
                        "or keep the app"
                    )
            # The engine deletes an app after every machine of it that this stack manages; force=true stops
            # whatever is left (a machine made by hand), as the API wants machines stopped otherwise. The
            # deletion completes asynchronously; a create of the same name waits for it (FlyClient.create_app).
            fly.delete_app(id_, force=True)


class FlyApp(DynamicResource, module="fly", name="App"):
    name: pulumi.Output[str]
    org: pulumi.Output[str]
    app_id: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        name: pulumi.Input[str],
        org: pulumi.Input[str],
        keep_volumes: bool = True,
        network: str | None = None,
        allow_network_change: bool = False,
        owner: str | None = None,
        config_keys: Mapping[str, str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        props = {
            CONFIG_KEYS: dict(config_keys or {}),
            "name": name,
            "org": org,
            "keep_volumes": keep_volumes,
            "network": network,
            # The stack that owns the app (naming.stack_owner): written as its mark, checked before adopting.
            "owner": owner,
            # A local switch, read by check(); not compared by diff.
            "allow_network_change": allow_network_change,
            "app_id": None,
            "status": None,
        }
        super().__init__(FlyAppProvider(), resource_name, props, opts)
