"""`?wait=true` answers when its operation ends, told by the registry (LISTEN/NOTIFY), not at its next poll:
a waiting request costs the service nothing and answers at once (service/operations.py Finished)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from service import db, operations

pytestmark = [pytest.mark.db]


def _finish_later(dsn: str, operation_id: str, delay_s: float, error: str | None = None) -> threading.Thread:
    def finish() -> None:
        time.sleep(delay_s)
        with psycopg.connect(dsn, autocommit=True) as conn:
            operations.finished(conn, operation_id, error=error, resource="town" if error else None)

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


@pytest.fixture
def registry(postgres_server: Any) -> Iterator[str]:
    """A registry database with its migrations: its DSN."""
    database = postgres_server.create_database()
    dsn = postgres_server.dsn(database)
    try:
        db.apply_migrations(dsn)
        yield dsn
    finally:
        postgres_server.drop_database(database)


def _queued(dsn: str, stack: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return operations.create(conn, kind="town.create", stack=stack, requested_by="test")


def test_a_wait_ends_when_the_worker_finishes_the_operation_not_at_its_next_read(registry: str) -> None:
    dsn = registry
    ok, bad = _queued(dsn, "town-a"), _queued(dsn, "town-b")

    async def scenario() -> tuple[dict[str, Any] | None, dict[str, Any] | None, int]:
        # Reads only every 60 s unless notified: the test's 20 s bound fails if notifications are lost.
        finished = operations.Finished(dsn, fallback_s=60)
        listener = asyncio.create_task(finished.listen())
        reads = 0

        def reader(operation_id: str):
            async def read() -> dict[str, Any] | None:
                nonlocal reads
                reads += 1
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    return await operations.get_async(conn, operation_id)

            return read

        await asyncio.sleep(0.5)  # listening
        workers = [_finish_later(dsn, ok, 1.0), _finish_later(dsn, bad, 1.5, error="Fly said no")]
        try:
            first, second = await asyncio.wait_for(
                asyncio.gather(
                    finished.wait(ok, reader(ok), timeout_s=120), finished.wait(bad, reader(bad), timeout_s=120)
                ),
                timeout=20,
            )
        finally:
            listener.cancel()
            for worker in workers:
                worker.join()
        return first, second, reads

    first, second, reads = asyncio.run(scenario())
    assert first is not None and first["status"] == "succeeded"
    assert second is not None and second["status"] == "failed" and second["error"] == "Fly said no"
    # Each read once on entry; then the other's notification may wake nobody, its own wakes it once more.
    assert reads <= 4, reads


def test_a_wait_gives_up_at_its_timeout_and_says_so(registry: str) -> None:
    dsn = registry
    pending = _queued(dsn, "town-c")

    async def scenario() -> dict[str, Any] | None:
        finished = operations.Finished(dsn, fallback_s=0.2)

        async def read() -> dict[str, Any] | None:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                return await operations.get_async(conn, pending)

        return await finished.wait(pending, read, timeout_s=0.5)  # nobody listens: the fallback reads

    assert asyncio.run(scenario()) is None  # the route then answers 202 with the operation still queued
