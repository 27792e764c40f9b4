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

from components.dynamic import (
    CONTROL_DSN_CONFIG_KEY,
    CONTROL_DSN_ENV,
    ControlDbProvider,
    DynamicResource,
    canonical,
    diff_result,
    strip_provider,
)

DSN_CONFIG_KEY, DSN_ENV = CONTROL_DSN_CONFIG_KEY, CONTROL_DSN_ENV


class RegistryProviderBase(ControlDbProvider):
    @contextlib.contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A connection for one operation; any database error leaves it with the password masked."""
        dsn = self.control_dsn()
        if not dsn:
            raise RuntimeError(
                f"no registry database: set `pulumi config set --secret {DSN_CONFIG_KEY} ...` or export {DSN_ENV}"
            )
        with (
            self.database_errors(dsn, f"registry database ({DSN_CONFIG_KEY})"),
            psycopg.connect(dsn, connect_timeout=15) as conn,
        ):
            yield conn


class TownRegistrationProvider(RegistryProviderBase):
    IDENTITY = ("user_id", "town_name", "sandbox_id")

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = [CheckFailure(key, "is required") for key in self.IDENTITY if not news.get(key)]
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # A different identity is a different town; the partial unique indexes need the old row gone first.
        return diff_result(olds, news, compare=(*self.IDENTITY, "region"), replace_on=self.IDENTITY)

    def create(self, props: dict[str, Any]) -> CreateResult:
        with self.connect() as conn:
            # Idempotent: a row left by an interrupted run is adopted, never duplicated.
            conn.execute(
                """INSERT INTO gastown_towns (user_id, town_name, sandbox_id, fly_app, fly_region, status)
                   VALUES (%s, %s, %s, %s, %s, 'provisioning')
                   ON CONFLICT (user_id, town_name) WHERE destroyed_at IS NULL DO NOTHING""",
                (
                    props["user_id"],
                    props["town_name"],
                    props["sandbox_id"],
                    props["sandbox_id"],
                    props["region"],
                ),
            )
            row = conn.execute(
                "SELECT id, sandbox_id FROM gastown_towns WHERE user_id = %s AND town_name = %s "
                "AND destroyed_at IS NULL",
                (props["user_id"], props["town_name"]),
            ).fetchone()
        if row is None or row[1] != props["sandbox_id"]:
            raise RuntimeError(
                f"town {props['town_name']!r} of user {props['user_id']!r} is registered with "
                f"another sandbox id ({row[1] if row else 'none'})"
            )
        return CreateResult(str(row[0]), {**props, "town_id": str(row[0])})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        with self.connect() as conn:
            conn.execute("UPDATE gastown_towns SET fly_region = %s WHERE id = %s", (news["region"], id_))
        return UpdateResult({**news, "town_id": id_})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.connect() as conn:
            row = conn.execute("SELECT destroyed_at FROM gastown_towns WHERE id = %s", (id_,)).fetchone()
        if row is None or row[0] is not None:
            return ReadResult("", {})
        return ReadResult(id_, props)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        # Soft delete: the row stays for history; the name and sandbox id become free again.
        with self.connect() as conn, conn.transaction():
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
        opts: pulumi.ResourceOptions | None = None,
    ):
        props = {
            "user_id": user_id,
            "town_name": town_name,
            "sandbox_id": sandbox_id,
            "region": region,
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
                      config = config || %s WHERE id = %s""",
            (
                props["status"],
                props.get("fly_machine_id"),
                props.get("fly_volume_id"),
                Jsonb({"rigs": [dict(r) for r in rigs]}),
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
            "SELECT status, fly_machine_id, fly_volume_id FROM gastown_towns WHERE id = %s AND destroyed_at IS NULL",
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
        status, machine_id, volume_id = town
        return {
            **row,
            "status": status,
            "fly_machine_id": machine_id,
            "fly_volume_id": volume_id,
            "rigs": live_rigs,
        }

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
