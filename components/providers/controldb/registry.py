"""Keeps a town's rows in the control database (`gastown_towns`, `gastown_rigs`) in step with Fly.

The row exists before anything is created on Fly and records the outcome after: each town's
TownRegistration inserts its row as `provisioning` (its id is the town id the sandbox and its R2 prefix
use) and soft-deletes it on destroy; one TownRecords per silo writes every town's Fly ids,
`running`/`stopped` and rigs once the machines are found ready. The DSN is read in ``configure()``
from `silo:registryDsn` (secret) or the environment (`SILO_REGISTRY_DSN`), never passed as a resource input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
import pulumi
from psycopg.types.json import Jsonb
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    UpdateResult,
)
from pulumi.output import Unknown

from components.providers.base import DynamicResource, canonical, diff_result, strip_provider
from components.providers.controldb.dsn import (
    CONTROL_DSN_CONFIG_KEY,
    CONTROL_DSN_ENV,
    ControlDbError,
    ControlDbProvider,
)


class RegistryProviderBase(ControlDbProvider):
    @contextlib.contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A connection for one operation; any database error leaves it with the password masked."""
        dsn = self.control_dsn()
        if not dsn:
            raise RuntimeError(
                f"no registry database: set `pulumi config set --secret {CONTROL_DSN_CONFIG_KEY} ...` "
                f"or export {CONTROL_DSN_ENV}"
            )
        with (
            self.database_errors(dsn, f"registry database ({CONTROL_DSN_CONFIG_KEY})"),
            psycopg.connect(dsn, connect_timeout=15) as conn,
        ):
            yield conn


class TownRegistrationProvider(RegistryProviderBase):
    IDENTITY = ("user_id", "town_name", "sandbox_id")

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = [CheckFailure(key, "is required") for key in self.IDENTITY if not news.get(key)]
        if not olds and not failures:
            failures += self._ownership_failures(news)
        return CheckResult(news, failures)

    def _ownership_failures(self, news: Mapping[str, Any]) -> list[CheckFailure]:
        """At preview, for a town this stack does not hold yet: refuse one another stack registered.

        Only warns early (create decides again); says nothing when the registry cannot be reached.
        """
        owner = news.get("owner")
        if not isinstance(owner, str) or not owner or not self.control_dsn():
            return []
        try:
            with self.connect() as conn:
                row = self._active_row(conn, news)
        except ControlDbError:  # an unreachable registry is create's to report, with its reason
            return []
        problem = self._foreign(row, news, owner)
        return [CheckFailure("town_name", problem)] if problem else []

    @staticmethod
    def _active_row(conn: psycopg.Connection, props: Mapping[str, Any]) -> tuple[Any, ...] | None:
        return conn.execute(
            "SELECT id, sandbox_id, owner FROM gastown_towns WHERE destroyed_at IS NULL "
            "AND ((user_id = %s AND town_name = %s) OR sandbox_id = %s) ORDER BY created_at LIMIT 1",
            (props["user_id"], props["town_name"], props["sandbox_id"]),
        ).fetchone()

    @staticmethod
    def _foreign(row: tuple[Any, ...] | None, props: Mapping[str, Any], owner: str | None) -> str | None:
        """Why the active row found for this town is not ours to take over, or None."""
        if row is None:
            return None
        town = f"town {props['town_name']!r} of user {props['user_id']!r}"
        if row[1] != props["sandbox_id"]:
            return f"{town} is registered with another sandbox id ({row[1]})"
        if owner and row[2] is None:
            return (
                f"{town} is already registered (row {row[0]}) without an owner, so nothing proves it is {owner}'s: "
                "two stacks may not declare the same town. If it is this stack's, claim it with "
                f"`UPDATE gastown_towns SET owner = '{owner}' WHERE id = '{row[0]}'` in the registry, then `pulumi up`"
            )
        if owner and row[2] != owner:
            return (
                f"{town} is already registered by stack {row[2]}, not {owner}: a town (user + name) belongs to "
                "one stack; rename the town, or remove it from the other stack first"
            )
        return None

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # A different identity is a different town; the partial unique indexes need the old row gone first.
        # A new owner (a row made before owners were recorded, a renamed stack) is written in place.
        return diff_result(olds, news, compare=(*self.IDENTITY, "region", "owner"), replace_on=self.IDENTITY)

    def create(self, props: dict[str, Any]) -> CreateResult:
        owner = props.get("owner")
        with self.connect() as conn:
            # Idempotent: a row of ours left by an interrupted run is adopted, never duplicated; another
            # stack's row is refused.
            conn.execute(
                """INSERT INTO gastown_towns (user_id, town_name, sandbox_id, fly_app, fly_region, status, owner)
                   VALUES (%s, %s, %s, %s, %s, 'provisioning', %s)
                   ON CONFLICT DO NOTHING""",
                (
                    props["user_id"],
                    props["town_name"],
                    props["sandbox_id"],
                    props["sandbox_id"],
                    props["region"],
                    owner,
                ),
            )
            row = self._active_row(conn, props)
        problem = self._foreign(row, props, owner) if row is not None else "its row could not be written"
        if problem or row is None:
            raise RuntimeError(problem or "the town's registry row could not be written")
        return CreateResult(str(row[0]), {**props, "town_id": str(row[0])})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        with self.connect() as conn:
            conn.execute(
                "UPDATE gastown_towns SET fly_region = %s, owner = coalesce(%s, owner) WHERE id = %s",
                (news["region"], news.get("owner"), id_),
            )
        return UpdateResult({**news, "town_id": id_})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.connect() as conn:
            row = conn.execute("SELECT destroyed_at FROM gastown_towns WHERE id = %s", (id_,)).fetchone()
        if row is None or row[0] is not None:
            return ReadResult("", {})
        return ReadResult(id_, props)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        # Soft delete: the row stays for history; the name and sandbox id become free again. Only a row
        # that is still this stack's (or has no owner yet) is touched.
        with self.connect() as conn, conn.transaction():
            owner = props.get("owner")
            mine = conn.execute(
                "SELECT 1 FROM gastown_towns WHERE id = %s AND (owner IS NULL OR %s::text IS NULL OR owner = %s)",
                (id_, owner, owner),
            ).fetchone()
            if mine is None:
                return  # gone already, or another stack's since: nothing of ours to delete
            conn.execute("UPDATE gastown_rigs SET status = 'removed' WHERE town_id = %s AND status = 'active'", (id_,))
            conn.execute(
                "UPDATE gastown_towns SET status = 'destroyed', destroyed_at = now() "
                "WHERE id = %s AND destroyed_at IS NULL",
                (id_,),
            )


