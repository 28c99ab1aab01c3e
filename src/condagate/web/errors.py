"""One mapping from the error tree to HTTP: problem details (RFC 9457) for clients, an HTML page for the web UI."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from condagate.errors import CondagateError, StorageUnavailable, UpstreamError, UpstreamTimeout
from condagate.security.permissions import Permission
from condagate.security.redact import redact
from condagate.web.problems import BASIC_CHALLENGE, PROBLEM_CONTENT_TYPE, problem

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
    headers = {"WWW-Authenticate": BASIC_CHALLENGE} if status == 401 else {}
    return JSONResponse(
        problem(status, code, message), status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE
    )


STORAGE_PHRASE = "the object store holding the packages is unavailable right now: try again shortly"
_UPSTREAM_PHRASES = {
    502: "the upstream is unreachable or answered wrongly, and this is not cached here",
    504: "the upstream did not answer in time, and this is not cached here",
}


def _shown_message(request: Request, exc: CondagateError) -> str:
    """What an upstream or the object store answered (addresses, buckets, statuses, texts) is for
    administrators; others read a fixed phrase, or the raiser's own public wording (which names the
    connector and the file)."""
    if not isinstance(exc, UpstreamError | UpstreamTimeout | StorageUnavailable):
        return exc.message
    principal = getattr(request.state, "principal", None)
    if principal is not None and principal.may(Permission.ADMIN):
        return exc.message
    if isinstance(exc, StorageUnavailable):
        return STORAGE_PHRASE
    return exc.public or _UPSTREAM_PHRASES.get(exc.status_code, _UPSTREAM_PHRASES[502])


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CondagateError)
    async def condagate_error(request: Request, exc: CondagateError) -> Response:
        if exc.status_code >= 500:
            log.error("%s %s failed: %s", request.method, redact(request.url.path), redact(exc.message))
        return error_response(request, exc.status_code, exc.code, _shown_message(request, exc))

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

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        # The server logs the traceback (as a JSON line) when the exception leaves the app after this answer.
        return error_response(request, 500, "internal", "internal error: the server's log has the details")
