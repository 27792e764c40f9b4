"""Keeps a town's rows in the control database (`gastown_towns`, `gastown_rigs`) in step with Fly.

Two resources per town, so the row exists before anything is created on Fly and records the outcome
after: TownRegistration inserts the row as `provisioning` (its id is the town id the sandbox and its
R2 prefix use) and soft-deletes it on destroy; TownRecord writes the Fly ids, `running`/`stopped`
and the rigs once the machine is there. The DSN is read in ``configure()`` from `silo:registryDsn`
(secret) or the environment (`SILO_REGISTRY_DSN`), never passed as a resource input.
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


class TownRecordProvider(RegistryProviderBase):
    FIELDS = ("town_id", "status", "fly_machine_id", "fly_volume_id", "rigs")

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        status = news.get("status")
        if not isinstance(status, Unknown) and status not in ("running", "stopped"):
            failures.append(CheckFailure("status", f"must be running or stopped (got {status!r})"))
        rigs = news.get("rigs")
        if isinstance(rigs, list):
            names = [r.get("name") for r in rigs if isinstance(r, Mapping)]
            if len(names) != len(set(names)) or len(names) != len(rigs):
                failures.append(CheckFailure("rigs", "each rig needs a unique name"))
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return diff_result(olds, news, compare=self.FIELDS, replace_on=("town_id",), delete_before_replace=False)

    def _write(self, props: Mapping[str, Any]) -> None:
        rigs: Sequence[Mapping[str, Any]] = props.get("rigs") or []
        with self.connect() as conn, conn.transaction():
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
                    "UPDATE gastown_rigs SET status = 'removed' WHERE town_id = %s AND rig_name = %s "
                    "AND status = 'active'",
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
        self._write(props)
        return CreateResult(f"{props['town_id']}/record", dict(props))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        self._write(news)
        return UpdateResult(strip_provider(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """The row as the registry holds it now, so a refresh shows an edit made outside Pulumi (a
        status, a Fly id, a rig) and the next `up` writes the row back."""
        with self.connect() as conn:
            town = conn.execute(
                "SELECT status, fly_machine_id, fly_volume_id FROM gastown_towns "
                "WHERE id = %s AND destroyed_at IS NULL",
                (props["town_id"],),
            ).fetchone()
            if town is None:
                return ReadResult("", {})
            rigs = conn.execute(
                "SELECT rig_name, repo_url, branch FROM gastown_rigs WHERE town_id = %s AND status = 'active' "
                "ORDER BY rig_name",
                (props["town_id"],),
            ).fetchall()
        live_rigs = [{"name": name, "url": url, "branch": branch} for name, url, branch in rigs]
        order = [r.get("name") for r in props.get("rigs") or []]
        live_rigs.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
        status, machine_id, volume_id = town
        outs = {**props, "status": status, "fly_machine_id": machine_id, "fly_volume_id": volume_id, "rigs": live_rigs}
        return ReadResult(id_, outs, inputs={k: outs[k] for k in self.FIELDS if k in outs})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # The machine is being removed next; TownRegistration (deleted last) soft-deletes the row.
        return None


class TownRecord(DynamicResource, module="registry", name="TownRecord"):
    def __init__(
        self,
        resource_name: str,
        *,
        town_id: pulumi.Input[str],
        status: str,
        fly_machine_id: pulumi.Input[str],
        fly_volume_id: pulumi.Input[str],
        rigs: list[dict[str, str]],
        opts: pulumi.ResourceOptions | None = None,
    ):
        props = {
            "town_id": town_id,
            "status": status,
            "fly_machine_id": fly_machine_id,
            "fly_volume_id": fly_volume_id,
            "rigs": rigs,
        }
        super().__init__(TownRecordProvider(), resource_name, props, opts)
