"""Operation rows (silo_operations): what a caller polls after a 202, from queued to succeeded or failed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from pydantic import BaseModel

TERMINAL = ("succeeded", "failed")
COLUMNS = "id::text, kind, stack, town_id::text, silo_id, status, resource, error, created_at, started_at, finished_at"


class Operation(BaseModel):
    id: str
    kind: str
    stack: str
    town_id: str | None = None
    silo_id: str | None = None
    status: str  # queued | running | succeeded | failed
    resource: str | None = None  # on failure: the resource that failed
    error: str | None = None  # on failure: why
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


def create(
    conn: psycopg.Connection,
    *,
    kind: str,
    stack: str,
    requested_by: str,
    town_id: str | None = None,
    silo_id: str | None = None,
) -> str:
    row = conn.execute(
        "INSERT INTO silo_operations (kind, stack, town_id, silo_id, requested_by) VALUES (%s, %s, %s, %s, %s) "
        "RETURNING id::text",
        (kind, stack, town_id, silo_id, requested_by),
    ).fetchone()
    assert row is not None
    return str(row[0])


def get(conn: psycopg.Connection, operation_id: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT {COLUMNS}, requested_by FROM silo_operations WHERE id = %s", (operation_id,)
        ).fetchone()


async def get_async(conn: psycopg.AsyncConnection, operation_id: str) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {COLUMNS}, requested_by FROM silo_operations WHERE id = %s", (operation_id,))
        return await cur.fetchone()


def started(conn: psycopg.Connection, operation_id: str) -> None:
    conn.execute(
        "UPDATE silo_operations SET status = 'running', started_at = coalesce(started_at, now()), "
        "attempts = attempts + 1 WHERE id = %s",
        (operation_id,),
    )


def finished(
    conn: psycopg.Connection, operation_id: str, *, error: str | None = None, resource: str | None = None
) -> None:
    conn.execute(
        "UPDATE silo_operations SET status = %s, error = %s, resource = %s, finished_at = now() WHERE id = %s",
        ("failed" if error else "succeeded", error, resource, operation_id),
    )
