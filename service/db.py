"""The registry PostgreSQL as the service uses it: one async pool for the requests, the schema applied
at start (the same checksummed migrations the control stack applies: components/providers/controldb/
schema.py), and the queue's own schema (procrastinate's)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from fastapi import Request
from psycopg_pool import AsyncConnectionPool

from components.paths import MIGRATIONS_DIR
from components.providers.controldb import schema


def apply_migrations(dsn: str) -> list[str]:
    """The registry's migrations (idempotent, under the runner's advisory lock)."""
    return schema.apply(dsn, MIGRATIONS_DIR)


def pool(dsn: str, size: int = 16) -> AsyncConnectionPool:
    return AsyncConnectionPool(dsn, min_size=2, max_size=size, open=False, kwargs={"autocommit": True})


@asynccontextmanager
async def connection(request: Request) -> AsyncIterator[psycopg.AsyncConnection]:
    async with request.app.state.pool.connection() as conn:
        yield conn
