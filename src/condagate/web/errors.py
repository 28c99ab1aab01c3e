"""One mapping from the error tree to HTTP: JSON for clients, an HTML page for the web UI."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from condagate.errors import CondagateError
from condagate.security.redact import redact

log = logging.getLogger(__name__)

_HTTP_CODES = {408: "request_timeout", 413: "payload_too_large", 405: "method_not_allowed"}
_MACHINE_PREFIXES = ("/api", "/conda", "/t/", "/health")


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith(_MACHINE_PREFIXES) and "text/html" in request.headers.get("accept", "")


def error_response(request: Request, status: int, code: str, message: str) -> Response:
    message = redact(message)
    if _wants_html(request):
        # No Basic challenge for a page: browsers would show their password dialog, not the login link.
        headers: dict[str, str] = {}
        templates = request.app.state.templates
        response: Response = templates.TemplateResponse(
            request, "error.html", {"status": status, "message": message}, status_code=status, headers=headers
        )
        return response
    headers = {"WWW-Authenticate": 'Basic realm="condagate"'} if status == 401 else {}
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CondagateError)
    async def condagate_error(request: Request, exc: CondagateError) -> Response:
        if exc.status_code >= 500:
            log.error("%s %s failed: %s", request.method, redact(request.url.path), redact(exc.message))
        return error_response(request, exc.status_code, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', 'invalid')}"
            for error in exc.errors()
        )
        return error_response(request, 400, "invalid_request", f"invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail) if exc.status_code != 404 else f"nothing at {request.url.path}"
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, code, message)
