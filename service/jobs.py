"""The durable queue: every accepted mutation is an operation row plus a procrastinate job on the registry
PostgreSQL, locked by its stack, so several service processes on several machines share the work and
two operations on one stack never run at once (the second waits for the first; nothing fails on the
stack's lock).

A job survives the death of the process running it: procrastinate's workers beat every second and a
job whose worker stopped beating is retried (`retry_stalled`), and an operation whose job was never
queued (the process died between committing the operation and queueing it) is queued again at start
(`requeue_orphans`). A retried job first clears what the dead run left on its stack (engine/recovery.py)
and runs the operation again, which converges: every create adopts what the interrupted one made.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import procrastinate
import psycopg
from procrastinate import PsycopgConnector

from components.domain.naming import stack_owner
from components.errors import UserError, one_line
from engine.workspace import PROJECT
from service import operations
from service.settings import ServiceSettings
from service.stacks import Stacks, failure, silo_stacks, town_stack_name

log = logging.getLogger(__name__)
TASK = "silo.operation"
HEARTBEAT_S = 1.0  # workers beat this often...
STALLED_S = 5.0  # ...and a worker silent this long is dead: its jobs are retried


def town_owner(sandbox_id: str) -> str:
    """The owner a town stack writes on its registry row and Fly app (components/stacks/ownership.py)."""
    return stack_owner(PROJECT, town_stack_name(sandbox_id), "town", sandbox_id)


def make_app(settings: ServiceSettings, runner: Runner | None) -> procrastinate.App:
    """The queue. The web process only queues (`runner` None); the worker process runs the jobs."""
    app = procrastinate.App(connector=PsycopgConnector(conninfo=settings.registry_dsn))

    @app.task(name=TASK)
    def run_operation(operation_id: str) -> None:
        if runner is None:
            raise RuntimeError("this process queues operations; a worker runs them")
        runner.run(operation_id)

    return app


async def defer(app: procrastinate.App, operation_id: str, stack: str) -> None:
    """Queue the operation's job; jobs of one stack run one at a time, in order."""
    await app.configure_task(TASK, lock=f"stack:{stack}").defer_async(operation_id=operation_id)


async def retry_stalled(app: procrastinate.App) -> int:
    """Retry the jobs of workers that stopped beating (a killed process): they run again elsewhere."""
    stalled = await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_S)
    for job in stalled:
        log.warning("operation job %s was running in a worker that died: retrying it", job.id)
        await app.job_manager.retry_job(job)
    return len(stalled)


async def requeue_orphans(app: procrastinate.App, conn: psycopg.AsyncConnection) -> int:
    """Queue again the unfinished operations that have no job waiting or running."""
    rows = await (
        await conn.execute(
            """SELECT o.id::text, o.stack FROM silo_operations o
               WHERE o.status IN ('queued', 'running') AND NOT EXISTS (
                   SELECT 1 FROM procrastinate_jobs j
                   WHERE j.task_name = %s AND j.args->>'operation_id' = o.id::text
                     AND j.status IN ('todo', 'doing'))
               ORDER BY o.created_at""",
            (TASK,),
        )
    ).fetchall()
    for operation_id, stack in rows:
        await defer(app, operation_id, stack)
    return len(rows)


