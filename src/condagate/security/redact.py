"""The one place that removes secrets from text: every log line and every error body passes here."""

from __future__ import annotations

import re

_PATTERNS = [
    # conda's token form, however the path is spelled (//t/, /T/, percent-encoded slashes aside)
    (re.compile(r"(?i)(/+t/)[^/\s?#\"'<>]+"), r"\1***"),
    # credentials in a URL: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s:\"'<>]*:[^/@\s\"'<>]*@"), r"\1***:***@"),
    # header values written into text
    # (a secret-like value: 8+ characters with a digit or a base64 sign, so that prose is left alone)
    (re.compile(r"(?i)\b(bearer|basic|token)(\s+)(?=[A-Za-z._~:-]*[0-9+/=])[A-Za-z0-9._~+/=:-]{8,}"), r"\1\2***"),
    (re.compile(r"(?i)\b(x-api-?key|authorization|cookie)([\"']?\s*[:=]\s*[\"']?)[^\s\"',;]+"), r"\1\2***"),
    # query parameters that carry secrets
    (re.compile(r"(?i)([?&](?:api_?key|token|password|key|session)=)[^&\s\"'#]+"), r"\1***"),
    # condagate's own key shapes, wherever they appear
    (re.compile(r"\bcg[-_][A-Za-z0-9_-]{16,}"), "cg-***"),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
