"""The security headers of every answer, built once; ``web.bookkeeping`` adds them to each answer
unless the header list already ends with them (the fast lane's cached lists do)."""

from __future__ import annotations

from collections.abc import Sequence

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_Header = tuple[bytes, bytes]
SECURITY_HEADERS: tuple[_Header, ...] = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"))
HTML_SECURITY_HEADERS: tuple[_Header, ...] = (
    (b"content-security-policy", _CSP.encode()),
    (b"x-frame-options", b"DENY"),
)
_ENDINGS = (id(SECURITY_HEADERS[-1]), id(HTML_SECURITY_HEADERS[-1]))


def secured(headers: Sequence[_Header]) -> list[_Header]:
    """An answer's headers plus the security headers (and, for an HTML page, those of pages)."""
    for name, value in headers:
        if value.startswith(b"text/html") and name.lower() == b"content-type":
            return [*headers, *SECURITY_HEADERS, *HTML_SECURITY_HEADERS]
    return [*headers, *SECURITY_HEADERS]


def already_secured(headers: Sequence[_Header]) -> bool:
    """Whether ``headers`` came from ``secured``: they end with one of its very tuple objects, which
    nothing else holds (an equal header built elsewhere is another object)."""
    return bool(headers) and id(headers[-1]) in _ENDINGS