async def renew_credentials(app: procrastinate.App, conn: psycopg.AsyncConnection, before_s: float) -> int:
    """Queue an `up` for every town of the API whose R2 credentials lapse within `before_s` and that has no
    operation pending: without it a town whose stack is not updated for a week stops backing up.

    Under an advisory lock, so several service processes do not queue the same renewals."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('silo-serve-renewals'))")
        rows = await (
            await conn.execute(
                """SELECT t.id::text, t.sandbox_id FROM gastown_towns t
                   WHERE t.destroyed_at IS NULL AND t.status IN ('running', 'stopped')
                     AND t.owner = 'silo/town-' || t.sandbox_id || '/town/' || t.sandbox_id
                     AND t.r2_credentials_expire_at < now() + make_interval(secs => %s)
                     AND NOT EXISTS (SELECT 1 FROM silo_operations o
                                     WHERE o.town_id = t.id AND o.status IN ('queued', 'running'))""",
                (before_s,),
            )
        ).fetchall()
        queued = []
        for town_id, sid in rows:
            op = await (
                await conn.execute(
                    "INSERT INTO silo_operations (kind, stack, town_id, requested_by) "
                    "VALUES ('town.renew', %s, %s, 'service:renewal') RETURNING id::text",
                    (town_stack_name(sid), town_id),
                )
            ).fetchone()
            queued.append((op[0], town_stack_name(sid)))  # type: ignore[index]
    for operation_id, stack in queued:
        await defer(app, operation_id, stack)
    return len(queued)


class Runner:
    """Runs one operation to its end (in a worker thread): the stack operation, then the rows."""

    def __init__(self, settings: ServiceSettings, stacks: Stacks) -> None:
        self.settings = settings
        self.stacks = stacks

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.settings.registry_dsn, autocommit=True)

    def run(self, operation_id: str) -> None:
        with self.connect() as conn:
            op = operations.get(conn, operation_id)
            if op is None or op["status"] in operations.TERMINAL:
                return  # a finished operation's job run again: nothing left to do
            operations.started(conn, operation_id)
        resource: str | None = None
        try:
            error, resource = self._dispatch(op)
        except UserError as exc:
            error = one_line(exc)
        except Exception as exc:  # a bug: the operation still ends, with what happened
            log.exception("operation %s failed", operation_id)
            error = f"internal error: {type(exc).__name__}: {exc}"
        with self.connect() as conn:
            operations.finished(conn, operation_id, error=error, resource=resource)

    def _dispatch(self, op: dict[str, Any]) -> tuple[str | None, str | None]:
        kind = op["kind"]
        if kind == "town.delete":
            return self._delete_town(op["town_id"])
        if kind.startswith("town."):
            return self._converge_town(op["town_id"], creating=kind == "town.create")
        if kind in ("silo.start", "silo.stop"):
            return self._silo_state(op["silo_id"], "running" if kind == "silo.start" else "stopped")
        raise UserError(f"unknown operation kind {kind}")

    # -- towns ------------------------------------------------------------------------------------------
    def _town_row(self, town_id: str) -> dict[str, Any]:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT user_id, town_name, sandbox_id, config, destroyed_at IS NOT NULL FROM gastown_towns "
                "WHERE id = %s",
                (town_id,),
            ).fetchone()
        if row is None:
            raise UserError(f"town {town_id} is not in the registry")
        user, name, sid, config, destroyed = row
        config = config if isinstance(config, dict) else json.loads(config or "{}")
        return {"user": user, "name": name, "sandbox_id": sid, "config": config, "destroyed": destroyed}

    def _town_config(self, row: dict[str, Any], **extra: Any) -> dict[str, Any]:
        town = {
            "name": row["name"],
            "user": row["user"],
            "state": row["config"].get("desired_state", "running"),
            "rigs": row["config"].get("rigs", []),
        }
        return {**self.settings.town_stack_config(town), **extra}

    def _converge_town(self, town_id: str, *, creating: bool) -> tuple[str | None, str | None]:
        row = self._town_row(town_id)
        name = town_stack_name(row["sandbox_id"])
        self.stacks.write_stack_file(self.settings.towns_project_dir, name, self._town_config(row))
        result = self.stacks.run(self.stacks.town_stack(name, new=creating), "up").result
        if result.ok:
            return None, None
        resource, reason = failure(result)
        if creating:
            self._roll_back_create(town_id, row, name, reason)
        else:
            with self.connect() as conn:
                conn.execute("UPDATE gastown_towns SET failure = %s WHERE id = %s", (reason, town_id))
        return reason, resource

    def _roll_back_create(self, town_id: str, row: dict[str, Any], name: str, reason: str) -> None:
        """Seed 001's rollback: nothing of a failed create stays on Fly (its volume is new and empty, so
        it goes too); the row stays, `failed` with the reason, until a later create retries it."""
        self.stacks.write_stack_file(
            self.settings.towns_project_dir, name, self._town_config(row, **{"silo:allowDataDeletion": "true"})
        )
        stack = self.stacks.town_stack(name)
        # A destroy decides from the state: an `up` with data deletion allowed first records it on the app
        # and the volume (no longer retained or protected), which come before whatever failed; it may fail
        # again at the same resource, which the destroy then removes with the rest.
        self.stacks.run(stack, "up")
        undone = self.stacks.run(stack, "destroy").result
        if not undone.ok:
            reason = f"{reason}; rolling back also failed: {failure(undone)[1]}"
        with self.connect() as conn:
            conn.execute(
                """UPDATE gastown_towns SET status = 'failed', destroyed_at = NULL, failure = %s,
                          fly_machine_id = NULL, fly_volume_id = NULL WHERE id = %s""",
                (reason, town_id),
            )

    def _delete_town(self, town_id: str) -> tuple[str | None, str | None]:
        """The final flush (the machine's pre-stop exec), the machine and app removed, then the row
        soft-deleted: in that order, so a removal that fails never leaves a running town that the registry
        no longer lists (the operation fails, naming it, and DELETE can be sent again)."""
        row = self._town_row(town_id)
        name = town_stack_name(row["sandbox_id"])
        self.stacks.write_stack_file(self.settings.towns_project_dir, name, self._town_config(row))
        # `new`: a town deleted before its create ever ran has no stack yet (an empty one is made, and destroyed).
        stack = self.stacks.town_stack(name, new=True)
        result = self.stacks.run(stack, "destroy").result
        if not result.ok:
            reason_resource = failure(result)
            return reason_resource[1], reason_resource[0]
        with self.connect() as conn:
            conn.execute(
                "UPDATE gastown_towns SET status = 'destroyed', destroyed_at = now() "
                "WHERE id = %s AND destroyed_at IS NULL",
                (town_id,),
            )
        return None, None

    # -- silos ------------------------------------------------------------------------------------------
    def _silo_state(self, silo_id: str, state: str) -> tuple[str | None, str | None]:
        stacks = silo_stacks(self.settings.silos_project_dir)
        if silo_id not in stacks:
            raise UserError(f"no stack file for silo {silo_id} in {self.settings.silos_project_dir}")
        stack = self.stacks.silo_stack(stacks[silo_id])
        from pulumi.automation import ConfigValue

        stack.set_config("silo:state", ConfigValue(state))
        result = self.stacks.run(stack, "up").result
        if result.ok:
            return None, None
        resource, reason = failure(result)
        return reason, resource
