"""What the routers share: 422s that name the field, and accepting an operation (row + queued job)."""

from __future__ import annotations

from typing import Any

import psycopg
from fastapi import HTTPException, Request
from pydantic import ValidationError

from service import jobs, operations
from service.auth import Caller


def validation_error(exc: ValidationError, rename: dict[str, str] | None = None) -> HTTPException:
    """A 422 in FastAPI's own shape (`detail[].loc` names the request's field), from a model's errors."""
    rename = rename or {}
    detail = [
        {
            "loc": ["body", *(rename.get(str(p), p) for p in e["loc"])],
            "msg": str(e["msg"]).removeprefix("Value error, "),
            "type": e["type"],
        }
        for e in exc.errors(include_url=False)
    ]
    return HTTPException(422, detail)


class accepted:  # a namespace of two functions, read as `accepted.queue(...)`
    @staticmethod
    async def create_operation(
        conn: psycopg.AsyncConnection,
        *,
        kind: str,
        stack: str,
        who: Caller,
        town_id: str | None = None,
        silo_id: str | None = None,
    ) -> str:
        row = await (
            await conn.execute(
                "INSERT INTO silo_operations (kind, stack, town_id, silo_id, requested_by) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING id::text",
                (kind, stack, town_id, silo_id, who.principal),
            )
        ).fetchone()
        assert row is not None
        return str(row[0])

    @staticmethod
    async def queue(request: Request, operation_id: str, stack: str) -> None:
        """Queue the operation's job (after its row is committed: a job never runs before its row exists;
        a process that dies in between leaves a queued row that the next start queues: jobs.requeue_orphans)."""
        await jobs.defer(request.app.state.queue, operation_id, stack)


async def operation_view(request: Request, operation_id: str) -> dict[str, Any] | None:
    async with request.app.state.pool.connection() as conn:
        row = await operations.get_async(conn, operation_id)
    if row is not None:
        row.pop("requested_by", None)
    return row
