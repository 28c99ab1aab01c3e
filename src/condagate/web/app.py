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
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from condagate import __version__
from condagate.security.permissions import Permission
from condagate.services.context import Services
from condagate.settings import Settings
from condagate.web import api, channel, ui, uploads
from condagate.web.access_log import AccessLogMiddleware
from condagate.web.auth import requires
from condagate.web.errors import install_error_handlers

HERE = Path(__file__).parent
log = logging.getLogger(__name__)


async def _flush_downloads_periodically(services: Services) -> None:
    while True:
        await asyncio.sleep(services.settings.download_flush_seconds)
        await run_in_threadpool(services.downloads.flush)


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await run_in_threadpool(Services.open, settings)
        app.state.services = services
        flusher = asyncio.create_task(_flush_downloads_periodically(services))
        log.info("condagate %s ready (database %s)", __version__, services.db.engine.url.render_as_string())
        try:
            yield
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await services.http_async.aclose()
            await run_in_threadpool(services.close)

    app = FastAPI(
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
    app.include_router(uploads.router)
    app.include_router(channel.router)
    app.include_router(channel.router, prefix="/t/{token}", include_in_schema=False)
    app.include_router(ui.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    # Swagger UI from a package, never from a CDN: the server must work without the internet.
    app.mount("/api/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/api/docs", include_in_schema=False, dependencies=[Depends(requires(Permission.PUBLIC))])
    async def api_docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/api/openapi.json",
            title="condagate REST API",
            swagger_js_url="/api/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/api/docs-assets/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    app.add_middleware(AccessLogMiddleware)
    return app


def create_app_from_env() -> FastAPI:
    """Entry point for server worker processes: settings come from ``CONDAGATE_*`` variables."""
    from condagate.logs import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return create_app(settings)
