"""The application: routes, static files, error handlers, and the worker's lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from server import logs, problems
from server.auth import Authenticator
from server.config import Settings
from server.db import Database, retry_unavailable
from server.errors import OrderlyError
from server.generators import generator_from_settings
from server.generators.base import Generator
from server.limits import FailedLookups, RateLimiter
from server.middleware import AccessLog, RequestLimits, SecurityHeaders
from server.openapi import openapi_document
from server.routes import chat, generations, messages, ops, projects, session
from server.services import Services
from server.static import STATIC_DIR
from server.store import Store
from server.tokencache import TokenCache
from server.worker import Worker

logger = logging.getLogger(__name__)


def create_app(settings: Settings, *, generator: Generator | None = None) -> Starlette:
    if settings.database_url is None:
        raise ValueError("create_app needs settings.database_url (see server/__main__.py)")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = await start_services(settings, generator or generator_from_settings(settings))
        app.state.services = services
        services.worker.start()
        services.worker.drain_on_signals()
        try:
            yield
        finally:
            await services.worker.stop()
            await services.db.close()

    routes = [
        *session.routes,
        *projects.routes,
        *generations.routes,
        *messages.routes,
        *chat.routes,
        *ops.routes,
        Mount("/static", app=StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
    templates = {r.endpoint: r.path for r in routes if isinstance(r, Route)}
    middleware = [
        Middleware(AccessLog, route_templates=templates),
        Middleware(SecurityHeaders),
        Middleware(
            RequestLimits,
            max_url_bytes=settings.max_url_bytes,
            max_header_bytes=settings.max_header_bytes,
        ),
    ]
    if settings.cors_origins:
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                allow_credentials=True,
            )
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            OrderlyError: problems.handle_orderly_error,
            HTTPException: problems.handle_http_exception,
            Exception: problems.handle_unexpected,
        },
    )
    app.state.openapi = openapi_document(max_message_chars=settings.max_message_chars)
    return app


async def start_services(settings: Settings, generator: Generator) -> Services:
    assert settings.database_url is not None
    db = Database(
        settings.database_url, min_size=settings.pool_min_size, max_size=settings.pool_max_size
    )
    await retry_unavailable(db.open, attempts=20)
    store = Store(db)
    worker = Worker(settings, store, generator)
    await retry_unavailable(worker.open, attempts=20)
    auth = Authenticator(
        store,
        cache=TokenCache(seconds=settings.token_cache_seconds),
        failures=FailedLookups(
            per_minute=settings.auth_failures_per_minute,
            burst=settings.auth_failures_burst,
            worker_per_minute=settings.auth_failures_worker_per_minute,
        ),
        limiter=RateLimiter(per_minute=settings.rate_per_minute, burst=settings.rate_burst),
    )
    return Services(settings=settings, db=db, store=store, worker=worker, auth=auth)


def app_from_env() -> Starlette:
    """The factory uvicorn's workers call (``server.app:app_from_env``)."""
    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    return create_app(settings)
