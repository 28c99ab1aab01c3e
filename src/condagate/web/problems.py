"""The error body every answer uses, built without a framework (middlewares answer before routing)."""

from __future__ import annotations

import json

from condagate.security.redact import redact

BASIC_CHALLENGE = 'Basic realm="condagate"'


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": redact(message)}}).encode()


def error_headers(status: int, body: bytes, extra: dict[str, str] | None = None) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", BASIC_CHALLENGE.encode()))
    for name, value in (extra or {}).items():
        headers.append((name.lower().encode(), value.encode()))
    return headers
