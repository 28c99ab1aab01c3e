"""The error body every answer uses: RFC 9457 problem details, built without a framework (middlewares
answer before routing).

Clients print different fields of an error body: conda reads ``detail`` of an
``application/problem+json`` body or a top-level ``message``; scripts written against earlier
condagate versions read ``error.message`` and ``error.code``. The same text goes into all three, so
that whoever reads the answer reads condagate's reason.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from condagate.security.redact import redact

BASIC_CHALLENGE = 'Basic realm="condagate"'
PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:condagate:problem:"


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem(status: int, code: str, message: str) -> dict[str, object]:
    detail = redact(message)
    return {
        "type": PROBLEM_TYPE_PREFIX + code,
        "title": _title(status),
        "status": status,
        "detail": detail,
        "code": code,
        "message": detail,
        "error": {"code": code, "message": detail},
    }


def error_body(status: int, code: str, message: str) -> bytes:
    return json.dumps(problem(status, code, message)).encode()


def error_headers(status: int, body: bytes, extra: dict[str, str] | None = None) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", BASIC_CHALLENGE.encode()))
    for name, value in (extra or {}).items():
        headers.append((name.lower().encode(), value.encode()))
    return headers
