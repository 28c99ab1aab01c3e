"""Structured access log: one JSON line per request, written after the response (pure ASGI, no buffering),
and the request metrics (``condagate.telemetry``: a few in-memory increments per request)."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from condagate import telemetry
from condagate.security.redact import redact

log = logging.getLogger("condagate.access")


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._metrics: telemetry.Telemetry | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        sent = 0
        headers: list[tuple[bytes, bytes]] = []

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent, headers
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", headers)
            elif message["type"] == "http.response.pathsend":  # a file the server sends itself
                sent += _content_length(headers)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            if self._metrics is None:
                self._metrics = telemetry.metrics()
            self._metrics.observe_request(telemetry.route_family(scope["method"], scope["path"]), status, elapsed, sent)
            state: dict[str, Any] = scope.get("state", {})
            principal = state.get("principal")
            path = redact(scope["path"])
            client = state.get("client") or (scope.get("client") or ["-"])[0]
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "%s %s %s",
                    scope["method"],
                    path,
                    status,
                    extra={
                        "fields": {
                            "method": scope["method"],
                            "path": path,
                            "status": status,
                            "ms": round(elapsed * 1000, 2),
                            "client": client,
                            "principal": getattr(principal, "name", "anonymous"),
                        }
                    },
                )
            if principal is not None and principal.authenticated:
                # The per-key access log the UI shows; buffered, written with the download counts.
                scope["app"].state.services.access_log.record(
                    api_key_id=principal.key_id,
                    principal=principal.name,
                    client=client,
                    method=scope["method"],
                    path=path,
                    status=status,
                )


def _content_length(headers: list[tuple[bytes, bytes]]) -> int:
    value = next((value for name, value in headers if name.lower() == b"content-length"), b"")
    return int(value) if value.isdigit() else 0
