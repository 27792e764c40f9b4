"""`silo serve`: the HTTP API in one process, the queue worker that runs the stack operations in another.

Two processes because they compete for different things: a request should never wait behind the
worker's programs (each operation runs its Pulumi program in the worker's interpreter, and 20 of them at
once held the GIL long enough to make status calls slow), and the worker's work is shared with every
other worker on the registry's queue anyway. `serve()` prepares the registry (migrations, the queue's
schema, the local tokens), starts the worker, then serves; if the worker dies the server exits, so a
supervisor restarts both (a killed worker's jobs are picked up again: service/jobs.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.process import BaseProcess

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from components.errors import UserError, one_line
from engine import provider_zygote
from service import db, jobs
from service.auth import ensure_tokens
from service.operations import Finished
from service.routers import heartbeat, operations, silos, towns
from service.settings import ServiceSettings
from service.stacks import Stacks

log = logging.getLogger(__name__)
STALLED_CHECK_S = 2.0
WATCH_S = 1.0


def prepare(settings: ServiceSettings, *, make_tokens: bool = False) -> None:
    """The registry's migrations, the queue's tables, and (`make serve`) the local tokens file."""
    db.apply_migrations(settings.registry_dsn)
    with psycopg.connect(settings.registry_dsn) as conn, conn.transaction():
        # procrastinate's schema script is not idempotent: once, under a lock (two processes may start).
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('silo-serve-queue-schema'))")
        exists = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            from procrastinate.schema import SchemaManager

            conn.execute(SchemaManager.get_schema())
    if make_tokens:
        ensure_tokens(settings.registry_dsn, settings.tokens_file)


def _environment(settings: ServiceSettings) -> None:
    # The CLI, the providers and the programs read the Fly/Cloudflare/registry settings from the
    # environment: set once, for every operation alike.
    os.environ.update(settings.env)
    os.environ.setdefault("SILO_REGISTRY_DSN", settings.registry_dsn)


def create_app(settings: ServiceSettings, worker: BaseProcess | None = None) -> FastAPI:
    """The HTTP API. `worker`: the queue worker's process, watched (the server stops if it dies)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _environment(settings)
        app.state.settings = settings
        app.state.stacks = Stacks(settings)  # silo status and connection info read stacks directly
        app.state.queue = jobs.make_app(settings, None)
        app.state.pool = db.pool(settings.registry_dsn)
        await app.state.pool.open()
        app.state.finished = Finished(settings.registry_dsn)
        chores = [asyncio.create_task(app.state.finished.listen(), name="finished")]
        if worker is not None:
            chores.append(asyncio.create_task(_watch(worker), name="watchdog"))
        async with app.state.queue.open_async():
            try:
                yield
            finally:
                for chore in chores:
                    chore.cancel()
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


async def _watch(worker: BaseProcess) -> None:
    while worker.is_alive():
        await asyncio.sleep(WATCH_S)
    log.error("the queue worker exited (code %s): stopping the server so that both are restarted", worker.exitcode)
    os._exit(1)


# -- the worker process ------------------------------------------------------------------------------------
WORKER_NICENESS = 19  # where SCHED_IDLE is not offered


def below_the_api() -> None:
    """This process, and every CLI and provider host it starts (they inherit it), runs only on CPU the
    API leaves: a machine busy with stack operations still answers status calls at once.

    SCHED_IDLE, not a nice value: nice 10 weighs 1/10 of the API, but 20 operations are some 60 runnable
    threads (each CLI is a Go runtime, each provider host a thread pool), which together outweighed the
    one web process: status calls waited up to 320 ms behind them (bench/api.py at a constant 100 calls
    a second; p99 20 ms with SCHED_IDLE). Lowering one's own scheduling needs no privilege."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux
        os.nice(WORKER_NICENESS)


def worker_main(settings: ServiceSettings) -> None:
    logging.basicConfig(level=logging.WARNING)
    below_the_api()
    asyncio.run(_work(settings))


async def _work(settings: ServiceSettings) -> None:
    _environment(settings)
    loop = asyncio.get_running_loop()
    # Stack operations run in threads (the Automation API blocks on the CLI): one per worker slot.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=settings.workers + 4))
    # Provider hosts forked warm, not started cold, for every run of this worker (engine/provider_zygote.py).
    zygote = provider_zygote.start()
    queue = jobs.make_app(settings, jobs.Runner(settings, Stacks(settings)))
    pool = db.pool(settings.registry_dsn, size=4)
    await pool.open()
    async with queue.open_async():
        async with pool.connection() as conn:
            await jobs.requeue_orphans(queue, conn)
        chores = [
            asyncio.create_task(_every(STALLED_CHECK_S, lambda: jobs.retry_stalled(queue)), name="stalled"),
            asyncio.create_task(_every(settings.renew_check_s, lambda: _renew(pool, queue, settings)), name="renewals"),
        ]
        try:
            await queue.run_worker_async(
                concurrency=settings.workers,
                install_signal_handlers=True,
                update_heartbeat_interval=jobs.HEARTBEAT_S,
                stalled_worker_timeout=jobs.STALLED_S,
                fetch_job_polling_interval=1.0,
            )
        finally:
            for chore in chores:
                chore.cancel()
            await pool.close()
            provider_zygote.stop(zygote)


async def _renew(pool: object, queue: object, settings: ServiceSettings) -> None:
    async with pool.connection() as conn:  # type: ignore[attr-defined]
        await jobs.renew_credentials(queue, conn, settings.renew_before_s)  # type: ignore[arg-type]


async def _every(seconds: float, chore: object) -> None:
    while True:
        try:
            await chore()  # type: ignore[operator]
        except Exception:  # the registry briefly unreachable: try again next round
            log.warning("a periodic chore failed", exc_info=True)
        await asyncio.sleep(seconds)


def serve(settings: ServiceSettings, *, make_tokens: bool = False) -> None:
    import uvicorn

    prepare(settings, make_tokens=make_tokens)
    worker = multiprocessing.get_context("spawn").Process(
        target=worker_main, args=(settings,), name="silo-queue-worker", daemon=True
    )
    worker.start()
    uvicorn.run(create_app(settings, worker), host=settings.host, port=settings.port, log_level="warning")
