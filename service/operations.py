"""Operation rows (silo_operations): what a caller polls after a 202, from queued to succeeded or failed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from pydantic import BaseModel

log = logging.getLogger(__name__)
TERMINAL = ("succeeded", "failed")
FINISHED_CHANNEL = "silo_operation_finished"
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
    with conn.transaction():
        conn.execute(
            "UPDATE silo_operations SET status = %s, error = %s, resource = %s, finished_at = now() WHERE id = %s",
            ("failed" if error else "succeeded", error, resource, operation_id),
        )
        # Delivered at commit, to every service process listening (Finished): a `?wait=true` answers now.
        conn.execute("SELECT pg_notify(%s, %s)", (FINISHED_CHANNEL, operation_id))


class Finished:
    """Who waits for which operation to end, woken by the notification `finished` sends (LISTEN on one
    connection of the web process), so a `?wait=true` request costs nothing while it waits.

    Notifications are a hint, not the record: a waiter still reads the row, and reads it again every
    `fallback_s` in case one was missed (the listening connection lost and made again)."""

    def __init__(self, dsn: str, fallback_s: float = 1.0) -> None:
        self.dsn = dsn
        self.fallback_s = fallback_s
        self._waiting: dict[str, set[asyncio.Event]] = {}

    async def listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {FINISHED_CHANNEL}")
                    self._wake_all()  # whatever ended while no connection listened
                    async for note in conn.notifies():
                        for event in self._waiting.get(note.payload, ()):
                            event.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # the registry restarted: listen again (waiters poll meanwhile)
                log.warning("listening for finished operations failed; listening again", exc_info=True)
                await asyncio.sleep(self.fallback_s)

    def _wake_all(self) -> None:
        for events in self._waiting.values():
            for event in events:
                event.set()

    async def wait(
        self, operation_id: str, read: Callable[[], Awaitable[dict[str, Any] | None]], timeout_s: float
    ) -> dict[str, Any] | None:
        """The operation's row once it has ended, or None after `timeout_s`."""
        event = asyncio.Event()
        self._waiting.setdefault(operation_id, set()).add(event)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while True:
                op = await read()  # after registering: an end notified from here on is not missed
                if op is not None and op["status"] in TERMINAL:
                    return op
                left = deadline - loop.time()
                if left <= 0:
                    return None
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(left, self.fallback_s))
        finally:
            events = self._waiting.get(operation_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiting[operation_id]
