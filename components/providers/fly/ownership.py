"""Which stack a Fly app belongs to, so that a create never adopts another stack's app.

Fly app names are global and a silo's are built from slugs (components/domain/naming.py, "ownership"),
so a name already taken may be this stack's own app (a data app retained by `destroy`, one an
interrupted run created) or another silo's that happens to have the same name. Fly apps carry no
labels; a stack marks each app it creates with a secret named after the stack
(``naming.owner_secret``), and the Machines API lists secret names.

An app is this stack's when it carries this stack's mark. An app that carries no mark at all and is
empty (no machines, volumes, IP addresses or secrets) is claimed: it is what a run that died between
creating the app and marking it leaves behind, and holds nothing anyone could lose. Anything else is
refused, naming the silo when the app's machines say which it is (their ``silo_id`` metadata).
"""

from __future__ import annotations

from dataclasses import dataclass

from components.domain import naming
from components.providers.fly.client import FlyClient
from components.providers.fly.errors import FlyError


@dataclass(frozen=True)
class AppOwnership:
    name: str
    marks: frozenset[str]  # the app's SILO_OWNER_* secret names
    empty: bool  # no machines, volumes, IP addresses or secrets
    owners: tuple[str, ...]  # the silos its machines' `silo_id` metadata names, when they name one

    def belongs_to(self, owner: str) -> bool:
        return naming.owner_secret(owner) in self.marks

    def claimable_by(self, owner: str) -> bool:
        return self.belongs_to(owner) or (not self.marks and self.empty)

    def refusal(self, owner: str, how_to_adopt: str) -> str:
        """Why ``owner`` may not take this app over, in one sentence with the way forward."""
        who = f" (its machines belong to silo {', '.join(self.owners)})" if self.owners else ""
        if self.marks:
            return (
                f"Fly app {self.name} already exists and belongs to another stack{who}, not {owner}: Fly app "
                "names are global and built from silo:client and silo:app (slugs may contain dashes, so "
                "different silos can build the same name); choose other slugs, or destroy the other stack"
            )
        return (
            f"Fly app {self.name} already exists but carries no ownership mark{who}, so nothing proves it is "
            f"{owner}'s (made by hand, by another tool, or by a version of this program before ownership marks); "
            f"{how_to_adopt}"
        )


def owner_marks(fly: FlyClient, app: str) -> frozenset[str]:
    """The app's ownership marks, read at secrets version 1 or later.

    A stack writes its mark in the app's first secrets write, so a read that has seen version 1 sees it;
    a read without a version may come from a replica that has not (OpenAPI Secrets_list ``min_version``).
    An app whose secrets were never written refuses version 1 (412): it has no marks.
    """
    try:
        names = fly.list_secrets(app, min_version=1)
    except FlyError as exc:
        if exc.status == 412:
            return frozenset()
        raise
    return frozenset(n for n in names if naming.is_owner_secret(n))


def inspect_app(fly: FlyClient, app: str) -> AppOwnership | None:
    """The app's ownership as the API shows it, or None when no such app is visible."""
    if fly.get_app(app) is None:
        return None
    marks = owner_marks(fly, app)
    machines = fly.list_machines(app)
    owners = tuple(
        sorted(
            {
                str(((m.get("config") or {}).get("metadata") or {}).get("silo_id"))
                for m in machines
                if ((m.get("config") or {}).get("metadata") or {}).get("silo_id")
            }
        )
    )
    empty = (
        not marks
        and not machines
        and not fly.list_volumes(app)
        and not fly.list_ips(app)
        and not _has_secrets(fly, app)
    )
    return AppOwnership(name=app, marks=marks, empty=empty, owners=owners)


def _has_secrets(fly: FlyClient, app: str) -> bool:
    try:
        return bool(fly.list_secrets(app, min_version=1))
    except FlyError as exc:
        if exc.status == 412:
            return False
        raise


def mark(fly: FlyClient, app: str, owner: str, previous: str | None = None) -> None:
    """Write ``owner``'s mark on the app (and remove ``previous``'s, a renamed stack's) in one write."""
    values: dict[str, str | None] = {naming.owner_secret(owner): owner}
    if previous and previous != owner:
        values[naming.owner_secret(previous)] = None
    fly.set_secrets(app, values)
