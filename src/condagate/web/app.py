"""The application factory: ``create_app(settings)`` builds everything; nothing happens at import."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import swagger_ui_bundle
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from condagate import __version__
from condagate.security.permissions import Permission
from condagate.services.context import Services
from condagate.settings import Settings
from condagate.web import (
    api,
    api_advisories,
    api_licenses,
    api_packages,
    api_promotion,
    api_sca,
    api_security,
    channel,
    metrics,
    ui,
    ui_packages,
    ui_sca,
    uploads,
)
from condagate.web.access_log import AccessLogWriter
from condagate.web.auth import requires
from condagate.web.bookkeeping import Bookkeeping
from condagate.web.errors import install_error_handlers
from condagate.web.fast_lane import FastLane
from condagate.web.guard import GuardMiddleware

HERE = Path(__file__).parent
log = logging.getLogger(__name__)


async def _flush_periodically(services: Services) -> None:
    while True:
        await asyncio.sleep(services.settings.download_flush_seconds)
        try:
            await run_in_threadpool(services.flush)
        except Exception:
            log.exception("flushing counters failed; will retry")


async def _follow_security_changes(services: Services) -> None:
    """Other processes' changes to grants and keys reach this one within ``security_refresh_seconds``."""
    while True:
        await asyncio.sleep(services.access.refresh_seconds)
        try:
            await run_in_threadpool(services.access.refresh_if_changed)
        except Exception:
            log.exception("could not check the security revision; will retry")


class CondagateApp(FastAPI):
    """FastAPI with condagate's own front: every HTTP request passes the bookkeeping (access log,
    metrics, security headers), the guard and the channel's fast lane, in that order, before the
    framework's stack (its telemetry, error middleware, routing); what the fast lane answers never
    reaches the framework."""

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is not None and scope["type"] == "http":
            scope["app"] = self
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, migrated: bool = False) -> FastAPI:
    """``migrated``: the schema is current (a worker of ``condagate serve``, which migrated first)."""
    access_log = AccessLogWriter()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await run_in_threadpool(lambda: Services.open(settings, migrated=migrated))
        app.state.services = services
        access_log.start(services.access_log)
        background = [
            asyncio.create_task(_flush_periodically(services)),
            asyncio.create_task(_follow_security_changes(services)),
        ]
        log.info("condagate %s ready (database %s)", __version__, services.db.engine.url.render_as_string())
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await services.http_async.aclose()
            await run_in_threadpool(access_log.close)  # the last lines and access-log entries
            await run_in_threadpool(services.close)

    app = CondagateApp(
        title="condagate",
        version=__version__,
        description="Self-hosted conda package repository: hosted and proxy conda feeds.",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.templates = Jinja2Templates(directory=HERE / "templates")
    install_error_handlers(app)

    @app.get("/health", tags=["operations"], dependencies=[Depends(requires(Permission.PUBLIC))])
    async def health(request: Request) -> dict[str, Any]:
        services: Services = request.app.state.services
        await run_in_threadpool(services.db.ping)
        return {"status": "ok", "version": __version__}

    app.include_router(api.router)
    app.include_router(api_security.router)
    app.include_router(api_packages.router)
    app.include_router(api_promotion.router)
    app.include_router(api_advisories.router)
    app.include_router(api_licenses.router)
    app.include_router(metrics.router)
    app.include_router(uploads.router)
    app.include_router(channel.router)
    app.include_router(channel.router, prefix="/t/{token}", include_in_schema=False)
    app.include_router(ui.router)
    app.include_router(ui_packages.router)
    app.include_router(api_sca.router)
    app.include_router(ui_sca.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    # Swagger UI from a package, never from a CDN: the server must work without the internet.
    app.mount("/api/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/api/docs", include_in_schema=False, dependencies=[Depends(requires(Permission.PUBLIC))])
    async def api_docs() -> HTMLResponse:
        # No inline script (the Content-Security-Policy forbids it): the start-up code is a static file.
        return HTMLResponse((HERE / "static" / "api-docs.html").read_text())

    # The bookkeeping wraps the guard and sees its refusals too; the channel's fast lane runs right
    # after the guard, with its principal.
    app.state.access_log = access_log
    app.front = Bookkeeping(GuardMiddleware(FastLane(app.framework)), access_log)
    return app


def create_app_from_env() -> FastAPI:
    """Entry point for server worker processes: settings come from ``CONDAGATE_*`` variables."""
    from condagate.logs import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return create_app(settings, migrated=True)
