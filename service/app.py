"""The ASGI app (`silo serve`, uvicorn): routers, auth, and in the same process a queue worker.

At start: the registry's migrations and the queue's schema are applied (idempotent), the local token
file is made when asked (`make serve`), the worker starts (as many stack operations at once as
`settings.workers`), and what a killed predecessor left is picked up: its jobs are retried once its
worker stops beating, and operations it accepted without queueing are queued again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from components.errors import UserError, one_line
from service import db, jobs
from service.auth import ensure_tokens
from service.routers import heartbeat, operations, silos, towns
from service.settings import ServiceSettings
from service.stacks import Stacks

log = logging.getLogger(__name__)
STALLED_CHECK_S = 2.0


async def _ensure_queue_schema(app: FastAPI, queue: object) -> None:
    """procrastinate's tables, once (its schema script is not idempotent), under an advisory lock so two
    processes starting together do not both apply it."""
    async with app.state.pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('silo-serve-queue-schema'))")
        exists = await (await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")).fetchone()
        if not (exists and exists[0]):
            from procrastinate.schema import SchemaManager

            await conn.execute(SchemaManager.get_schema())


def create_app(settings: ServiceSettings, *, make_tokens: bool = False) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        # Stack operations run in threads (the Automation API blocks on the CLI): room for every worker slot
        # plus the requests' own blocking calls.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=settings.workers + 16))
        # The CLI, the providers and the programs read the service's Fly/Cloudflare/registry settings from
        # the environment: set once here, for every operation alike.
        os.environ.update(settings.env)
        os.environ.setdefault("SILO_REGISTRY_DSN", settings.registry_dsn)
        await asyncio.to_thread(db.apply_migrations, settings.registry_dsn)
        if make_tokens:
            await asyncio.to_thread(ensure_tokens, settings.registry_dsn, settings.tokens_file)
        stacks = Stacks(settings)
        runner = jobs.Runner(settings, stacks)
        queue = jobs.make_app(settings, runner)
        app.state.settings = settings
        app.state.stacks = stacks
        app.state.queue = queue
        app.state.pool = db.pool(settings.registry_dsn)
        await app.state.pool.open()
        await _ensure_queue_schema(app, queue)
        async with queue.open_async():
            worker = asyncio.create_task(
                queue.run_worker_async(
                    concurrency=settings.workers,
                    install_signal_handlers=False,
                    update_heartbeat_interval=jobs.HEARTBEAT_S,
                    stalled_worker_timeout=jobs.STALLED_S,
                    fetch_job_polling_interval=1.0,
                ),
                name="silo-queue-worker",
            )
            async with app.state.pool.connection() as conn:
                await jobs.requeue_orphans(queue, conn)
            janitor = asyncio.create_task(_retry_stalled_forever(queue), name="silo-queue-janitor")
            renewals = asyncio.create_task(_renew_forever(app, queue), name="silo-r2-renewals")
            try:
                yield
            finally:
                janitor.cancel()
                renewals.cancel()
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await worker
                await app.state.pool.close()

    app = FastAPI(
        title="silo provisioning API",
        version="1.0.0",
        description="Gastown towns and Supabase silos on demand (README, 'Provisioning API').",
        lifespan=lifespan,
    )
    for router in (towns.router, silos.router, operations.router, heartbeat.router):
        app.include_router(router)

    @app.exception_handler(UserError)
    async def user_error(_request: Request, exc: UserError) -> JSONResponse:
        # An API or database the service depends on said no: one line, what failed and what to do.
        return JSONResponse(status_code=502, content={"detail": one_line(exc)})

    return app


async def _renew_forever(app: FastAPI, queue: object) -> None:
    settings: ServiceSettings = app.state.settings
    while True:
        try:
            async with app.state.pool.connection() as conn:
                await jobs.renew_credentials(queue, conn, settings.renew_before_s)  # type: ignore[arg-type]
        except Exception:
            log.warning("could not look for R2 credentials to renew", exc_info=True)
        await asyncio.sleep(settings.renew_check_s)


async def _retry_stalled_forever(queue: object) -> None:
    while True:
        try:
            await jobs.retry_stalled(queue)  # type: ignore[arg-type]
        except Exception:  # the registry briefly unreachable: try again next round
            log.warning("could not look for stalled jobs", exc_info=True)
        await asyncio.sleep(STALLED_CHECK_S)