class TownRegistration(DynamicResource, module="registry", name="TownRegistration"):
    town_id: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        user_id: str,
        town_name: str,
        sandbox_id: str,
        region: str,
        owner: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        props = {
            "user_id": user_id,
            "town_name": town_name,
            "sandbox_id": sandbox_id,
            "region": region,
            # The stack that registered it (components/stacks/ownership.py); another stack's row is refused.
            "owner": owner,
            "town_id": None,
        }
        super().__init__(TownRegistrationProvider(), resource_name, props, opts)


class TownRecordsProvider(RegistryProviderBase):
    """Every town's row of one silo, written once its machines are found ready: `towns` maps each
    sandbox id to the row's fields. One resource and one connection per silo, not one per town: with 100
    towns, per-town records were 100 more steps in every preview and 100 registry connections per up
    (bench/run.py)."""

    FIELDS = ("town_id", "status", "fly_machine_id", "fly_volume_id", "rigs")

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        towns = news.get("towns")
        if not isinstance(towns, Unknown | Mapping):
            failures.append(CheckFailure("towns", "must map each sandbox id to its row"))
            return CheckResult(news, failures)
        for sid, row in towns.items() if isinstance(towns, Mapping) else ():
            if not isinstance(row, Mapping):
                continue
            status = row.get("status")
            if not isinstance(status, Unknown) and status not in ("running", "stopped"):
                failures.append(CheckFailure("towns", f"{sid}: status must be running or stopped (got {status!r})"))
            rigs = row.get("rigs")
            if isinstance(rigs, list):
                names = [r.get("name") for r in rigs if isinstance(r, Mapping)]
                if len(names) != len(set(names)) or len(names) != len(rigs):
                    failures.append(CheckFailure("towns", f"{sid}: each rig needs a unique name"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_result(olds, news, compare=("towns",), replace_on=())

    def _write(self, rows: Mapping[str, Mapping[str, Any]]) -> None:
        if not rows:
            return
        with self.connect() as conn, conn.transaction():
            for row in rows.values():
                self._write_row(conn, row)

    @staticmethod
    def _write_row(conn: psycopg.Connection, props: Mapping[str, Any]) -> None:
        rigs: Sequence[Mapping[str, Any]] = props.get("rigs") or []
        town = conn.execute(
            "SELECT id FROM gastown_towns WHERE id = %s AND destroyed_at IS NULL FOR UPDATE",
            (props["town_id"],),
        ).fetchone()
        if town is None:
            raise RuntimeError(f"town {props['town_id']} is not registered (or was destroyed)")
        conn.execute(
            """UPDATE gastown_towns SET status = %s, fly_machine_id = %s, fly_volume_id = %s,
                      config = config || %s, failure = NULL,
                      heartbeat_token_sha256 = coalesce(%s, heartbeat_token_sha256),
                      r2_credentials_expire_at = coalesce(%s, r2_credentials_expire_at) WHERE id = %s""",
            (
                props["status"],
                props.get("fly_machine_id"),
                props.get("fly_volume_id"),
                Jsonb({"rigs": [dict(r) for r in rigs]}),
                props.get("heartbeat_token_sha256"),
                props.get("r2_credentials_expire_at"),
                props["town_id"],
            ),
        )
        active = {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT rig_name, repo_url, branch FROM gastown_rigs WHERE town_id = %s AND status = 'active'",
                (props["town_id"],),
            )
        }
        wanted = {r["name"]: r for r in rigs}
        for name in active.keys() - wanted.keys():
            conn.execute(
                "UPDATE gastown_rigs SET status = 'removed' WHERE town_id = %s AND rig_name = %s AND status = 'active'",
                (props["town_id"], name),
            )
        for name, rig in wanted.items():
            branch = rig.get("branch") or "main"
            if name not in active:
                conn.execute(
                    "INSERT INTO gastown_rigs (town_id, rig_name, repo_url, branch) VALUES (%s, %s, %s, %s)",
                    (props["town_id"], name, rig["url"], branch),
                )
            elif active[name] != (rig["url"], branch):
                conn.execute(
                    "UPDATE gastown_rigs SET repo_url = %s, branch = %s WHERE town_id = %s "
                    "AND rig_name = %s AND status = 'active'",
                    (rig["url"], branch, props["town_id"], name),
                )

    def create(self, props: dict[str, Any]) -> CreateResult:
        self._write(props.get("towns") or {})
        return CreateResult(f"{props['silo_id']}/town-records", dict(props))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # Only the rows that changed; a town that left the map is soft-deleted by its TownRegistration.
        old_rows = olds.get("towns") or {}
        changed = {
            sid: row for sid, row in (news.get("towns") or {}).items() if canonical(old_rows.get(sid)) != canonical(row)
        }
        self._write(changed)
        return UpdateResult(strip_provider(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """The rows as the registry holds them now, so a refresh shows an edit made outside Pulumi (a
        status, a Fly id, a rig) and the next `up` writes the row back. A town whose row is gone
        (destroyed outside Pulumi) leaves the map."""
        recorded: Mapping[str, Mapping[str, Any]] = props.get("towns") or {}
        live: dict[str, dict[str, Any]] = {}
        if recorded:
            with self.connect() as conn:
                for sid, row in recorded.items():
                    current = self._read_row(conn, row)
                    if current is not None:
                        live[sid] = current
        outs = {**props, "towns": live}
        return ReadResult(id_, outs, inputs={k: outs[k] for k in ("silo_id", "towns") if k in outs})

    @classmethod
    def _read_row(cls, conn: psycopg.Connection, row: Mapping[str, Any]) -> dict[str, Any] | None:
        town = conn.execute(
            "SELECT status, fly_machine_id, fly_volume_id, heartbeat_token_sha256 FROM gastown_towns "
            "WHERE id = %s AND destroyed_at IS NULL",
            (row["town_id"],),
        ).fetchone()
        if town is None:
            return None
        rigs = conn.execute(
            "SELECT rig_name, repo_url, branch FROM gastown_rigs WHERE town_id = %s AND status = 'active' "
            "ORDER BY rig_name",
            (row["town_id"],),
        ).fetchall()
        live_rigs = [{"name": name, "url": url, "branch": branch} for name, url, branch in rigs]
        order = [r.get("name") for r in row.get("rigs") or []]
        live_rigs.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
        status, machine_id, volume_id, token_sha256 = town
        live = {**row, "status": status, "fly_machine_id": machine_id, "fly_volume_id": volume_id, "rigs": live_rigs}
        if "heartbeat_token_sha256" in row:
            live["heartbeat_token_sha256"] = token_sha256
        return live

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # The machines are being removed next; each TownRegistration (deleted last) soft-deletes its row.
        return None


class TownRecords(DynamicResource, module="registry", name="TownRecords"):
    def __init__(
        self,
        resource_name: str,
        *,
        silo_id: str,
        towns: pulumi.Input[Mapping[str, pulumi.Input[Mapping[str, Any]]]],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__(TownRecordsProvider(), resource_name, {"silo_id": silo_id, "towns": towns}, opts)
        self.towns: pulumi.Output[dict[str, dict[str, Any]]]
