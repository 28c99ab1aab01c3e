"""The one wrapper around every HTTP request (outside the guard): it times the request, adds the
security headers to the answer, notes its status and size, and leaves one entry for the access-log
writer (``web.access_log``), which turns it into the log line, the metrics and the per-key access log.

It also answers what escapes the guard or the fast lane unanswered with the app's own 500 (problem
details), as Starlette's error middleware does for the routes, and lets the exception go on to the
server, which logs it.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from condagate.web.access_log import AccessLogWriter
from condagate.web.errors import error_response
from condagate.web.security_headers import already_secured, secured

_PATHSEND = "http.response.pathsend"


class _Exchange:
    """One request's answer as it passes: status, body bytes, and the send that adds the headers."""

    __slots__ = ("_send", "status", "sent", "started", "_headers")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 500  # what the log says of a request that ends without an answer
        self.sent = 0
        self.started = False
        self._headers: Any = ()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            self.sent += len(message.get("body", b""))
        elif kind == "http.response.start":
            self.status = message["status"]
            self.started = True
            headers = self._headers = message.get("headers") or ()
            if not already_secured(headers):
                message = {**message, "headers": secured(headers)}
        elif kind == _PATHSEND:  # a file the server sends itself
            self.sent += _content_length(self._headers)
        await self._send(message)


class Bookkeeping:
    def __init__(self, app: ASGIApp, writer: AccessLogWriter) -> None:
        self.app = app
        self.writer = writer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        exchange = _Exchange(send)
        try:
            await self.app(scope, receive, exchange.send)
        except Exception:
            if not exchange.started:
                response = error_response(
                    Request(scope, receive), 500, "internal", "internal error: the server's log has the details"
                )
                await response(scope, receive, exchange.send)
            raise
        finally:
            ended = time.time()
            state = scope.get("state") or {}
            self.writer.put(
                (
                    ended,
                    scope["method"],
                    scope["path"],
                    exchange.status,
                    time.perf_counter() - started,
                    exchange.sent,
                    state.get("client") or (scope.get("client") or ("-",))[0],
                    state.get("principal"),
                )
            )


def _content_length(headers: Any) -> int:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0
