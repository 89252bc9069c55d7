"""The application: routes, static files, error handlers, and the worker's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from server import problems
from server.auth import Authenticator
from server.config import Settings
from server.db import Database, retry_unavailable
from server.errors import OrderlyError
from server.generators import generator_from_settings
from server.generators.base import Generator
from server.routes import generations, messages, ops, projects, session
from server.runner import Runner
from server.services import Services
from server.static import STATIC_DIR
from server.store import Store

logger = logging.getLogger(__name__)


def create_app(settings: Settings, *, generator: Generator | None = None) -> Starlette:
    if settings.database_url is None:
        raise ValueError("create_app needs settings.database_url (see server/__main__.py)")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = await start_services(settings, generator or generator_from_settings(settings))
        app.state.services = services
        flusher = asyncio.create_task(services.runner.flusher.run(), name="flusher")
        try:
            yield
        finally:
            await stop_services(services, flusher)

    routes = [
        *session.routes,
        *projects.routes,
        *generations.routes,
        *messages.routes,
        *ops.routes,
        Mount("/static", app=StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            OrderlyError: problems.handle_orderly_error,
            HTTPException: problems.handle_http_exception,
            Exception: problems.handle_unexpected,
        },
    )


async def start_services(settings: Settings, generator: Generator) -> Services:
    assert settings.database_url is not None
    db = Database(
        settings.database_url, min_size=settings.pool_min_size, max_size=settings.pool_max_size
    )
    await retry_unavailable(db.open, attempts=20)
    store = Store(db)
    runner = Runner(
        store,
        generator,
        lease_seconds=settings.lease_seconds,
        flush_interval=settings.flush_interval_ms / 1000,
    )
    auth = Authenticator(store, cache_seconds=settings.token_cache_seconds)
    return Services(settings=settings, db=db, store=store, runner=runner, auth=auth)


async def stop_services(services: Services, flusher: asyncio.Task[None]) -> None:
    runner = services.runner
    await runner.shutdown(services.settings.shutdown_grace_seconds)
    # Give the flusher a moment to write what the generations left behind.
    for _ in range(100):
        if not runner.flusher.pending:
            break
        await asyncio.sleep(0.05)
    flusher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flusher
    await services.db.close()


def app_from_env() -> Starlette:
    """The factory uvicorn's workers call (``server.app:app_from_env``)."""
    return create_app(Settings.from_env())
